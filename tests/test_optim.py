"""Optimizer, schedule, layer decay and decay mask against SPEC C.5 and a numpy AdamW."""

import math

import jax
import numpy as np
import optax
import pytest

from flux_jax.convert.official import rules_for
from flux_jax.model import abstract_params, init_params, make_model
from flux_jax.model.fluxvit import stack_blocks
from flux_jax.train import optim


def _key(path):
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _flat(tree):
  return {_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _config(**overrides):
  config = dict(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=0, total_steps=100,
                weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, layer_decay=0.75,
                clip_grad=None, depth=2)
  config.update(overrides)
  return config


def test_scaled_lr_matches_the_scripts():
  assert optim.scaled_lr(2e-4, 8, 64, 2) == pytest.approx(8e-4)
  assert optim.scaled_lr(1e-6, 8, 64, 2) == pytest.approx(4e-6)
  assert optim.scaled_lr(1e-3, 4, 2, 1, update_freq=2) == pytest.approx(1e-3 * 16 / 256)


def test_schedule_values():
  peak, low, start = 1e-3, 1e-5, 1e-6
  fn = optim.schedule(peak_lr=peak, min_lr=low, warmup_lr=start, warmup_steps=10,
                      total_steps=110)
  want = {
      0: start,
      4: start + (peak - start) * 4 / 9,
      9: peak,  # np.linspace ends on the peak
      10: peak,  # the cosine starts at the peak again
      60: low + 0.5 * (peak - low),  # half way through 100 cosine steps
      109: low + 0.5 * (peak - low) * (1 + math.cos(math.pi * 99 / 100)),
      500: low + 0.5 * (peak - low) * (1 + math.cos(math.pi * 99 / 100)),  # held
  }
  for step, value in want.items():
    assert float(fn(step)) == pytest.approx(value, rel=1e-5), step


def test_schedule_without_warmup_starts_at_peak():
  fn = optim.schedule(peak_lr=2.0, min_lr=0.0, warmup_lr=0.0, warmup_steps=0, total_steps=4)
  np.testing.assert_allclose([float(fn(s)) for s in range(4)],
                             [2.0, 1 + math.cos(math.pi / 4), 1.0, 1 + math.cos(3 * math.pi / 4)],
                             rtol=1e-6)


def _official_layer_id(name, depth):
  """SPEC C.5 on official state_dict names."""
  if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed.'):
    return 0
  if name.startswith('blocks.'):
    return int(name.split('.')[1]) + 1
  return depth + 1


def _official_decays(name, shape):
  """SPEC C.5: no decay for 1-D tensors, `.bias` names and the no_weight_decay set."""
  return not (len(shape) == 1 or name.endswith('.bias') or name in ('pos_embed', 'cls_token'))


@pytest.fixture(scope='module')
def tiny():
  model = make_model(dict(variant='tiny', num_classes=5))
  return model, init_params(model, jax.random.key(0))


def test_layer_ids_and_mask_follow_the_official_names(tiny):
  """Every official tensor: our id and decay flag equal the official rule on its name."""
  model, params = tiny
  ids = _flat(jax.tree_util.tree_map_with_path(
      lambda p, _: optim.layer_id(tuple(_key(p).split('/')), model.depth), params))
  mask = _flat(optim.decay_mask(params))
  flat = _flat(params)
  rules = rules_for(model)
  assert len(rules) > 50
  for rule in rules:
    key = '/'.join(rule.path)
    shape = rule.to_official(np.zeros(flat[key].shape)).shape
    assert ids[key] == _official_layer_id(rule.official, model.depth), rule.official
    assert mask[key] == _official_decays(rule.official, shape), rule.official
  # pos_embed is split in two of ours: table and cls position (not in the rules).
  for key in ('pos_embed', 'cls_pos', 'cls_token'):
    assert ids[key] == 0 and not mask[key]


def test_decay_mask_named_examples(tiny):
  _, params = tiny
  mask = _flat(optim.decay_mask(params))
  decayed = ['gpe_proj/scale', 'blocks_0/attn/lpe/scale', 'blocks_1/attn/qkv/kernel',
             'blocks_0/attn/proj/kernel', 'patch_embed/proj/kernel', 'head_2/kernel',
             'clip_projector_0/cross_attn/q/kernel', 'final_clip_decoder_for_projs_1/head/kernel']
  kept = ['gpe_proj/bias', 'blocks_0/attn/lpe/bias', 'blocks_0/attn/q_norm/scale',
          'blocks_0/attn/k_norm/scale', 'blocks_0/ls1/gamma', 'blocks_0/norm1/scale',
          'clip_projector_1/cross_attn/v_bias', 'fc_norm/scale', 'head_0/bias', 'pos_embed',
          'cls_token', 'cls_pos', 'patch_embed/norm_before/scale']
  assert all(mask[k] for k in decayed)
  assert not any(mask[k] for k in kept)


def test_small_layer_ids_and_scales():
  params = abstract_params(make_model(dict(variant='small', num_classes=400)))
  scales = _flat(optim.layer_decay_scales(params, 12, 0.75))
  ids = {k: round(math.log(s, 0.75)) for k, s in scales.items()}  # 13 - id
  assert ids['pos_embed'] == ids['cls_pos'] == ids['patch_embed/proj/kernel'] == 13
  assert ids['blocks_0/mlp/fc1/kernel'] == 12 and ids['blocks_11/attn/qkv/kernel'] == 1
  for key in ('gpe_proj/scale', 'head_1/kernel', 'fc_norm/bias', 'clip_projector_2/norm1_q/scale',
              'final_clip_decoder_for_projs_0/head/kernel'):
    assert scales[key] == 1.0, key
  assert sorted(set(ids.values())) == list(range(14))
  with pytest.raises(ValueError, match='depth=4'):
    optim.layer_decay_scales(params, 4, 0.75)


def _toy():
  rng = np.random.default_rng(0)
  shapes = {'pos_embed': (2, 3), 'patch_embed': {'proj': {'kernel': (3, 4), 'bias': (4,)}},
            'blocks_0': {'mlp': {'fc1': {'kernel': (4, 4)}}, 'norm1': {'scale': (4,)}},
            'blocks_1': {'attn': {'lpe': {'scale': (2, 2)}, 'q_norm': {'scale': (2, 2)}}},
            'gpe_proj': {'scale': (3,), 'bias': (3,)}, 'head_0': {'kernel': (4, 2)}}
  make = lambda s: rng.normal(size=s).astype(np.float32)
  is_shape = lambda s: isinstance(s, tuple)
  params = jax.tree.map(make, shapes, is_leaf=is_shape)
  grads = [jax.tree.map(make, shapes, is_leaf=is_shape) for _ in range(2)]
  return params, grads


def _numpy_adamw(params, grads, config, lrs):
  """Independent AdamW with per-parameter lr scale and decay flag (DeepSpeed adam_w_mode)."""
  scale = {'pos_embed': 0.75 ** 3, 'patch_embed/proj/kernel': 0.75 ** 3,
           'patch_embed/proj/bias': 0.75 ** 3, 'blocks_0/mlp/fc1/kernel': 0.75 ** 2,
           'blocks_0/norm1/scale': 0.75 ** 2, 'blocks_1/attn/lpe/scale': 0.75,
           'blocks_1/attn/q_norm/scale': 0.75, 'gpe_proj/scale': 1.0, 'gpe_proj/bias': 1.0,
           'head_0/kernel': 1.0}
  decays = {'patch_embed/proj/kernel', 'blocks_0/mlp/fc1/kernel', 'blocks_1/attn/lpe/scale',
            'gpe_proj/scale', 'head_0/kernel'}
  b1, b2, eps, wd = config['b1'], config['b2'], config['eps'], config['weight_decay']
  p = {k: v.astype(np.float64) for k, v in _flat(params).items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (g_tree, lr) in enumerate(zip(grads, lrs), start=1):
    for k, g in _flat(g_tree).items():
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      step = step + (wd * p[k] if k in decays else 0.0)
      p[k] = p[k] - lr * scale[k] * step
  return p


def test_two_steps_match_numpy_adamw():
  config = _config(total_steps=10)
  params, grads = _toy()
  lrs = [1e-3, 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 10))]
  tx = optim.make_optimizer(config)
  state = tx.init(params)
  step = jax.jit(tx.update)
  p = params
  for g in grads:
    updates, state = step(g, state, p)
    p = optax.apply_updates(p, updates)
  want = _numpy_adamw(params, grads, config, lrs)
  got = _flat(p)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_nan_gradient_is_skipped_and_counted():
  params, (g, _) = _toy()
  tx = optim.make_optimizer(_config())
  state = tx.init(params)
  bad = jax.tree.map(np.copy, g)
  bad['head_0']['kernel'][0, 0] = np.nan
  updates, state = tx.update(bad, state, params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  assert int(optim.skipped_updates(state)) == 1
  # The next finite step is the first real one: it equals a fresh optimizer's first step.
  updates, state = tx.update(g, state, params)
  fresh, _ = tx.update(g, tx.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, updates, fresh)
  assert int(optim.skipped_updates(state)) == 1


def test_clipping_bounds_the_gradient_adam_sees():
  params, (g, _) = _toy()
  g = jax.tree.map(lambda x: x * 100.0, g)
  assert float(optax.global_norm(g)) > 10
  for clip, want in ((0.5, 0.5), (None, float(optax.global_norm(g)))):
    tx = optim.make_optimizer(_config(clip_grad=clip))
    _, state = tx.update(g, tx.init(params), params)
    mu = optax.tree.get(state, 'mu')  # (1 - b1) * the gradient after clipping
    np.testing.assert_allclose(float(optax.global_norm(mu)) / (1 - 0.9), want, rtol=1e-5)


def test_layer_decay_off_equals_unit_scales():
  params, (g, _) = _toy()
  got = [optim.make_optimizer(_config(layer_decay=d)) for d in (None, 1.0)]
  updates = [tx.update(g, tx.init(params), params)[0] for tx in got]
  jax.tree.map(np.testing.assert_array_equal, *updates)


def test_config_errors_name_the_keys():
  with pytest.raises(ValueError, match=r"unknown optimizer config keys \['lr_scale'\]"):
    optim.make_optimizer(_config(lr_scale=2))
  config = _config()
  del config['warmup_lr'], config['eps']
  with pytest.raises(ValueError, match=r"missing optimizer config keys \['eps', 'warmup_lr'\]"):
    optim.make_optimizer(config)
  with pytest.raises(ValueError, match='layer_decay'):
    optim.make_optimizer(_config(layer_decay=1.5))
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.make_optimizer(_config(warmup_steps=200))


def test_variables_dict_is_refused():
  params, _ = _toy()
  with pytest.raises(ValueError, match='no blocks_'):
    optim.layer_decay_scales({'params': params}, 2, 0.75)


def test_frozen_parameters_do_not_move_and_hold_no_optimizer_state():
  """`frozen` regexes (CLIP stage 1: everything but the projectors): zero updates, no
  Adam moments; the others train exactly as without the pattern."""
  params, grads = _toy()
  config = _config(total_steps=10)
  tx = optim.make_optimizer(dict(config, frozen=('^blocks_', r'^patch_embed/')))
  state = tx.init(params)
  moments = _flat(jax.tree.map(np.asarray, state.inner_state))  # arrays only
  assert not any(k.count('blocks_') or k.count('patch_embed') for k in moments), moments
  p = params
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, p)
    p = optax.apply_updates(p, updates)
  got, before, want = _flat(p), _flat(params), _numpy_adamw(params, grads, config, [
      1e-3, 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 10))])
  for k in got:
    if k.startswith(('blocks_', 'patch_embed/')):
      np.testing.assert_array_equal(got[k], before[k], err_msg=k)
    else:  # layer decay scales are the unfrozen tree's
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_no_decay_patterns_add_to_the_official_rule():
  params, _ = _toy()
  tx = optim.make_optimizer(_config(no_decay=('^head_',), weight_decay=0.5, lr=1.0,
                                    min_lr=1.0, warmup_lr=1.0, layer_decay=None))
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)  # only weight decay moves
  flat = _flat(updates)
  assert np.all(np.asarray(flat['head_0/kernel']) == 0)
  assert np.any(np.asarray(flat['blocks_0/mlp/fc1/kernel']) != 0)
  with pytest.raises(Exception, match='unterminated|missing'):
    optim.make_optimizer(_config(frozen=('[',)))


