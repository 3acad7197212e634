"""Accuracy against token budget on one sampling grid: the model's deployment curve."""

from __future__ import annotations

from typing import Sequence

import jax

from flux_jax.eval.multiview import evaluate_dataset
from flux_jax.model.fluxvit import FluxViT
from flux_jax.train.steps import make_eval_step


def accuracy_by_budget(model: FluxViT, params, source, *, budgets: Sequence[int],
                       frames: int, resolution: int, batch_size: int,
                       sharding: jax.sharding.Sharding, num_clips: int = 1,
                       num_crops: int = 1) -> list[dict]:
  """Multi-view top-1/top-5 at each budget, the head chosen by nearest training budget."""
  raw = (frames // model.tubelet_size) * (resolution // model.patch_size) ** 2
  rows = []
  for budget in budgets:
    head = model.nearest_head(budget, raw)
    step = jax.jit(make_eval_step(model, budget=budget, head=head))
    result = evaluate_dataset(step, params, source, model=model, frames=frames,
                              resolution=resolution, batch_size=batch_size,
                              sharding=sharding, num_clips=num_clips, num_crops=num_crops)
    rows.append(dict(budget=budget, tokens=min(budget, raw), raw_tokens=raw, head=head,
                     **result))
  return rows
