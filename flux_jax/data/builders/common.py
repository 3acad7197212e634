"""What the TFDS builders share: the record schema, preparing offline and once per job, a
process pool, the manifest of skipped files."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import inspect
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from absl import logging
from etils import epath
import jax
import numpy as np
import tensorflow_datasets as tfds

from flux_jax import hosts

_T = TypeVar('_T')
_R = TypeVar('_R')
_B = TypeVar('_B', bound=tfds.core.DatasetBuilder)
# ordered_map's live worker pools: TFDS holds the generator, so a build that fails keeps
# it (and its workers and semaphores) alive as long as the error; `prepare` closes them.
_POOLS: set[concurrent.futures.Executor] = set()
MANIFEST = 'manifest.json'  # FileListBuilder's files skipped, beside the dataset


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders here: local data only, generated on `num_workers` processes."""

  def __init__(self, *, num_workers: int = 1, **kwargs):
    """`num_workers` processes make the examples; the output does not depend on it."""
    self._num_workers = num_workers
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds this through `importlib_resources`, which it requires only on
    # Python < 3.9, and fails without it (tensorflow/datasets#11212). The module's
    # file is the same answer.
    return epath.Path(inspect.getfile(cls))


class FileListBuilder(LocalBuilder, skip_registration=True):
  """A LocalBuilder of files listed per split (its config has `splits`, source name per
  split, and `short_side`): files that do not load are skipped, never fatal, and listed
  with their reason in MANIFEST in the dataset directory."""

  def __init__(self, **kwargs):
    self._skipped = []  # manifest rows, filled while the splits are generated
    super().__init__(**kwargs)

  def _readable(self, split: str, items: Sequence, jobs, load: Callable):
    """`readable_records` of one split, its skipped files kept for the manifest."""
    yield from readable_records(self.name, split, self.builder_config.splits[split], items,
                                jobs, load, self._num_workers, self._skipped)

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    config = self.builder_config
    (self.data_path / MANIFEST).write_text(json.dumps({
        'config': config.name,
        'sources': dict(config.splits),
        'short_side': config.short_side,
        'num_examples': {s: self.info.splits[s].num_examples for s in config.splits},
        'skipped': self._skipped,
    }, indent=1))
    logging.info('%s: %d files skipped, listed in %s', self.name, len(self._skipped),
                 self.data_path / MANIFEST)


def build_local(builder_cls: Callable[..., _B], config: tfds.core.BuilderConfig,
                data_dir: str, num_workers: int | None) -> _B:
  """`prepare` of `builder_cls(config=config, data_dir=data_dir)` on `num_workers`
  processes (default: one per CPU; above 1 they are spawned, so a calling script needs
  an `if __name__ == '__main__':` guard)."""
  workers = default_workers() if num_workers is None else num_workers
  return prepare(functools.partial(builder_cls, data_dir=data_dir, config=config,
                                   num_workers=workers))


def video_features(label_names: Sequence[str] | None) -> tfds.features.FeaturesDict:
  """The record every builder writes and the pipeline reads.

  `video` holds the encoded file (mp4 bytes) untouched: a scalar object Tensor is
  stored as raw bytes and comes back as `bytes` from `as_data_source` without
  TensorFlow. `id` comes back as bytes too. `label_names=None` leaves the names to be
  restored from a prepared dataset's `label.labels.txt`.
  """
  label = (tfds.features.ClassLabel() if label_names is None
           else tfds.features.ClassLabel(names=list(label_names)))
  return tfds.features.FeaturesDict({
      'video': tfds.features.Tensor(shape=(), dtype=np.object_),
      'label': label,
      'id': tfds.features.Text(),
      'num_frames': tfds.features.Scalar(dtype=np.int32),
      'height': tfds.features.Scalar(dtype=np.int32),
      'width': tfds.features.Scalar(dtype=np.int32),
  })


def record(video: bytes, label: int, video_id: str, info) -> dict:
  """The example of `video_features`; `info` is the `decode.probe` of `video`."""
  return {'video': video, 'label': label, 'id': video_id, 'num_frames': info.num_frames,
          'height': info.height, 'width': info.width}


