"""Every attention implementation computes what 'xla' computes, values and gradients.

'splash' runs the real Pallas TPU kernel in interpret mode on CPU; 'cudnn' cannot run
here, so its kv-length formulation is checked through jax's XLA path, and the prefix
contract it relies on is checked on patchify, every selector and the distillation subsets.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flux_jax import sharding
from flux_jax.model import attention, init_params, make_model
from flux_jax.model.teacher import TeacherOutput
from flux_jax.tokens import patchify
from flux_jax.tokens.select import SELECTORS, select_tokens
from flux_jax.train import distill


def _inputs(n, lengths, dtype=jnp.float32, heads=2, head_dim=16, seed=0):
  rng = np.random.default_rng(seed)
  b = len(lengths)
  q, k, v = (jnp.asarray(rng.normal(size=(b, n, heads, head_dim)), dtype) for _ in range(3))
  valid = jnp.asarray(np.arange(n)[None] < np.asarray(lengths)[:, None])
  return q, k, v, valid


def _loss(fn, valid):
  """A scalar of every valid query's output, weighted so each output element matters."""
  def loss(q, k, v):
    out = fn(q, k, v).astype(jnp.float32)
    w = jnp.sin(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
    return jnp.sum(out * w * valid[:, :, None, None])
  return loss


def _xla(valid):
  return lambda q, k, v: attention.dot_product_attention(q, k, v, valid, implementation='xla')


IMPLEMENTATIONS = {
    # Small blocks, so that a few dozen tokens span several query and key blocks.
    'chunked': lambda valid: lambda q, k, v: attention.chunked_attention(
        q, k, v, valid, block_q=16, block_k=8),
    'splash': lambda valid: lambda q, k, v: attention.splash_attention(q, k, v, valid),
    'cudnn_lengths': lambda valid: lambda q, k, v: attention.cudnn_attention(
        q, k, v, valid, implementation='xla'),
}


def _compare(fn, ref, q, k, v, valid, rtol, atol):
  out, want = jax.jit(fn)(q, k, v), jax.jit(ref)(q, k, v)
  m = np.asarray(valid)[:, :, None, None]  # padding queries are never read downstream
  np.testing.assert_allclose(np.where(m, out, 0), np.where(m, want, 0), rtol=rtol, atol=atol)
  grads = jax.jit(jax.grad(_loss(fn, valid), argnums=(0, 1, 2)))(q, k, v)
  wants = jax.jit(jax.grad(_loss(ref, valid), argnums=(0, 1, 2)))(q, k, v)
  for name, g, w in zip('qkv', grads, wants):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=rtol, atol=atol, err_msg=f'd{name}')
    if name != 'q':  # padding keys get no gradient
      pad = ~np.asarray(valid)
      assert np.all(np.asarray(g)[pad] == 0), f'd{name} leaks into padding keys'


# Odd token counts, rows with every token valid, a few, and only the cls-like first one;
# 13 and 45 are below and above chunked's test blocks, 45 and 200 below and above
# splash's 128 block.
CASES = [(13, [13, 5, 1]), (45, [45, 17, 1]), (200, [200, 129, 2])]


