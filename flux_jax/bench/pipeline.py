"""Input pipeline speed: steady-state videos/s and clips/s with 0, 1, 2, ... grain workers,
against decoding alone at the same sampling (as the pipeline decodes, skipping what the
sampled frames do not need, and every frame up to the last sampled one), and the CPU
seconds per clip of each stage.

  python -m flux_jax.bench pipeline [--source kinetics_like] [--batch 16] [--seconds 20]
  python -m flux_jax.bench pipeline --source 'my_videos/*.mp4'

Sources: `synthetic_motion` (the demo's clips, a small Flux space), `kinetics_like` (10 s at
25 and 30 fps, short side 320, H.264 at x264's default GOP of 250 frames, moving textured
content; the released recipe's Flux space, SPEC C.1, with 2 clips per video),
`kinetics_like_short_gop` (the same with a keyframe every 15 frames), or a glob of video
files (the recipe's sampling). The Kinetics-like videos are made once and cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import time
from typing import Any, Sequence

import grain
import numpy as np
import psutil

from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.data import synthetic
from flux_jax.data import transforms
from flux_jax.tokens.plan import PlanSampler

# A small Flux space on synthetic_motion-sized clips (112-192 px).
SAMPLER = dict(frames=(4, 18, 2), resolutions=(84, 170, 14), min_tokens=512, max_tokens=1568)
# The released recipe's (SPEC C.1: 6-24 frames, 112-336 px, 2048-6144 tokens).
RECIPE_SAMPLER = dict(frames=(6, 26, 2), resolutions=(112, 364, 28), min_tokens=2048,
                      max_tokens=6144)
SHORT_GOP = 15  # frames between keyframes of kinetics_like_short_gop
# grain's shuffle costs per element what a real dataset would not pay over a few videos
# (its index_shuffle: 1.6 ms over 8 records, 0.54 ms over 24, 4 us over 10,000), so the
# pipeline reads the bench's videos repeated to at least this many records.
SOURCE_RECORDS = 10_000
KINETICS_LIKE = ((25, 320, 426), (30, 320, 568))  # (fps, height, width): 4:3 and 16:9


@dataclasses.dataclass(frozen=True)
class Setup:
  """What one table measures: the videos, the Flux space and clips per decoded video."""
  name: str
  records: list[dict[str, Any]]
  sampler: PlanSampler
  num_sample: int

  def describe(self) -> str:
    frames = [r['num_frames'] for r in self.records]
    return (f'{self.name}: {len(self.records)} videos of {min(frames)}-{max(frames)} frames, '
            f'{len(self.sampler.plans)} Flux plans of {min(self.sampler.frames)}-'
            f'{max(self.sampler.frames)} frames at {min(self.sampler.resolutions)}-'
            f'{max(self.sampler.resolutions)} px, {self.num_sample} clip(s) per video')


def make_source(num_videos: int, seed: int = 0) -> list[dict]:
  """Records of synthetic_motion clips (about 10-20 frames decoded per clip)."""
  records = []
  for i in range(num_videos):
    frames, label = synthetic.make_clip(seed + i)
    records.append({'video': decode.encode_mp4(frames), 'label': label, 'id': f'syn{i}',
                    'num_frames': len(frames)})
  return records


def kinetics_like_frames(seed: int, fps: int, height: int, width: int,
                         seconds: float = 10.0) -> np.ndarray:
  """uint8 `[fps * seconds, height, width, 3]`: a textured background panning and a
  moving disc, so that every frame changes (flat colour would decode unrealistically
  fast)."""
  rng = np.random.default_rng(seed)
  margin = 64
  coarse = rng.integers(0, 256, (1, (height + margin) // 8, (width + margin) // 8, 3),
                        dtype=np.uint8)
  texture = transforms.resize_bilinear(coarse, height + margin, width + margin)[0]
  grain_noise = rng.integers(-20, 21, texture.shape, dtype=np.int16)
  texture = np.clip(texture + grain_noise, 0, 255).astype(np.uint8)
  speed = rng.uniform(0.5, 1.5, 4)
  yy, xx = np.mgrid[0:height, 0:width]
  frames = np.empty((int(fps * seconds), height, width, 3), np.uint8)
  for i in range(len(frames)):
    oy = int(margin / 2 * (1 + np.sin(speed[0] * i / fps)))
    ox = int(margin / 2 * (1 + np.cos(speed[1] * i / fps)))
    frame = texture[oy:oy + height, ox:ox + width].copy()
    cy = height / 2 + height / 4 * np.sin(speed[2] * i / fps * 2)
    cx = width / 2 + width / 3 * np.cos(speed[3] * i / fps * 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (height / 8) ** 2
    frame[disc] = 255 - frame[disc]
    frames[i] = frame
  return frames


def kinetics_like_source(num_videos: int = 8, gop: int | None = None,
                         seconds: float = 10.0, cache_dir: str | None = None
                         ) -> list[dict[str, Any]]:
  """Records of Kinetics-like videos (half 25 fps 4:3, half 30 fps 16:9, short side 320),
  H.264 at `gop` frames between keyframes (None: x264's default), cached in `cache_dir`
  (default ~/.cache/flux_jax/bench)."""
  cache_dir = cache_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'flux_jax', 'bench')
  os.makedirs(cache_dir, exist_ok=True)
  records = []
  for i in range(num_videos):
    fps, height, width = KINETICS_LIKE[i % len(KINETICS_LIKE)]
    name = f'kinetics_like_{i}_{fps}fps_{width}x{height}_{seconds:g}s_gop{gop or "default"}'
    path = os.path.join(cache_dir, name + '.mp4')
    if not os.path.exists(path):
      data = decode.encode_mp4(kinetics_like_frames(i, fps, height, width, seconds), fps=fps,
                               gop=gop)
      with open(path + '.partial', 'wb') as f:
        f.write(data)
      os.replace(path + '.partial', path)
    with open(path, 'rb') as f:
      data = f.read()
    records.append({'video': data, 'label': 0, 'id': name,
                    'num_frames': int(round(fps * seconds))})
  return records


def file_source(pattern: str) -> list[dict[str, Any]]:
  """Records of the video files matching `pattern` (each probed for its frame count);
  unreadable files are skipped and named."""
  records = []
  for path in sorted(glob.glob(os.path.expanduser(pattern))):
    with open(path, 'rb') as f:
      data = f.read()
    try:
      info = decode.probe(data, path)
    except decode.DecodeError as e:
      print(f'bench pipeline: skipped {e}')
      continue
    records.append({'video': data, 'label': 0, 'id': path, 'num_frames': info.num_frames})
  if not records:
    raise ValueError(f'--source {pattern!r}: no readable video file matches')
  return records


def setup(source: str, videos: int | None = None) -> Setup:
  """The Setup of a source name (module doc) or a glob of files."""
  if source == 'synthetic_motion':
    return Setup(source, make_source(videos or 24), PlanSampler.from_config(SAMPLER), 1)
  recipe = PlanSampler.from_config(RECIPE_SAMPLER)
  if source in ('kinetics_like', 'kinetics_like_short_gop'):
    gop = SHORT_GOP if source.endswith('short_gop') else None
    return Setup(source, kinetics_like_source(videos or 8, gop), recipe, 2)
  return Setup(source, file_source(source)[:videos], recipe, 2)


def decode_alone(s: Setup, seconds: float, batch: int, skip: bool = True) -> dict[str, Any]:
  """`decode.decode_frames` alone on the frames the pipeline samples (same plans, TSN
  indices), one video at a time in this thread; `skip=False`: decoding every frame up to
  the last sampled one."""
  videos_per_batch = batch // s.num_sample
  rng = np.random.default_rng(0)
  n, cpu0, t0 = 0, time.thread_time(), time.perf_counter()
  while time.perf_counter() - t0 < seconds or n < len(s.records):
    rec = s.records[n % len(s.records)]
    plan = s.sampler(n // videos_per_batch)
    idx = decode.train_frame_indices(rec['num_frames'], plan.frames, rng)
    decode.decode_frames(rec['video'], idx, rec['id'], rec['num_frames'], skip=skip)
    n += 1
  wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
  name = 'decode alone, skipping' if skip else 'decode alone, every frame to the last sampled'
  return dict(name=name, workers=None, videos_per_s=n / wall,
              clips_per_s=n * s.num_sample / wall,
              cpu={'decode': cpu / (n * s.num_sample)}, producer_cpu=cpu / (n * s.num_sample),
              main_cpu=None, mib_per_batch=None)


def _process_cpu(process: psutil.Process) -> float:
  t = process.cpu_times()
  return t.user + t.system


def _children_cpu(process: psutil.Process) -> float:
  total = 0.0
  for child in process.children(recursive=True):
    with contextlib.suppress(psutil.Error):
      total += _process_cpu(child)
  return total


def pipeline_rate(s: Setup, batch: int, workers: int, threads: int = 0, seconds: float = 20.0,
                  warmup: int | None = None) -> dict[str, Any]:
  """Steady-state rates and CPU seconds per clip of the training pipeline.

  `warmup` batches (default 2 + 2 per worker: worker start-up and buffers filling) are
  consumed before the clock starts; then batches are timed for `seconds` (at least 2
  per worker). CPU: this process (with no workers it is the producer) and its children
  (the workers), from the OS; per stage, from the batches' own counters.
  """
  n_max = s.sampler.max_plan_tokens
  source = grain.MapDataset.source(s.records).repeat(-(-SOURCE_RECORDS // len(s.records)))
  ds = pipeline.train_dataset(source, sampler=s.sampler, global_batch_size=batch,
                              n_max=n_max, num_sample=s.num_sample, seed=0, profile=True)
  warmup = 2 + 2 * workers if warmup is None else warmup
  me = psutil.Process()
  with contextlib.closing(iter(pipeline.host_batches(ds, workers=workers,
                                                     threads=threads))) as it:
    for _ in range(warmup):
      next(it)
    stages = dict.fromkeys(pipeline.STAGES, 0.0)
    clips = nbytes = batches = 0
    main0, kids0, t0 = _process_cpu(me), _children_cpu(me), time.perf_counter()
    while time.perf_counter() - t0 < seconds or batches < max(2, 2 * workers):
      b = next(it)
      batches += 1
      clips += len(b['label'])
      nbytes += sum(v.nbytes for k, v in b.items() if not k.startswith('cpu_'))
      for stage in stages:
        stages[stage] += float(b[f'cpu_{stage}'].sum())
      del b  # grain's shared memory is freed with the array
    wall = time.perf_counter() - t0
    main, kids = _process_cpu(me) - main0, _children_cpu(me) - kids0
  producer = main if workers == 0 else kids
  return dict(name=f'pipeline, {workers} worker{"s" * (workers != 1)}', workers=workers,
              videos_per_s=clips / s.num_sample / wall, clips_per_s=clips / wall,
              cpu={k: v / clips for k, v in stages.items()}, producer_cpu=producer / clips,
              main_cpu=main / clips, mib_per_batch=nbytes / batches / 2**20)


def run(source: str = 'synthetic_motion', batch: int = 16,
        workers: Sequence[int] = (0, 1, 2), seconds: float = 20.0, threads: int = 0,
        videos: int | None = None) -> tuple[Setup, list[dict[str, Any]]]:
  """The decode-alone rows (skipping, then every frame), then one row per worker count."""
  s = setup(source, videos)
  if batch % s.num_sample:
    raise ValueError(f'--batch={batch} must divide by the {s.num_sample} clips per video')
  rows = [decode_alone(s, seconds, batch), decode_alone(s, seconds, batch, skip=False)]
  rows += [pipeline_rate(s, batch, w, threads, seconds) for w in workers]
  return s, rows


def format_table(rows: Sequence[dict[str, Any]], title: str) -> str:
  """Markdown: rates, the share of decoding alone (the first row: the pipeline's decoding
  with nothing else) and of one worker they reach, and CPU milliseconds per clip by
  stage."""
  alone = rows[0]['videos_per_s']
  one = next((r['videos_per_s'] for r in rows if r['workers'] == 1), None)
  stages = ' | '.join(pipeline.STAGES)
  lines = [title,
           f'| what | videos/s | clips/s | x decode alone | x 1 worker | CPU ms per clip: '
           f'{stages} | other (grain, batching, hand-off) | producer total | main process | '
           'MiB per batch |',
           '|---|---|---|---|---|' + '---|' * len(pipeline.STAGES) + '---|---|---|---|']
  ms = lambda x: '' if x is None else f'{1e3 * x:.1f}'
  for r in rows:
    staged = sum(r['cpu'].get(k, 0.0) for k in pipeline.STAGES)
    ratio_one = '' if one is None or r['workers'] is None else f"{r['videos_per_s'] / one:.2f}"
    cells = [r['name'], f"{r['videos_per_s']:.1f}", f"{r['clips_per_s']:.1f}",
             f"{r['videos_per_s'] / alone:.2f}", ratio_one]
    cells += [ms(r['cpu'].get(k)) for k in pipeline.STAGES]
    cells += [ms(None if r['workers'] is None else r['producer_cpu'] - staged),
              ms(r['producer_cpu']), ms(r['main_cpu']),
              '' if r['mib_per_batch'] is None else f"{r['mib_per_batch']:.1f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