def prepare(make_builder: Callable[[], _B]) -> _B:
  """Generates array_record files from local data only (no download, no GCS lookup),
  or reuses a finished build; returns the builder.

  Safe for many hosts: on a multi-host job process 0 alone decides the build's state and
  builds while the others wait; then each of them opens the finished build (a shared data
  dir) or, finding none, builds its own (a host-local one). A version directory that a
  killed build left unfinished (`incomplete_reason`) is removed and built again by the
  process that builds, never opened; the others never remove or rebuild what they find.
  """
  def build() -> _B:
    builder = make_builder()
    path = epath.Path(builder.data_dir)
    why = incomplete_reason(path)
    if path.exists() and why:
      logging.warning('%s is half-built (%s): removing it and building again', path, why)
      path.rmtree()
      builder = make_builder()  # the first one read the half-built directory's info
    if jax.process_index() == 0:  # leftovers of killed builds (TFDS renames when done)
      for stale in path.parent.glob(f'incomplete.*_{path.name}'):
        stale.rmtree()
    built, before = not path.exists(), set(_POOLS)
    try:
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
      for pool in set(_POOLS) - before:  # this build's, left open by a failure
        _POOLS.discard(pool)
        pool.shutdown(wait=True, cancel_futures=True)
    logging.info('process %d %s %s', jax.process_index(), 'built' if built else 'reused',
                 path)
    return builder

  def open_built() -> _B:  # after process 0's build
    builder = make_builder()
    if not epath.Path(builder.data_dir).exists():  # a host-local data dir
      return build()
    logging.info('process %d opens %s', jax.process_index(), builder.data_dir)
    return builder
  return hosts.process_zero_first('dataset build',
                                  build if jax.process_index() == 0 else open_built)


def incomplete_reason(path: epath.Path) -> str | None:
  """Why the dataset version directory `path` is not a finished build, None if it is:
  its dataset_info.json and every shard file that it lists must exist."""
  if not path.exists():
    return 'missing'
  if not (path / 'dataset_info.json').exists():
    return 'no dataset_info.json'
  try:
    splits = tfds.builder_from_directory(os.fspath(path)).info.splits
  except Exception as e:  # pylint: disable=broad-exception-caught
    return f'unreadable dataset_info.json: {e}'
  for name, split in splits.items():
    missing = [p for p in split.filepaths if not epath.Path(p).exists()]
    if missing:
      return f'split {name!r} lacks {len(missing)} of {len(split.filepaths)} shard files'
  return None


def default_workers() -> int:
  return os.cpu_count() or 1


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], num_workers: int,
                in_flight_per_worker: int = 8) -> Iterator[_R]:
  """`map(fn, items)` on `num_workers` spawned processes, in order, with bounded memory.

  At most `num_workers * in_flight_per_worker` results wait in memory, so a slow
  consumer never lets encoded videos pile up. `fn` must be a module-level function.
  Spawned (not forked) workers: the parent may hold threads (TFDS, JAX) that fork
  would copy in a broken state.
  """
  if num_workers <= 1:
    yield from map(fn, items)
    return
  context = multiprocessing.get_context('spawn')
  pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context)
  _POOLS.add(pool)
  try:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= num_workers * in_flight_per_worker:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:  # also when the consumer stops early: no queued work runs for nothing
    _POOLS.discard(pool)
    pool.shutdown(wait=True, cancel_futures=True)


def readable_records(builder: str, split: str, source: str, items: Sequence, jobs,
                     load: Callable, num_workers: int, skipped: list):
  """Yields (i, record) of the items `load` reads (in order, `ordered_map` over `jobs`);
  the others are logged and listed in `skipped` as {split, id, file, reason} (the
  manifest's entries). Items have `id` and `file`. A split none of whose items loads is
  refused, naming `source` (the list or annotation file)."""
  kept = 0
  for i, record, reason in ordered_map(load, jobs, num_workers):
    if record is None:
      logging.warning('%s %s: skipping %s: %s', builder, split, items[i].file, reason)
      skipped.append({'split': split, 'id': items[i].id, 'file': items[i].file,
                      'reason': reason})
      continue
    kept += 1
    yield i, record
  logging.info('%s %s: %d videos kept, %d skipped', builder, split, kept, len(items) - kept)
  if not kept:
    raise ValueError(f'{builder} {split} ({source}): none of the {len(items)} listed files '
                     'could be read')
