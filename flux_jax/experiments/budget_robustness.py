r"""Budget robustness on synthetic_motion: the small-scale analogue of Table 5 (SPEC E.3).

  python -m flux_jax.experiments.budget_robustness --workdir workdir/budget [--steps 400] \
      [--size demo] [--frames 4,8,12] [--resolutions 56,84,112]

1. the same model (configs/synthetic_demo.py) trained three ways, each in WORKDIR/<run>:
   * noflux: no Flux, every step the fixed 8 x 112^2 grid (512 raw tokens), one head
     trained at the full budget (Flux-Single's step);
   * single: Flux-Single, flexible grids, one head at the full budget;
   * multi: Flux-Multi, flexible grids, heads for the full, 1/2 and 1/4 budgets;
2. each evaluated at the full, 1/2 and 1/4 budgets: on the fixed 8 x 112^2 grid with the
   selector reducing it (Table 5's test, "w/o TO"), and with Token Optimization over
   frames x resolutions, the best grid picked on train[90%:] (held out of training) and
   reported on validation (WORKDIR/<run>/to holds its to.csv/json/png);
3. the table printed and saved as WORKDIR/budget_robustness.{md,csv,png}.

The lesson to look for (SPEC E.3): without Flux, accuracy falls as the budget shrinks;
Flux-Multi keeps most of it; TO adds accuracy at an equal budget. Each training stage is
skipped when its WORKDIR/<run>/params exists, so a rerun only evaluates.
"""

from __future__ import annotations

import csv
import os
import time

from absl import app
from absl import flags
from absl import logging

from configs import synthetic_demo
from flux_jax.data.synthetic import NUM_CLASSES
from flux_jax.eval import budgets as budget_eval
from flux_jax.eval import token_optimization
from flux_jax.experiments.common import train_once

_WORKDIR = flags.DEFINE_string('workdir', 'workdir/budget', 'Dataset, runs and results.')
_STEPS = flags.DEFINE_integer('steps', 400, 'Training steps of each run.')
_SIZE = flags.DEFINE_string('size', 'demo', "synthetic_motion config: 'tiny', 'demo', ...")
_FRAMES = flags.DEFINE_list('frames', ['4', '8', '12'], 'Token Optimization frame counts '
                            '(8 is always added: the fixed grid).')
_RESOLUTIONS = flags.DEFINE_list('resolutions', ['56', '84', '112'], 'Token Optimization '
                                 'resolutions (112 is always added: the fixed grid).')

FIXED = (8, 112)  # (frames, resolution): training without Flux, and Table 5's test grid
RUNS = {'noflux': 'w/o Flux', 'single': 'Flux-Single', 'multi': 'Flux-Multi'}
FIELDS = ('run', 'budget', 'fixed_top1', 'fixed_gflops', 'to_top1', 'to_frames',
          'to_resolution', 'to_raw_tokens', 'to_gflops')


def run_config(run: str, *, steps: int, size: str, data_dir: str):
  """configs/synthetic_demo.py trained as `run` (a key of RUNS)."""
  config = synthetic_demo.get_config(f'steps={steps},size={size}')
  config.data.data_dir = data_dir
  if run in ('noflux', 'single'):
    full = config.model.head_budgets[0]
    # One head, so every test budget is served by the head that was trained.
    config.model.head_budgets = (full,)
    config.train.update(mode='single', budgets=(full,), single_budget=full, single_head=0)
  if run == 'noflux':  # Python range arguments holding one value each
    config.flux.update(frames=(FIXED[0], FIXED[0] + 1, 1),
                       resolutions=(FIXED[1], FIXED[1] + 1, 1))
  return config


def summarize(run: str, rows: list[dict]) -> list[dict]:
  """Per budget: the fixed grid's row (w/o TO) against the best row (TO)."""
  return [dict(run=run, budget=s['budget'], fixed_top1=s['fixed']['top1'],
               fixed_gflops=s['fixed']['gflops'], to_top1=s['best']['top1'],
               to_frames=s['best']['frames'], to_resolution=s['best']['resolution'],
               to_raw_tokens=s['best']['raw_tokens'], to_gflops=s['best']['gflops'])
          for s in token_optimization.summarize(rows, FIXED)]


def markdown_table(results: list[dict]) -> str:
  budgets = list(dict.fromkeys(r['budget'] for r in results))
  head = [f'{b} tokens' for b in budgets] + [f'{b} + TO' for b in budgets]
  lines = ['| training | ' + ' | '.join(head) + ' |', '|---' * (1 + len(head)) + '|']
  for run, name in RUNS.items():
    by_budget = {r['budget']: r for r in results if r['run'] == run}
    cells = [f"{100 * by_budget[b]['fixed_top1']:.1f}%" for b in budgets]
    cells += [f"{100 * by_budget[b]['to_top1']:.1f}% ({by_budget[b]['to_frames']} x "
              f"{by_budget[b]['to_resolution']}^2)" for b in budgets]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def save_plot(results: list[dict], path: str) -> None:
  series = []
  for i, (run, name) in enumerate(RUNS.items()):
    rows = [r for r in results if r['run'] == run]
    tokens = [r['budget'] for r in rows]
    series += [(f'{name}, {FIXED[0]} x {FIXED[1]}^2', tokens, [r['fixed_top1'] for r in rows],
                f'C{i}o-'),
               (f'{name} + TO', tokens, [r['to_top1'] for r in rows], f'C{i}s--')]
  budget_eval.save_plot(series, path,
                        title='synthetic_motion: budget robustness (Table 5 analogue)',
                        chance=1 / NUM_CLASSES)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  root = os.path.abspath(_WORKDIR.value)
  data_dir = os.path.join(root, 'tfds')
  frames = sorted({int(f) for f in _FRAMES.value} | {FIXED[0]})
  resolutions = sorted({int(r) for r in _RESOLUTIONS.value} | {FIXED[1]})
  full = synthetic_demo.get_config().model.head_budgets[0]
  results = []
  for run, name in RUNS.items():
    config = run_config(run, steps=_STEPS.value, size=_SIZE.value, data_dir=data_dir)
    params = train_once(config, os.path.join(root, run))
    rows, _ = token_optimization.evaluate_checkpoint(
        params, os.path.join(root, run, 'to'), frames=frames, resolutions=resolutions,
        budgets=(full, full // 2, full // 4), config=config,
        batch_size=config.eval.batch_size)
    results += summarize(run, rows)
    print(f'{name}: trained and evaluated ({time.perf_counter() - t0:.0f} s so far)')

  table = markdown_table(results)
  print(f'\nsynthetic_motion/{_SIZE.value} validation top-1, {_STEPS.value} steps each '
        f'(chance {100 / NUM_CLASSES:.1f}%); "N tokens": the fixed {FIXED[0]} x '
        f'{FIXED[1]}^2 grid reduced to N by the selector; "+ TO": the best grid of '
        f'frames {frames} x resolutions {resolutions}, picked on '
        f'{config.eval.select_split or "validation itself"}:\n{table}')
  with open(os.path.join(root, 'budget_robustness.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(root, 'budget_robustness.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(results)
  save_plot(results, os.path.join(root, 'budget_robustness.png'))
  print(f'saved {root}/budget_robustness.md, .csv and .png; wall time '
        f'{time.perf_counter() - t0:.0f} s')


if __name__ == '__main__':
  app.run(main)
