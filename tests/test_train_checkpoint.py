"""Training checkpoints {state, data} (flux_jax/checkpoint.py) on 8 fake CPU devices."""

import logging
import re

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

from flux_jax import sharding
from flux_jax.checkpoint import CHECKPOINTS, TrainCheckpointer, init_from, save_params
from flux_jax.data import decode
from flux_jax.data.pipeline import train_dataset
from flux_jax.model.fluxvit import abstract_params, make_model, model_config
from flux_jax.tokens.plan import PlanSampler

SAMPLER = PlanSampler(frames=(2, 4), resolutions=(28, 42), min_tokens=8, max_tokens=36, seed=0)


@pytest.fixture(scope='module')
def source():
  """Six real mp4 clips of moving blocks."""
  out = []
  for i in range(6):
    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, (4, 6, 3)).repeat(8, 0).repeat(8, 1)
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(6)]).astype(np.uint8)
    out.append({'video': decode.encode_mp4(frames), 'label': i % 3, 'id': f'clip{i}',
                'num_frames': len(frames)})
  return out


def _iterator(source, start_step=0):
  ds = train_dataset(source, sampler=SAMPLER, global_batch_size=2, n_max=36, seed=3,
                     start_step=start_step)
  return iter(ds.to_iter_dataset())


DATA = {'seed': 3, 'global_batch_size': 2}


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})


def _state(mesh):
  """A toy train state: step counter, params and the state of a real optax.adam step."""
  rng = np.random.default_rng(0)
  shardings = {'dense': {'kernel': NamedSharding(mesh, P('fsdp', 'tensor')),
                         'bias': NamedSharding(mesh, P('tensor'))},
               'scale': sharding.replicated(mesh)}
  params = {'dense': {'kernel': rng.standard_normal((8, 4)), 'bias': rng.standard_normal(4)},
            'scale': rng.standard_normal(3)}
  params = jax.device_put(jax.tree.map(lambda x: x.astype(np.float32), params), shardings)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.sin(x) + 1.0, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return {'step': jnp.asarray(4, jnp.int32), 'params': params, 'opt_state': opt_state}


def _assert_bit_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes()


def _assert_same_batch(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_keep_latest_and_save_every(mesh, tmp_path, monkeypatch):
  state = _state(mesh)
  monkeypatch.chdir(tmp_path.parent)  # a relative workdir (orbax itself wants absolute)
  with TrainCheckpointer(tmp_path.name, keep=1, save_every=2) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(2, state, dict(DATA, step=2))
    assert not ckpt.save(3, state, dict(DATA, step=3))  # not due
    assert ckpt.save(4, state, dict(DATA, step=4))
    ckpt.wait()
    assert ckpt.latest_step() == 4 and ckpt.all_steps() == [4]
  assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ['4']
  with TrainCheckpointer(tmp_path, keep=1, save_every=100) as ckpt:  # a restarted run
    assert ckpt.latest_step() == 4 and ckpt.data() == dict(DATA, step=4)
    assert ckpt.save(5, state, dict(DATA, step=5), force=True)


def test_restore_gives_the_state_in_the_requested_shardings_and_the_next_batch(
    mesh, source, tmp_path):
  state, it = _state(mesh), _iterator(source)
  next(it)
  next(it)
  with TrainCheckpointer(tmp_path, keep=2, save_every=2) as ckpt:
    assert ckpt.save(2, state, dict(DATA, step=2))  # async: the run may move on at once
    want_batches = [next(it), next(it)]

  # Restore into other shardings than the ones saved: kernel and Adam moments transposed.
  def requested(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    spec = P('tensor', 'fsdp') if name.endswith('kernel') else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  abstract = jax.tree_util.tree_map_with_path(requested, state)
  with TrainCheckpointer(tmp_path, keep=2, save_every=2) as ckpt:
    got = ckpt.restore(None, abstract)
    data = ckpt.data()
  assert data == dict(DATA, step=2)
  # The pipeline started at the saved step gives the batches the run went on with.
  fresh = _iterator(source, start_step=data['step'])
  _assert_bit_equal(got, state)
  for g, a in zip(jax.tree.leaves(got), jax.tree.leaves(abstract)):
    assert g.sharding == a.sharding
  assert got['opt_state'][0].mu['dense']['kernel'].sharding.spec == P('tensor', 'fsdp')
  for want in want_batches:
    _assert_same_batch(next(fresh), want)


def test_restore_errors_name_the_workdir(mesh, tmp_path):
  state = _state(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  with TrainCheckpointer(tmp_path, keep=1, save_every=1) as ckpt:
    with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/{CHECKPOINTS}: no checkpoint')):
      ckpt.restore(None, abstract)
    ckpt.save(1, state, dict(DATA, step=1))
    ckpt.wait()
    with pytest.raises(ValueError, match=re.escape('no checkpoint of step 7; have [1]')):
      ckpt.restore(7, abstract)
    bad = dict(abstract, params=dict(abstract['params'], scale=jax.ShapeDtypeStruct(
        (5,), jnp.float32, sharding=sharding.replicated(mesh))))
    with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/{CHECKPOINTS} step 1: the '
                                                   'checkpointed state does not match')) as e:
      ckpt.restore(1, bad)
    assert 'params/scale (3,) float32 (want (5,) float32)' in str(e.value)
    extra = dict(abstract, ema=abstract['params'])
    with pytest.raises(ValueError, match=r"missing: \['ema/dense/bias'"):
      ckpt.restore(1, extra)
    unsharded = dict(abstract, step=jax.ShapeDtypeStruct((), jnp.int32))
    with pytest.raises(ValueError, match='leaf step has no sharding'):
      ckpt.restore(1, unsharded)
    assert int(ckpt.restore(1, abstract)['step']) == 4


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep='/')


