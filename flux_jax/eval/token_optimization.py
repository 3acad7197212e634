"""Token Optimization (SPEC C.7): the best sampling grid (T, R) for each token budget.

For every budget, each candidate grid with at least `budget` raw tokens is evaluated with
the selector reducing it to the budget, beside the plain grid (no selection): as many
whole frames at `plain_resolution` as the budget holds (SPEC E.1: 2/4/8/12 x 224^2 for
512/1024/2048/3072 tokens). The best grid per budget is the highest top-1 among grids
that fit (raw >= budget), ties to fewer GFLOPs.

Picked on the data it is reported on, the best grid is optimistic (the paper's TO tables
are). With a selection split (`select_split`, e.g. 'train[90%:]' held out of training)
every grid is evaluated on both: the best grid is the one best on the selection split,
and its top-1 on the evaluation split is an unbiased estimate. The pick follows the
one-standard-error rule: a grid replaces the reference (the `fixed` grid when one is
given, else the plain grid) only when it beats the reference's selection top-1 by more
than `select_margin_se` binomial standard errors, so that TO does not trade the grid the
model was run at for one that won by the selection split's noise.

Outputs in OUT: `to.csv`; `to.json` = {"checkpoint": str, "rows": [row, ...]} (read by
predict: the rows with best=True give the grid and head per budget); `to.png`, top-1
against GFLOPs without and with TO. Each row is

  dict(budget, frames, resolution, raw_tokens, tokens, head, top1, top5, videos,
       unreadable, gflops, to, best, select_top1, select_videos, select_unreadable)

with `tokens` = kept tokens, `videos` = videos in the metric, `unreadable` = videos left
out of it because none of their views decoded, `gflops` per view (flux_jax.eval.flops),
`to` = selection ran (raw_tokens > budget), `select_top1`, `select_videos` and
`select_unreadable` = the same on the selection split (None without one).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax

from flux_jax import checkpoint
from flux_jax import sharding as sharding_lib
from flux_jax.data.sources import open_builder
from flux_jax.data.sources import shared_examples
from flux_jax.eval.budgets import accuracy_by_budget
from flux_jax.eval.budgets import standard_error
from flux_jax.eval.flops import gflops
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.plan import FluxPlan

FIELDS = ('budget', 'frames', 'resolution', 'raw_tokens', 'tokens', 'head', 'top1', 'top5',
          'videos', 'unreadable', 'gflops', 'to', 'best', 'select_top1', 'select_videos',
          'select_unreadable')
CSV, JSON, PLOT = 'to.csv', 'to.json', 'to.png'
DEFAULT_BATCH = 16  # views per batch when none is given (rounded up to split evenly)


def candidate_grids(budget: int, *, frames: Sequence[int], resolutions: Sequence[int],
                    patch_size: int, tubelet_size: int = 1) -> list[tuple[int, int]]:
  """(frames, resolution) pairs with at least `budget` raw tokens, fewest tokens first."""
  grids = [(t, r) for t in frames for r in resolutions
           if FluxPlan(t, r).num_tokens(patch_size, tubelet_size) >= budget]
  return sorted(grids, key=lambda g: (FluxPlan(*g).num_tokens(patch_size, tubelet_size),) + g)


def plain_grid(budget: int, *, resolution: int, patch_size: int,
               tubelet_size: int = 1) -> tuple[int, int]:
  """The grid without TO: as many whole tubelets at `resolution` as `budget` holds."""
  per_step = (resolution // patch_size) ** 2
  if budget < per_step:
    raise ValueError(f'budget {budget} holds no whole frame at plain_resolution '
                     f'{resolution} ({per_step} tokens per frame); give a smaller '
                     'plain_resolution')
  return tubelet_size * (budget // per_step), resolution


def _check_args(model: FluxViT, budgets, frames, resolutions, plain_resolution) -> None:
  for name, values in (('budgets', budgets), ('frames', frames),
                       ('resolutions', resolutions)):
    if not values or any(int(v) != v or v < 1 for v in values):
      raise ValueError(f'{name} must be a non-empty list of positive integers, got '
                       f'{list(values)}')
  for r in (*resolutions, plain_resolution):
    if r % model.patch_size:
      raise ValueError(f'resolution {r} is not a multiple of the patch size '
                       f'{model.patch_size}')
  for t in frames:
    if t % model.tubelet_size:
      raise ValueError(f'frames {t} is not a multiple of the tubelet size '
                       f'{model.tubelet_size}')
  for budget in budgets:
    if not candidate_grids(budget, frames=frames, resolutions=resolutions,
                           patch_size=model.patch_size, tubelet_size=model.tubelet_size):
      largest = max(FluxPlan(t, r).num_tokens(model.patch_size, model.tubelet_size)
                    for t in frames for r in resolutions)
      raise ValueError(f'no grid of frames {list(frames)} x resolutions '
                       f'{list(resolutions)} fits budget {budget} (the largest has '
                       f'{largest} raw tokens); add more frames or resolutions')
    plain_grid(budget, resolution=plain_resolution, patch_size=model.patch_size,
               tubelet_size=model.tubelet_size)


def _rank(row: Mapping[str, Any], key: str) -> tuple:
  top1 = row[key]
  return (-top1 if top1 == top1 else math.inf,  # NaN (no videos) ranks last
          row['gflops'], row['raw_tokens'])


def mark_best(rows: list[dict], key: str = 'top1', *,
              reference: tuple[int, int] | None = None, margin_se: float = 0.0,
              videos_key: str = 'videos') -> list[dict]:
  """Sets row['best'] on exactly one row per budget: the highest `key` (top-1, or
  'select_top1': top-1 on the selection split) among rows with raw_tokens >= budget,
  ties to fewer GFLOPs (then fewer raw tokens).

  With `margin_se` > 0, the one-standard-error rule: the budget's reference row (the
  (frames, resolution) grid `reference`, else the budget's first row, which `search`
  makes the plain grid) stays best unless the highest row beats it by more than
  `margin_se` binomial standard errors of the highest row's `key` over its
  row[videos_key] videos. A reference that does not fit, or has no `key`, has no say."""
  for budget in dict.fromkeys(r['budget'] for r in rows):
    of_budget = [r for r in rows if r['budget'] == budget]
    fits = [r for r in of_budget if r['raw_tokens'] >= budget]
    if not fits:
      raise ValueError(f'no evaluated grid fits budget {budget}')
    best = min(fits, key=lambda r: _rank(r, key))
    if margin_se > 0:
      if reference:
        ref = next((r for r in fits if (r['frames'], r['resolution']) == reference), None)
      else:
        ref = of_budget[0] if of_budget[0]['raw_tokens'] >= budget else None
      if ref is not None and not math.isnan(ref[key]) and (
          best[key] - ref[key] <= margin_se * standard_error(best[key], best[videos_key])):
        best = ref
    for r in of_budget:
      r['best'] = r is best
  return rows


def search(model: FluxViT, params, source, *, budgets: Sequence[int],
           frames: Sequence[int], resolutions: Sequence[int], plain_resolution: int,
           batch_size: int, sharding: jax.sharding.Sharding, num_clips: int = 1,
           num_crops: int = 1,
           progress: Callable[[dict], None] | None = None) -> list[dict]:
  """Evaluates, per budget, every candidate grid that fits and the plain grid.

  Args:
    model, params: the classifier; params placed for `sharding`'s mesh.
    source: the evaluation source (random access, `open_dataset`).
    budgets: token budgets, in the order of the rows.
    frames, resolutions: candidate grid axes; grids with fewer raw tokens than a
      budget are never evaluated for it.
    plain_resolution: resolution of the grid without TO (`plain_grid`).
    batch_size, sharding, num_clips, num_crops: multi-view evaluation (SPEC C.7).
    progress: called with each row when it is done (grid by grid).

  Returns:
    rows (module docstring), per budget the plain grid first, then the other grids by
    raw tokens. Each grid's views are decoded once, in one pass over `source` that
    serves every budget it fits; one compile per (raw, kept tokens, head).

  Raises:
    ValueError: an empty or non-positive list, a resolution that is not a multiple of
      the patch size, or a budget that no grid fits.
  """
  _check_args(model, budgets, frames, resolutions, plain_resolution)
  p, tubelet = model.patch_size, model.tubelet_size
  order, by_grid = [], {}  # (budget, grid) in row order; grid -> its budgets
  for budget in budgets:
    plain = plain_grid(budget, resolution=plain_resolution, patch_size=p,
                       tubelet_size=tubelet)
    grids = candidate_grids(budget, frames=frames, resolutions=resolutions, patch_size=p,
                            tubelet_size=tubelet)
    for grid in dict.fromkeys([plain, *grids]):
      order.append((budget, grid))
      by_grid.setdefault(grid, []).append(budget)
  done = {}
  for (t, r), grid_budgets in by_grid.items():  # one pass over `source` per grid
    for row in accuracy_by_budget(model, params, source, budgets=grid_budgets, frames=t,
                                  resolution=r, batch_size=batch_size, sharding=sharding,
                                  num_clips=num_clips, num_crops=num_crops):
      row.update(gflops=gflops(model, row['tokens'], row['raw_tokens']),
                 to=row['raw_tokens'] > row['budget'], best=False, select_top1=None,
                 select_videos=None, select_unreadable=None)
      done[row['budget'], (t, r)] = {k: row[k] for k in FIELDS}
      if progress is not None:
        progress(done[row['budget'], (t, r)])
  return mark_best([done[key] for key in order])


def selected(rows: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the best grids of `rows` were picked on a selection split."""
  return any(r.get('select_top1') is not None for r in rows)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  extra = selected(rows)  # a column for the top-1 the best grid was picked on
  lines = ['| budget | grid | raw -> kept | head | GFLOPs | top-1 | top-5 | videos | '
           'unreadable | TO | ' + ('selection top-1 | unreadable | ' if extra else '')
           + 'best |', '|---' * (13 if extra else 11) + '|']
  for r in rows:
    # .get: rows of a to.json written before `unreadable` was counted
    lines.append(f"| {r['budget']} | {r['frames']} x {r['resolution']}^2 | "
                 f"{r['raw_tokens']} -> {r['tokens']} | {r['head']} | {r['gflops']:.4g} | "
                 f"{100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {r['videos']} | "
                 f"{r.get('unreadable', '')} | {'yes' if r['to'] else 'no'} | "
                 + (f"{100 * r['select_top1']:.1f}% | {r.get('select_unreadable', '')} | "
                    if extra else '')
                 + f"{'**best**' if r['best'] else ''} |")
  return '\n'.join(lines)


