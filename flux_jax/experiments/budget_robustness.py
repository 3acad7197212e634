r"""Budget robustness on synthetic_motion: the small-scale analogue of Table 5 (SPEC E.3).

  python -m flux_jax.experiments.budget_robustness --workdir workdir/budget [--steps N] \
      [--pretrain multi|noflux] [--pretrain_steps N] [--size panning] [--fixed 4,56] \
      [--head_budgets 64,32,16] [--frames 4,8,12,16] [--resolutions 56,84,112] \
      [--flux_tokens 32,128] [--flux_frames 2,16] [--noceiling]

0. as in the paper, where every row of Table 5 fine-tunes a pre-trained model, one
   pre-training (WORKDIR/pretrain, `--pretrain_steps`) that every row starts from:
   `--pretrain multi` (default), the demo's own recipe, Flux-Multi from scratch on its
   64..256 raw tokens (Table 5's "Multi" pre-training, whose rows "Multi | Single" and
   "Multi | Multi" are Flux-Single and Flux-Multi here); `--pretrain noflux`, without Flux
   on the fixed 8 x 56^2 grid reduced to the full budget by the selector, one head.
   Single-head training from scratch is a gamble on this task: it sat at chance for
   thousands of steps on whole grids and Flux-Single's flexible ones, and the noflux
   pre-training left chance by step ~600 in one session and not in 3000 steps in another;
   Flux-Multi from scratch on the demo's 64..256 raw tokens left chance by step 400-600
   in every run measured (on 32..128, one was still at chance at step 500). The pre-training
   is evaluated on the fixed grid at every budget, and the run stops there, before any
   fine-tuning, if it did not leave chance;
1. the same model (configs/synthetic_demo.py, the demo's) fine-tuned from it three ways
   for the same steps, each in WORKDIR/<run> (the heads a run has and the pre-training
   lacks start at their init):
   * noflux: no Flux, every step the whole fixed grid (`--fixed`, 4 x 56^2: 64 raw tokens,
     the full budget, as the paper's 8 x 224^2 is its 2048), one head;
   * single: Flux-Single, flexible grids (2..16 frames, 32..128 raw tokens: the paper's
     range scaled to these budgets), one head at the full budget;
   * multi: Flux-Multi, flexible grids, heads for the full, 1/2 and 1/4 budgets;
2. each evaluated at the full, 1/2 and 1/4 budgets: on the fixed grid with the
   selector reducing it (Table 5's test, "w/o TO"), and with Token Optimization over
   frames x resolutions, the best grid picked on train[90%:] (held out of training) and
   reported on validation, the fixed grid kept unless another beats it there by more
   than one standard error (WORKDIR/<run>/to holds its to.csv/json/png);
3. the ceiling (`--ceiling`, WORKDIR/ceiling): the same model fine-tuned for the 1/4
   budget alone, w/o Flux on the fixed grid reduced to it by the selector (the test's own
   input), one head, evaluated there: what a head trained at 1/4 alone gets from the
   selector's tokens (measured: 70.2%, and Flux-Multi's 1/4 head 76.8%, so the
   multi-budget training with its distillation beats it; a reference, not a bound);
4. the table (top-1 ± binomial standard error on the validation videos, and the
   full -> 1/4 drop), one line per gap saying whether it is within two standard errors
   (noise), printed and saved as WORKDIR/budget_robustness.{md,csv,png}.

`--fixed 4,84` runs the same experiment on a larger grid: the budgets follow it (its 144
raw tokens, 72 and 36; `--head_budgets` to choose them) and so does the Flux rows' range
(72..288); the pre-training is the same (its heads are taken by index).

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

from flux_jax import config as config_lib
from flux_jax.data.synthetic import NUM_CLASSES
from flux_jax.eval import budgets as budget_eval
from flux_jax.eval.budgets import standard_error
from flux_jax.eval import token_optimization
from flux_jax.experiments.common import PATCH, parse_grid, parse_range, train_once
from flux_jax.tokens.plan import FluxPlan

# (frames, resolution): w/o Flux's training grid and Table 5's test grid. As in the paper
# (8 x 224^2 = 2048 tokens, the full budget), its raw tokens are the full budget: w/o Flux
# trains on whole grids, never reduced by the selector, and the test reduces them.
FIXED = (4, 56)
# `--pretrain noflux`'s grid: fixed, no Flux, the selector keeping the full budget of its
# 128 raw tokens. From scratch, models with one head sat at chance for thousands of steps
# on whole grids (4 x 56^2: 2400 steps; with lr 5e-4 or a 4-epoch warmup: 800) and on
# Flux-Single's flexible ones (4000 steps); on this grid one left chance by step ~600 in
# one run and stayed there for 3000 steps in another (same code and seed, cause unknown).
PRETRAIN_GRID = (8, 56)
PRETRAINS = {'multi': 'Flux-Multi from scratch, the demo config',
             'noflux': f'w/o Flux, {PRETRAIN_GRID[0]} x {PRETRAIN_GRID[1]}^2 reduced by the '
                       'selector'}
# The Flux rows' grids: (min, max) raw tokens and frames. The paper draws 2048..6144 raw
# tokens around its budgets 3072/2048/1024 (SPEC C.3), i.e. from the middle budget to twice
# the full one: 32..128 here. The demo config's 64..256 trained the 1/4 head on 1/4 to
# 1/16 of its grid; with this range Flux-Single and Flux-Multi gained 1.8 to 6.0 points at
# every budget of the fixed grid (README, the Table 5 section).
FLUX_TOKENS = (32, 128)
FLUX_FRAMES = (2, 16)

FLAGS = flags.FLAGS
DEMO = 'synthetic_demo'  # the shipped recipe every run starts from by default


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('config', config_lib.recipe(DEMO), 'Config every run '
                      'starts from (PATH[:arg]); --steps, --size and the run set the rest.')
  flags.DEFINE_string('workdir', 'workdir/budget', 'Dataset, runs and results.')
  flags.DEFINE_integer('steps', 3000, 'Fine-tuning steps of each run.')
  flags.DEFINE_enum('pretrain', 'multi', list(PRETRAINS), 'The pre-training every '
                    'run starts from: ' + '; '.join(f'{k}: {v}' for k, v in
                                                    PRETRAINS.items()) + '.')
  flags.DEFINE_integer('pretrain_steps', 1800, 'Steps of the pre-training '
                       "(the demo's 1800; 0: each run from scratch).")
  flags.DEFINE_string('size', 'panning', "synthetic_motion config: 'panning', 'tiny', "
                      "'demo', a variant such as 'n2004_396_s7_panning', ...")
  flags.DEFINE_list('frames', ['4', '8', '12', '16'], 'Token Optimization frame '
                    'counts (the fixed grid\'s is always added).')
  flags.DEFINE_list('resolutions', ['56', '84', '112'], 'Token Optimization '
                    'resolutions (the fixed grid\'s is always added).')
  flags.DEFINE_list('flux_tokens', None, 'min,max raw tokens of the Flux rows\' '
                    'grids (default: the middle budget to twice the full one, '
                    "32,128 at 64; empty: the demo config's 64,256).")
  flags.DEFINE_list('flux_frames', [str(v) for v in FLUX_FRAMES], 'min,max '
                    "frames of the Flux rows' grids, even (the demo's: 4,16).")
  flags.DEFINE_bool('ceiling', True, 'Also fine-tune a model for the 1/4 budget '
                    'alone (WORKDIR/ceiling): what the task allows at 1/4.')
  flags.DEFINE_list('fixed', [str(v) for v in FIXED], 'frames,resolution of the fixed '
                    "grid: w/o Flux's training grid and Table 5's test grid.")
  flags.DEFINE_list('head_budgets', None, 'The heads and the test budgets, '
                    "full first: the fixed grid's raw tokens, then smaller "
                    '(default: its 1, 1/2 and 1/4, 64,32,16 at 4 x 56^2).')
# Not `--budgets`: absl flags are global, and selector_recall's --budgets means K alone.

RUNS = {'noflux': 'w/o Flux', 'single': 'Flux-Single', 'multi': 'Flux-Multi'}
CEILING = 'ceiling'  # the run trained for the 1/4 budget alone
PRETRAIN = 'pretrain'  # the pre-training, evaluated on the fixed grid
FIELDS = ('run', 'budget', 'fixed_top1', 'fixed_se', 'fixed_gflops', 'to_top1', 'to_se',
          'to_frames', 'to_resolution', 'to_raw_tokens', 'to_gflops', 'videos')


def run_config(run: str, *, steps: int | None, size: str, data_dir: str,
               fixed: tuple[int, int] = FIXED, init: str = '',
               flux_tokens: tuple[int, int] | None = FLUX_TOKENS,
               flux_frames: tuple[int, int] | None = FLUX_FRAMES,
               budget: int | None = None, budgets: tuple[int, ...] | None = None,
               base: str = DEMO):
  """The config `base` (PATH[:arg]; default the shipped configs/synthetic_demo.py) trained
  as `run` (a key of RUNS) on `fixed` if w/o Flux,
  from the params directory `init` ('': from scratch); steps None: the config's. Its
  heads serve `budgets` (full first; None: the demo config's). The Flux rows draw grids
  of `flux_tokens` (min, max) raw tokens, padded to the max, and `flux_frames` (min, max)
  frames; None: the demo config's. The one-head rows train one head at `budget` (None:
  the full budget; below the grid's raw tokens the selector reduces every step, as for
  the ceiling)."""
  config = config_lib.load(base)
  if steps is not None:
    config.train.steps = steps
  config.data.config = size
  config.data.data_dir = data_dir
  config.init = init
  config.eval.every_steps = -1  # evaluated below, at every budget
  if budgets:  # a pre-training's heads are taken by index, whatever their budgets
    budgets = tuple(budgets)
    config.model.head_budgets = budgets
    config.train.update(budgets=budgets, single_budget=budgets[min(1, len(budgets) - 1)])
    config.eval.update(budgets=budgets, budget=budgets[0])
  if run in ('noflux', 'single'):
    one = budget or config.model.head_budgets[0]
    # One head, so every test budget is served by the head that was trained.
    config.model.head_budgets = (one,)
    config.train.update(mode='single', budgets=(one,), single_budget=one, single_head=0)
  if run == 'noflux':  # Python range arguments holding one value each
    config.flux.update(frames=(fixed[0], fixed[0] + 1, 1),
                       resolutions=(fixed[1], fixed[1] + 1, 1))
    config.n_max = max(config.n_max, FluxPlan(*fixed).num_tokens(PATCH))
  else:
    if flux_tokens:
      config.flux.update(min_tokens=flux_tokens[0], max_tokens=flux_tokens[1])
      config.n_max = flux_tokens[1]
    if flux_frames:
      config.flux.frames = (flux_frames[0], flux_frames[1] + 1, config.flux.frames[2])
  return config


def pretrain_config(kind: str, *, steps: int, size: str, data_dir: str, base: str = DEMO):
  """The pre-training every row fine-tunes (a key of PRETRAINS), from scratch: 'multi' is
  the demo config itself (Flux-Multi on its 64..256 raw tokens, every head), 'noflux' one
  head on PRETRAIN_GRID reduced to the full budget."""
  if kind == 'multi':
    return run_config('multi', steps=steps, size=size, data_dir=data_dir, flux_tokens=None,
                      flux_frames=None, base=base)
  return run_config('noflux', steps=steps, size=size, data_dir=data_dir, fixed=PRETRAIN_GRID,
                    base=base)


def flux_tokens_for(full: int) -> tuple[int, int]:
  """The Flux rows' default (min, max) raw tokens for a full budget: the paper's
  2048..6144 around its 3072/2048/1024 scaled, from the middle budget to twice the full
  one (FLUX_TOKENS at the demo's 64)."""
  return full // 2, 2 * full


def parse_budgets(values: list[str] | None, fixed: tuple[int, int]) -> tuple[int, ...]:
  """`--head_budgets` as ints, refused unless it is the fixed grid's raw tokens (the full
  budget, Table 5's 8 x 224^2 = 2048) then strictly smaller budgets; empty: the raw
  tokens, 1/2 and 1/4."""
  raw = FluxPlan(*fixed).num_tokens(PATCH)
  if not values:
    return raw, raw // 2, raw // 4
  budgets = tuple(int(v) for v in values)
  if (len(budgets) < 2 or budgets[0] != raw or any(b <= 0 for b in budgets)
      or list(budgets) != sorted(set(budgets), reverse=True)):
    raise app.UsageError(
        f'--head_budgets={",".join(values)}: want the full budget, the fixed grid '
        f'{fixed[0]} x {fixed[1]}^2\'s {raw} raw tokens, then smaller ones, decreasing '
        f'(e.g. {raw},{raw // 2},{raw // 4})')
  return budgets


def evaluate_fixed(run: str, params: str, config, budgets: tuple[int, ...],
                   out_dir: str, fixed: tuple[int, int]) -> list[dict]:
  """Rows of `run` at `budgets` on the fixed grid alone (no TO), as `summarize` gives them."""
  rows, _ = token_optimization.evaluate_checkpoint(
      params, out_dir, frames=[fixed[0]], resolutions=[fixed[1]], budgets=budgets,
      config=config, select_split='', batch_size=config.eval.batch_size, fixed=fixed)
  return summarize(run, rows, fixed)


def left_chance(rows: list[dict]) -> bool:
  """Whether the full-budget row (the first) is above chance by more than 2 SE."""
  return rows[0]['fixed_top1'] - 1 / NUM_CLASSES > 2 * rows[0]['fixed_se']


def ceiling(budget: int, *, root: str, size: str, data_dir: str, fixed: tuple[int, int],
            init: str, budgets: tuple[int, ...]) -> dict:
  """The ceiling row: one head fine-tuned w/o Flux on `fixed` reduced to `budget` by the
  selector (WORKDIR/ceiling), evaluated there alone, as `summarize` gives it."""
  config = run_config('noflux', steps=FLAGS.steps, size=size, data_dir=data_dir,
                      fixed=fixed, init=init, budget=budget, budgets=budgets,
                      base=FLAGS.config)
  params = train_once(config, os.path.join(root, CEILING))
  (row,) = evaluate_fixed(CEILING, params, config, (budget,),
                          os.path.join(root, CEILING, 'to'), fixed)
  return row


def summarize(run: str, rows: list[dict], fixed: tuple[int, int] = FIXED) -> list[dict]:
  """Per budget: the fixed grid's row (w/o TO) against the best row (TO)."""
  out = []
  for s in token_optimization.summarize(rows, fixed):
    ref, best = s['fixed'], s['best']
    out.append(dict(
        run=run, budget=s['budget'], fixed_top1=ref['top1'],
        fixed_se=standard_error(ref['top1'], ref['videos']),
        fixed_gflops=ref['gflops'], to_top1=best['top1'],
        to_se=standard_error(best['top1'], best['videos']), to_frames=best['frames'],
        to_resolution=best['resolution'], to_raw_tokens=best['raw_tokens'],
        to_gflops=best['gflops'], videos=ref['videos']))
  return out


def _of(results: list[dict], run: str) -> list[dict]:
  """The rows of one run (e.g. PRETRAIN, CEILING), in their order."""
  return [r for r in results if r['run'] == run]


def _budgets(results: list[dict]) -> list[int]:
  """The test budgets of the table's rows, largest first (the ceiling has only one)."""
  return list(dict.fromkeys(r['budget'] for r in results if r['run'] in RUNS))


def _pct(top1: float, se: float) -> str:
  return f'{100 * top1:.1f} ± {100 * se:.1f}'


def markdown_table(results: list[dict]) -> str:
  """Top-1 ± standard error per run and budget, fixed grid then TO, and the drop from
  the full budget to the smallest on the fixed grid (± its standard error)."""
  budgets = _budgets(results)
  head = ([f'{b} tokens' for b in budgets] + [f'{b} + TO' for b in budgets]
          + [f'drop {budgets[0]} -> {budgets[-1]}'])
  lines = ['| training | ' + ' | '.join(head) + ' |', '|---' * (1 + len(head)) + '|']
  for run, name in RUNS.items():
    by_budget = {r['budget']: r for r in _of(results, run)}
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
  budgets = _budgets(results)
  row = {(r['run'], r['budget']): r for r in results}
  runs = [run for run in RUNS if (run, budgets[0]) in row]
  pre = _of(results, PRETRAIN)
  lines = ['the pre-training, on the fixed grid: ' + ', '.join(
      f"{r['budget']} tokens {_pct(r['fixed_top1'], r['fixed_se'])}" for r in pre)] if pre else []
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
  small = budgets[-1]
  if (CEILING, small) in row and 'multi' in runs:
    top = row[CEILING, small]
    short, se = drop(top, row['multi', small])
    lines.append(f"trained for {small} tokens alone (the ceiling): "
                 f"{_pct(top['fixed_top1'], top['fixed_se'])}; Flux-Multi at {small} tokens "
                 f"against it: {gap(-short, se)}")
    if 'noflux' in runs and base > 0:
      need = row['multi', budgets[0]]['fixed_top1'] - base / 3
      over = need - top['fixed_top1']
      lines.append(f'keeping 2/3 of the w/o-Flux drop needs Flux-Multi at {small} tokens '
                   f'>= {100 * need:.1f} (its {budgets[0]}-token top-1 less a third of '
                   f'{100 * base:.1f}): {100 * abs(over):.1f} points '
                   f"{'above' if over > 0 else 'below'} the ceiling")
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
  budgets = _budgets(results)
  row = {(r['run'], r['budget']): r for r in results}
  out = []
  pre = _of(results, PRETRAIN)
  if pre:
    out.append((f'the pre-training left chance (at {pre[0]["budget"]} tokens by more than '
                f'2 SE: {100 * pre[0]["fixed_top1"]:.1f}%)', left_chance(pre)))
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
                  f'2 SE: {100 * full_row["fixed_top1"]:.1f}%)', left_chance([full_row])))
      worst = min(gaps, key=lambda g: g[1])
      out.append((f'{RUNS[run]}: TO not below the fixed grid by more than 2 SE at any '
                  f'budget (worst: {worst[0]} tokens, {100 * worst[1]:+.1f} ± '
                  f'{100 * worst[2]:.1f})', all(g >= -2 * se for _, g, se in gaps)))
      out.append((f'{RUNS[run]}: TO at or above the fixed grid at every budget',
                  all(g >= 0 for _, g, _ in gaps)))
  return out


