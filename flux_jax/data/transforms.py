"""Host-side video transforms on uint8 clips `[T, H, W, C]` (SPEC C.2, C.7).

Plain numpy functions: picklable for grain workers, and every random draw comes from the
`np.random.Generator` passed in, never from global state. Resizing is PyTorch's
`F.interpolate(mode='bilinear', align_corners=False, antialias=False)`, which the official
training crops use; cv2's INTER_LINEAR, used by the official test resize, has the same
taps.
"""

from __future__ import annotations

import math

import numpy as np


def resize_bilinear(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Bilinear resize of every frame to `[T, out_h, out_w, C]` uint8, rounded to nearest.

  A uint8 clip already of that size comes back as is.
  """
  _check_clip(frames)
  if frames.shape[1:3] == (out_h, out_w) and frames.dtype == np.uint8:
    return frames
  y = _resize_float(frames, out_h, out_w)
  np.rint(y, out=y)
  np.clip(y, 0, 255, out=y)
  return y.astype(np.uint8)


def _resize_float(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """`resize_bilinear` before rounding: float32 `[T, out_h, out_w, C]`.

  Each axis is a separable pass of two taps per output (the interpolation matrix has two
  non-zeros a row). Gathering the taps costs O(output); dense matmuls cost O(input x
  output) per axis and measured 2-5x slower on a 16 x 256 x 340 clip.
  """
  _, h, w, _ = frames.shape
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'resize of a {frames.shape} clip to {out_h}x{out_w}: sizes must be '
                     'positive')
  # The first pass goes along the axis that leaves the smaller intermediate.
  if out_h * w <= h * out_w:
    y = _lerp(_lerp(frames, 1, out_h), 2, out_w)
  else:
    y = _lerp(_lerp(frames, 2, out_w), 1, out_h)
  # A copy when both passes were skipped: resize_bilinear rounds the result in place.
  return y.astype(np.float32, copy=y is frames)


def _lerp(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  """Linear interpolation of `x` along `axis` (1 or 2) to `size` samples, float32."""
  if x.shape[axis] == size:  # PyTorch leaves an axis of unchanged size alone
    return x
  i0, i1, lam0, lam1 = _linear_taps(x.shape[axis], size)
  shape = (size,) + (1,) * (x.ndim - 1 - axis)  # broadcast over the axes after `axis`
  # Gather in the input dtype (cheap for uint8), then weight in float32.
  out = np.take(x, i0, axis=axis).astype(np.float32, copy=False)
  out *= lam0.reshape(shape)
  far = np.take(x, i1, axis=axis).astype(np.float32, copy=False)
  far *= lam1.reshape(shape)
  out += far
  return out


def _linear_taps(in_size: int, out_size: int):
  """PyTorch's linear taps, align_corners=False: indices i0, i1 and weights `[out]`."""
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float64)
  # PyTorch's CPU kernel computes `scale * (dst + 0.5) - 0.5` in float32 with a fused
  # multiply-add: one rounding, which float64 then a cast reproduces.
  src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam1 = np.clip(src - i0.astype(np.float32), 0, 1)
  return i0, i1, np.float32(1) - lam1, lam1


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)
                               ) -> tuple[int, int, int, int]:
  """A crop box `(top, left, h, w)` as torchvision's `RandomResizedCrop.get_params`.

  Ten tries of an area uniform in `scale` x frame area and a log-uniform aspect ratio
  w/h in `ratio`; the first that fits is placed uniformly. If none fits, the central crop
  of the whole frame with its aspect ratio clamped to `ratio`.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f'crop params for a {height}x{width} frame: sizes must be positive')
  if not 0 <= scale[0] <= scale[1]:
    raise ValueError(f'scale {scale} must be (min, max) with 0 <= min <= max')
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f'ratio {ratio} must be (min, max) with 0 < min <= max')
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(frames: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """One random crop box for the whole clip, resized to `[T, size, size, C]` (SPEC C.2).

  The official run passes ratio (0.75, 1.3333).
  """
  _check_clip(frames)
  top, left, h, w = random_resized_crop_params(frames.shape[1], frames.shape[2], rng,
                                               scale, ratio)
  return resize_bilinear(crop(frames, top, left, h, w), size, size)


def horizontal_flip(frames: np.ndarray) -> np.ndarray:
  """Mirrors every frame left to right (a contiguous copy)."""
  _check_clip(frames)
  return np.ascontiguousarray(frames[:, :, ::-1])


def crop(frames: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
  """The box `[top:top + h, left:left + w]` of every frame (a view)."""
  _check_clip(frames)
  _, height, width, _ = frames.shape
  if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
    raise ValueError(f'crop box (top={top}, left={left}, h={h}, w={w}) does not fit a '
                     f'clip of shape {frames.shape}')
  return frames[:, top:top + h, left:left + w]


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize keeping the aspect ratio; the short side becomes `size`.

  The long side is `int(size * long / short)`, truncated as the official `Resize`
  (VideoMAE `video_transforms.get_resize_sizes`; SPEC C.7).
  """
  _check_clip(frames)
  if size <= 0:
    raise ValueError(f'short side {size} for a clip of shape {frames.shape} must be '
                     'positive')
  _, h, w, _ = frames.shape
  if w < h:
    out_h, out_w = int(size * h / w), size
  else:
    out_h, out_w = size, int(size * w / h)
  return resize_bilinear(frames, out_h, out_w)


def spatial_crops(frames: np.ndarray, size: int, num_crops: int) -> list[np.ndarray]:
  """Test views: short side to `size`, then `num_crops` crops `[T, size, size, C]`.

  The crops are evenly spaced along the long side: left to right for landscape, top to
  bottom otherwise (square and portrait, as the official `H >= W` test). One crop is
  central. Offsets are truncated as the official (SPEC C.7).
  """
  if num_crops < 1:
    raise ValueError(f'num_crops={num_crops} must be at least 1')
  frames = resize_short_side(frames, size)
  _, h, w, _ = frames.shape
  slack = max(h, w) - size
  if num_crops == 1:
    starts = [slack // 2]
  else:
    step = slack / (num_crops - 1)
    starts = [int(i * step) for i in range(num_crops)]
  if h >= w:
    return [crop(frames, s, 0, size, size) for s in starts]
  return [crop(frames, 0, s, size, size) for s in starts]


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """Validation view: short side to `size`, central crop `[T, size, size, C]` (SPEC C.7).

  The offset is `round(slack / 2)` with Python's half-to-even rounding, as the official
  `CenterCrop`; this can differ by one pixel from the single test crop, which truncates.
  """
  frames = resize_short_side(frames, size)
  _, h, w, _ = frames.shape
  return crop(frames, int(round((h - size) / 2)), int(round((w - size) / 2)), size, size)


def _check_clip(frames: np.ndarray):
  if frames.ndim != 4 or 0 in frames.shape[1:3]:
    raise ValueError(f'expected a clip [T, H, W, C] with H, W > 0, got shape '
                     f'{frames.shape}')
