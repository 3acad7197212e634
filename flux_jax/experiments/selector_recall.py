r"""How much of the label's evidence the token selector keeps, before any training.

  python -m flux_jax.experiments.selector_recall [--difficulty easy] [--texture 0.3,1,3] \
      [--max_pan 0.4,4] [--squares_move] [--clips 48] [--budgets 256,128,64] [--grid 8,112]

A task on which budgets matter must not let the selector keep the class evidence for
free. In synthetic_motion the evidence is the disc: for each scene variant (a difficulty
with its background texture amplitude, pan speed and distractor motion replaced) this
prints the share of a grid's tokens (`--grid`, 8 x 112^2 = 512 tokens by default; frames
spread over the clip, each resized to a square) that the disc covers, and per budget K:
  * recall: the share of those tokens the group-dynamic selector keeps (uniform random
    selection keeps K / (the grid's tokens) of them);
  * frames: the share of frames in which it keeps at least one of them.
The selector scores the raw pixel patches here; the model scores their patch embedding,
a learned linear map of the same pixels. A disc token is one where the disc, drawn alone,
covers more than 5% of the patch's pixels.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from flux_jax.data import synthetic
from flux_jax.data.transforms import resize_bilinear
from flux_jax.experiments.common import PATCH, parse_grid
from flux_jax.tokens.select import select_tokens
from flux_jax.tokens.token_batch import patchify

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_enum('difficulty', 'easy', sorted(synthetic.DIFFICULTIES),
                    'The difficulty the variants start from.')
  flags.DEFINE_list('texture', None, 'Texture amplitudes (default: the '
                    "difficulty's).")
  flags.DEFINE_list('max_pan', None, 'Pan speeds, px per frame (default: the '
                    "difficulty's).")
  flags.DEFINE_bool('squares_move', None, 'Distractors wander (default: '
                    "the difficulty's).")
  flags.DEFINE_integer('clips', 48, 'Scenes per variant (labels balanced).')
  flags.DEFINE_list('budgets', ['256', '128', '64'], 'Token budgets K.')
  flags.DEFINE_list('grid', [str(FRAMES), str(RESOLUTION)], 'frames,resolution of '
                    'the grid the selector reduces.')

FRAMES, RESOLUTION = 8, 112  # the default grid
COVERED = 0.05  # a patch is a disc token when the disc covers more than this share


def disc_tokens(scene: synthetic.Scene, frame_index: np.ndarray,
                resolution: int = RESOLUTION) -> np.ndarray:
  """bool `[T * g * g]`, g = resolution / PATCH: the tokens the disc covers, raster order."""
  h, w = scene.size
  alpha = np.zeros((len(frame_index), h, w, 3), np.float32)
  for j, i in enumerate(frame_index):  # the disc alone, drawn as render() draws it
    # pylint: disable-next=protected-access
    synthetic._draw(alpha[j], scene.disc_center[i], scene.disc_radius[i],
                    np.full(3, 255.0, np.float32), disc=True)
  alpha = resize_bilinear(alpha, resolution, resolution)[..., 0] / 255.0  # [T, R, R]
  g = resolution // PATCH
  share = alpha.reshape(len(frame_index), g, PATCH, g, PATCH).mean(axis=(2, 4))
  return (share > COVERED).reshape(-1)


def recall(level: synthetic.Difficulty, budgets: Sequence[int], clips: int,
           seed: int = 1000, grid: tuple[int, int] = (FRAMES, RESOLUTION)) -> dict:
  """{'disc_share': float, K: (recall, frames with a disc token)} over `clips` scenes
  on a (frames, resolution) grid."""
  num_frames, resolution = grid
  per_clip = {k: [] for k in budgets}
  shares = []
  for c in range(clips):
    scene = synthetic.make_scene(seed + c, c % synthetic.NUM_CLASSES, level)
    index = np.linspace(0, scene.num_frames - 1, num_frames).round().astype(int)
    frames = resize_bilinear(synthetic.render(scene)[index], resolution, resolution)
    tokens = patchify(frames)
    disc = disc_tokens(scene, index, resolution)
    shares.append(disc.mean())
    x = jnp.asarray(tokens.patches, jnp.float32) / 255.0
    for k in budgets:
      picked, keep = select_tokens(x, tokens, k)
      kept = np.zeros(disc.shape, bool)
      kept[np.asarray(picked[0])[np.asarray(keep[0])]] = True
      hit = kept & disc
      per_clip[k].append((hit.sum() / max(disc.sum(), 1),
                          hit.reshape(num_frames, -1).any(axis=1).mean()))
  out = {'disc_share': float(np.mean(shares))}
  out.update({k: tuple(float(v) for v in np.mean(per_clip[k], axis=0)) for k in budgets})
  return out


def main(argv):
  del argv
  base = synthetic.DIFFICULTIES[FLAGS.difficulty]
  budgets = [int(k) for k in FLAGS.budgets]
  textures = [float(v) for v in FLAGS.texture] if FLAGS.texture else [base.texture]
  pans = [float(v) for v in FLAGS.max_pan] if FLAGS.max_pan else [base.max_pan]
  moves = base.squares_move if FLAGS.squares_move is None else FLAGS.squares_move
  grid = parse_grid(FLAGS.grid, 'grid')
  n = grid[0] * (grid[1] // PATCH) ** 2
  print(f'{FLAGS.difficulty}, {FLAGS.clips} scenes per row, {grid[0]} x {grid[1]}^2 '
        f'({n} tokens); recall / frames with a disc token (random selection: K / {n}):')
  print('| texture | max pan | squares move | disc tokens | '
        + ' | '.join(f'K={k}' for k in budgets) + ' |')
  print('|---' * (4 + len(budgets)) + '|')
  for texture, pan in itertools.product(textures, pans):
    level = dataclasses.replace(base, texture=texture, max_pan=pan, squares_move=moves)
    r = recall(level, budgets, FLAGS.clips, grid=grid)
    cells = [f'{100 * r[k][0]:.0f}% / {100 * r[k][1]:.0f}%' for k in budgets]
    print(f"| {texture:g} | {pan:g} | {'yes' if moves else 'no'} | "
          f"{100 * r['disc_share']:.1f}% | " + ' | '.join(cells) + ' |', flush=True)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