@pytest.mark.parametrize('name', sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize('n,lengths', CASES, ids=[f'N{n}' for n, _ in CASES])
def test_float32_values_and_gradients_equal_xla(name, n, lengths):
  if name == 'splash' and n == 13:
    pytest.skip('N=45 already covers one splash block')
  q, k, v, valid = _inputs(n, lengths)
  with jax.default_matmul_precision('highest'):
    _compare(IMPLEMENTATIONS[name](valid), _xla(valid), q, k, v, valid, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize('name', ['chunked', 'splash'])
def test_bfloat16_stays_within_bf16_rounding_of_float32(name):
  # bf16 keeps 8 significant bits: inputs are rounded identically for both, the
  # probabilities are rounded to bf16 before the value matmul (as 'xla' does), so outputs
  # of size ~1 may differ by a few bf16 ulps (2^-8 each) from the float32 result. The
  # bound is 4 ulps, and 'xla' in bf16 is held to the same one.
  q, k, v, valid = _inputs(45, [45, 17, 1], jnp.bfloat16)
  exact = _xla(valid)(*(x.astype(jnp.float32) for x in (q, k, v)))
  m = np.asarray(valid)[:, :, None, None]
  for fn in (IMPLEMENTATIONS[name](valid), _xla(valid)):
    out = np.asarray(jax.jit(fn)(q, k, v), np.float32)
    assert out.dtype == np.float32 and fn(q, k, v).dtype == jnp.bfloat16
    np.testing.assert_allclose(np.where(m, out, 0), np.where(m, exact, 0), atol=4 * 2 ** -8)


def test_chunked_memory_is_linear_in_tokens():
  """The compiled chunked backward holds no [N, N] scores: its temporaries grow about
  linearly with N where xla's grow quadratically."""
  def temp(name, n):
    q, k, v, valid = _inputs(n, [n], heads=1, head_dim=8)
    fn = (_xla(valid) if name == 'xla' else
          lambda q, k, v: attention.chunked_attention(q, k, v, valid, block_q=64, block_k=64))
    grad = jax.jit(jax.grad(_loss(fn, valid), argnums=(0, 1, 2)))
    return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
  xla_growth = temp('xla', 2048) / temp('xla', 512)
  chunked_growth = temp('chunked', 2048) / temp('chunked', 512)
  assert xla_growth > 10  # ~16x: [N, N] scores and probabilities
  assert chunked_growth < 6  # ~4x: the [N, HD] arrays and one [64, 64] block


def test_splash_sharded_over_the_mesh_equals_xla():
  """Under the train loop's tracing context splash runs in shard_map over batch (data,
  fsdp) and heads (tensor) of a 2x2x2 mesh, and gives the unsharded result."""
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  q, k, v, valid = _inputs(45, [45, 30, 17, 1], heads=2)
  spec = jax.sharding.NamedSharding(mesh, jax.P(('data', 'fsdp'), None, 'tensor', None))
  placed = [jax.device_put(x, spec) for x in (q, k, v)]
  valid_sh = jax.device_put(valid, jax.sharding.NamedSharding(mesh, jax.P(('data', 'fsdp'))))
  fn = lambda q, k, v, m: attention.dot_product_attention(  # noqa: E731
      q, k, v, m, implementation='splash')
  with sharding.tracing_context(mesh):
    lowered = jax.jit(fn).lower(*placed, valid_sh)
    assert 'shard_map' in lowered.as_text() or 'sdy.manual_computation' in lowered.as_text()
    out = lowered.compile()(*placed, valid_sh)
  with jax.default_matmul_precision('highest'):
    want = _xla(valid)(q, k, v)
  m = np.asarray(valid)[:, :, None, None]
  np.testing.assert_allclose(np.where(m, out, 0), np.where(m, want, 0), rtol=1e-5, atol=2e-6)


def test_auto_picks_by_platform_and_size_on_cpu():
  q, k, v, valid = _inputs(45, [45])
  assert attention.resolve('auto', q, k)[0] == 'xla'
  big = jnp.zeros((1, attention.CHUNKED_MIN_KEYS, 1, 8))
  assert attention.resolve('auto', big, big)[0] == 'chunked'
  assert attention.resolve('splash', q, k) == ('splash', 'requested')
  with pytest.raises(ValueError, match="attention='flash' is not one of"):
    attention.resolve('flash', q, k)
  with pytest.raises(ValueError, match="attention='cudnn'.*NVIDIA GPUs.*cpu"):
    attention.dot_product_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                    v.astype(jnp.bfloat16), valid, implementation='cudnn')


def test_is_prefix_detects_a_hole():
  assert np.asarray(attention.is_prefix(jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool))).all()
  assert not np.asarray(attention.is_prefix(jnp.array([[1, 0, 1, 0]], bool))).any()


