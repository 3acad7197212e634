"""Plain-numpy reference of FluxViT group-dynamic ("sparse group") token selection.

Written from /work/shared/SPEC.md section B.2 only.

Tie handling: the official code ranks with the *unstable* ``torch.argsort``, so which of
two equally scored tokens is kept is implementation-defined there (exact ties are common
with 2 frames per group, because frame 0 copies frame 1's score).  This reference uses
``np.argsort(-score, kind='stable')``: among equal scores the earlier raster position
wins.  Comparisons with the official model should tolerate differences on exact ties.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["num_groups_np", "keep_per_group_np", "group_scores_np", "select_group_dynamic_np"]


def num_groups_np(T: int) -> int:
    """G = 4 if T % 4 == 0, 1 if T == 2, else 2 (consecutive chunks of T/G frames)."""
    if T % 4 == 0:
        return 4
    if T == 2:
        return 1
    return 2


def keep_per_group_np(T: int, L: int, budget: Optional[int] = None,
                      masking_ratio: Optional[float] = None,
                      keep_per_group: Optional[int] = None) -> int:
    """Tokens kept per group.

    ``keep_per_group`` (int) overrides everything.  Otherwise ``k = int((1 - r) * (T'*L))``
    in Python float arithmetic, the integer T'*L formed first (truncation, as the official
    code; e.g. T=24, L=196, budget 3072 gives (1-r)*1176 = 767.999... -> k=767, whereas
    ((1-r)*6)*196 would give 768).  If only ``budget`` is given, ``r = 1 - budget / (T*L)``,
    and ``r = 0.0`` when ``budget >= T*L`` (the training engine's rule).
    """
    Tp = T // num_groups_np(T)
    if keep_per_group is not None:
        return int(keep_per_group)
    if masking_ratio is None:
        if budget is None:
            raise ValueError("give budget, masking_ratio or keep_per_group")
        N = T * L
        masking_ratio = 0.0 if N <= budget else 1 - budget / N
    return int((1 - masking_ratio) * (Tp * L))


def group_scores_np(E: np.ndarray) -> np.ndarray:
    """Per-token importance [B, T*L] in raster (t, h, w) order.

    Within each group of T' consecutive frames: frame t >= 1 scores ||E[t] - E[t-1]||_2 over
    C, and frame 0 of the group copies frame 1's score.  Computed in E's dtype.
    """
    E = np.asarray(E)
    B, T, L, C = E.shape
    if T % 2 != 0:
        raise ValueError(f"T must be even, got {T}")
    G = num_groups_np(T)
    Tp = T // G
    if Tp < 2:
        raise ValueError(f"T={T}: one frame per group, no score defined (official crashes)")
    Eg = E.reshape(B, G, Tp, L, C)
    diff = Eg[:, :, 1:] - Eg[:, :, :-1]
    d = np.sqrt(np.sum(diff * diff, axis=-1))  # [B, G, Tp-1, L]
    score = np.concatenate([d[:, :, :1], d], axis=2)  # [B, G, Tp, L]
    return score.reshape(B, T * L)


def select_group_dynamic_np(E: np.ndarray, budget: Optional[int] = None,
                            masking_ratio: Optional[float] = None,
                            keep_per_group: Optional[int] = None) -> np.ndarray:
    """Kept-token raster indices [B, G*k] (ascending, int64) into the T*L token axis.

    E: float [B, T, L, C] patch embeddings (after the DPN patch embed, before cls/pos).
    Per group the top-k by score (descending, stable ranking; see module docstring on
    ties) are kept; the result is the sorted union over the groups.
    """
    E = np.asarray(E)
    B, T, L, C = E.shape
    G = num_groups_np(T)
    Tp = T // G
    k = keep_per_group_np(T, L, budget, masking_ratio, keep_per_group)
    if not 0 <= k <= Tp * L:
        raise ValueError(f"k={k} outside [0, {Tp * L}]")
    score = group_scores_np(E).reshape(B, G, Tp * L)
    order = np.argsort(-score, axis=-1, kind="stable")[..., :k]  # [B, G, k]
    idx = order + (np.arange(G) * Tp * L)[None, :, None]
    return np.sort(idx.reshape(B, G * k), axis=-1).astype(np.int64)
