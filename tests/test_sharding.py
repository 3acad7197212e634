"""Mesh, logical rules and sharded placement (flux_jax/sharding.py) on 8 fake CPU devices."""

import re

import flax
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

from flux_jax import sharding
from flux_jax.model import dummy_tokens, init_params, layers, make_model, param_specs
from flux_jax.tokens import patchify


@pytest.fixture(scope='module')
def tiny():
  return make_model(dict(variant='tiny', num_classes=5))


@pytest.fixture(scope='module')
def params(tiny):
  return init_params(tiny, jax.random.key(0))


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep='/')


@pytest.mark.parametrize('shape, want', [
    ({'data': -1, 'fsdp': 1, 'tensor': 1}, (8, 1, 1)),
    ({'data': -1}, (8, 1, 1)),  # missing axes are 1
    ({'data': 2, 'fsdp': -1, 'tensor': 2}, (2, 2, 2)),
    ((1, 4, -1), (1, 4, 2)),
    ((2, 2, 2), (2, 2, 2)),
])
def test_make_mesh_shapes(shape, want):
  mesh = sharding.make_mesh(shape)
  assert mesh.axis_names == sharding.MESH_AXES == ('data', 'fsdp', 'tensor')
  assert tuple(mesh.shape.values()) == want
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}


def test_make_mesh_on_given_devices():
  mesh = sharding.make_mesh({'data': -1}, devices=jax.devices()[:4])
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 1, 'tensor': 1}


