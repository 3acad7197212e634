"""synthetic_motion: the embedded default dataset, generated from a seed in pure numpy.

A clip shows one filled disc (the informative object) over a textured background that
pans slowly, with one or two filled squares (distractors) and a global brightness
flicker. The class is the disc's motion with its direction in time:

  0 move_left   1 move_right   2 move_up   3 move_down   4 grow   5 shrink

Design constraints that the research relies on:
  * Time direction matters: the clip of a class played backwards is distributed exactly
    like a clip of `REVERSED_LABEL[class]` (left <-> right, up <-> down, grow <-> shrink).
    Every nuisance (pan, distractor paths, jitter, flicker) is time-reversal symmetric in
    distribution, so it cannot tell the two apart.
  * Frame order matters: a shuffled clip keeps which axis the disc moves along (or that
    it changes size) but loses the direction, so an order-blind model is at chance
    within each of the three pairs.
  * Nothing but the disc's motion carries the label: colours are random for every
    object (the same distribution for disc and squares), the pan has the same random
    distribution for every class, and the squares move along random straight paths with
    Brownian-bridge jitter and change size at random. Only shape tells the disc from the
    squares; the disc is drawn last, on top.
  * Varied frame sizes (both sides even, aspect 0.58 to 1.71) and lengths (32-64
    frames), so that resolution, frame count and token selection matter.

Three difficulties (`DIFFICULTIES`), the same in everything above:
  * 'easy': a disc 24-44 px across that travels 40-70% of the frame over a faint texture
    (0.3 of the 'hard' amplitude); the squares stand still, so the disc is the only
    moving object: the selector keeps it at any budget (93% of its tokens at 1/8 of
    8 x 112^2, `flux_jax.experiments.selector_recall`), so budgets hardly matter. With
    the full texture a small ViT stayed at chance after 400 steps.
  * 'panning' (the demo's): the 'easy' disc among 2-4 squares that wander and resize,
    over the faint texture panning at up to 1 px per frame (32-64 px over a clip).
    What each factor does to a model trained on a fixed grid: the pan makes every
    textured token change between frames and the squares move, so the selector's most
    dynamic tokens are no longer the disc alone and a small budget keeps a part of it
    (73% of the disc's tokens at 32 of 8 x 56^2's 128); only size and shape tell the disc
    from the squares, detail that a low resolution loses; the disc's path spans the whole
    clip, so a few frames still show its direction. docs/synthetic_motion_panning_strip.png
    shows one clip of each class.
  * 'hard': a disc 10-20 px across (below one 14 px patch after Flux's downscaling)
    travelling 30-55%, and squares that wander and resize at random, so only the disc's
    shape tells it from them. Version 1.0.0 of the dataset, draw for draw.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from flux_jax.data import decode

CLASS_NAMES = ('move_left', 'move_right', 'move_up', 'move_down', 'grow', 'shrink')
NUM_CLASSES = len(CLASS_NAMES)
REVERSED_LABEL = (1, 0, 3, 2, 5, 4)  # the label of a clip played backwards

FRAMES = (32, 64)  # inclusive range of T
SIDE = (112, 192)  # inclusive range of H and of W, both even
MAX_PAN = 0.4  # background pan speed, px per frame (the disc moves >= 0.5)
FLICKER = 0.06  # per-frame brightness gain in 1 +- FLICKER
MIN_CONTRAST = 50.0  # |luma(object) - luma(background mean)|, 0-255 scale
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """What makes the disc's motion hard to see."""
  move_radius: tuple[float, float]  # disc radius of the moving classes
  scale_radius: tuple[tuple[float, float], tuple[float, float]]  # grow/shrink: small, large
  travel: tuple[float, float]  # disc travel of the moving classes, fraction of the side
  squares_move: bool  # distractors wander and resize (else they stand still)
  texture: float  # amplitude of the background texture (1: the 1.0.0 texture)
  max_pan: float = MAX_PAN  # background pan speed, px per frame, drawn in [0, max_pan]
  num_squares: tuple[int, int] = (1, 2)  # inclusive range of the number of distractors


