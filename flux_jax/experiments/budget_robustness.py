r"""Budget robustness on synthetic_motion: the small-scale analogue of Table 5 (SPEC E.3).

  python -m flux_jax.experiments.budget_robustness --workdir workdir/budget [--steps N] \
      [--size panning] [--frames 4,8,12,16] [--resolutions 56,84,112]

1. the same model (configs/synthetic_demo.py, the demo's) trained three ways for the same
   steps, each in WORKDIR/<run>:
   * noflux: no Flux, every step the fixed 8 x 56^2 grid (128 raw tokens) reduced by the
     selector to the full budget (64), one head (Flux-Single's step on one grid);
   * single: Flux-Single, flexible grids, one head at the full budget;
   * multi: Flux-Multi, flexible grids, heads for the full, 1/2 and 1/4 budgets;
2. each evaluated at the full, 1/2 and 1/4 budgets: on the fixed 8 x 56^2 grid with the
   selector reducing it (Table 5's test, "w/o TO"), and with Token Optimization over
   frames x resolutions, the best grid picked on train[90%:] (held out of training) and
   reported on validation (WORKDIR/<run>/to holds its to.csv/json/png);
3. the table (top-1 ± binomial standard error on the validation videos, and the
   full -> 1/4 drop), one line per gap saying whether it is within two standard errors
   (noise), printed and saved as WORKDIR/budget_robustness.{md,csv,png}.

`--size` takes any synthetic_motion config, e.g. 'n2004_396_s7_panning': the same task
drawn from another seed (flux_jax.data.builders.synthetic_motion.parse).

The lesson to look for (SPEC E.3): without Flux, accuracy falls as the budget shrinks;
Flux-Multi keeps most of it; TO adds accuracy at an equal budget; `checks` states it as
pass/fail lines (the w/o-Flux drop >= 10 points, Flux-Multi keeping >= 2/3 of it, TO not
below the fixed grid), printed under the table. Each training stage is skipped when its
WORKDIR/<run>/params exists, so a rerun only evaluates.
"""

from __future__ import annotations

import csv
import math
import os
import time

from absl import app
from absl import flags
from absl import logging

from configs import synthetic_demo
from flux_jax.data.synthetic import NUM_CLASSES
from flux_jax.eval import budgets as budget_eval
from flux_jax.eval.budgets import standard_error
from flux_jax.eval import token_optimization
from flux_jax.experiments.common import train_once

_WORKDIR = flags.DEFINE_string('workdir', 'workdir/budget', 'Dataset, runs and results.')
_STEPS = flags.DEFINE_integer('steps', 4000, "Training steps of each run (the demo's "
                              "1800 leave the single-head runs near chance).")
_SIZE = flags.DEFINE_string('size', 'panning', "synthetic_motion config: 'panning', 'tiny', "
                            "'demo', a variant such as 'n2004_396_s7_panning', ...")
_FRAMES = flags.DEFINE_list('frames', ['4', '8', '12', '16'], 'Token Optimization frame '
                            'counts (8 is always added: the fixed grid).')
_RESOLUTIONS = flags.DEFINE_list('resolutions', ['56', '84', '112'], 'Token Optimization '
                                 'resolutions (56 is always added: the fixed grid).')

FIXED = (8, 56)  # (frames, resolution): training without Flux, and Table 5's test grid
RUNS = {'noflux': 'w/o Flux', 'single': 'Flux-Single', 'multi': 'Flux-Multi'}
FIELDS = ('run', 'budget', 'fixed_top1', 'fixed_se', 'fixed_gflops', 'to_top1', 'to_se',
          'to_frames', 'to_resolution', 'to_raw_tokens', 'to_gflops', 'videos')