@pytest.mark.parametrize('shape, message', [
    ({'data': 3, 'fsdp': 1, 'tensor': 1}, 'mesh.data=3, mesh.fsdp=1, mesh.tensor=1 covers 3 '
                                          'devices, but there are 8'),
    ({'data': -1, 'fsdp': 3}, 'mesh.data=-1 cannot fill 8 devices'),
    ({'data': -1, 'fsdp': -1}, 'at most one mesh axis may be -1'),
    ({'data': 8, 'model': 1}, "unknown mesh axes ['model'] (mesh.model)"),
    ({'data': 8, 'tensor': 0}, 'mesh.tensor=0: a mesh size must be positive or -1'),
    ((8, 1), 'needs one size per axis'),
])
def test_make_mesh_errors(shape, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.make_mesh(shape)


def test_fit_spec_drops_axes_that_do_not_divide(mesh):
  batch = P(('data', 'fsdp'))
  assert layers.fit_spec(batch, (8,), mesh) == batch
  assert layers.fit_spec(batch, (2,), mesh) == P(('data',))  # longest dividing prefix
  assert layers.fit_spec(batch, (3,), mesh) == P(None)
  assert layers.fit_spec(P('fsdp', 'tensor'), (4, 5), mesh) == P('fsdp', None)


def test_logical_to_mesh_spec_uses_an_axis_once():
  assert sharding.logical_to_mesh_spec(P('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_mesh_spec(P('clip_embed', 'clip_embed')) == P('fsdp', None)
  assert sharding.logical_to_mesh_spec(P('pos_t', 'pos_h', 'pos_w', 'embed')) == P(
      None, None, None, 'fsdp')


def test_param_shardings_follow_the_rules(tiny, mesh):
  got = _flat(sharding.param_shardings(tiny, mesh))
  assert got.keys() == _flat(param_specs(tiny)).keys()
  assert all(isinstance(s, NamedSharding) and s.mesh == mesh for s in got.values())
  want = {
      'blocks_0/mlp/fc1/kernel': P('fsdp', 'tensor'),
      'blocks_0/mlp/fc1/bias': P('tensor'),
      'blocks_0/mlp/fc2/kernel': P('tensor', 'fsdp'),
      'blocks_1/attn/qkv/kernel': P('fsdp', None, 'tensor', None),
      'blocks_1/attn/proj/kernel': P('tensor', None, 'fsdp'),
      'blocks_0/attn/q_norm/scale': P('tensor', None),
      'clip_projector_0/cross_attn/proj/kernel': P('tensor', 'fsdp'),
      'final_clip_decoder_for_projs_1/head/kernel': P('fsdp', None),
      'head_2/kernel': P('fsdp', None),  # classes replicated
      'patch_embed/proj/kernel': P(None, 'fsdp'),
      'pos_embed': P(None, None, None, 'fsdp'),
  }
  for k, spec in want.items():
    assert got[k].spec == spec, k
  assert got['patch_embed/norm_before/scale'].is_fully_replicated
  assert got['head_0/bias'].is_fully_replicated


def test_param_shardings_replicate_what_does_not_divide(tiny):
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 2, 'tensor': 4})  # tiny has 2 heads
  got = _flat(sharding.param_shardings(tiny, mesh))
  assert got['blocks_0/attn/qkv/kernel'].spec == P('fsdp', None, None, None)
  assert got['blocks_0/attn/lpe/scale'].is_fully_replicated
  assert got['blocks_0/mlp/fc1/kernel'].spec == P('fsdp', 'tensor')  # 256 % 4 == 0
  shapes = _flat(jax.eval_shape(lambda: init_params(tiny, jax.random.key(0))))
  for k, s in got.items():  # every sharded dimension divides
    for dim, entry in zip(shapes[k].shape, s.spec):
      axes = entry if isinstance(entry, tuple) else () if entry is None else (entry,)
      assert dim % int(np.prod([mesh.shape[a] for a in axes])) == 0, k


def test_logical_shardings_of_a_boxed_optimizer_state(tiny, mesh):
  """Adam moments inherit the params' logical boxes; unboxed leaves are replicated."""
  def init():
    boxed = tiny.init({'params': jax.random.key(0)}, dummy_tokens(tiny))['params']
    return {'params': boxed, 'opt_state': optax.adam(1e-3).init(boxed), 'step': 0}
  boxed = jax.eval_shape(init)
  got = sharding.logical_shardings(nn.get_partition_spec(boxed), nn.unbox(boxed), mesh)
  assert got['opt_state'][0].mu['blocks_0']['mlp']['fc1']['kernel'].spec == P('fsdp', 'tensor')
  assert got['opt_state'][0].count.is_fully_replicated and got['step'].is_fully_replicated
  assert got['params'] == sharding.param_shardings(tiny, mesh)


def test_rules_naming_a_missing_mesh_axis_fail(tiny, mesh):
  with pytest.raises(ValueError, match=re.escape("'mlp' -> 'model' names mesh axis 'model'")):
    sharding.param_shardings(tiny, mesh, rules=[('mlp', 'model')])


def test_sharded_forward_equals_unsharded(tiny, params, mesh):
  video = np.random.default_rng(0).integers(0, 256, (4, 4, 28, 42, 3), dtype=np.uint8)
  tokens = patchify(video, patch_size=14, n_max=30)  # 24 valid tokens and 6 padding slots

  def forward(p, t):
    return tiny.apply({'params': p}, t, budget=16)[0]

  want = jax.jit(forward)(params, tokens)
  sharded_params = jax.device_put(params, sharding.param_shardings(tiny, mesh))
  sharded_tokens = jax.device_put(tokens, sharding.batch_sharding(mesh))
  assert sharded_tokens.patches.sharding.spec == P(('data', 'fsdp'))
  got = jax.jit(forward)(sharded_params, sharded_tokens)
  assert got.sharding.mesh == mesh
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_shard_init_gives_the_requested_shardings(tiny, params, mesh):
  got = sharding.shard_init(
      lambda rng: init_params(tiny, rng),
      lambda abstract: sharding.logical_shardings(param_specs(tiny), abstract, mesh),
      jax.random.key(0))
  want = _flat(sharding.param_shardings(tiny, mesh))
  ref = _flat(params)
  for k, x in _flat(got).items():
    assert x.sharding == want[k], k
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref[k]), err_msg=k)
  replicated = sharding.shard_init(lambda: {'w': jax.numpy.ones((4, 4))},
                                   {'w': sharding.replicated(mesh)})
  assert replicated['w'].sharding.is_fully_replicated


