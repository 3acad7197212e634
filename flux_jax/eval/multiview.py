"""Multi-view accuracy: softmax averaged over each video's views (SPEC C.7)."""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
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


def evaluate(step: Callable[[TokenBatch], dict], batches: Iterable[TokenBatch]) -> dict:
  """Runs `step(tokens) -> {'probs': [B, C]}` over every batch and aggregates views."""
  agg = ViewAggregator()
  for tokens in batches:
    out = step(tokens)
    agg.add(to_host(out['probs']), to_host(tokens.label), to_host(tokens.video_index),
            to_host(tokens.view))
  return agg.result()


def evaluate_dataset(step: Callable, params, source, *, model: FluxViT, frames: int,
                     resolution: int, batch_size: int, sharding: jax.sharding.Sharding,
                     num_clips: int = 1, num_crops: int = 1) -> dict:
  """Multi-view accuracy of `step(params, tokens)` on every video of `source`."""
  ds = pipeline.eval_dataset(source, frames=frames, resolution=resolution,
                             batch_size=batch_size, num_clips=num_clips, num_crops=num_crops,
                             patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  return evaluate(functools.partial(step, params), global_batches(ds, sharding))
