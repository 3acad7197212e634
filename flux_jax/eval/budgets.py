"""Accuracy of one sampling grid at several token budgets, one pass over the data."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax

from flux_jax.eval.multiview import evaluate_each, make_eval_step, views, with_unreadable
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.plan import FluxPlan
from flux_jax.tokens.select import keeps_all


def standard_error(top1: float, videos: int) -> float:
  """The binomial standard error of a top-1 measured on `videos` videos."""
  return math.sqrt(top1 * (1.0 - top1) / videos) if videos else float('nan')


@functools.lru_cache(maxsize=64)
def _eval_step(model: FluxViT, budget: int | None, head: int):
  """One jitted step per (model, budget, head); its cache reuses compiles across grids
  with equal token counts."""
  return jax.jit(make_eval_step(model, budget=budget, head=head))


def accuracy_by_budget(model: FluxViT, params, source, *, budgets: Sequence[int],
                       frames: int, resolution: int, batch_size: int,
                       sharding: jax.sharding.Sharding, num_clips: int = 1,
                       num_crops: int = 1) -> list[dict]:
  """Multi-view top-1/top-5 of `frames x resolution^2` views reduced to each budget.

  One pass over `source` serves every budget: each video is decoded once. The head of a
  budget is the one whose training budget is nearest to the tokens kept. One compile
  per (raw tokens, kept tokens, head), cached across calls.

  Returns:
    per budget, in order: dict(budget, frames, resolution, raw_tokens, tokens (kept),
    head, top1, top5, videos, unreadable (videos left out: no view decoded)).
  """
  raw = FluxPlan(frames, resolution).num_tokens(model.patch_size, model.tubelet_size)
  programs = {}  # budget -> (budget the step keeps, head)
  for budget in budgets:
    # A budget >= raw keeps every token, as None does: such budgets share a step.
    programs[budget] = (None if keeps_all(budget, raw) else budget,
                        model.nearest_head(budget, raw))
  results = evaluate_each(
      {key: functools.partial(_eval_step(model, *key), params)
       for key in dict.fromkeys(programs.values())},
      views(source, model=model, frames=frames, resolution=resolution,
            batch_size=batch_size, sharding=sharding, num_clips=num_clips,
            num_crops=num_crops))
  return [dict(budget=budget, frames=frames, resolution=resolution, raw_tokens=raw,
               tokens=min(budget, raw), head=programs[budget][1],
               **with_unreadable(results[programs[budget]], source))
          for budget in budgets]


def markdown_table(rows: Sequence[dict], *, name: str | None = None) -> str:
  """Rows of `accuracy_by_budget` as a markdown table; `name` adds a leading 'model' column
  (each row's `name` value)."""
  head = ['budget', 'tokens kept / raw', 'head', 'top-1', 'top-5', 'videos', 'unreadable']
  lines = ['| ' + ' | '.join((['model'] if name else []) + head) + ' |',
           '|---' * (len(head) + bool(name)) + '|']
  for r in rows:
    cells = [str(r['budget']), f"{r['tokens']} / {r['raw_tokens']}", str(r['head']),
             f"{100 * r['top1']:.1f}%", f"{100 * r['top5']:.1f}%", str(r['videos']),
             str(r['unreadable'])]
    lines.append('| ' + ' | '.join(([str(r[name])] if name else []) + cells) + ' |')
  return '\n'.join(lines)


def save_plot(series: Sequence[tuple[str, Sequence[int], Sequence[float], str]], path: str,
              *, title: str, chance: float) -> None:
  """Top-1 against tokens kept, log2 axis: one line per (label, tokens, top1, style), the
  style a matplotlib format string ('o-', 'C1s--')."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, tokens, top1, style in series:
    ax.plot(tokens, [100 * t for t in top1], style, label=label)
  ax.axhline(100 * chance, color='gray', ls=':', label='chance')
  ticks = sorted({t for _, tokens, _, _ in series for t in tokens})
  ax.set_xscale('log', base=2)
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.set_xlabel('tokens kept (budget)')
  ax.set_ylabel('top-1 (%)')
  ax.set_ylim(0, 100)
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