DIFFICULTIES = {
    'easy': Difficulty(move_radius=(12.0, 22.0), scale_radius=((6.0, 9.0), (18.0, 24.0)),
                       travel=(0.4, 0.7), squares_move=False, texture=0.3),
    'hard': Difficulty(move_radius=(5.0, 10.0), scale_radius=((4.0, 5.5), (8.5, 11.0)),
                       travel=(0.3, 0.55), squares_move=True, texture=1.0),
    'panning': Difficulty(move_radius=(12.0, 22.0), scale_radius=((6.0, 9.0), (18.0, 24.0)),
                          travel=(0.4, 0.7), squares_move=True, texture=0.3, max_pan=1.0,
                          num_squares=(2, 4)),
}


@dataclasses.dataclass(frozen=True)
class Scene:
  """Every random draw of one clip; `render` turns it into frames.

  The disc's per-frame centre and radius are the ground truth of where the label lives
  (e.g. to check which tokens a selector keeps).
  """
  label: int
  canvas: np.ndarray  # float32 [H + 2m, W + 2m, 3], the textured background
  offsets: np.ndarray  # int [T, 2], (y, x) of each frame's window into the canvas
  size: tuple[int, int]  # (H, W)
  squares: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # (centre, half, colour)
  disc_center: np.ndarray  # float [T, 2], (y, x)
  disc_radius: np.ndarray  # float [T]
  disc_color: np.ndarray  # float32 [3]
  gain: np.ndarray  # float32 [T], flicker

  @property
  def num_frames(self) -> int:
    return len(self.offsets)


def make_clip(seed: int, label: int | None = None, difficulty: str | Difficulty = 'easy'
              ) -> tuple[np.ndarray, int]:
  """One clip, fully determined by (seed, label, difficulty).

  Args:
    seed: any non-negative int.
    label: the class, or None to draw it from the seed. make_clip(s) equals
      make_clip(s, make_clip(s)[1]): the label is always drawn first, then replaced.
    difficulty: a key of DIFFICULTIES, or a Difficulty (e.g. a variant of one made with
      dataclasses.replace, to study what a factor does).

  Returns:
    frames: uint8 `[T, H, W, 3]`, T in [32, 64], H and W even in [112, 192].
    label: int in [0, NUM_CLASSES).
  """
  scene = make_scene(seed, label, difficulty)
  return render(scene), scene.label


