"""The TokenBatch: the one fixed-shape contract between data and model (DESIGN.md 2).

Every batch that reaches the device carries `N_max` token slots per sample. Valid tokens
come first, in raster order (t, then h, then w), padding follows. Because every field has
a fixed shape, one compiled program serves every sampled grid.
"""

from __future__ import annotations

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


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


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
  p, kt = patch_size, tubelet_size
  tt, hp, wp = token_grid(t, h, w, p, kt)
  n = tt * hp * wp
  _check_fits(tt, hp, wp, n_max)
  rows = sum(len(x) for x in clips)
  size = rows if size is None else size
  if size < rows:
    raise ValueError(f'pack: {rows} clips do not fit {size} rows')
  patches = np.zeros((size, n_max, kt * p * p * c), clips[0].dtype)  # [B, N_max, P]
  start = 0
  for x in clips:
    end = start + len(x)
    dst = patches[start:end, :n].reshape(end - start, tt, hp, wp, kt, p, p, c)
    dst[...] = x.reshape(end - start, tt, kt, hp, p, wp, p, c).transpose(
        0, 1, 3, 5, 2, 4, 6, 7)  # [S, T', Hp, Wp, kt, p, p, 3]
    start = end
  coords = np.zeros((size, n_max, 3), np.int32)
  coords[:rows, :n] = grid_coords(tt, hp, wp)
  valid = np.zeros((size, n_max), bool)
  valid[:rows, :n] = True
  grid = np.tile(np.array([[tt, hp, wp]], np.int32), (size, 1))
  return TokenBatch(patches=patches, coords=coords, grid=grid, valid=valid)


def patchify(video: Array, *, patch_size: int = 14, tubelet_size: int = 1,
             n_max: int | None = None) -> TokenBatch:
  """Cuts videos into raster-ordered patch tokens, padded to `n_max`.

  Works on numpy (host pipeline) and on jax arrays (on-device inference) alike.

  Args:
    video: `[B, T, H, W, 3]` or `[T, H, W, 3]`; uint8 pixels or float normalized values.
    patch_size: spatial patch side p.
    tubelet_size: frames per token.
    n_max: token slots per sample; defaults to the raw token count (no padding).

  Returns:
    A TokenBatch with batch dimension (added when `video` had none).
  """
  xp = _xp(video)
  if video.ndim == 4:
    video = video[None]
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f'patchify expects video [B, T, H, W, 3], got shape {video.shape}')
  b, t, h, w, c = video.shape
  p, kt = patch_size, tubelet_size
  tt, hp, wp = token_grid(t, h, w, p, kt)
  n = tt * hp * wp
  n_max = n if n_max is None else n_max
  _check_fits(tt, hp, wp, n_max)

  x = video.reshape(b, tt, kt, hp, p, wp, p, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, T, Hp, Wp, kt, p, p, 3]
  patches = x.reshape(b, n, kt * p * p * c)  # [B, N, P]
  coords = np.broadcast_to(grid_coords(tt, hp, wp), (b, n, 3))
  valid = np.ones((b, n), bool)
  if n_max > n:
    pad = n_max - n
    patches = xp.pad(patches, ((0, 0), (0, pad), (0, 0)))
    coords = np.pad(coords, ((0, 0), (0, pad), (0, 0)))
    valid = np.pad(valid, ((0, 0), (0, pad)))
  grid = np.tile(np.array([[tt, hp, wp]], np.int32), (b, 1))
  return TokenBatch(patches=patches, coords=np.ascontiguousarray(coords), grid=grid,
                    valid=valid)