def save_plot(results: list[dict], path: str, fixed: tuple[int, int] = FIXED) -> None:
  series = []
  for i, (run, name) in enumerate(RUNS.items()):
    rows = _of(results, run)
    tokens = [r['budget'] for r in rows]
    series += [(f'{name}, {fixed[0]} x {fixed[1]}^2', tokens, [r['fixed_top1'] for r in rows],
                f'C{i}o-'),
               (f'{name} + TO', tokens, [r['to_top1'] for r in rows], f'C{i}s--')]
  pre = _of(results, PRETRAIN)
  if pre:
    series.append((f'the pre-training, {fixed[0]} x {fixed[1]}^2', [r['budget'] for r in pre],
                   [r['fixed_top1'] for r in pre], 'k.:'))
  series += [(f'trained for {r["budget"]} alone, {fixed[0]} x {fixed[1]}^2', [r['budget']],
              [r['fixed_top1']], 'k*') for r in _of(results, CEILING)]
  budget_eval.save_plot(series, path,
                        title='synthetic_motion: budget robustness (Table 5 analogue)',
                        chance=1 / NUM_CLASSES)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, 'tfds')
  fixed = parse_grid(FLAGS.fixed, 'fixed')
  budgets = parse_budgets(FLAGS.head_budgets, fixed)
  flux_tokens = (flux_tokens_for(budgets[0]) if FLAGS.flux_tokens is None
                 else parse_range(FLAGS.flux_tokens, 'flux_tokens'))
  flux_frames = parse_range(FLAGS.flux_frames, 'flux_frames')
  frames = sorted({int(f) for f in FLAGS.frames} | {fixed[0]})
  resolutions = sorted({int(r) for r in FLAGS.resolutions} | {fixed[1]})
  init, results = '', []
  if FLAGS.pretrain_steps:
    pre = pretrain_config(FLAGS.pretrain, steps=FLAGS.pretrain_steps, size=FLAGS.size,
                          data_dir=data_dir, base=FLAGS.config)
    init = train_once(pre, os.path.join(root, PRETRAIN))
    results = evaluate_fixed(PRETRAIN, init, pre, tuple(pre.model.head_budgets),
                             os.path.join(root, PRETRAIN, 'to'), fixed)
    print(f'pre-trained ({PRETRAINS[FLAGS.pretrain]}) for {FLAGS.pretrain_steps} steps: '
          f'{100 * results[0]["fixed_top1"]:.1f}% at {results[0]["budget"]} tokens of the '
          f'fixed grid ({time.perf_counter() - t0:.0f} s so far)')
    if not left_chance(results):
      raise RuntimeError(
          f'the pre-training ({root}/{PRETRAIN}) is at chance on the fixed grid '
          f'({100 * results[0]["fixed_top1"]:.1f}%, chance {100 / NUM_CLASSES:.1f}%): '
          'every row would start from noise. Remove it and pre-train longer '
          '(--pretrain_steps) or another way (--pretrain).')
  for run, name in RUNS.items():
    config = run_config(run, steps=FLAGS.steps, size=FLAGS.size, data_dir=data_dir,
                        fixed=fixed, init=init, flux_tokens=flux_tokens,
                        flux_frames=flux_frames, budgets=budgets, base=FLAGS.config)
    params = train_once(config, os.path.join(root, run))
    rows, _ = token_optimization.evaluate_checkpoint(
        params, os.path.join(root, run, 'to'), frames=frames, resolutions=resolutions,
        budgets=budgets, config=config, batch_size=config.eval.batch_size, fixed=fixed)
    results += summarize(run, rows, fixed)
    print(f'{name}: trained and evaluated ({time.perf_counter() - t0:.0f} s so far)')
  if FLAGS.ceiling:
    results.append(ceiling(budgets[-1], root=root, size=FLAGS.size, data_dir=data_dir,
                           fixed=fixed, init=init, budgets=budgets))
    print(f'ceiling: trained and evaluated ({time.perf_counter() - t0:.0f} s so far)')

  table = markdown_table(results)
  notes = '\n'.join(f'- {line}' for line in verdicts(results))
  notes += '\n\nTable 5\'s lesson (SPEC E.3), checked:\n' + '\n'.join(
      f"- [{'x' if ok else ' '}] {line}" for line, ok in checks(results))
  steps = config.train.steps
  start = (f'each fine-tuned for {steps} steps from one pre-training '
           f'({PRETRAINS[FLAGS.pretrain]}, {FLAGS.pretrain_steps} steps)' if init
           else f'{steps} steps each from scratch')
  text = (f'synthetic_motion/{FLAGS.size} validation top-1 (%) ± standard error '
          f'({results[0]["videos"]} videos), {start} (chance '
          f'{100 / NUM_CLASSES:.1f}%); "N tokens": the fixed {fixed[0]} x {fixed[1]}^2 '
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
  save_plot(results, os.path.join(root, 'budget_robustness.png'), fixed)
  print(f'saved {root}/budget_robustness.md, .csv and .png; wall time '
        f'{time.perf_counter() - t0:.0f} s')


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