def make_scene(seed: int, label: int | None = None, difficulty: str | Difficulty = 'easy'
               ) -> Scene:
  """The random draws of `make_clip(seed, label, difficulty)`."""
  if isinstance(difficulty, Difficulty):
    level = difficulty
  elif difficulty in DIFFICULTIES:
    level = DIFFICULTIES[difficulty]
  else:
    raise ValueError(f'difficulty {difficulty!r} is not one of {sorted(DIFFICULTIES)}')
  rng = np.random.default_rng(seed)
  drawn = int(rng.integers(NUM_CLASSES))
  label = drawn if label is None else int(label)
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'label must be in [0, {NUM_CLASSES}), got {label}')
  t = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
  h, w = (2 * int(rng.integers(SIDE[0] // 2, SIDE[1] // 2 + 1)) for _ in range(2))
  canvas, offsets, bg_luma = _panning_background(rng, t, h, w, level.texture, level.max_pan)
  squares = tuple((*_distractor_path(rng, t, h, w, level.squares_move),
                   _object_color(rng, bg_luma)) for _ in range(int(rng.integers(level.num_squares[0], level.num_squares[1] + 1))))
  center, radius = _disc_path(rng, label, t, h, w, level)
  return Scene(
      label=label, canvas=canvas, offsets=offsets, size=(h, w), squares=squares,
      disc_center=center, disc_radius=radius, disc_color=_object_color(rng, bg_luma),
      gain=1.0 + rng.uniform(-FLICKER, FLICKER, size=t).astype(np.float32))


def render(scene: Scene) -> np.ndarray:
  """The frames of a scene: uint8 `[T, H, W, 3]`; squares first, the disc on top."""
  h, w = scene.size
  frames = np.empty((scene.num_frames, h, w, 3), np.float32)
  for i, (oy, ox) in enumerate(scene.offsets):
    frame = frames[i]
    frame[...] = scene.canvas[oy:oy + h, ox:ox + w]
    for center, half, color in scene.squares:
      _draw(frame, center[i], half[i], color, disc=False)
    _draw(frame, scene.disc_center[i], scene.disc_radius[i], scene.disc_color, disc=True)
  frames *= scene.gain[:, None, None, None]
  np.clip(frames, 0.0, 255.0, out=frames)
  return frames.astype(np.uint8)


def subsample(scene: Scene, num_frames: int) -> Scene:
  """The scene at `num_frames` evenly spaced frames of its clip, first and last kept:
  the disc makes the same whole motion in fewer frames.
  `render(subsample(scene, n))` equals `render(scene)[frame_indices(scene.num_frames, n)]`."""
  i = frame_indices(scene.num_frames, num_frames)
  return dataclasses.replace(
      scene, offsets=scene.offsets[i], disc_center=scene.disc_center[i],
      disc_radius=scene.disc_radius[i], gain=scene.gain[i],
      squares=tuple((center[i], half[i], color) for center, half, color in scene.squares))


def frame_indices(length: int, num_frames: int) -> np.ndarray:
  """int `[num_frames]`: evenly spaced indices into `length` frames, both ends kept."""
  if not 1 <= num_frames <= length:
    raise ValueError(f'num_frames must be in [1, {length}], got {num_frames}')
  return np.linspace(0, length - 1, num_frames).round().astype(int)


def _disc_path(rng: np.random.Generator, label: int, t: int, h: int, w: int,
               level: Difficulty) -> tuple[np.ndarray, np.ndarray]:
  """The informative disc's centre (y, x) float `[T, 2]` and radius float `[T]`.

  Each class pair shares one draw of endpoints; the negative member (left, up, shrink)
  runs it backwards, which makes time reversal swap the pair exactly.
  """
  backwards = label in (0, 2, 5)
  if label < 4:
    r = rng.uniform(*level.move_radius)
    radius = np.full(t, r)
    axis = 0 if label >= 2 else 1  # vertical classes move along y
    side, other = (h, w) if axis == 0 else (w, h)
    travel = min(rng.uniform(*level.travel) * side, side - 2 * r - 5)  # stays in frame
    start = rng.uniform(r + 2, side - r - 2 - travel)
    along = np.linspace(start, start + travel, t)
    drift = rng.uniform(-0.1, 0.1) * travel  # small perpendicular drift, symmetric
    across0 = rng.uniform(r + 2 + abs(drift), other - r - 2 - abs(drift))
    across = np.linspace(across0 - drift / 2, across0 + drift / 2, t)
    center = np.stack([along, across] if axis == 0 else [across, along], axis=-1)
  else:
    small, large = rng.uniform(*level.scale_radius[0]), rng.uniform(*level.scale_radius[1])
    radius = np.linspace(small, large, t)
    shift = rng.uniform(-0.1, 0.1, size=2) * min(h, w)  # small drift, any direction
    margin = large + 2 + np.abs(shift) / 2
    middle = rng.uniform(margin, np.array([h, w]) - margin)
    center = middle + np.linspace(-0.5, 0.5, t)[:, None] * shift  # [T, 2]
  center = center + rng.normal(0.0, 0.3, size=(t, 2))  # iid jitter
  if backwards:
    center, radius = center[::-1], radius[::-1]
  return center, radius


def _distractor_path(rng: np.random.Generator, t: int, h: int, w: int, moves: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
  """A square's centre (y, x) float `[T, 2]` and half side float `[T]`.

  A straight path between two uniform points plus a Brownian bridge (pinned at both
  ends), and a half side between two uniform sizes: all symmetric under time reversal.
  A square that does not move stays at the path's first point with its first size
  (the same draws, so the rest of the scene is the same).
  """
  half = np.linspace(*rng.uniform(4.0, 9.0, size=2), t)
  size = np.array([h, w], np.float64)
  ends = rng.uniform(12.0, size - 12.0, size=(2, 2))  # [2, (y, x)]
  steps = np.cumsum(rng.normal(0.0, 0.8, size=(t, 2)), axis=0)  # random walk [T, 2]
  bridge = steps - steps[0] - np.linspace(0.0, 1.0, t)[:, None] * (steps[-1] - steps[0])
  center = np.clip(np.linspace(ends[0], ends[1], t) + bridge, 0.0, size - 1.0)
  if not moves:
    center, half = np.repeat(center[:1], t, axis=0), np.full(t, half[0])
  return center, half


def _panning_background(rng: np.random.Generator, t: int, h: int, w: int, texture: float,
                        max_pan: float) -> tuple[np.ndarray, np.ndarray, float]:
  """A textured canvas, the frame windows of a straight pan, the mean luma."""
  margin = int(np.ceil(max_pan * t / 2)) + 1
  ch, cw = h + 2 * margin, w + 2 * margin
  tint = rng.uniform(60.0, 190.0, size=3).astype(np.float32)
  canvas = tint + texture * (35.0 * _smooth_noise(rng, ch, cw, cell=32, channels=3)
                            + 25.0 * _smooth_noise(rng, ch, cw, cell=6, channels=1))
  angle = rng.uniform(0.0, 2 * np.pi)
  velocity = rng.uniform(0.0, max_pan) * np.array([np.sin(angle), np.cos(angle)])
  offsets = np.rint(margin + np.outer(np.arange(t) - (t - 1) / 2, velocity)).astype(int)
  return canvas, offsets, float(tint @ _LUMA)  # offsets [T, 2]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int,
                  channels: int) -> np.ndarray:
  """Gaussian noise on a grid of `cell` px, bilinearly upsampled: float32 [h, w, C]."""
  coarse = rng.standard_normal((h // cell + 2, w // cell + 2, channels))
  coarse = coarse.astype(np.float32)  # [h / cell + 2, w / cell + 2, C]
  y = np.arange(h) / cell
  x = np.arange(w) / cell
  y0, x0 = y.astype(int), x.astype(int)
  wy, wx = (y - y0)[:, None, None], (x - x0)[None, :, None]
  rows = coarse[y0] * (1 - wy) + coarse[y0 + 1] * wy  # [h, gw, C]
  return (rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx).astype(np.float32)


def _object_color(rng: np.random.Generator, bg_luma: float) -> np.ndarray:
  """A uniform random RGB colour, redrawn until it stands out from the background."""
  while True:
    color = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
    if abs(float(color @ _LUMA) - bg_luma) >= MIN_CONTRAST:
      return color


def _draw(frame: np.ndarray, center: np.ndarray, size: float, color: np.ndarray,
          disc: bool) -> None:
  """Blends an anti-aliased disc (radius) or square (half side) into `frame` in place."""
  h, w, _ = frame.shape
  cy, cx = center
  y0, y1 = max(int(cy - size - 1), 0), min(int(cy + size + 2), h)
  x0, x1 = max(int(cx - size - 1), 0), min(int(cx + size + 2), w)
  if y0 >= y1 or x0 >= x1:
    return
  dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy  # [h', 1]
  dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx  # [1, w']
  if disc:
    alpha = np.clip(size + 0.5 - np.sqrt(dy * dy + dx * dx), 0.0, 1.0)  # [h', w']
  else:
    alpha = (np.clip(size + 0.5 - np.abs(dy), 0.0, 1.0)
             * np.clip(size + 0.5 - np.abs(dx), 0.0, 1.0))  # [h', w']
  alpha = alpha[..., None]
  patch = frame[y0:y1, x0:x1]
  patch += alpha * (color - patch)


def contact_sheet(seeds_and_labels: Sequence[tuple[int, int]], num_frames: int = 8,
                  gap: int = 4, difficulty: str | Difficulty = 'easy') -> np.ndarray:
  """One row per clip of `num_frames` evenly spaced frames, on white: uint8 [H, W, 3]."""
  cell = SIDE[1] + gap
  sheet = np.full((len(seeds_and_labels) * cell, num_frames * cell, 3), 255, np.uint8)
  for row, (seed, label) in enumerate(seeds_and_labels):
    frames, _ = make_clip(seed, label, difficulty)
    t, h, w, _ = frames.shape
    for col, i in enumerate(np.linspace(0, t - 1, num_frames).round().astype(int)):
      sheet[row * cell:row * cell + h, col * cell:col * cell + w] = frames[i]
  return sheet


if __name__ == '__main__':
  # python -m flux_jax.data.synthetic docs/synthetic_motion_strip.png [DIFFICULTY]
  #   (docs/synthetic_motion_panning_strip.png: DIFFICULTY panning)
  # Rows, top to bottom: one clip of each class in CLASS_NAMES order (seeds 0..5).
  sheet = contact_sheet([(seed, seed) for seed in range(NUM_CLASSES)],
                        difficulty=sys.argv[2] if len(sys.argv) > 2 else 'easy')
  with open(sys.argv[1], 'wb') as f:
    f.write(decode.encode_png(sheet))
