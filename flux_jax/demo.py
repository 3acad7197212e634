"""The demo: Flux-Multi training on synthetic_motion on CPU, then accuracy per budget.

  python -m flux_jax.demo [--workdir=workdir/demo] [--steps=800]     (or: make demo)

1. builds the synthetic_motion 'demo' dataset locally (TFDS array_record, ~2 minutes);
2. trains a small FluxViT with Flux-Multi (configs/synthetic_demo.py), 800 steps of 32
   clips: about half an hour on 2 CPU cores;
3. evaluates the validation set at the full, 1/2 and 1/4 budgets on an 8 x 112^2 grid
   (512 raw tokens, the selector keeps the budget), prints the table and saves it with
   a plot in the workdir. Chance is 1/6.
"""

from __future__ import annotations

import csv
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax

from configs import synthetic_demo
from flux_jax import sharding
from flux_jax.data.sources import open_dataset
from flux_jax.data.synthetic import NUM_CLASSES
from flux_jax.eval import budgets
from flux_jax.model.fluxvit import make_model
from flux_jax.train.loop import train_and_evaluate

_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'Dataset, checkpoints, results.')
_STEPS = flags.DEFINE_integer('steps', 800, 'Training steps.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)
  config = synthetic_demo.get_config(f'steps={_STEPS.value}')
  config.data.data_dir = os.path.join(workdir, 'tfds')
  t0 = time.perf_counter()
  open_dataset(config.data)  # builds the dataset on first use
  build_s = time.perf_counter() - t0
  print(f'synthetic_motion demo dataset ready in {build_s:.0f} s ({config.data.data_dir})')

  t0 = time.perf_counter()
  state, _ = train_and_evaluate(config, os.path.join(workdir, 'train'))
  train_s = time.perf_counter() - t0
  print(f'trained {int(state.step)} Flux-Multi steps in {train_s:.0f} s')

  model = make_model(config.model)
  _, val, _ = open_dataset(config.data)
  mesh = sharding.make_mesh(dict(config.mesh))
  full = model.head_budgets[0]
  rows = budgets.accuracy_by_budget(
      model, state.params, val, budgets=(full, full // 2, full // 4), frames=8,
      resolution=112, batch_size=config.eval.batch_size,
      sharding=sharding.batch_sharding(mesh))
  chance = 1 / NUM_CLASSES
  table = budgets.markdown_table(rows)
  print(f'\nAccuracy against budget (chance {100 * chance:.1f}%):\n{table}')
  with open(os.path.join(workdir, 'budgets.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(workdir, 'budgets.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  budgets.save_plot([('FluxViT, Flux-Multi', [r['tokens'] for r in rows],
                      [r['top1'] for r in rows], 'o-')],
                    os.path.join(workdir, 'budgets.png'),
                    title='synthetic_motion validation, 8 x 112^2 input', chance=chance)
  print(f'saved {workdir}/budgets.md, budgets.csv and budgets.png; '
        f'jax {jax.__version__} on {jax.devices()[0].platform}')


if __name__ == '__main__':
  app.run(main)
