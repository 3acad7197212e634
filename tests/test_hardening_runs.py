"""Runs that go wrong (issue 30, items 4-7 and 9): a diverged run stops and is not
exported, metrics continue from the restored step, a changed input stream is refused,
grain workers are closed on every exit path, and a bad config is refused before step 1.
Tiny synthetic_motion with the debug config on 8 fake devices."""

import gc
import json
import multiprocessing
import os
import re
import time

from absl import flags
import pytest

from flux_jax import config as config_lib
from flux_jax.loop import train_and_evaluate, validate


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, steps=4):
  config = config_lib.load(f'debug:steps={steps},size=tiny,batch=4')
  config.data.data_dir = data_dir
  config.eval.every_steps = -1  # no evaluation unless a test asks for one
  config.checkpoint.every_steps = 1
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.train.mode = 'single'  # one forward to compile
  return config


def resources():
  """What a leak leaves: shared memory and POSIX semaphores (/dev/shm) and child
  processes."""
  return set(os.listdir('/dev/shm')), {p.pid for p in multiprocessing.active_children()}


def settled(before):
  """`resources()` once the garbage is collected: grain unlinks a received batch's shared
  memory when the batch is freed, on a thread of its own. Entries of other processes on
  this machine come and go: a new one counts only if it stays."""
  gc.collect()
  shm, children = resources()
  for _ in range(10):
    if not shm - before[0]:
      break
    time.sleep(0.5)
    shm = shm & resources()[0]
  return shm, children


def assert_no_growth(before):
  shm, children = settled(before)
  assert shm - before[0] == set() and children - before[1] == set()


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------------------ item 4: divergence


def test_a_diverged_run_stops_naming_the_step_and_the_last_good_checkpoint(data_dir,
                                                                            tmp_path):
  config = _config(data_dir, steps=6)
  # The first update moves every param by ~1e35: from step 2 on, the loss is not finite.
  config.optim.update(lr=1e35, warmup_lr=1e35, min_lr=1e35)
  config.train.max_nonfinite_steps = 2
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError,
                     match=r'step 3: the last 2 steps had non-finite gradients \('
                     r'train.max_nonfinite_steps=2\); the run diverged. The last good '
                     r'checkpoint is step 1 in '):
    train_and_evaluate(config, workdir)
  # Allowed to go on, the run reaches its last step non-finite: no params are exported.
  config.train.max_nonfinite_steps = 100
  with pytest.raises(FloatingPointError, match=r'the last 5 steps up to step 6 had '
                     r'non-finite gradients; the params are not exported. Train again from '
                     r'the checkpoint of step 1 or earlier'):
    train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'params'))
  assert _rows(workdir)[-1]['skipped_updates'] == 5


# ------------------------------------- items 5, 6, 7: a run killed, resumed, then changed


class Killed(Exception):
  pass


@pytest.fixture(scope='module')
def killed_and_resumed(data_dir, tmp_path_factory):
  """A run with 2 grain workers killed after logging step 3 (its last checkpoint: step
  2), then resumed to the end; the resources before, after the kill and at the end."""
  config = _config(data_dir)
  config.data.workers = 2
  config.checkpoint.every_steps = 2
  workdir = str(tmp_path_factory.mktemp('killed'))
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  before = resources()

  def progress(line):
    if line.startswith('step 3/'):
      raise Killed(line)

  try:
    train_and_evaluate(config, workdir, progress=progress)
  except Killed:
    # While the error lives, its frames hold grain's objects; its worker processes are
    # already gone.
    held = resources()
  else:
    pytest.fail('the run was not killed')
  killed = settled(before), _rows(workdir)  # the handled error's frames collected
  _, result = train_and_evaluate(config, workdir)
  return dict(config=config, workdir=workdir, before=before, held=held, killed=killed,
              result=result)