def summarize(rows: Sequence[Mapping[str, Any]],
              fixed: tuple[int, int] | None = None) -> list[dict]:
  """Per budget of `search`'s rows: {'budget', 'plain', 'best'} and, given a `fixed`
  (frames, resolution) grid that was evaluated, 'fixed' (e.g. one test grid reduced to
  every budget by the selector, SPEC E.3's "w/o TO"); each value is the row."""
  out = []
  for budget in dict.fromkeys(r['budget'] for r in rows):
    of_budget = [r for r in rows if r['budget'] == budget]
    entry = dict(budget=budget, plain=of_budget[0],  # search puts the plain grid first
                 best=next(r for r in of_budget if r['best']))
    if fixed is not None:
      entry['fixed'] = next((r for r in of_budget if (r['frames'], r['resolution']) == fixed),
                            None)
      if entry['fixed'] is None:
        raise ValueError(f'budget {budget}: the fixed grid {fixed[0]} x {fixed[1]}^2 was '
                         'not evaluated (it needs at least as many raw tokens as the budget)')
    out.append(entry)
  return out


def summary_table(summary: Sequence[Mapping[str, Any]]) -> str:
  """One line per budget of `summarize`: each grid with its top-1 (and its standard
  error, given the row's number of videos) and GFLOPs per view."""
  def cell(r):
    se = (f" ± {100 * standard_error(r['top1'], r['videos']):.1f}" if r.get('videos')
          else '')
    unread = f", {r['unreadable']} unreadable" if r.get('unreadable') else ''
    return (f"{r['frames']} x {r['resolution']}^2, {r['raw_tokens']} -> {r['tokens']}: "
            f"{100 * r['top1']:.1f}{se}% ({r['gflops']:.3g}{unread})")
  kinds = [k for k in ('plain', 'fixed', 'best') if k in summary[0]]
  names = dict(plain='plain grid (no TO)', fixed='fixed grid', best='best grid (TO)')
  lines = ['| budget | ' + ' | '.join(names[k] for k in kinds) + ' |',
           '|---' * (1 + len(kinds)) + '|']
  lines += [f"| {s['budget']} | " + ' | '.join(cell(s[k]) for k in kinds) + ' |'
            for s in summary]
  return '\n'.join(lines)


