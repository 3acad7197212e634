"""The TokenBatch: the one fixed-shape contract between data and model (DESIGN.md 2).

Every batch that reaches the device carries `N_max` token slots per sample. Valid tokens
come first, in raster order (t, then h, then w), padding follows. Because every field has
a fixed shape, one compiled program serves every sampled grid.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # np.ndarray or jax.Array: the same code runs on host and on device.


@flax.struct.dataclass
class TokenBatch:
  """Patch tokens of a batch of videos, padded to a fixed count.

  Attributes:
    patches: uint8 (raw pixels, normalized on device) or float (already normalized)
      `[B, N_max, P]`, P = tubelet * p * p * 3 ordered (kt, py, px, rgb), rgb fastest.
    coords: int32 `[B, N_max, 3]`, (t, h, w) of each token in its sample's grid.
    grid: int32 `[B, 3]`, (T, Hp, Wp) token grid of each sample (T counts tubelets).
    valid: bool `[B, N_max]`, False on padding.
    label: int32 `[B]` class id, or None for inference.
    video_index: int32 `[B]` for multi-view evaluation, or None.
    view: int32 `[B]` view id inside a video, or None.
  """

  patches: Array
  coords: Array
  grid: Array
  valid: Array
  label: Array | None = None
  video_index: Array | None = None
  view: Array | None = None

  @property
  def batch_size(self) -> int:
    return self.patches.shape[0]

  @property
  def n_max(self) -> int:
    return self.patches.shape[1]


@flax.struct.dataclass
class ClipBatch:
  """A TokenBatch with one caption per clip, for video-text training (DESIGN.md 8).

  Row i of `text` describes clip i; positives are matched by `tokens.video_index`, so two
  clips of one video (num_sample > 1) share their captions as positives.

  Attributes:
    tokens: the clips.
    text: int32 `[B, L]` caption token ids (flux_jax.data.tokenizer), 0-padded.
  """

  tokens: TokenBatch
  text: Array


def grid_coords(t: int, hp: int, wp: int) -> np.ndarray:
  """(t, h, w) of every token of a (t, hp, wp) grid in raster order: int32 `[N, 3]`."""
  return np.indices((t, hp, wp), dtype=np.int32).reshape(3, -1).T


def token_grid(t: int, h: int, w: int, patch_size: int, tubelet_size: int = 1
               ) -> tuple[int, int, int]:
  """The (T', Hp, Wp) token grid of `t` frames of `h` x `w`; ValueError if they do not
  divide into tubelets and patches."""
  if h % patch_size or w % patch_size:
    raise ValueError(f'frame size {h}x{w} is not a multiple of the patch size {patch_size}')
  if t % tubelet_size:
    raise ValueError(f'{t} frames is not a multiple of the tubelet size {tubelet_size}')
  return t // tubelet_size, h // patch_size, w // patch_size


def _check_fits(tt: int, hp: int, wp: int, n_max: int) -> None:
  if tt * hp * wp > n_max:
    raise ValueError(f'grid {tt}x{hp}x{wp} has {tt * hp * wp} tokens, more than '
                     f'n_max={n_max}')


def _token_order(video: Array, tubelet_size: int, patch_size: int) -> Array:
  """`[B, T, H, W, C]` -> `[B, T', Hp, Wp, kt, p, p, C]`: tokens in raster order, each
  token's pixels (kt, py, px, rgb) together."""
  b, t, h, w, c = video.shape
  kt, p = tubelet_size, patch_size
  x = video.reshape(b, t // kt, kt, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7)


def _layout(rows: int, size: int, grid: tuple[int, int, int], n_max: int):
  """(coords, valid, grid) of `size` rows whose first `rows` hold a `grid` of tokens."""
  tt, hp, wp = grid
  n = tt * hp * wp
  coords = np.zeros((size, n_max, 3), np.int32)
  coords[:rows, :n] = grid_coords(tt, hp, wp)
  valid = np.zeros((size, n_max), bool)
  valid[:rows, :n] = True
  return coords, valid, np.tile(np.array([grid], np.int32), (size, 1))


def pack(clips: list[np.ndarray], *, patch_size: int = 14, tubelet_size: int = 1,
         n_max: int, size: int | None = None) -> TokenBatch:
  """The numpy `patchify` of host batches: stacks of clips of one shape
  `[S_i, T, H, W, 3]` -> a TokenBatch of `size` rows (default: sum S_i; rows past the
  clips are empty, valid False), each pixel copied once, straight into its padded slot.
  """
  shape = clips[0].shape[1:]
  if any(c.ndim != 5 or c.shape[1:] != shape or c.shape[-1] != 3 for c in clips):
    raise ValueError(f'pack expects stacks of clips [S, T, H, W, 3] of one shape, got '
                     f'{[c.shape for c in clips]}')
  t, h, w, c = shape
  grid = token_grid(t, h, w, patch_size, tubelet_size)
  n = math.prod(grid)
  _check_fits(*grid, n_max)
  rows = sum(len(x) for x in clips)
  size = rows if size is None else size
  if size < rows:
    raise ValueError(f'pack: {rows} clips do not fit {size} rows')
  patches = np.zeros((size, n_max, tubelet_size * patch_size ** 2 * c),
                     clips[0].dtype)  # [B, N_max, P]
  # The p pixels of a token's row are contiguous in the clip and in the token: copied as
  # one opaque item, numpy's copy is twice as fast as pixel by pixel.
  row = np.dtype((np.void, patch_size * c * patches.itemsize))
  start = 0
  for x in clips:
    end = start + len(x)
    dst = patches[start:end, :n].reshape(  # a view: [S, T', Hp, Wp, kt, p] of rows
        (end - start,) + grid + (tubelet_size, patch_size, patch_size * c)).view(row)
    src = np.ascontiguousarray(x, patches.dtype).reshape(
        (end - start, t // tubelet_size, tubelet_size, h // patch_size, patch_size,
         w * c)).view(row)  # [S, T', kt, Hp, p, Wp]
    dst[..., 0] = src.transpose(0, 1, 3, 5, 2, 4)
    start = end
  coords, valid, grid_rows = _layout(rows, size, grid, n_max)
  return TokenBatch(patches=patches, coords=coords, grid=grid_rows, valid=valid)


def patchify(video: Array, *, patch_size: int = 14, tubelet_size: int = 1,
             n_max: int | None = None) -> TokenBatch:
  """Cuts videos into raster-ordered patch tokens, padded to `n_max`.

  Works on numpy (host pipeline, by `pack`) and on jax arrays (on-device inference).

  Args:
    video: `[B, T, H, W, 3]` or `[T, H, W, 3]`; uint8 pixels or float normalized values.
    patch_size: spatial patch side p.
    tubelet_size: frames per token.
    n_max: token slots per sample; defaults to the raw token count (no padding).

  Returns:
    A TokenBatch with batch dimension (added when `video` had none).
  """
  if video.ndim == 4:
    video = video[None]
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f'patchify expects video [B, T, H, W, 3], got shape {video.shape}')
  b, t, h, w, c = video.shape
  grid = token_grid(t, h, w, patch_size, tubelet_size)
  n = math.prod(grid)
  n_max = n if n_max is None else n_max
  _check_fits(*grid, n_max)
  if not isinstance(video, jax.Array):
    return pack([video], patch_size=patch_size, tubelet_size=tubelet_size, n_max=n_max)
  patches = _token_order(video, tubelet_size, patch_size).reshape(b, n, -1)  # [B, N, P]
  patches = jnp.pad(patches, ((0, 0), (0, n_max - n), (0, 0)))
  coords, valid, grid_rows = _layout(b, b, grid, n_max)
  return TokenBatch(patches=patches, coords=coords, grid=grid_rows, valid=valid)