def test_scanned_blocks_get_the_same_per_layer_scales_masks_and_updates(tiny):
  """The stacked layout ('blocks/...', [depth, ...] leaves): layer decay scales are arrays
  along the stacked axis with the unrolled values, the decay mask judges one block's
  tensor, and two AdamW steps move every block exactly as the unrolled tree does."""
  model, params = tiny
  stacked = stack_blocks(params, model.depth)
  assert list(optim.layer_id(('blocks', 'attn', 'qkv', 'kernel'), 2)) == [1, 2]
  scales = optim.layer_decay_scales(stacked, 2, 0.75)
  want = optim.layer_decay_scales(params, 2, 0.75)
  fc1 = scales['blocks']['mlp']['fc1']['kernel']
  assert fc1.shape == (2, 1, 1) and fc1.dtype == np.float32
  for i in range(2):
    for got, w in zip(jax.tree.leaves(scales['blocks']), jax.tree.leaves(want[f'blocks_{i}'])):
      assert got[i].item() == np.float32(w)
  assert scales['head_0']['kernel'] == want['head_0']['kernel']
  for i in range(2):
    assert (jax.tree.leaves(optim.decay_mask(stacked)['blocks']) ==
            jax.tree.leaves(optim.decay_mask(params)[f'blocks_{i}']))

  rng = np.random.default_rng(1)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
           for _ in range(2)]
  for extra in ({}, {'frozen': (r'^patch_embed/',), 'no_decay': (r'/qkv/',)}):
    tx = optim.make_optimizer(_config(total_steps=10, **extra))
    results = []
    for p, gs in ((params, grads), (stacked, [stack_blocks(g, 2) for g in grads])):
      state = tx.init(p)
      for g in gs:
        updates, state = jax.jit(tx.update)(g, state, p)
        p = optax.apply_updates(p, updates)
      results.append(p)
    jax.tree.map(np.testing.assert_array_equal, results[1], stack_blocks(results[0], 2))


def test_single_block_patterns_are_refused_for_scanned_blocks(tiny):
  model, params = tiny
  stacked = stack_blocks(params, model.depth)
  tx = optim.make_optimizer(_config(frozen=(r'^blocks_1/',)))
  with pytest.raises(ValueError, match=r"'\^blocks_1/' names single blocks"):
    tx.init(stacked)
  frozen = optim.matches(stacked, (r'^blocks/',))  # every block in one leaf
  assert all(jax.tree.leaves(frozen['blocks'])) and not frozen['head_0']['kernel']
