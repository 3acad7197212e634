"""Global-local positional embedding: a learned table resized to any grid (SPEC B.3).

The official model resizes its `[T0, H0, W0, D]` table to the input grid with PyTorch's
`F.interpolate`: linear in time, then bicubic (A = -0.75) in space, align_corners=False,
clamped taps, no antialias. `jax.image.resize` differs (a = -0.5, antialiasing, border
renormalization), so the taps are written out here. We evaluate the resized table only at
the kept tokens: 2 x 4 x 4 taps per token, no shape that depends on the grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CUBIC_A = -0.75


def linear_taps(dst: jax.Array, out_size: jax.Array, in_size: int):
  """PyTorch linear, align_corners=False: indices and weights `[..., 2]`."""
  scale = in_size / out_size.astype(jnp.float32)
  src = jnp.maximum(scale * (dst.astype(jnp.float32) + 0.5) - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  i1 = jnp.minimum(i0 + 1, in_size - 1)
  lam = jnp.clip(src - i0, 0.0, 1.0)
  same = out_size == in_size  # PyTorch leaves an equal-size axis alone
  lam = jnp.where(same, 0.0, lam)
  i0 = jnp.where(same, dst, i0)
  return jnp.stack([i0, i1], -1), jnp.stack([1.0 - lam, lam], -1)


def cubic_taps(dst: jax.Array, out_size: jax.Array, in_size: int):
  """PyTorch bicubic (A = -0.75), align_corners=False: indices and weights `[..., 4]`."""
  a = CUBIC_A
  scale = in_size / out_size.astype(jnp.float32)
  src = scale * (dst.astype(jnp.float32) + 0.5) - 0.5  # not clamped for cubic
  i = jnp.floor(src)
  t = jnp.clip(src - i, 0.0, 1.0)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  w = jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)
  idx = i.astype(jnp.int32)[..., None] + jnp.arange(-1, 3)
  idx = jnp.clip(idx, 0, in_size - 1)
  same = (out_size == in_size)[..., None]
  w = jnp.where(same, jnp.array([0.0, 1.0, 0.0, 0.0]), w)
  idx = jnp.where(same, dst[..., None], idx)
  return idx, w


def interpolate_at(table: jax.Array, coords: jax.Array, grid: jax.Array,
                   chunk: int = 256) -> jax.Array:
  """The table resized to each sample's grid, evaluated at the given tokens.

  Args:
    table: `[T0, H0, W0, D]`.
    coords: int `[B, K, 3]` (t, h, w) of the tokens.
    grid: int `[B, 3]` (T, Hp, Wp) of each sample.
    chunk: tokens evaluated at once; bounds the `[B, chunk, 32, D]` tap gather, which
      XLA materializes (K = 3072, D = 384 would take 150 MB per sample in one piece).

  Returns:
    `[B, K, D]`, equal to resizing the table to (T, Hp, Wp) with PyTorch's linear (time)
    then bicubic (space) interpolation and reading it at the coordinates.
  """
  b, k, _ = coords.shape
  if k <= chunk:
    return _interpolate_taps(table, coords, grid)
  n = -(-k // chunk)
  padded = jnp.pad(coords, ((0, 0), (0, n * chunk - k), (0, 0)))
  pieces = padded.reshape(b, n, chunk, 3).transpose(1, 0, 2, 3)  # [n, B, chunk, 3]
  out = jax.lax.map(lambda c: _interpolate_taps(table, c, grid), pieces)  # [n, B, chunk, D]
  return out.transpose(1, 0, 2, 3).reshape(b, n * chunk, -1)[:, :k]  # [B, K, D]


def _interpolate_taps(table, coords, grid):
  t0, h0, w0, d = table.shape
  grid = grid[:, None, :]  # [B, 1, 3]
  ti, tw = linear_taps(coords[..., 0], grid[..., 0], t0)  # [B, K, 2]
  hi, hw = cubic_taps(coords[..., 1], grid[..., 1], h0)  # [B, K, 4]
  wi, ww = cubic_taps(coords[..., 2], grid[..., 2], w0)  # [B, K, 4]
  b, k = coords.shape[:2]
  idx = (ti[..., :, None, None] * h0 + hi[..., None, :, None]) * w0 + wi[..., None, None, :]
  wgt = tw[..., :, None, None] * hw[..., None, :, None] * ww[..., None, None, :]
  idx = idx.reshape(b, k, 32)  # [B, K, 2*4*4]
  wgt = wgt.reshape(b, k, 32).astype(table.dtype)
  rows = jnp.take(table.reshape(t0 * h0 * w0, d), idx, axis=0)  # [B, K, 32, D]
  return jnp.einsum('bkj,bkjd->bkd', wgt, rows, precision=jax.lax.Precision.HIGHEST)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[sin(p w_k) | cos(p w_k)], w_k = 10000^(-k / (dim / 2)) (MAE convention)."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum('n,k->nk', pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d(t0: int, h0: int, w0: int, dim: int, temporal_scale: float = 1.0
              ) -> np.ndarray:
  """3D sin-cos table `[T0, H0, W0, D]` (SPEC B.3 item 5).

  Per token: [time D/4 | w (column) 3D/8 | h (row) 3D/8]; the w-before-h order is the
  MAE meshgrid quirk of the official code. `temporal_scale` multiplies the time channels
  (1 is the official table; see FluxViT.pos_temporal_scale).
  """
  if dim % 16:
    raise ValueError(f'sin-cos embedding needs a width divisible by 16, got {dim}')
  d_t, d_s = dim // 4, dim * 3 // 8
  t, h, w = np.meshgrid(np.arange(t0), np.arange(h0), np.arange(w0), indexing='ij')
  emb = np.concatenate([temporal_scale * sincos_1d(d_t, t), sincos_1d(d_s, w),
                        sincos_1d(d_s, h)], axis=1)
  return emb.reshape(t0, h0, w0, dim).astype(np.float32)