def test_metrics_continue_from_the_restored_step(killed_and_resumed):
  run = killed_and_resumed
  first = [r['step'] for r in run['killed'][1]]
  assert first == [1, 2, 3]
  rows = _rows(run['workdir'])
  assert [r['step'] for r in rows] == [1, 2, 3, 4]  # step 3 once: the resumed run's
  assert all(0 <= r['input_wait_share'] <= 1 for r in rows)  # the loop's input stalls
  assert rows[2]['loss'] == run['killed'][1][2]['loss']  # the same batch, the same loss
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(run['workdir'], 'tb'))
  events.Reload()
  assert [e.step for e in events.Scalars('loss')] == [1, 2, 3, 4]


def test_grain_workers_are_closed_on_every_exit_path(killed_and_resumed):
  """Before: the iterator was never closed; prefetched batches stayed in /dev/shm after
  any run with workers, and a failed run's workers ran on."""
  run = killed_and_resumed
  assert run['held'][1] - run['before'][1] == set(), 'workers left running by the error'
  (shm, children), _ = run['killed']
  assert children - run['before'][1] == set()
  assert shm - run['before'][0] == set(), 'shared memory left by the killed run'
  assert_no_growth(run['before'])


@pytest.mark.parametrize('key, value', [
    ('flux.max_tokens', 128), ('flux.frames', (4, 10, 2)), ('data.scale', (0.3, 1.0)),
    ('data.flip', True), ('n_max', 300), ('data.train_split', 'train[:20]')])
def test_a_changed_input_stream_is_refused_naming_the_key(killed_and_resumed, key, value):
  """Before: only seed, global batch and num_sample were compared."""
  config = killed_and_resumed['config'].copy_and_resolve_references()
  config.update_from_flattened_dict({key: value})
  # Another split spec (or a rebuilt dataset) is the dataset's, as the source tells it.
  name = (r"dataset.size: checkpoint 24, config 20\n(.|\n)*dataset.split: checkpoint "
          r"'train', config 'train\[:20\]'" if key == 'data.train_split' else re.escape(key))
  with pytest.raises(ValueError, match=rf'written for another input stream(.|\n)*{name}'):
    train_and_evaluate(config, killed_and_resumed['workdir'])


# ------------------------------------------------------------ item 9: refused up front


@pytest.mark.parametrize('key, value, message', [
    ('train.log_every', 0, r'train.log_every=0 must be an integer >= 1'),
    ('train.max_nonfinite_steps', 0, r'train.max_nonfinite_steps=0 must be'),
    ('eval.resolution', 50, r'eval.resolution=50 is not a multiple of the patch size 14'),
    ('eval.num_crops', 3, r'eval.batch_size=4 must divide by eval.num_crops=3'),
    ('eval.head', 3, r'eval.head=3 is not a head of the model'),
    ('eval.num_clips', 0, r'eval.num_clips=0 must be an integer >= 1'),
    ('checkpoint.keep', 0, r'checkpoint.keep=0 must be'),
    ('data.scale', (0.5, 0.2), r'data.scale=\(0.5, 0.2\) must be'),
    ('n_max', 100, r'n_max=100 is smaller than the largest plan'),
])
def test_validate_names_the_key(data_dir, key, value, message):
  config = _config(data_dir)
  config.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError, match=message):
    validate(config)


def test_bad_eval_and_log_settings_are_refused_before_the_first_step(data_dir, tmp_path):
  """Before: `log_every=0` divided by zero after step 1, a bad eval resolution failed at
  the first evaluation, after training (and before the params export)."""
  for key, value in (('train.log_every', 0), ('eval.resolution', 50)):
    config = _config(data_dir)
    config.eval.every_steps = 0  # at the end
    config.update_from_flattened_dict({key: value})
    workdir = tmp_path / key
    with pytest.raises(ValueError, match=re.escape(key)):
      train_and_evaluate(config, str(workdir))
    assert not workdir.exists()  # refused before anything was written
