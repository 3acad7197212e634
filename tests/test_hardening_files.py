"""Files and processes (issue 30, items 3, 5, 7, 8): the params export is atomic, builds
are decided by one process and never open an unfinished directory, evaluation counts
the videos it could not read, and evaluation, `bench pipeline` and dataset builds leave
nothing behind."""

import logging
import os
import shutil

from absl import flags
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from flux_jax import checkpoint
from flux_jax import hosts
from flux_jax.bench import pipeline as bench_pipeline
from flux_jax.configs import debug
from flux_jax.data import decode
from flux_jax.data.builders import common
from flux_jax.data.builders import synthetic_motion
from flux_jax.data.builders import video_csv
from flux_jax.data.sources import open_builder
from flux_jax.eval import budgets as budgets_lib
from flux_jax.eval import multiview
from flux_jax.eval import token_optimization as to_lib
from flux_jax.model.fluxvit import abstract_params, init_params, make_model, model_config
from test_hardening_runs import assert_no_growth, resources, settled


# ------------------------------------------------------- item 5: atomic params export


def _random_params(model, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                      abstract_params(model))


def _assert_params(directory, want):
  _, got = checkpoint.load_params(directory)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_a_failed_params_export_leaves_the_old_params_loadable(tmp_path, monkeypatch):
  """Before: orbax's force=True deleted the old params, then wrote; a failure (or a kill)
  in the write lost both."""
  model = make_model(dict(variant='tiny', num_classes=3))
  old, new = _random_params(model, 0), _random_params(model, 1)
  path = tmp_path / 'params'
  checkpoint.save_params(path, old, model_config(model))
  write = ocp.CompositeCheckpointHandler.save

  def dies_half_way(self, directory, *args, **kwargs):
    write(self, directory, *args, **kwargs)  # the arrays are on disk, not finalized
    raise OSError('No space left on device')

  monkeypatch.setattr(ocp.CompositeCheckpointHandler, 'save', dies_half_way)
  with pytest.raises(OSError, match='No space left'):
    checkpoint.save_params(path, new, model_config(model), overwrite=True)
  _assert_params(path, old)
  monkeypatch.undo()
  checkpoint.save_params(path, new, model_config(model), overwrite=True)
  _assert_params(path, new)
  assert sorted(os.listdir(tmp_path)) == ['params']  # no .partial or .replaced left

  # Killed between the two renames: the old params wait beside, whole; readers take them
  # and the next export finishes the swap.
  os.rename(path, tmp_path / 'params.replaced')
  _assert_params(path, new)
  checkpoint.save_params(path, old, model_config(model), overwrite=True)
  _assert_params(path, old)
  assert sorted(os.listdir(tmp_path)) == ['params']


# ------------------------------------------------- item 8: builds and version dirs


def _info_stamp(path):
  st = os.stat(path / 'dataset_info.json')
  return st.st_ino, st.st_mtime_ns


def test_only_process_0_judges_a_shared_build(tmp_path, monkeypatch):
  """Before: after process 0's barrier every other process judged the shared build and,
  on any doubt (any exception counted as half-built), deleted and rebuilt it."""
  config = synthetic_motion.sized(4, 2)
  built = synthetic_motion.build(config, str(tmp_path / 'shared'), 1)
  stamp = _info_stamp(built.data_path)
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: 2)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: 1)
  monkeypatch.setattr(hosts, 'barrier', lambda *a, **k: None)  # process 0 is done
  real_reason = common.incomplete_reason
  monkeypatch.setattr(common, 'incomplete_reason', lambda path: 'a read that failed once')
  opened = synthetic_motion.build(config, str(tmp_path / 'shared'), 1)
  assert _info_stamp(opened.data_path) == stamp  # neither removed nor rebuilt
  assert len(opened.as_data_source('train')) == 4
  # A host-local data dir where process 0's build is not to be seen: this host builds.
  monkeypatch.setattr(common, 'incomplete_reason', real_reason)
  local = synthetic_motion.build(config, str(tmp_path / 'local'), 1)
  assert len(local.as_data_source('validation')) == 2