def run_config(run: str, *, steps: int | None, size: str, data_dir: str):
  """configs/synthetic_demo.py trained as `run` (a key of RUNS); steps None: the config's."""
  config = synthetic_demo.get_config(('' if steps is None else f'steps={steps},')
                                     + f'size={size}')
  config.data.data_dir = data_dir
  config.eval.every_steps = -1  # evaluated below, at every budget
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
  out = []
  for s in token_optimization.summarize(rows, FIXED):
    fixed, best = s['fixed'], s['best']
    out.append(dict(
        run=run, budget=s['budget'], fixed_top1=fixed['top1'],
        fixed_se=standard_error(fixed['top1'], fixed['videos']),
        fixed_gflops=fixed['gflops'], to_top1=best['top1'],
        to_se=standard_error(best['top1'], best['videos']), to_frames=best['frames'],
        to_resolution=best['resolution'], to_raw_tokens=best['raw_tokens'],
        to_gflops=best['gflops'], videos=fixed['videos']))
  return out


def _pct(top1: float, se: float) -> str:
  return f'{100 * top1:.1f} ± {100 * se:.1f}'


def markdown_table(results: list[dict]) -> str:
  """Top-1 ± standard error per run and budget, fixed grid then TO, and the drop from
  the full budget to the smallest on the fixed grid (± its standard error)."""
  budgets = list(dict.fromkeys(r['budget'] for r in results))
  head = ([f'{b} tokens' for b in budgets] + [f'{b} + TO' for b in budgets]
          + [f'drop {budgets[0]} -> {budgets[-1]}'])
  lines = ['| training | ' + ' | '.join(head) + ' |', '|---' * (1 + len(head)) + '|']
  for run, name in RUNS.items():
    by_budget = {r['budget']: r for r in results if r['run'] == run}
    if not by_budget:
      continue
    cells = [_pct(by_budget[b]['fixed_top1'], by_budget[b]['fixed_se']) for b in budgets]
    cells += [f"{_pct(by_budget[b]['to_top1'], by_budget[b]['to_se'])} "
              f"({by_budget[b]['to_frames']} x {by_budget[b]['to_resolution']}^2)"
              for b in budgets]
    cells.append(_pct(*drop(by_budget[budgets[0]], by_budget[budgets[-1]])))
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def drop(full: dict, small: dict) -> tuple[float, float]:
  """Fixed-grid top-1 lost from `full`'s budget to `small`'s and its standard error (the
  two measured on the same videos; taken as independent, which overstates it)."""
  return (full['fixed_top1'] - small['fixed_top1'],
          math.hypot(full['fixed_se'], small['fixed_se']))


def to_gain(r: dict) -> tuple[float, float]:
  """TO's top-1 minus the fixed grid's at one budget, and its standard error."""
  return r['to_top1'] - r['fixed_top1'], math.hypot(r['to_se'], r['fixed_se'])


def verdicts(results: list[dict]) -> list[str]:
  """What the table shows against SPEC E.3's lesson, each gap called noise when it is
  within two standard errors."""
  def gap(value, se):
    return f"{100 * value:+.1f} ± {100 * se:.1f} points{' (noise)' if abs(value) < 2 * se else ''}"
  budgets = list(dict.fromkeys(r['budget'] for r in results))
  row = {(r['run'], r['budget']): r for r in results}
  runs = [run for run in RUNS if (run, budgets[0]) in row]
  lines = []
  for run in runs:
    lost, se = drop(row[run, budgets[0]], row[run, budgets[-1]])
    lines.append(f'{RUNS[run]}: fixed grid {budgets[0]} -> {budgets[-1]} tokens: '
                 f'{gap(-lost, se)}')
  if 'noflux' in runs and 'multi' in runs:
    base, _ = drop(row['noflux', budgets[0]], row['noflux', budgets[-1]])
    multi, _ = drop(row['multi', budgets[0]], row['multi', budgets[-1]])
    if base > 0 and multi <= base:
      lines.append(f'Flux-Multi keeps {100 * (1 - multi / base):.0f}% of the w/o-Flux '
                   f'drop (SPEC E.3: 1 - 4.8 / 17.2 = 72%)')
    elif base > 0:
      lines.append(f'Flux-Multi loses more than w/o Flux ({100 * multi:.1f} against '
                   f'{100 * base:.1f} points; SPEC E.3: 4.8 against 17.2)')
  for run in runs:
    for b in budgets:
      lines.append(f"{RUNS[run]} at {b} tokens, TO - fixed grid: {gap(*to_gain(row[run, b]))}")
  return lines


