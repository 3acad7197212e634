"""Accuracy against token budget on one sampling grid: the model's deployment curve."""

from __future__ import annotations

import functools
from typing import Sequence

import jax

from flux_jax.data import pipeline
from flux_jax.data.to_device import global_batches
from flux_jax.eval.multiview import evaluate
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
    ds = pipeline.eval_dataset(source, frames=frames, resolution=resolution,
                               batch_size=batch_size, num_clips=num_clips,
                               num_crops=num_crops, patch_size=model.patch_size,
                               tubelet_size=model.tubelet_size,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    result = evaluate(functools.partial(step, params), global_batches(ds, sharding))
    rows.append(dict(budget=budget, tokens=min(budget, raw), raw_tokens=raw, head=head,
                     **result))
  return rows