def test_init_from_keeps_heads_of_another_class_count(mesh, tmp_path, caplog):
  source = make_model(dict(variant='tiny', num_classes=5))
  shapes = abstract_params(source)
  rng = np.random.default_rng(0)
  official = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  save_params(tmp_path / 'official', official, model_config(source))

  model = make_model(dict(variant='tiny', num_classes=7))
  shardings = sharding.param_shardings(model, mesh)
  # Random values stand in for an init (compiling the init is slow on 8 CPU devices).
  fresh = jax.device_put(jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                                      abstract_params(model)), shardings)
  with caplog.at_level(logging.INFO):
    got = init_from(tmp_path / 'official', fresh)
  assert ('the checkpoint has 5 classes; kept at init: head_0/bias (7,), head_0/kernel (64, 7), '
          'head_1/bias (7,)') in caplog.text
  got, fresh, official, shardings = map(_flat, (got, fresh, official, shardings))
  assert got.keys() == fresh.keys()
  for k, x in got.items():
    assert x.sharding == shardings[k], k
    want = fresh[k] if k.startswith('head_') else official[k]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(want), err_msg=k)

  other = make_model(dict(variant='tiny', num_classes=5, pos_grid=(2, 4, 4)))
  with pytest.raises(ValueError, match=re.escape('pos_embed (4, 4, 4, 64) float32 (want '
                                                 '(2, 4, 4, 64) float32)')):
    init_from(tmp_path / 'official', abstract_params(other))  # fails before values


def test_init_from_starts_a_multi_head_run_from_a_one_head_run_and_back(tmp_path, caplog):
  """SPEC E.3's "Single | Multi" rows: the heads the checkpoint lacks stay at init, those
  the params lack are dropped, everything else comes from the checkpoint."""
  rng = np.random.default_rng(1)
  draw = lambda m: _flat(jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract_params(m)))
  tree = lambda flat: flax.traverse_util.unflatten_dict(flat, sep='/')
  one = make_model(dict(variant='tiny', num_classes=5, head_budgets=(48,)))
  three = make_model(dict(variant='tiny', num_classes=5, head_budgets=(48, 32, 16)))
  saved, fresh = draw(one), draw(three)  # the checkpoint; the init it starts from
  save_params(tmp_path / 'one', tree(saved), model_config(one))
  with caplog.at_level(logging.INFO):
    got = _flat(init_from(tmp_path / 'one', jax.device_put(tree(fresh))))
  assert ('the params for 3 heads; kept at init: clip_projector_1, clip_projector_2, '
          'head_1, head_2; dropped: none') in caplog.text
  assert got.keys() == fresh.keys()
  new = [k for k in got if re.match(r'(head|clip_projector)_[12]/', k)]
  assert new and not any(k in saved for k in new)
  for k, x in got.items():
    np.testing.assert_array_equal(np.asarray(x), fresh[k] if k in new else saved[k],
                                  err_msg=k)

  save_params(tmp_path / 'three', tree(fresh), model_config(three))
  small = draw(one)
  with caplog.at_level(logging.INFO):
    back = _flat(init_from(tmp_path / 'three', jax.device_put(tree(small))))
  assert 'kept at init: none; dropped: clip_projector_1, clip_projector_2, head_1' in caplog.text
  assert back.keys() == small.keys()  # heads 1 and 2 dropped
  for k, x in back.items():
    np.testing.assert_array_equal(np.asarray(x), fresh[k], err_msg=k)
  # Any other difference still fails: a block the checkpoint lacks.
  deeper = make_model(dict(variant='tiny', num_classes=5, head_budgets=(48,), depth=3))
  with pytest.raises(ValueError, match='does not fit the params'):
    init_from(tmp_path / 'one', abstract_params(deeper))