def test_rules_in_context_shard_the_activations(tiny, params, mesh):
  """The rules reach the activations: block outputs follow 'activation_length' (sequence
  sharding asked for by a rule) in the compiled program, attention's q/k/v carry 'tensor'
  on their head axis; without the context nothing constrains them."""
  video = np.random.default_rng(0).integers(0, 256, (4, 4, 28, 42, 3), dtype=np.uint8)
  tokens = jax.device_put(patchify(video, patch_size=14), sharding.batch_sharding(mesh))
  rules = sharding.DEFAULT_RULES + (('activation_length', 'tensor'),)

  def layers_of(p, t):  # cls + 15 kept tokens = 16 rows, divisible by tensor = 2
    return tiny.apply({'params': p}, t, budget=15, return_layers=(0, 1))[1]['layers']

  with sharding.tracing_context(mesh, rules):
    lowered = jax.jit(layers_of).lower(params, tokens)
    compiled = lowered.compile()
  want = NamedSharding(mesh, P(None, ('data', 'fsdp'), 'tensor', None))
  assert compiled.output_shardings.is_equivalent_to(want, 4), compiled.output_shardings
  text = lowered.as_text()
  heads = re.findall(r'sharding_constraint[^\n]*\[\{"data", "fsdp"\}, \{\}, \{"tensor"\}, \{\}\]',
                     text)
  assert len(heads) >= 3 * tiny.depth, 'q, k, v of every block split by head over tensor'
  # The mesh without the rules: nothing constrains. A new function, as jit's trace cache
  # does not key on flax's rules context.
  with jax.set_mesh(mesh):
    text = jax.jit(lambda p, t: layers_of(p, t)).lower(params, tokens).as_text()
  assert 'sharding_constraint' not in text


def test_scanned_blocks_shard_like_unrolled(tiny, params, mesh):
  """model.scan_layers: the stacked params keep each block's sharding behind an unsplit
  'layers' axis, the sharded forward equals the unrolled one, and the rules in context
  shard the returned block outputs as they do unrolled."""
  from flux_jax.model.fluxvit import stack_blocks  # pylint: disable=g-import-not-at-top
  scanned, stacked = tiny.clone(scan_layers=True), stack_blocks(params, tiny.depth)
  got = _flat(sharding.param_shardings(scanned, mesh))
  want = _flat(sharding.param_shardings(tiny, mesh))
  for k, s in got.items():
    if k.startswith('blocks/'):
      assert s.spec == P(None, *want[k.replace('blocks/', 'blocks_1/')].spec), k
  assert param_specs(scanned)['blocks']['attn']['qkv']['kernel'] == P(
      layers.LAYERS, 'embed', 'qkv', 'heads', 'kv')

  video = np.random.default_rng(0).integers(0, 256, (4, 4, 28, 42, 3), dtype=np.uint8)
  tokens = jax.device_put(patchify(video, patch_size=14), sharding.batch_sharding(mesh))
  rules = sharding.DEFAULT_RULES + (('activation_length', 'tensor'),)

  def run(model):
    def layers_of(p, t):
      return model.apply({'params': p}, t, budget=15, return_layers=(0, 1))[1]['layers']
    return layers_of

  want = jax.jit(run(tiny))(params, tokens)
  stacked = jax.device_put(stacked, sharding.param_shardings(scanned, mesh))
  with sharding.tracing_context(mesh, rules):
    compiled = jax.jit(run(scanned)).lower(stacked, tokens).compile()
  out = NamedSharding(mesh, P(None, ('data', 'fsdp'), 'tensor', None))
  assert compiled.output_shardings.is_equivalent_to(out, 4), compiled.output_shardings
  got = compiled(stacked, tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
