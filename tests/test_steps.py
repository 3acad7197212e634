"""Training steps: one compile across plans, learning, exact resume, sharded == 1 device."""

import jax
import numpy as np
import optax
import pytest

from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.data.to_device import global_batches
from flux_jax.eval.multiview import make_eval_step
from flux_jax.model import init_params, make_model
from flux_jax.model.fluxvit import stack_blocks
from flux_jax.tokens.plan import PlanSampler
from flux_jax.train import steps
from flux_jax.train.state import TrainState
from flux_jax.xla import CompileCounter

SAMPLER = PlanSampler(frames=(2, 4, 6), resolutions=(28, 42, 56), min_tokens=8,
                      max_tokens=96, seed=2)  # seed 2 draws 7 plans in the first 8 steps
BUDGETS = (48, 32, 16)


def _clip(seed, t=12):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (8, 10, 3)).repeat(8, 0).repeat(8, 1)
  step = 1 + seed % 3
  return np.stack([np.roll(base, step * i, axis=1) for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope='module')
def source():
  return [{'video': decode.encode_mp4(_clip(i)), 'label': i % 3, 'id': f'c{i}',
           'num_frames': 12} for i in range(8)]


@pytest.fixture(scope='module')
def model():
  return make_model(dict(variant='tiny', num_classes=3))


def _batches(source, n, seed=1):
  ds = pipeline.train_dataset(source, sampler=SAMPLER, global_batch_size=4, n_max=96,
                              seed=seed)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return [b for _, b in zip(range(n), global_batches(ds, sharding))]


@pytest.mark.parametrize('scan_layers', [False, True])
def test_flux_multi_step_compiles_once_across_plans(source, model, scan_layers):
  model = model.clone(scan_layers=scan_layers)
  tx = optax.adamw(1e-3)
  # Committed like the loop's sharded state: jit keys its cache on input placement.
  state = jax.device_put(TrainState.create(init_params(model, jax.random.key(0)), tx),
                         jax.devices()[0])
  step = jax.jit(steps.make_flux_multi_step(model, tx, budgets=BUDGETS, smoothing=0.1),
                 donate_argnums=0)
  batches = _batches(source, 8)
  assert len({tuple(np.asarray(b.grid[0])) for b in batches}) >= 5
  rng = jax.random.key(0)
  losses = []
  with CompileCounter() as counter:
    for tokens in batches:
      state, metrics = step(state, tokens, rng)
      losses.append(float(metrics['loss']))
  assert counter.count == 1
  assert int(state.step) == 8 and np.isfinite(losses).all()
  assert {'ce_0', 'ce_1', 'ce_2', 'align_1', 'align_2'} <= set(metrics)


@pytest.mark.slow  # 30 steps after a compile; make test-slow (test_loop trains in make test)
def test_tiny_model_overfits_a_few_clips(source, model):
  tx = optax.adam(3e-3)
  state = TrainState.create(init_params(model, jax.random.key(1)), tx)
  step = jax.jit(steps.make_flux_multi_step(model, tx, budgets=BUDGETS))
  tokens = _batches(source, 1)[0]
  rng = jax.random.key(0)
  losses = []
  for _ in range(30):
    state, metrics = step(state, tokens, rng)
    losses.append(float(metrics['ce_0']))
  assert losses[-1] < losses[0] / 10, losses


def test_scanned_flux_multi_step_equals_unrolled(source, model):
  """One Flux-Multi step (three budgets, remat inside the scan) from the same params in
  both block layouts: the same loss, gradient norm and updated params. (Drop path draws
  other masks per layout: its rngs are split per scanned layer.)"""
  tx = optax.sgd(0.1)
  tokens = _batches(source, 1)[0]
  params = init_params(model, jax.random.key(0))
  out = {}
  for scan in (False, True):
    m = model.clone(scan_layers=scan, remat='full')
    p = stack_blocks(params, m.depth) if scan else params
    fn = jax.jit(steps.make_flux_multi_step(m, tx, budgets=BUDGETS, smoothing=0.1))
    out[scan] = fn(TrainState.create(p, tx), tokens, jax.random.key(0))
  (want_state, want), (got_state, got) = out[False], out[True]
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got_state.params, stack_blocks(want_state.params, model.depth))


def test_single_step_loss_is_the_cross_entropy(source, model):
  tx = optax.sgd(0.0)
  params = init_params(model, jax.random.key(2))
  state = TrainState.create(params, tx)
  tokens = _batches(source, 1)[0]
  _, metrics = jax.jit(steps.make_flux_single_step(model, tx, budget=32, head=1))(
      state, tokens, jax.random.key(0))
  logits, _ = model.apply({'params': params}, tokens, budget=32, head=1)
  logp = jax.nn.log_softmax(logits)
  want = -np.mean(np.take_along_axis(np.asarray(logp), np.asarray(tokens.label)[:, None], 1))
  np.testing.assert_allclose(float(metrics['loss']), want, rtol=1e-5)


def test_eval_step_probabilities(source, model):
  params = init_params(model, jax.random.key(0))
  tokens = _batches(source, 1)[0]
  out = jax.jit(make_eval_step(model, budget=16, head=2))(params, tokens)
  np.testing.assert_allclose(np.asarray(out['probs']).sum(-1), 1.0, rtol=1e-5)
  assert np.asarray(out['count']).all()


def test_sharded_flux_multi_step_equals_one_device(source, model):
  from flux_jax import sharding  # pylint: disable=g-import-not-at-top
  from flux_jax.train.program import abstract_state  # pylint: disable=g-import-not-at-top
  # SGD keeps the update linear in the gradient: Adam's m / sqrt(v) amplifies the
  # reduction-order noise of near-zero gradients, which is not what this test is about.
  tx = optax.sgd(0.1)
  fn = steps.make_flux_multi_step(model, tx, budgets=BUDGETS, smoothing=0.1)
  tokens = _batches(source, 1)[0]
  rng = jax.random.key(0)
  state = TrainState.create(init_params(model, jax.random.key(0)), tx)
  want_state, want = jax.jit(fn)(state, tokens, rng)

  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  _, state_sh, _ = abstract_state(model, tx, mesh, sharding.DEFAULT_RULES)
  batch_sh = sharding.batch_sharding(mesh)
  sharded_state = jax.device_put(state, state_sh)
  sharded_tokens = jax.device_put(jax.tree.map(np.asarray, tokens), batch_sh)
  got_state, got = jax.jit(fn, in_shardings=(state_sh, batch_sh, None),
                           out_shardings=(state_sh, None))(sharded_state, sharded_tokens, rng)
  assert got_state.params['blocks_0']['mlp']['fc1']['kernel'].sharding.spec == (
      jax.sharding.PartitionSpec('fsdp', 'tensor'))
  np.testing.assert_allclose(float(got['loss']), float(want['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(got['grad_norm']), float(want['grad_norm']), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