def save_plot(rows: Sequence[Mapping[str, Any]], path: str, title: str = '',
              fixed: tuple[int, int] | None = None) -> None:
  """Top-1 against GFLOPs: every grid evaluated, the plain grids, the best grids and,
  given a `fixed` (frames, resolution) grid, that grid reduced to every budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  budgets = list(dict.fromkeys(r['budget'] for r in rows))
  plain = [next(r for r in rows if r['budget'] == b and not r['to']) for b in budgets
           if any(r['budget'] == b and not r['to'] for r in rows)]
  best = [next(r for r in rows if r['budget'] == b and r['best']) for b in budgets]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.scatter([r['gflops'] for r in rows], [100 * r['top1'] for r in rows], s=12,
             color='lightgray', label='grids evaluated', zorder=1)
  lines = [(plain, 's--', 'without TO: plain grid')]
  if fixed is not None:
    lines.append(([s['fixed'] for s in summarize(rows, fixed)], 'v:',
                  f'without TO: {fixed[0]} x {fixed[1]}^2 + selector'))
  lines.append((best, 'o-', 'with TO'))
  for line, style, label in lines:
    line = sorted(line, key=lambda r: r['gflops'])
    ax.plot([r['gflops'] for r in line], [100 * r['top1'] for r in line], style,
            label=label, zorder=2)
  for r in best:
    ax.annotate(f"{r['budget']}: {r['frames']}x{r['resolution']}",
                (r['gflops'], 100 * r['top1']), textcoords='offset points', xytext=(4, 4),
                fontsize=7)
  ax.set_xlabel('GFLOPs per view')
  ax.set_ylabel('top-1 (%)')
  ax.set_title(title or 'Token Optimization')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_name(checkpoint_dir: str) -> str:
  """What a plot calls a checkpoint: its run's directory for WORKDIR/params."""
  path = os.path.normpath(os.path.abspath(checkpoint_dir))
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if name == checkpoint.PARAMS_DIR else name


