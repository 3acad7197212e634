"""The training loop end to end on tiny synthetic_motion: runs, logs, resumes exactly."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flux_jax.configs import debug
from flux_jax import checkpoint
from flux_jax.loop import train_and_evaluate


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, steps=6):
  config = debug.get_config(f'steps={steps},size=tiny,batch=4')
  config.data.data_dir = data_dir
  config.checkpoint.every_steps = 1
  config.eval.every_steps = 0
  config.mesh.update(data=2, fsdp=2, tensor=2)  # all three axes on the 8 fake devices
  # Resume does not depend on the mode; Flux-Single compiles one forward, not three.
  config.train.mode = 'single'
  return config


def test_batch_that_does_not_split_over_the_mesh_is_refused(data_dir, tmp_path):
  config = _config(data_dir)
  config.mesh.update(data=8, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match='global_batch_size'):
    train_and_evaluate(config, str(tmp_path))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def _params(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)['params']


def test_resumed_run_continues_exactly(data_dir, tmp_path):
  """A run restarted from its step-3 checkpoint (the straight run's own, as a stopped
  job leaves it) computes the straight run's steps 4-6 bit for bit."""
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  config = _config(data_dir)
  config.checkpoint.keep = 6
  _, result = train_and_evaluate(config, str(straight))
  assert result['step'] == 6 and result['videos'] == 12
  shutil.copytree(straight, resumed)
  for name in ('params', 'tb', 'checkpoints/4', 'checkpoints/5', 'checkpoints/6'):
    shutil.rmtree(resumed / name)
  (resumed / 'metrics.jsonl').unlink()
  train_and_evaluate(config, str(resumed))
  a, b = _losses(straight), _losses(resumed)
  assert sorted(a) == [1, 2, 3, 4, 5, 6] and sorted(b) == [4, 5, 6]
  for step in b:
    assert a[step] == b[step], (step, a[step], b[step])
  _assert_tensorboard_has(straight, a)
  pa, pb = _params(straight, 6), _params(resumed, 6)
  assert jax.tree.structure(pa) == jax.tree.structure(pb)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)
  # The finished run exports its params with what deployment needs.
  model, exported = checkpoint.load_params(resumed / 'params')
  meta = checkpoint.read_config(resumed / 'params')['metadata']
  assert meta['step'] == 6 and meta['class_names'][0] == 'move_left'
  assert meta['eval']['frames'] == _config(data_dir).eval.frames
  assert meta['config']['train']['mode'] == 'single' and model.num_classes == 6
  for x, y in zip(jax.tree.leaves(pb), jax.tree.leaves(exported)):
    np.testing.assert_array_equal(x, y)



def _assert_tensorboard_has(workdir, losses):
  """The event file holds the loss of metrics.jsonl at every step (read back by tensorboard)."""
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(workdir, 'tb'))
  events.Reload()
  seen = {e.step: e.value for e in events.Scalars('loss')}
  assert sorted(seen) == sorted(losses)
  for step, loss in losses.items():
    assert seen[step] == pytest.approx(loss, rel=1e-6)
  assert 'tokens_per_s' in events.Tags()['scalars']
