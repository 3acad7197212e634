"""The grain Flux pipeline: encoded videos in, fixed-shape TokenBatch host batches out.

Training (DESIGN.md 1, 6):
  source -> (source index, record) -> shuffle -> repeat: the global video stream
  -> per video, at its global position: FluxPlan of its step (seed, step) -> decode (PyAV,
     TSN indices) -> random resized crop, flip -> `num_sample` augmented clips
  -> patchify, pad to N_max (uint8) -> this host's rows of each global batch
  -> (multiprocess prefetch)
Evaluation: one element per (video, clip); each yields `num_crops` views.

Every element transform is a picklable class whose randomness comes from an RNG keyed on
(seed, global position in the stream), never on the process: the global batch of step s
holds the same clips with the same augmentation on 1 host or 64, each host decodes only
its rows, and a run resumed at step s (`start_step`) sees the batches an uninterrupted one
would.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from absl import logging
import grain
import numpy as np

from flux_jax.data import decode
from flux_jax.data import tokenizer
from flux_jax.data import transforms
from flux_jax.tokens.plan import PlanSampler
from flux_jax.tokens.token_batch import TokenBatch, pack

# Keys of a host batch: the TokenBatch fields plus pipeline counters.
TOKEN_FIELDS = tuple(f.name for f in dataclasses.fields(TokenBatch))
STAT_FIELDS = ('replaced',)
MAX_REPLACEMENTS = 16
# With `profile`, CPU seconds per stage ride along in fields 'cpu_<stage>': the stages of
# a video (TrainClip), then of its batch (Batcher).
CLIP_STAGES = ('decode', 'crop_resize_flip', 'caption')
STAGES = CLIP_STAGES + ('patchify',)


class _StageClock:
  """CPU seconds of the calling thread spent in each stage; free when off."""

  def __init__(self, on: bool):
    self.on = on
    self.seconds = dict.fromkeys(CLIP_STAGES, 0.0)
    self._last = time.thread_time() if on else 0.0

  def lap(self, stage: str) -> None:
    """Charges the time since the previous lap to `stage`."""
    if self.on:
      now = time.thread_time()
      self.seconds[stage] += now - self._last
      self._last = now


@dataclasses.dataclass(frozen=True)
class _WithSourceIndex:
  """Pairs a record with its source index (grain passes epoch-offset indices upstream)."""
  length: int

  def __call__(self, index: int, record: Any) -> tuple[int, Any]:
    return index % self.length, record


def _source_id(record, index: int) -> str:
  vid = record.get('id', index) if isinstance(record, dict) else index
  return vid.decode() if isinstance(vid, bytes) else str(vid)


def _read_frames(record, index: int, frame_indices) -> np.ndarray:
  """Decodes the frames `frame_indices(num_frames)` picks; DecodeError if unreadable."""
  source = _source_id(record, index)
  length = int(record['num_frames'])
  if length < 1:
    raise decode.DecodeError(f'{source}: empty video')
  return decode.decode_frames(record['video'], frame_indices(length), source, length)


@dataclasses.dataclass(frozen=True)
class Captioner:
  """Picks one of a video's captions for a clip and tokenizes it (FluxViT-CLIP).

  `clean` applies InternVideo2's `pre_text` (SPEC G.3) before CLIP's tokenizer; the
  tokenizer is built once per process (picklable for grain's workers).
  """
  context_length: int = 77
  clean: bool = True

  def __call__(self, captions: Sequence[bytes | str], rng: np.random.Generator,
               source: str) -> np.ndarray:
    """int32 `[context_length]` ids of one caption drawn with `rng`."""
    if len(captions) == 0:
      raise ValueError(f'{source}: the video has no caption')
    text = captions[int(rng.integers(len(captions)))]
    text = text.decode() if isinstance(text, bytes) else str(text)
    return tokenize_captions([text], self.context_length, self.clean)[0]


def tokenize_captions(texts: Sequence[str], context_length: int = 77,
                      clean: bool = True) -> np.ndarray:
  """int32 `[N, context_length]` CLIP ids, after `tokenizer.clean_caption` if `clean`."""
  if clean:
    texts = [tokenizer.clean_caption(t) for t in texts]
  return tokenizer.tokenize(list(texts), context_length)


def _element(clips: np.ndarray, *, label: int, video_index: int, views: np.ndarray,
             replaced: int, text: Sequence[np.ndarray] | None = None
             ) -> dict[str, np.ndarray]:
  """One pipeline element: the clips of one video, uint8 `[S, T, R, R, 3]`, with their
  labels (and with `text`, a caption's ids per clip); `Batcher` makes them tokens."""
  s = len(clips)
  out = dict(clips=clips, label=np.full((s,), label, np.int32),
             video_index=np.full((s,), video_index, np.int32),
             view=np.asarray(views, np.int32), replaced=np.zeros((s,), np.int32))
  out['replaced'][0] = replaced  # counted once per video
  if text is not None:
    out['text'] = np.asarray(text, np.int32)  # [S, L]
  return out


@dataclasses.dataclass(frozen=True)
class Batcher:
  """Elements (clips of one grid) -> a host batch: the TokenBatch fields, every pixel
  copied once into its padded token slot (`token_batch.pack`), and the other fields
  concatenated. With `size`, rows past the elements' are empty (valid False,
  video_index -1); rows of video_index -1 are never valid (unreadable videos in
  evaluation). With `profile`, its CPU seconds go in 'cpu_patchify' (row 0)."""
  patch_size: int
  tubelet_size: int
  n_max: int
  size: int | None = None
  profile: bool = False

  def __call__(self, elements: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    t0 = time.thread_time() if self.profile else 0.0
    tokens = pack([e['clips'] for e in elements], patch_size=self.patch_size,
                  tubelet_size=self.tubelet_size, n_max=self.n_max, size=self.size)
    out = {k: getattr(tokens, k) for k in ('patches', 'coords', 'grid', 'valid')}
    rows = len(out['patches'])
    for k in elements[0]:
      if k == 'clips':
        continue
      v = np.concatenate([e[k] for e in elements])
      if len(v) < rows:
        pad = np.full((rows - len(v),) + v.shape[1:], -1 if k == 'video_index' else 0,
                      v.dtype)
        v = np.concatenate([v, pad])
      out[k] = v
    out['valid'][out['video_index'] < 0] = False
    if self.profile:
      out['cpu_patchify'] = np.zeros((rows,), np.float64)
      out['cpu_patchify'][0] = time.thread_time() - t0
    return out


@dataclasses.dataclass(frozen=True)
class TrainClip:
  """Decodes and augments one video into `num_sample` clips of its batch's plan.

  An undecodable video is replaced by another, drawn deterministically from the element's
  position, and the replacement is counted in the `replaced` field.
  """
  source: Any  # random-access source of records {video, label, id, num_frames}
  sampler: PlanSampler
  videos_per_step: int  # in the global batch
  n_max: int
  num_sample: int = 1
  flip: bool = True
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  seed: int = 0
  captioner: Captioner | None = None  # video-text training: a caption per clip
  profile: bool = False  # CPU seconds per stage in fields 'cpu_<stage>' (bench pipeline)

  def __call__(self, position: int, item: tuple[int, Any]) -> dict[str, np.ndarray]:
    """`position`: the video's place in the global stream (step = position // videos)."""
    clock = _StageClock(self.profile)
    index, record = item
    plan = self.sampler(position // self.videos_per_step)
    rng = np.random.default_rng([self.seed, position])
    frames, index, record, replaced = self._decode(index, record, plan.frames, rng)
    clock.lap('decode')
    r = plan.resolution
    clips = np.empty((self.num_sample, len(frames), r, r, frames.shape[-1]), np.uint8)
    for clip in clips:
      transforms.random_resized_crop(frames, r, rng, self.scale, self.ratio,
                                     flip_p=0.5 * self.flip, out=clip)
      clock.lap('crop_resize_flip')
    text = None
    if self.captioner is not None:
      text = [self.captioner(record['captions'], rng, _source_id(record, index))
              for _ in clips]
    clock.lap('caption')
    out = _element(clips, label=int(record['label']), video_index=index,
                   views=np.arange(self.num_sample), replaced=replaced, text=text)
    if self.profile:
      for stage, seconds in clock.seconds.items():  # once per video, on its first clip
        out[f'cpu_{stage}'] = np.zeros((self.num_sample,), np.float64)
        out[f'cpu_{stage}'][0] = seconds
    return out

  def _decode(self, index, record, t, rng):
    for attempt in range(MAX_REPLACEMENTS + 1):
      try:
        frames = _read_frames(record, index,
                              lambda length: decode.train_frame_indices(length, t, rng))
        return frames, index, record, attempt
      except decode.DecodeError as e:
        logging.warning('skipping video: %s', e)
        index = int(np.random.default_rng([self.seed, index, attempt]).integers(
            len(self.source)))
        record = self.source[index]
    raise RuntimeError(f'{MAX_REPLACEMENTS + 1} videos in a row failed to decode; is the '
                       'dataset readable?')


def train_dataset(source, *, sampler: PlanSampler, global_batch_size: int, n_max: int,
                  num_sample: int = 1, flip: bool = True,
                  scale: tuple[float, float] = (0.08, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), seed: int = 0,
                  process_index: int = 0, process_count: int = 1, start_step: int = 0,
                  num_epochs: int | None = None,
                  captioner: Captioner | None = None,
                  profile: bool = False) -> grain.MapDataset:
  """Host batches of training clips: dicts of numpy arrays, element s is this host's rows
  of the global batch of step `start_step + s`.

  Args:
    process_index, process_count: this host's block of rows and the number of equal
      blocks in a global batch (`to_device.host_rows` reads them off the batch sharding;
      usually the process index and count). Block p holds the global batch's clips
      [p * B / count, (p + 1) * B / count).
    start_step: the first step (a resumed run starts where its checkpoint stopped).
    captioner: for video-text training, each clip also gets a caption of its video
      (records need `captions`), in the field `text`.
    profile: each batch also carries the CPU seconds its videos took per stage
      (`STAGES`), in float64 fields 'cpu_<stage>' (`python -m flux_jax.bench pipeline`).

  Raises:
    ValueError: before anything runs, when N_max cannot hold the largest plan or the
      batch does not divide into blocks and samples.
  """
  if n_max < sampler.max_plan_tokens:
    raise ValueError(f'n_max={n_max} is smaller than the largest plan '
                     f'({sampler.max_plan_tokens} tokens); raise n_max or lower max_tokens')
  if global_batch_size % (process_count * num_sample):
    raise ValueError(f'global_batch_size={global_batch_size} must divide by process_count '
                     f'({process_count}) x num_sample ({num_sample})')
  if len(source) == 0:
    raise ValueError('the training source is empty')
  videos = global_batch_size // num_sample  # per step
  clip = TrainClip(source, sampler, videos, n_max, num_sample, flip, tuple(scale),
                   tuple(ratio), seed, captioner, profile)
  ds = grain.MapDataset.source(source).map_with_index(_WithSourceIndex(len(source)))
  ds = ds.seed(seed).shuffle().repeat(num_epochs)  # the global stream, the same everywhere
  ds = ds.map_with_index(clip)  # keyed on the global position
  ds = ds.batch(videos // process_count, drop_remainder=True,
                batch_fn=Batcher(sampler.patch_size, sampler.tubelet_size, n_max,
                                 profile=profile))
  return ds[start_step * process_count + process_index::process_count]


def host_batches(ds: grain.MapDataset, *, workers: int = 0, threads: int = 0,
                 prefetch: int = 2) -> grain.IterDataset:
  """The batches of `ds` (e.g. `train_dataset`) as an iterable that prepares them ahead.

  Args:
    workers: grain worker processes (`mp_prefetch`); worker w computes batches w, w + n,
      ... and they come back in order, so any count gives the same batches. 0: batches
      are computed in this process, when asked for (the training loop asks while the
      device runs the previous step, which JAX dispatched asynchronously).
    threads: background threads per process computing batches ahead (grain's
      `ReadOptions.num_threads`). Decoding holds the GIL for part of its time, so
      threads do not add cores; they cost CPU in hand-offs (`python -m flux_jax.bench
      pipeline`), and 0 computes each batch in the thread that asks for it.
    prefetch: with threads, the batches each process keeps ready (grain's
      `prefetch_buffer_size`; its default of 500 would hold hundreds of video batches).

  Close the iterator when done (`iter(...).close()`): it stops the workers and frees
  their shared memory.
  """
  if workers < 0 or threads < 0 or prefetch < 0:
    raise ValueError(f'workers={workers}, threads={threads}, prefetch={prefetch} must be '
                     '>= 0')
  out = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                             prefetch_buffer_size=prefetch))
  if workers:
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return out


@dataclasses.dataclass(frozen=True)
class EvalClip:
  """One (video, clip) element: `num_crops` spatial views of one temporal clip (SPEC C.7).

  An undecodable video yields empty views (valid all False, video_index -1), counted in
  `replaced`: evaluation never substitutes another video.
  """
  source: Any
  frames: int
  resolution: int
  num_clips: int
  num_crops: int
  n_max: int
  patch_size: int = 14
  tubelet_size: int = 1

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    """Positions past the last clip are padding: empty views, so that every host runs
    the same number of batches."""
    index, clip = divmod(position, self.num_clips)
    blank = [np.zeros((self.frames, self.resolution, self.resolution, 3), np.uint8)]
    if index >= len(self.source):
      crops, video_index, replaced, label = blank * self.num_crops, -1, 0, 0
    else:
      record = self.source[index]
      video_index, replaced, label = index, 0, int(record['label'])
      try:
        frames = _read_frames(record, index, lambda length: decode.eval_frame_indices(
            length, self.frames, clip, self.num_clips))
        crops = transforms.spatial_crops(frames, self.resolution, self.num_crops)
      except decode.DecodeError as e:
        logging.warning('evaluation: unreadable video: %s', e)
        crops, video_index, replaced = blank * self.num_crops, -1, 1
    return _element(np.stack(crops), label=label, video_index=video_index,
                    views=np.arange(self.num_crops) + clip * self.num_crops,
                    replaced=replaced)


def eval_dataset(source, *, frames: int, resolution: int, batch_size: int,
                 num_clips: int = 1, num_crops: int = 1, n_max: int | None = None,
                 patch_size: int = 14, tubelet_size: int = 1, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """Host batches of evaluation views, `num_clips x num_crops` per video, in order.

  Process p decodes clips p, p + count, ...; every process gets the same number of
  elements and batches (the last ones padded with empty rows, video_index -1), so all
  run the same global steps and one compiled step serves every batch.
  """
  if resolution % patch_size:
    raise ValueError(f'eval resolution {resolution} is not a multiple of the patch size '
                     f'{patch_size}')
  n = (frames // tubelet_size) * (resolution // patch_size) ** 2
  n_max = n if n_max is None else n_max
  if n_max < n:
    raise ValueError(f'n_max={n_max} cannot hold {frames}x{resolution}^2 ({n} tokens)')
  if batch_size % num_crops:
    raise ValueError(f'eval batch_size={batch_size} must divide by num_crops={num_crops}')
  view = EvalClip(source, frames, resolution, num_clips, num_crops, n_max, patch_size,
                  tubelet_size)
  per_host = -(-len(source) * num_clips // process_count)
  ds = grain.MapDataset.range(per_host * process_count)[process_index::process_count]
  per_batch = batch_size // num_crops
  return ds.map(view).batch(per_batch, batch_fn=Batcher(patch_size, tubelet_size, n_max,
                                                         size=batch_size))