def _ragged_tokens(n_max=60):
  """Two clips of different grids in one batch, the second with fewer valid tokens."""
  rng = np.random.default_rng(1)
  a = patchify(rng.integers(0, 256, (1, 4, 42, 56, 3), dtype=np.uint8), n_max=n_max)  # 48
  b = patchify(rng.integers(0, 256, (1, 2, 28, 56, 3), dtype=np.uint8), n_max=n_max)  # 16
  return jax.tree.map(lambda x, y: np.concatenate([x, y]), a, b)


def test_valid_tokens_form_a_prefix_after_patchify_every_selector_and_subset():
  tokens = _ragged_tokens()
  assert np.asarray(attention.is_prefix(jnp.asarray(tokens.valid))).all()
  x = jnp.asarray(np.random.default_rng(2).normal(size=tokens.patches.shape[:2] + (8,)))
  for method in SELECTORS:  # K = 31: odd, and more than the second clip's 16 tokens
    index, keep = select_tokens(x, tokens, 31, method, jax.random.key(0))
    assert np.asarray(attention.is_prefix(keep)).all(), method
    assert not np.asarray(keep[1]).all()  # the second row really has empty slots
  # Distillation: the teacher set, then each subset method on it.
  t_index, t_keep = select_tokens(x, tokens, 40, 'group_dynamic')
  t_set = distill.gather_tokens(tokens, t_index, t_keep)
  assert np.asarray(attention.is_prefix(t_set.valid)).all()
  att = jax.random.uniform(jax.random.key(3), t_keep.shape) * t_keep
  out = TeacherOutput(layers=None, pooled=None, attention=att, index=t_index, valid=t_keep)
  for method in distill.SUBSETS:
    pos, keep = distill.choose_subset(method, 20, out, tokens, x, jax.random.key(4))
    student = distill.gather_tokens(t_set, pos, keep)
    assert np.asarray(attention.is_prefix(student.valid)).all(), method


@functools.lru_cache(maxsize=None)
def _tiny(attention_impl):
  return make_model(dict(variant='tiny', num_classes=7, attention=attention_impl))


def test_model_logits_equal_across_implementations():
  """The tiny model on a ragged batch, kept-all and with an odd budget: every CPU-runnable
  implementation gives the 'xla' logits, pooled features and layer outputs."""
  tokens = jax.device_put(_ragged_tokens(n_max=150))
  params = init_params(_tiny('xla'), jax.random.key(0))
  results = {}
  with jax.default_matmul_precision('highest'):
    for name in ('xla', 'chunked', 'splash'):
      model = _tiny(name)
      results[name] = [
          jax.jit(lambda p, t, budget=budget: model.apply(
              {'params': p}, t, budget=budget, head=1, return_layers=(0, 1)))(params, tokens)
          for budget in (None, 37)]
  for name in ('chunked', 'splash'):
    for (logits, aux), (want_logits, want_aux) in zip(results[name], results['xla']):
      np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(aux['pooled'], want_aux['pooled'], rtol=1e-5, atol=1e-6)
      m = np.concatenate([np.ones((2, 1), bool), np.asarray(aux['kept_valid'])], 1)
      np.testing.assert_allclose(np.where(m[None, ..., None], aux['layers'], 0),
                                 np.where(m[None, ..., None], want_aux['layers'], 0),
                                 rtol=1e-5, atol=1e-6, err_msg=name)


def test_make_model_refuses_an_unknown_attention_and_remat():
  with pytest.raises(ValueError, match="model.attention='flash'"):
    make_model(dict(variant='tiny', num_classes=3, attention='flash'))
  with pytest.raises(ValueError, match="model.remat='some'"):
    make_model(dict(variant='tiny', num_classes=3, remat='some'))
  assert make_model(dict(variant='tiny', num_classes=3, remat=True)).remat == 'full'
  assert make_model(dict(variant='tiny', num_classes=3, remat=False)).remat == 'none'