def save_results(rows: Sequence[Mapping[str, Any]], out_dir: str, *,
                 checkpoint_dir: str, title: str = '',
                 fixed: tuple[int, int] | None = None) -> dict[str, str]:
  """Writes to.csv, to.json and to.png to `out_dir`; returns their paths by kind. The
  plot's title defaults to `run_name(checkpoint_dir)`."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {kind: os.path.join(out_dir, name)
           for kind, name in (('csv', CSV), ('json', JSON), ('png', PLOT))}
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  with open(paths['json'], 'w') as f:
    json.dump({'checkpoint': checkpoint_dir, 'rows': [dict(r) for r in rows]}, f, indent=1)
  save_plot(rows, paths['png'], fixed=fixed,
            title=title or f'Token Optimization: {run_name(checkpoint_dir)}')
  return paths


def _first(*candidates):
  return next((c for c in candidates if c is not None), None)


def evaluate_checkpoint(directory: str, out_dir: str, *, frames: Sequence[int],
                        resolutions: Sequence[int], budgets: Sequence[int] | None = None,
                        config: Mapping[str, Any] | None = None,
                        plain_resolution: int | None = None, num_clips: int | None = None,
                        num_crops: int | None = None, batch_size: int | None = None,
                        select_split: str | None = None, select_margin_se: float = 1.0,
                        title: str = '',
                        fixed: tuple[int, int] | None = None,
                        progress: Callable[[dict], None] | None = None
                        ) -> tuple[list[dict], dict[str, str]]:
  """Token Optimization of a params checkpoint (`checkpoint.save_params`) on its data.

  Args:
    directory: the params checkpoint, e.g. WORKDIR/params of a finished run.
    out_dir: where to.csv, to.json and to.png go (process 0 writes them).
    frames, resolutions: candidate grid axes.
    budgets: token budgets; None: the model's training budgets.
    config: an experiment config with a `data` block (`open_dataset`); None: the
      training config in the checkpoint's metadata. A converted official checkpoint has
      none, so it needs one.
    plain_resolution, num_clips, num_crops: None: the checkpoint's evaluation setting
      (metadata 'eval'), else the config's `eval` block; views default to 1 x 1.
    batch_size: views per batch; None: the smallest multiple of num_crops and of the
      device count that is at least 16.
    select_split: a split spec of the dataset held out of training (e.g.
      'train[90%:]') on which the best grid per budget is picked; top-1 stays that of the
      evaluation split. None: the checkpoint's or the config's `eval.select_split`, else
      none (the best grid is picked on the evaluation split); '' forces none. Refused
      when it shares examples with the training or the evaluation split.
    select_margin_se: with a select_split, the one-standard-error rule of `mark_best`:
      another grid replaces the reference (`fixed`, else the plain grid) only when it
      wins on the selection split by more than this many standard errors; 0: the
      plain argmax.
    title: the plot's; default 'Token Optimization: RUN' (`run_name`).
    fixed: a (frames, resolution) grid among the candidates, drawn reduced to every
      budget (the no-TO reference, e.g. the training run's evaluation grid).

  Returns:
    (rows, paths of the written files).
  """
  meta = checkpoint.read_config(directory).get('metadata', {})
  if config is None:
    config = meta.get('config')
    if config is None:
      raise ValueError(f'{directory}: the checkpoint metadata has no training config (a '
                       'converted checkpoint?); pass a config with a data block')
  if 'data' not in config:
    raise ValueError(f'the config has no data block to evaluate {directory} on')
  model, params = checkpoint.load_params(directory)
  saved_eval, config_eval = meta.get('eval') or {}, config.get('eval') or {}

  def pick(key, given, default=None):
    return _first(given, saved_eval.get(key), config_eval.get(key), default)

  budgets = model.head_budgets if budgets is None else budgets
  plain_resolution = pick('resolution', plain_resolution)
  if plain_resolution is None:
    raise ValueError(f'{directory}: no evaluation resolution in the metadata or config; '
                     'give plain_resolution')
  num_clips, num_crops = pick('num_clips', num_clips, 1), pick('num_crops', num_crops, 1)
  select_split = pick('select_split', select_split) or None
  mesh = sharding_lib.make_mesh({'data': -1})
  rows_per_batch = mesh.shape['data']
  if batch_size is None:
    unit = math.lcm(num_crops, rows_per_batch)
    batch_size = unit * -(-DEFAULT_BATCH // unit)
  if batch_size % num_crops or batch_size % rows_per_batch:
    raise ValueError(f'batch_size {batch_size} must divide by num_crops {num_crops} and '
                     f'by the {rows_per_batch} devices')
  _check_args(model, budgets, frames, resolutions, plain_resolution)  # before any data
  if not select_margin_se >= 0:
    raise ValueError(f'select_margin_se must be >= 0, got {select_margin_se}')
  builder = open_builder(config['data'])  # once: the evaluation and selection splits
  source = builder.as_data_source(config['data']['eval_split'])
  class_names = builder.info.features['label'].names
  if select_split:
    trained_on = (meta.get('config') or config)['data']['train_split']
    for split, role in ((trained_on, 'training'), (config['data']['eval_split'], 'evaluation')):
      shared = shared_examples(builder, select_split, split)
      if shared:
        raise ValueError(f'{directory}: select_split {select_split!r} shares {shared} '
                         f'examples with the {role} split {split!r}; hold it out (e.g. '
                         "train on 'train[:90%]', select on 'train[90%:]')")
  if len(class_names) != model.num_classes:
    raise ValueError(f'{directory}: the model has {model.num_classes} classes, the '
                     f'dataset {config["data"]["name"]} has {len(class_names)}')
  params = jax.device_put(params, sharding_lib.replicated(mesh))
  grid_search = functools.partial(
      search, model, params, budgets=budgets, frames=frames, resolutions=resolutions,
      plain_resolution=plain_resolution, batch_size=batch_size,
      sharding=sharding_lib.batch_sharding(mesh), num_clips=num_clips, num_crops=num_crops,
      progress=progress)
  rows = grid_search(source)
  if select_split:  # the same grids in the same order, best picked there
    for row, picked_on in zip(rows, grid_search(builder.as_data_source(select_split))):
      row.update(select_top1=picked_on['top1'], select_videos=picked_on['videos'],
                 select_unreadable=picked_on['unreadable'])
    mark_best(rows, key='select_top1', reference=fixed, margin_se=select_margin_se,
              videos_key='select_videos')
  paths = {}
  if jax.process_index() == 0:
    paths = save_results(rows, out_dir, checkpoint_dir=os.path.abspath(directory),
                         title=title, fixed=fixed)
  return rows, paths