def checks(results: list[dict], *, min_drop: float = 0.10, min_kept: float = 2 / 3
           ) -> list[tuple[str, bool]]:
  """Table 5's lesson as pass/fail checks: without Flux the fixed grid loses at least
  `min_drop` from the full budget to the smallest; Flux-Multi keeps at least `min_kept`
  of that loss (1 - its own drop / w/o Flux's, SPEC E.3: 72%); each run is trained (above
  chance), and its TO at an equal budget is not below the fixed grid (by more than two
  standard errors, and at all)."""
  budgets = list(dict.fromkeys(r['budget'] for r in results))
  row = {(r['run'], r['budget']): r for r in results}
  out = []
  if ('noflux', budgets[0]) in row:
    base, se = drop(row['noflux', budgets[0]], row['noflux', budgets[-1]])
    out.append((f'w/o Flux loses >= {100 * min_drop:.0f} points from {budgets[0]} to '
                f'{budgets[-1]} tokens: {100 * base:.1f} ± {100 * se:.1f}', base >= min_drop))
    if ('multi', budgets[0]) in row:
      multi, _ = drop(row['multi', budgets[0]], row['multi', budgets[-1]])
      kept = 1 - multi / base if base > 0 else float('nan')
      out.append((f'Flux-Multi keeps >= {100 * min_kept:.0f}% of that loss: '
                   f'{100 * kept:.0f}% (its drop {100 * multi:.1f} points)',
                   base > 0 and kept >= min_kept))
  for run in RUNS:
    gaps = [(b, *to_gain(row[run, b])) for b in budgets if (run, b) in row]
    if gaps:
      full_row = row[run, budgets[0]]
      out.append((f'{RUNS[run]}: trained (at {budgets[0]} tokens above chance by more than '
                  f'2 SE: {100 * full_row["fixed_top1"]:.1f}%)',
                  full_row['fixed_top1'] - 1 / NUM_CLASSES > 2 * full_row['fixed_se']))
      worst = min(gaps, key=lambda g: g[1])
      out.append((f'{RUNS[run]}: TO not below the fixed grid by more than 2 SE at any '
                  f'budget (worst: {worst[0]} tokens, {100 * worst[1]:+.1f} ± '
                  f'{100 * worst[2]:.1f})', all(g >= -2 * se for _, g, se in gaps)))
      out.append((f'{RUNS[run]}: TO at or above the fixed grid at every budget',
                  all(g >= 0 for _, g, _ in gaps)))
  return out


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
  notes = '\n'.join(f'- {line}' for line in verdicts(results))
  notes += '\n\nTable 5\'s lesson (SPEC E.3), checked:\n' + '\n'.join(
      f"- [{'x' if ok else ' '}] {line}" for line, ok in checks(results))
  steps = config.train.steps
  text = (f'synthetic_motion/{_SIZE.value} validation top-1 (%) ± standard error '
          f'({results[0]["videos"]} videos), {steps} steps each (chance '
          f'{100 / NUM_CLASSES:.1f}%); "N tokens": the fixed {FIXED[0]} x {FIXED[1]}^2 '
          f'grid reduced to N by the selector; "+ TO": the best grid of frames {frames} x '
          f'resolutions {resolutions}, picked on '
          f'{config.eval.select_split or "validation itself"}:\n\n{table}\n\n{notes}')
  print('\n' + text)
  with open(os.path.join(root, 'budget_robustness.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(root, 'budget_robustness.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(results)
  save_plot(results, os.path.join(root, 'budget_robustness.png'))
  print(f'saved {root}/budget_robustness.md, .csv and .png; wall time '
        f'{time.perf_counter() - t0:.0f} s')


if __name__ == '__main__':
  app.run(main)