def test_open_builder_takes_the_newest_finished_version(tmp_path, caplog):
  """Before: `sorted(os.listdir())[-1]`, so a killed build's `incomplete.*` directory
  (or '1.10.0' < '1.9.0') won."""
  root = tmp_path / 'videos'
  for i in range(2):
    rng = np.random.default_rng(i)
    root.mkdir(exist_ok=True)
    (root / f'{i}.mp4').write_bytes(decode.encode_mp4(
        np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 4, 0)))
  listed = tmp_path / 'train.txt'
  listed.write_text('0.mp4 0\n1.mp4 1\n')
  data_dir = tmp_path / 'data'
  config = video_csv.VideoCsvConfig(name='two', root=str(root), splits={'train': str(listed)})
  video_csv.build(config, str(data_dir), num_workers=1)
  versions = data_dir / 'video_csv' / 'two'
  good = versions / '1.0.0'
  for name in ('incomplete.QX7T2A_1.0.0', '1.10.0'):  # each a copy without its shards
    shutil.copytree(good, versions / name)
    for shard in (versions / name).glob('*.array_record-*'):
      shard.unlink()
  data = dict(name='video_csv', config='two', data_dir=str(data_dir))
  with caplog.at_level(logging.WARNING):
    builder = open_builder(data)
  assert builder.data_dir == str(good)
  assert "1.10.0 is not a finished build (split 'train' lacks 1 of 1 shard files)" in (
      caplog.text)
  assert len(builder.as_data_source('train')) == 2
  shutil.rmtree(good)
  with pytest.raises(ValueError, match=r"data.config='two': no finished build"):
    open_builder(data)


# -------------------------------------------- item 3: unreadable videos, counted


@pytest.fixture(scope='module')
def tiny_model():
  config = debug.get_config()
  model = make_model(config.model)
  return model, init_params(model, jax.random.key(0))


def test_evaluation_counts_the_videos_it_could_not_read(tiny_model):
  model, params = tiny_model
  source = bench_pipeline.make_source(4)
  source[2] = dict(source[2], video=b'\x00\x00\x00\x18ftypmp42 not a video')
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  grid = dict(frames=4, resolution=56, batch_size=2, sharding=sharding)
  before = resources()
  result = multiview.evaluate_dataset(
      jax.jit(multiview.make_eval_step(model, budget=None)), params, source, model=model,
      **grid)
  assert result['videos'] == 3 and result['unreadable'] == 1
  rows = budgets_lib.accuracy_by_budget(model, params, source, budgets=(64, 32), **grid)
  assert [(r['videos'], r['unreadable']) for r in rows] == [(3, 1), (3, 1)]
  assert budgets_lib.markdown_table(rows).splitlines()[2].endswith('| 3 | 1 |')
  rows = to_lib.search(model, params, source, budgets=(32,), frames=(4,), resolutions=(56,),
                       plain_resolution=56, **{k: v for k, v in grid.items()
                                               if k not in ('frames', 'resolution')})
  assert [(r['frames'], r['unreadable']) for r in rows] == [(2, 1), (4, 1)]  # plain, TO
  assert list(rows[0]) == list(to_lib.FIELDS)
  table = to_lib.markdown_table(rows).splitlines()
  assert '| videos | unreadable |' in table[0] and '| 3 | 1 |' in table[2]
  assert_no_growth(before)


# --------------------------------------- item 7: bench pipeline and builds, no leaks


def test_bench_pipeline_closes_its_workers_on_every_exit_path(monkeypatch):
  """Before: its iterators were left to the garbage collector; a measurement that failed
  (^C, an error) kept the workers running as long as its error lived."""
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  before = resources()
  setup, rows = bench_pipeline.run('synthetic_motion', batch=2, workers=(0, 2),
                                   seconds=0.1, videos=4)
  assert [r['name'] for r in rows][2:] == ['pipeline, 0 workers', 'pipeline, 2 workers']
  assert_no_growth(before)

  def fails(process):
    raise RuntimeError('injected')

  monkeypatch.setattr(bench_pipeline, '_children_cpu', fails)  # inside the measurement
  try:
    bench_pipeline.pipeline_rate(setup, 2, workers=2, seconds=0.1)
  except RuntimeError:
    children = resources()[1]  # while the error (and its frames) lives
  else:
    pytest.fail('the measurement did not fail')
  assert children - before[1] == set()
  assert_no_growth(before)


def test_a_failed_build_leaves_no_workers_or_semaphores(tmp_path, monkeypatch):
  """Before: TFDS holds the examples' generator; a build that failed kept its process
  pool (2 workers, their semaphores in /dev/shm) as long as its error lived."""
  before = resources()
  synthetic_motion.build(synthetic_motion.sized(4, 2), str(tmp_path / 'ok'), 2)
  assert_no_growth(before)
  encode = tfds.features.FeaturesDict.encode_example
  count = iter(range(100))

  def fails_on_the_third(self, example):
    if next(count) == 2:
      raise RuntimeError('injected')
    return encode(self, example)

  monkeypatch.setattr(tfds.features.FeaturesDict, 'encode_example', fails_on_the_third)
  try:
    synthetic_motion.build(synthetic_motion.sized(12, 2), str(tmp_path / 'fails'), 2)
  except RuntimeError:
    # While the error (and TFDS's generator) lives; an entry counts only if it stays, as
    # the other test process may be creating its own semaphores meanwhile.
    shm, children = settled(before)
  else:
    pytest.fail('the build did not fail')
  assert children == before[1] and {n for n in shm - before[0] if n.startswith('sem.')} == set()
