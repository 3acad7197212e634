"""On-device Mixup and token-level CutMix for a TokenBatch (DESIGN.md 4, SPEC C.2).

timm's 'batch' mode: one draw per batch decides whether to mix (`prob`), which of Mixup
or CutMix (`switch_prob`) and lambda (Beta(alpha, alpha)); sample b is paired with
sample B - 1 - b (the batch flipped). Targets mix timm's smoothed one-hots.

Token-level CutMix differs from the official pixel CutMix in one way: the box lives on
the sample's (Hp, Wp) token grid, so it is snapped to the 14-px patch grid and a token is
either wholly replaced or untouched. As in timm the box is the same in every frame, its
side is floor(side * sqrt(1 - lambda)) and its centre uniform on the grid, clipped at
the borders; unlike timm it spans that full side (timm's `centre +- side // 2` drops a
row when the side is odd: negligible on 224 pixels, up to 1/Hp of the frame on a token
grid). lambda is then corrected to the fraction of tokens actually replaced (timm's
correct_lam), which also absorbs the snapping.

Partners are matched by position, not by slot: a token at (t, h, w) takes or mixes with
the partner's token at (t, h, w), found by the raster order of valid tokens
(DESIGN.md 2). When both samples share a grid (one plan per batch) that is the partner's
token in the same slot; in a batch of mixed grids, positions the partner lacks stay
unmixed and lambda counts them. Padding is never touched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flux_jax.train.losses import one_hot_smoothed


def _check(mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
           smoothing: float) -> None:
  if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha + cutmix_alpha == 0:
    raise ValueError(f'mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be '
                     '>= 0 with at least one positive')
  for key, value in (('prob', prob), ('switch_prob', switch_prob), ('smoothing', smoothing)):
    if not 0 <= value <= 1:
      raise ValueError(f'mixup {key}={value} must be in [0, 1]')


def _lambda_and_mode(rng: jax.Array, mixup_alpha: float, cutmix_alpha: float, prob: float,
                     switch_prob: float) -> tuple[jax.Array, jax.Array]:
  """timm's `_params_per_batch`: (lambda, use_cutmix); lambda is 1 when not mixing."""
  k_apply, k_switch, k_mixup, k_cutmix = jax.random.split(rng, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup)
  lam = jnp.where(jax.random.uniform(k_apply) < prob, lam, 1.0).astype(jnp.float32)
  return lam, use_cutmix


def _box_span(u: jax.Array, size: jax.Array, ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[lo, hi) of a box side floor(size * ratio) centred at floor(u * size), clipped."""
  cut = jnp.floor(size * ratio).astype(jnp.int32)  # [B]
  centre = jnp.minimum(jnp.floor(u * size).astype(jnp.int32), size - 1)  # [B]
  lo = centre - cut // 2
  return jnp.clip(lo, 0, size), jnp.clip(lo + cut, 0, size)


def mix(rng: jax.Array, patches: jax.Array, coords: jax.Array, grid: jax.Array,
        valid: jax.Array, labels: jax.Array, num_classes: int, *, mixup_alpha: float,
        cutmix_alpha: float, prob: float, switch_prob: float, smoothing: float
        ) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch with its flip: Mixup on pixels or CutMix on whole tokens.

  Args:
    rng: one key for the batch; the result is a function of it.
    patches: normalized pixel patches, float `[B, N, P]`.
    coords: int `[B, N, 3]` (t, h, w) of each token.
    grid: int `[B, 3]` (T, Hp, Wp) of each sample.
    valid: bool `[B, N]`, False on padding.
    labels: int `[B]` class ids.
    num_classes: static number of classes.
    mixup_alpha, cutmix_alpha: Beta parameters (0 disables that mode).
    prob: probability that a batch is mixed at all.
    switch_prob: probability of CutMix when both modes are enabled.
    smoothing: label smoothing of the one-hot targets.

  Returns:
    (patches `[B, N, P]` in the input dtype, targets float32 `[B, num_classes]`).
  """
  _check(mixup_alpha, cutmix_alpha, prob, switch_prob, smoothing)
  k_lam, k_box = jax.random.split(rng)
  lam, use_cutmix = _lambda_and_mode(k_lam, mixup_alpha, cutmix_alpha, prob, switch_prob)

  # Each token's counterpart at the same (t, h, w) in the flipped sample.
  t, h, w = coords[..., 0], coords[..., 1], coords[..., 2]  # [B, N]
  pt, ph, pw = (grid[::-1, i:i + 1] for i in range(3))  # [B, 1]
  exists = (t < pt) & (h < ph) & (w < pw)  # [B, N]
  index = jnp.where(exists, (t * ph + h) * pw + w, 0)  # [B, N] raster slot in the partner
  partner = jnp.take_along_axis(patches[::-1], index[..., None], axis=1)  # [B, N, P]

  u_y, u_x = jax.random.uniform(k_box, (2,))
  ratio = jnp.sqrt(1.0 - lam)
  y_lo, y_hi = _box_span(u_y, grid[:, 1], ratio)  # [B]
  x_lo, x_hi = _box_span(u_x, grid[:, 2], ratio)  # [B]
  in_box = ((h >= y_lo[:, None]) & (h < y_hi[:, None]) &
            (w >= x_lo[:, None]) & (w < x_hi[:, None]))  # [B, N]

  # Share of each token that comes from the partner; lambda follows from it per sample.
  share = jnp.where(use_cutmix, in_box.astype(jnp.float32), 1.0 - lam)
  share = share * (valid & exists)  # [B, N]
  count = jnp.maximum(jnp.sum(valid, axis=1), 1)  # [B]
  lam_per_sample = 1.0 - jnp.sum(share, axis=1) / count  # [B]

  blend = lam.astype(patches.dtype)
  mixed = jnp.where(use_cutmix, partner, blend * patches + (1 - blend) * partner)
  out = jnp.where((share > 0)[..., None], mixed, patches)  # [B, N, P]

  lam_b = lam_per_sample[:, None]  # [B, 1]
  targets = (lam_b * one_hot_smoothed(labels, num_classes, smoothing) +
             (1.0 - lam_b) * one_hot_smoothed(labels[::-1], num_classes, smoothing))
  return out, targets
