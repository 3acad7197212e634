"""Input pipeline speed: clips/s and tokens/s against raw PyAV decoding, and the stall share
when it feeds a FluxViT forward.

  python -m flux_jax.bench pipeline [--batch=4] [--steps=12]
"""

from __future__ import annotations

import contextlib
import functools
import time

import grain
import jax
import numpy as np

from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.data import synthetic
from flux_jax.data.to_device import to_global
from flux_jax.model import init_params, make_model
from flux_jax.tokens.plan import PlanSampler

# A small Flux space on synthetic_motion-sized clips (112-192 px).
SAMPLER = dict(frames=(4, 18, 2), resolutions=(84, 170, 14), min_tokens=512, max_tokens=1568)


def make_source(num_videos: int, seed: int = 0) -> list[dict]:
  records = []
  for i in range(num_videos):
    frames, label = synthetic.make_clip(seed + i)
    records.append({'video': decode.encode_mp4(frames), 'label': label, 'id': f'syn{i}',
                    'num_frames': len(frames)})
  return records


def raw_decode_rate(source, frames: int, clips: int) -> float:
  """Clips/s of PyAV alone decoding `frames` TSN-sampled frames per clip."""
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for i in range(clips):
    rec = source[i % len(source)]
    idx = decode.train_frame_indices(rec['num_frames'], frames, rng)
    decode.decode_frames(rec['video'], idx, rec['id'])
  return clips / (time.perf_counter() - t0)


def _dataset(source, sampler, batch, workers):
  n_max = sampler.max_plan_tokens
  ds = pipeline.train_dataset(source, sampler=sampler, global_batch_size=batch, n_max=n_max,
                              seed=0).to_iter_dataset()
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def _batches(source, sampler, batch, workers):
  """The dataset's iterator, closed on leaving (grain's workers and shared memory)."""
  return contextlib.closing(iter(_dataset(source, sampler, batch, workers)))


def pipeline_rate(source, sampler, batch: int, steps: int, workers: int):
  with _batches(source, sampler, batch, workers) as it:
    next(it)  # start-up (worker spawn) is not steady state
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(steps):
      b = next(it)
      tokens += int(b['valid'].sum())
    dt = time.perf_counter() - t0
  return batch * steps / dt, tokens / dt


def stall_share(source, sampler, batch: int, steps: int, workers: int, variant: str):
  """Share of wall time the training-like loop waits for data (forward only)."""
  model = make_model(dict(variant=variant, num_classes=synthetic.NUM_CLASSES))
  params = init_params(model, jax.random.key(0))
  forward = jax.jit(functools.partial(model.apply, budget=512, head=1))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with _batches(source, sampler, batch, workers) as it:
    jax.block_until_ready(forward({'params': params}, to_global(next(it), sharding)))
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
      w0 = time.perf_counter()
      tokens = to_global(next(it), sharding)
      wait += time.perf_counter() - w0
      jax.block_until_ready(forward({'params': params}, tokens))
    return wait / (time.perf_counter() - t0)


def run(batch: int = 4, steps: int = 12, videos: int = 24, variant: str = 'small'):
  source = make_source(videos)
  sampler = PlanSampler.from_config(SAMPLER)
  mean_frames = int(np.mean([p.frames for p in sampler.plans]))
  rows = [dict(name=f'raw PyAV decode ({mean_frames} frames/clip)',
               clips=raw_decode_rate(source, mean_frames, batch * steps), tokens=None,
               stall=None)]
  for workers in (0, 1, 2):
    clips, tokens = pipeline_rate(source, sampler, batch, steps, workers)
    stall = stall_share(source, sampler, batch, steps, workers, variant)
    rows.append(dict(name=f'pipeline, {workers} workers', clips=clips, tokens=tokens,
                     stall=stall))
  return rows


def format_table(rows, title: str) -> str:
  lines = [title, '| what | clips/s | tokens/s | stall share feeding the forward |',
           '|---|---|---|---|']
  for r in rows:
    tokens = '' if r['tokens'] is None else f"{r['tokens']:.0f}"
    stall = '' if r['stall'] is None else f"{100 * r['stall']:.0f}%"
    lines.append(f"| {r['name']} | {r['clips']:.1f} | {tokens} | {stall} |")
  return '\n'.join(lines)
