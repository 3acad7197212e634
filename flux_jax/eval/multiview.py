"""Multi-view accuracy: softmax averaged over each video's views (SPEC C.7).

A video none of whose views decodes is left out of the metric (`videos` counts those in
it) and counted beside it: `unreadable`.
"""

from __future__ import annotations

import functools
from typing import Callable, Hashable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from flux_jax.data import pipeline
from flux_jax.data.to_device import global_batches
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.token_batch import TokenBatch


def to_host(x) -> np.ndarray:
  """The whole of a (possibly multi-host) global array as numpy."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def make_eval_step(model: FluxViT, *, budget: int | None, head: int | None = None):
  """Softmax probabilities per view, for multi-view aggregation (SPEC C.7)."""

  def step(params, tokens: TokenBatch):
    h = model.nearest_head(budget, tokens.patches.shape[1]) if head is None else head
    logits, _ = model.apply({'params': params}, tokens, budget=budget, head=h)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return {'probs': probs, 'count': tokens.video_index >= 0}

  return step


class ViewAggregator:
  """Accumulates per-view probabilities by video index, each (video, view) once."""

  def __init__(self):
    self._probs: dict[int, dict[int, np.ndarray]] = {}
    self._labels: dict[int, int] = {}

  def add(self, probs: np.ndarray, labels: np.ndarray, video_index: np.ndarray,
          view: np.ndarray) -> None:
    for p, y, v, w in zip(probs, labels, video_index, view):
      if v < 0:  # padding row or unreadable video
        continue
      self._probs.setdefault(int(v), {})[int(w)] = p
      self._labels[int(v)] = int(y)

  def result(self) -> dict[str, float]:
    if not self._probs:
      return {'top1': float('nan'), 'top5': float('nan'), 'videos': 0}
    videos = sorted(self._probs)
    mean = np.stack([np.mean(list(self._probs[v].values()), axis=0) for v in videos])
    labels = np.array([self._labels[v] for v in videos])
    order = np.argsort(-mean, axis=1)
    top1 = float(np.mean(order[:, 0] == labels))
    top5 = float(np.mean((order[:, :5] == labels[:, None]).any(axis=1)))
    return {'top1': top1, 'top5': top5, 'videos': len(videos)}


def evaluate_each(steps: Mapping[Hashable, Callable[[TokenBatch], dict]],
                  batches: Iterable[TokenBatch]) -> dict[Hashable, dict]:
  """`evaluate` of several steps in one pass over `batches`: every batch is decoded once
  and serves them all (e.g. one grid at several budgets). Results by the steps' keys."""
  aggs = {key: ViewAggregator() for key in steps}
  batches = iter(batches)
  try:
    for tokens in batches:
      labels, index, view = (to_host(x) for x in (tokens.label, tokens.video_index,
                                                   tokens.view))
      for key, step in steps.items():
        aggs[key].add(to_host(step(tokens)['probs']), labels, index, view)
  finally:  # `views` closes its grain iterator, also when a step fails
    if hasattr(batches, 'close'):
      batches.close()
  return {key: agg.result() for key, agg in aggs.items()}


def evaluate(step: Callable[[TokenBatch], dict], batches: Iterable[TokenBatch]) -> dict:
  """Runs `step(tokens) -> {'probs': [B, C]}` over every batch and aggregates views."""
  return evaluate_each({0: step}, batches)[0]


def views(source, *, model: FluxViT, frames: int, resolution: int, batch_size: int,
          sharding: jax.sharding.Sharding, num_clips: int = 1,
          num_crops: int = 1) -> Iterator[TokenBatch]:
  """Global batches of every view of every video of `source` (SPEC C.7), this process's
  share decoded here. Closing the generator (or exhausting it) closes grain's iterator."""
  ds = pipeline.eval_dataset(source, frames=frames, resolution=resolution,
                             batch_size=batch_size, num_clips=num_clips, num_crops=num_crops,
                             patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  it = iter(ds.to_iter_dataset())
  try:
    yield from global_batches(it, sharding)
  finally:
    it.close()


def with_unreadable(result: Mapping[str, float], source) -> dict:
  """`result` of `source` with `unreadable`: its videos left out of the metric because no
  view of them decoded (the pipeline marks them, never substitutes them)."""
  return {**result, 'unreadable': len(source) - result['videos']}


def evaluate_dataset(step: Callable, params, source, *, model: FluxViT, frames: int,
                     resolution: int, batch_size: int, sharding: jax.sharding.Sharding,
                     num_clips: int = 1, num_crops: int = 1) -> dict:
  """Multi-view accuracy of `step(params, tokens)` on every video of `source`:
  {'top1', 'top5', 'videos' (in the metric), 'unreadable' (left out, see `with_unreadable`)}."""
  return with_unreadable(evaluate(functools.partial(step, params), views(
      source, model=model, frames=frames, resolution=resolution, batch_size=batch_size,
      sharding=sharding, num_clips=num_clips, num_crops=num_crops)), source)
