"""The demo: Flux-Multi training on synthetic_motion on CPU, then Token Optimization.

  python -m flux_jax.cli.demo [--workdir=workdir/demo] [--steps=N]     (or: make demo)
      [--frames=4,8,12,16 --resolutions=56,84,112] [--size=panning]
      [--config=configs/synthetic_demo.py] [--config.optim.lr=1e-3 ...]

1. builds the synthetic_motion 'panning' dataset locally (TFDS array_record, ~2 minutes):
   a disc's motion among wandering squares over a panning, textured background, where
   the selector cannot keep the disc alone (flux_jax.data.synthetic);
2. trains a small FluxViT with Flux-Multi (--config, default the shipped
   configs/synthetic_demo.py: heads for 64, 32
   and 16 tokens, grids of 4-16 frames at 56-112 px); the run exports WORKDIR/train/params;
3. Token Optimization of those params (flux_jax.eval.token_optimization): at the full,
   1/2 and 1/4 budgets, every grid of --frames x --resolutions with enough raw tokens,
   beside the plain grid (whole 56^2 frames up to the budget) and the fixed 8 x 56^2
   evaluation grid reduced by the selector. The best grid is picked on train[90%:] (10%
   of the training split held out of training) and reported on validation: an unbiased
   TO figure. The fixed grid stays the pick unless another beats it on train[90%:] by
   more than one standard error (the one-standard-error rule), so a win of the held-out
   split's noise does not move the deployed grid. Prints the table, saves WORKDIR/to/to.{csv,json,png} (the plot titled by
   the run, the fixed grid drawn as the no-TO reference) and WORKDIR/summary.md.
   Chance is 1/6. Nothing is evaluated twice: the training run skips its own
   evaluation, TO's covers it.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from flux_jax import config as config_lib
from flux_jax.data.sources import open_dataset
from flux_jax.data.synthetic import NUM_CLASSES
from flux_jax.eval import token_optimization
from flux_jax.loop import PARAMS_DIR, train_and_evaluate

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  config_flags.DEFINE_config_file('config', config_lib.recipe('synthetic_demo.py'),
                                  'The training config; --steps and --size set its steps '
                                  'and dataset.', lock_config=True)
  flags.DEFINE_string('workdir', 'workdir/demo', 'Dataset, checkpoints, results.')
  flags.DEFINE_integer('steps', None, "Training steps (default: the config's).")
  flags.DEFINE_string('size', None, "synthetic_motion config (default: the config's, "
                      "'panning'; 'tiny': a smoke run).")
  flags.DEFINE_list('frames', ['4', '8', '12', '16'], 'Token Optimization frame counts.')
  flags.DEFINE_list('resolutions', ['56', '84', '112'],
                    'Token Optimization resolutions (multiples of 14).')


def _progress(row: dict) -> None:
  """A line per (budget, grid) evaluated, on the validation then the held-out split:
  a grid takes seconds, the whole search minutes."""
  print(f"TO: evaluated {row['frames']} x {row['resolution']}^2 ({row['raw_tokens']} raw "
        f"tokens) at {row['budget']} tokens", flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(FLAGS.workdir)
  config = FLAGS.config
  if FLAGS.steps is not None:
    config.train.steps = FLAGS.steps
  if FLAGS.size is not None:
    config.data.config = FLAGS.size
  config.data.data_dir = os.path.join(workdir, 'tfds')
  config.eval.every_steps = -1  # Token Optimization below evaluates the eval grid too
  t0 = time.perf_counter()
  open_dataset(config.data)  # builds the dataset on first use
  build_s = time.perf_counter() - t0
  print(f'synthetic_motion {config.data.config} dataset ready in {build_s:.0f} s ({config.data.data_dir})')

  t0 = time.perf_counter()
  state, _ = train_and_evaluate(config, os.path.join(workdir, 'train'),
                                progress=lambda line: print(line, flush=True))
  train_s = time.perf_counter() - t0
  print(f'trained {int(state.step)} Flux-Multi steps in {train_s:.0f} s')

  t0 = time.perf_counter()
  params = os.path.join(workdir, 'train', PARAMS_DIR)
  fixed = (config.eval.frames, config.eval.resolution)  # the training run's eval grid
  rows, paths = token_optimization.evaluate_checkpoint(
      params, os.path.join(workdir, 'to'),
      frames=sorted({int(t) for t in FLAGS.frames} | {fixed[0]}),
      resolutions=sorted({int(r) for r in FLAGS.resolutions} | {fixed[1]}),
      batch_size=config.eval.batch_size, fixed=fixed, progress=_progress,
      title=f'Flux-Multi, {int(state.step)} steps on synthetic_motion/{config.data.config}')
  print(f'\nToken Optimization of {params} ({time.perf_counter() - t0:.0f} s); chance is '
        f'{100 / NUM_CLASSES:.1f}%:\n{token_optimization.markdown_table(rows)}')
  summary = token_optimization.summary_table(token_optimization.summarize(rows, fixed))
  picked_on = config.eval.select_split or 'validation itself'
  print(f'\nPer budget: validation top-1 (GFLOPs per view), raw -> kept tokens. The fixed '
        f'grid is {fixed[0]} x {fixed[1]}^2 reduced by the selector; the best grid was '
        f'picked on {picked_on}:\n{summary}')
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(summary + '\n')
  print(f"\nsaved {paths['csv']}, to.json, to.png and {workdir}/summary.md; "
        f'jax {jax.__version__} on {jax.devices()[0].platform}')


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
