"""On-device token selection with a static budget K (SPEC B.2, DESIGN.md 3).

All selectors return the same thing: `index` int32 `[B, K]`, positions in the TokenBatch
(ascending, i.e. raster order, kept tokens first) and `keep` bool `[B, K]`, False on the
slots left empty when a sample has fewer than K valid tokens. The grid of each sample is
data, not shape, so one compiled program serves every grid.

Deliberate differences from the official group-dynamic selector, all for static shapes
and robustness:
  * exactly K tokens are kept when at least K are valid: each group gets floor(K / G),
    the remainder goes to the earliest groups, and a group too small for its quota hands
    the shortfall to the best remaining tokens of other groups. The official float
    truncation of (1 - r) * T'L sometimes keeps one token fewer per group (SPEC B.2).
  * ties break deterministically: the earlier token (lower raster index) wins.
  * every T works: groups are the frame chunks floor(t * G / T), so odd T gives groups
    of unequal size; a group of one frame scores it against its previous frame (the next
    one for frame 0); T = 1 scores every token 0. The official code crashes on these.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from flux_jax.tokens.token_batch import TokenBatch

Selector = Literal['group_dynamic', 'dynamic', 'random', 'uniform']
SELECTORS = ('group_dynamic', 'dynamic', 'random', 'uniform')
MAX_GROUPS = 4
_GOLDEN = 0.6180339887498949


def num_groups(t: jax.Array) -> jax.Array:
  """G = 4 if T % 4 == 0, 1 if T <= 2, else 2 (SPEC B.2 step 2; T = 1 added)."""
  return jnp.where(t % 4 == 0, 4, jnp.where(t <= 2, 1, 2))


def frame_groups(coords: jax.Array, grid: jax.Array, grouped: bool = True):
  """Group id of each token and whether it is scored against the next frame.

  Returns:
    group: int32 `[B, N]`, the frame chunk floor(t * G / T).
    use_next: bool `[B, N]`: frame 0 of a multi-frame group copies frame 1's score,
      i.e. it is compared with the next frame (SPEC B.2 step 4).
  """
  t = coords[..., 0]  # [B, N]
  tt = grid[:, 0:1]  # [B, 1]
  g = num_groups(tt) if grouped else jnp.ones_like(tt)
  group = (t * g) // tt
  start = (group * tt + g - 1) // g  # first frame of the group: ceil(g * T / G)
  end = ((group + 1) * tt + g - 1) // g - 1  # last frame, inclusive
  first = t == start
  use_next = first & ((end > start) | (t == 0))
  return group, use_next


def motion_scores(x: jax.Array, tokens: TokenBatch, grouped: bool = True) -> jax.Array:
  """L2 change of each token's embedding to its neighbour frame: float32 `[B, N]`.

  Relies on the raster order of valid tokens: the same (h, w) one frame away is
  Hp * Wp slots away.
  """
  _, n, _ = x.shape
  grid = tokens.grid
  frame = grid[:, 1:2] * grid[:, 2:3]  # [B, 1] tokens per frame L
  _, use_next = frame_groups(tokens.coords, grid, grouped)
  pos = jnp.arange(n)[None]  # [1, N]
  nb = jnp.clip(jnp.where(use_next, pos + frame, pos - frame), 0, n - 1)  # [B, N]
  x = x.astype(jnp.float32)
  neighbour = jnp.take_along_axis(x, nb[..., None], axis=1)  # [B, N, D]
  score = jnp.sqrt(jnp.sum(jnp.square(x - neighbour), axis=-1))  # [B, N]
  return jnp.where(grid[:, 0:1] > 1, score, 0.0)


def _group_quota_category(score, group, g, valid, k):
  """0 for tokens inside their group's top-quota, 1 for other valid tokens, 2 for padding.

  Quota per group: floor(K / G), plus one for the first K % G groups.
  """
  b, n = score.shape
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  gkey = jnp.where(valid, group, MAX_GROUPS)
  # Sort by (group, -score); stable, so ties keep the earlier token first.
  s_group, _, s_pos = jax.lax.sort((gkey, -score, pos), dimension=1, num_keys=2)
  sizes = jnp.sum(gkey[..., None] == jnp.arange(MAX_GROUPS), axis=1)  # [B, 4]
  starts = jnp.cumsum(sizes, axis=1) - sizes  # [B, 4] first sorted slot of each group
  quota = k // g + (jnp.arange(MAX_GROUPS)[None] < k % g)  # [B, 4]
  gi = jnp.minimum(s_group, MAX_GROUPS - 1)
  rank = pos - jnp.take_along_axis(starts, gi, axis=1)  # rank inside the group
  in_quota = rank < jnp.take_along_axis(quota, gi, axis=1)
  s_cat = jnp.where(s_group == MAX_GROUPS, 2, jnp.where(in_quota, 0, 1))
  # Back to token order.
  return jnp.zeros_like(s_cat).at[jnp.arange(b)[:, None], s_pos].set(s_cat)


def _top_k_raster(category, priority, k):
  """The K best tokens by (category, -priority, position), returned in raster order."""
  b, n = priority.shape
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  cat, _, idx = jax.lax.sort((category, -priority, pos), dimension=1, num_keys=3)
  cat, idx = cat[:, :k], idx[:, :k]  # [B, K]
  keep = cat < 2
  # Raster order, empty slots last.
  _, idx, keep = jax.lax.sort((jnp.where(keep, idx, n + idx), idx, keep), dimension=1,
                              num_keys=1)
  return idx, keep


def keeps_all(k: int | None, n: int) -> bool:
  """Whether budget `k` of `n` slots keeps every token: None, or K >= N (the official
  r = 0, no selection)."""
  return k is None or k >= n


def all_tokens(valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(index, keep) of keeping every slot: raster positions `[B, N]` and `valid`."""
  b, n = valid.shape
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)), valid


