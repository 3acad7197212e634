"""Accuracy of one sampling grid at one or more token budgets: the deployment curve."""

from __future__ import annotations

import functools
from typing import Sequence

import jax

from flux_jax.eval.multiview import evaluate_dataset
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.plan import FluxPlan
from flux_jax.train.steps import make_eval_step


@functools.lru_cache(maxsize=64)
def _eval_step(model: FluxViT, budget: int | None, head: int):
  """One jitted step per (model, budget, head); its cache reuses compiles across grids
  with equal token counts."""
  return jax.jit(make_eval_step(model, budget=budget, head=head))


def evaluate_grid(model: FluxViT, params, source, *, budget: int, frames: int,
                  resolution: int, batch_size: int, sharding: jax.sharding.Sharding,
                  num_clips: int = 1, num_crops: int = 1) -> dict:
  """Multi-view top-1/top-5 of `frames x resolution^2` views reduced to `budget` tokens.

  The head is the one whose training budget is nearest to the tokens kept. One compile
  per (raw tokens, kept tokens, head).

  Returns:
    dict(budget, frames, resolution, raw_tokens, tokens (kept), head, top1, top5, videos).
  """
  raw = FluxPlan(frames, resolution).num_tokens(model.patch_size, model.tubelet_size)
  head = model.nearest_head(budget, raw)
  # A budget >= raw keeps every token, as None does: grids of equal size share a step.
  step = _eval_step(model, budget if budget < raw else None, head)
  result = evaluate_dataset(step, params, source, model=model, frames=frames,
                            resolution=resolution, batch_size=batch_size, sharding=sharding,
                            num_clips=num_clips, num_crops=num_crops)
  return dict(budget=budget, frames=frames, resolution=resolution, raw_tokens=raw,
              tokens=min(budget, raw), head=head, **result)


def accuracy_by_budget(model: FluxViT, params, source, *, budgets: Sequence[int],
                       frames: int, resolution: int, batch_size: int,
                       sharding: jax.sharding.Sharding, num_clips: int = 1,
                       num_crops: int = 1) -> list[dict]:
  """`evaluate_grid` of one grid at each budget, in order."""
  return [evaluate_grid(model, params, source, budget=budget, frames=frames,
                        resolution=resolution, batch_size=batch_size, sharding=sharding,
                        num_clips=num_clips, num_crops=num_crops) for budget in budgets]
