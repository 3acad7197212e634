"""Host-side video transforms on uint8 clips `[T, H, W, C]` (SPEC C.2, C.7).

Plain functions of numpy arrays: picklable for grain workers, and every random draw comes
from the `np.random.Generator` passed in, never from global state. Resizing is PyTorch's
`F.interpolate(mode='bilinear', align_corners=False, antialias=False)`, which the official
training crops use, computed by OpenCV's INTER_LINEAR (the official test resize) on float
frames: the same taps. OpenCV runs on one thread in this process, as FFmpeg does
(`decode.py`): parallelism comes from grain's workers.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

cv2.setNumThreads(1)


def resize_bilinear(frames: np.ndarray, out_h: int, out_w: int, flip: bool = False,
                    out: np.ndarray | None = None) -> np.ndarray:
  """Bilinear resize of every frame to `[T, out_h, out_w, C]` uint8, rounded to nearest
  (and mirrored left to right with `flip`, in the same pass), into `out` if given.

  A uint8 clip already of that size comes back as is (or mirrored) when `out` is None.
  """
  _check_clip(frames)
  shape = (frames.shape[0], out_h, out_w, frames.shape[3])
  if out is not None and (out.shape != shape or out.dtype != np.uint8):
    raise ValueError(f'resize to {shape}: out is {out.dtype} {out.shape}')
  if frames.shape[1:3] == (out_h, out_w) and frames.dtype == np.uint8:
    same = horizontal_flip(frames) if flip else frames
    if out is None:
      return same
    out[...] = same
    return out
  _check_size(frames, out_h, out_w)
  out = np.empty(shape, np.uint8) if out is None else out
  if not out.flags.c_contiguous:
    raise ValueError('resize: out must be C-contiguous')
  src = np.empty(frames.shape[1:], np.float32)
  scratch = np.empty(shape[1:], np.float32)
  mirror = np.empty(shape[1:], np.uint8) if flip else None
  for frame, dst in zip(frames, out):  # one frame at a time: it stays in cache
    _resize_frame(frame, scratch, src)
    # Rounds half to even and saturates to [0, 255] (bilinear output is never negative).
    if flip:
      cv2.convertScaleAbs(scratch, dst=mirror)
      cv2.flip(mirror, 1, dst=dst)
    else:
      cv2.convertScaleAbs(scratch, dst=dst)
  return out


def _resize_float(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """`resize_bilinear` before rounding: float32 `[T, out_h, out_w, C]`."""
  _check_clip(frames)
  _check_size(frames, out_h, out_w)
  out = np.empty((frames.shape[0], out_h, out_w, frames.shape[3]), np.float32)
  src = np.empty(frames.shape[1:], np.float32)
  for frame, dst in zip(frames, out):
    _resize_frame(frame, dst, src)
  return out


def _resize_frame(frame: np.ndarray, out: np.ndarray, src: np.ndarray) -> None:
  """Writes the bilinear resize of one `[H, W, C]` frame into float32 `out`.

  OpenCV's INTER_LINEAR on float32 computes PyTorch's taps and weights (half-pixel
  centres, edges replicated, no antialiasing on downscale) in float arithmetic: it agrees
  with `F.interpolate(mode='bilinear', align_corners=False)` to ~1e-2 levels, about 10x
  faster than the same two-tap passes in numpy. (On uint8 input OpenCV would use 11-bit
  fixed-point weights instead, so the frame is converted first, into float32 `src` of
  its shape, reused from frame to frame.)
  """
  if frame.dtype == np.float32:
    src = frame
  else:
    np.copyto(src, frame)
  cv2.resize(src, (out.shape[1], out.shape[0]), dst=out, interpolation=cv2.INTER_LINEAR)


def _check_size(frames: np.ndarray, out_h: int, out_w: int) -> None:
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'resize of a {frames.shape} clip to {out_h}x{out_w}: sizes must be '
                     'positive')
  if frames.shape[3] > 4:
    raise ValueError(f'resize of a {frames.shape} clip: at most 4 channels')


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
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip_p: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
  """One random crop box for the whole clip, resized to `[T, size, size, C]` (SPEC C.2),
  then mirrored left to right with probability `flip_p` (drawn after the box, in the
  resize's pass), into `out` if given.

  The official run passes ratio (0.75, 1.3333) and flips with p = 0.5.
  """
  _check_clip(frames)
  top, left, h, w = random_resized_crop_params(frames.shape[1], frames.shape[2], rng,
                                               scale, ratio)
  flip = bool(flip_p) and rng.random() < flip_p
  return resize_bilinear(crop(frames, top, left, h, w), size, size, flip=flip, out=out)


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