def select_tokens(x: jax.Array, tokens: TokenBatch, k: int,
                  method: Selector = 'group_dynamic',
                  rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Chooses K tokens per sample.

  Args:
    x: `[B, N, D]` token embeddings (after patch embedding, before positions).
    tokens: the TokenBatch the embeddings came from (coords, grid, valid).
    k: static budget K <= N.
    method: 'group_dynamic' (SPEC B.2, default), 'dynamic' (one group over all frames),
      'random' (uniform at random; needs `rng`), 'uniform' (whole space-time tubes at
      spatial positions spread by a golden-ratio sequence, the same in every frame).
    rng: PRNG key for 'random'.

  Returns:
    (index int32 `[B, K]`, keep bool `[B, K]`).
  """
  b, n, _ = x.shape
  if not 0 < k <= n:
    raise ValueError(f'budget K={k} must be in [1, N_max={n}]')
  valid = tokens.valid
  x = jax.lax.stop_gradient(x)
  if method in ('group_dynamic', 'dynamic'):
    grouped = method == 'group_dynamic'
    score = motion_scores(x, tokens, grouped)
    group, _ = frame_groups(tokens.coords, tokens.grid, grouped)
    g = num_groups(tokens.grid[:, 0:1]) if grouped else jnp.ones((b, 1), jnp.int32)
    category = _group_quota_category(score, group, g, valid, k)
  elif method == 'random':
    if rng is None:
      raise ValueError("selector 'random' needs an rng")
    score = jax.random.uniform(rng, (b, n))
    category = jnp.where(valid, 0, 2)
  elif method == 'uniform':
    spatial = tokens.coords[..., 1] * tokens.grid[:, 2:3] + tokens.coords[..., 2]
    score = 1.0 - jnp.mod(spatial.astype(jnp.float32) * _GOLDEN, 1.0)
    category = jnp.where(valid, 0, 2)
  else:
    raise ValueError(f'unknown selector {method!r}; choose one of {SELECTORS}')
  return _top_k_raster(category, score, k)
