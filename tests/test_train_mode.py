"""Training-mode forward: drop path, remat, bf16 compute and gradients to every parameter."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from flux_jax.model import init_params, make_model
from flux_jax.tokens import patchify


def _tokens():
  video = np.random.default_rng(0).integers(0, 256, (2, 6, 42, 42, 3), dtype=np.uint8)
  return patchify(video, n_max=60)


def test_gradients_reach_every_used_parameter():
  # Remat gives these same gradients: test_remat_policies_give_the_same_gradients.
  model = make_model(dict(variant='tiny', num_classes=5, drop_path_rate=0.5))
  params = init_params(model, jax.random.key(0))
  tokens = _tokens()

  @functools.partial(jax.jit, static_argnames='train')
  def loss(p, rng, train=True):
    logits, aux = model.apply({'params': p}, tokens, budget=30, head=1, align_proj=0,
                              train=train, rngs={'dropout': rng})
    # A fixed direction: the mean of a LayerNormed unit vector is always 0.
    direction = jnp.linspace(-1.0, 1.0, aux['projected'].shape[-1])
    return jnp.mean(logits ** 2) + jnp.mean(aux['projected'] @ direction)

  grads = jax.grad(loss)(params, jax.random.key(1), train=False)
  grads = flax.traverse_util.flatten_dict(grads)
  unused = ('clip_projector_0', 'clip_projector_2', 'head_0', 'head_2',
            'final_clip_decoder_for_projs_1')
  for path, g in grads.items():
    g = np.asarray(g)
    assert np.isfinite(g).all(), path
    if path[0] not in unused:
      assert np.abs(g).max() > 0, path
  # Drop path is random in training and off in evaluation.
  a, b = loss(params, jax.random.key(1)), loss(params, jax.random.key(2))
  assert float(a) != float(b)
  c, d = (loss(params, jax.random.key(k), train=False) for k in (1, 2))
  assert float(c) == float(d)
  for g in jax.tree.leaves(jax.grad(loss)(params, jax.random.key(3))):
    assert np.isfinite(np.asarray(g)).all()


def test_bfloat16_compute_tracks_float32():
  tokens = _tokens()
  f32 = make_model(dict(variant='tiny', num_classes=5))
  bf16 = make_model(dict(variant='tiny', num_classes=5, dtype='bfloat16'))
  params = init_params(f32, jax.random.key(0))
  apply = functools.partial(jax.jit, static_argnames=('budget',))
  want, _ = apply(lambda p, t, budget: f32.apply({'params': p}, t, budget=budget))(
      params, tokens, budget=30)
  got, aux = apply(lambda p, t, budget: bf16.apply({'params': p}, t, budget=budget))(
      params, tokens, budget=30)
  assert got.dtype == jnp.float32 and aux['pooled'].dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.05 * float(jnp.abs(want).max()))


def test_random_selector_needs_and_uses_its_rng():
  model = make_model(dict(variant='tiny', num_classes=5, selector='random'))
  params = init_params(model, jax.random.key(0))
  tokens = _tokens()
  run = jax.jit(lambda r: model.apply({'params': params}, tokens, budget=20,
                                      rngs={'selection': r})[1]['kept_index'])
  assert not np.array_equal(run(jax.random.key(0)), run(jax.random.key(1)))


def test_remat_policies_give_the_same_gradients():
  """Remat changes what the backward pass keeps, never the gradients; drop path draws the
  same masks when recomputed. Chunked attention (a custom VJP) is rematerialized too."""
  tokens = _tokens()
  results = {}
  for remat, impl in (('none', 'xla'), ('full', 'chunked'),
                      ('dots_with_no_batch_dims_saveable', 'xla')):
    model = make_model(dict(variant='tiny', num_classes=5, drop_path_rate=0.5, remat=remat,
                            attention=impl))
    params = init_params(model, jax.random.key(0))

    def loss(p, model=model):
      logits, _ = model.apply({'params': p}, tokens, budget=30, head=1, train=True,
                              rngs={'dropout': jax.random.key(1)})
      return jnp.mean(logits ** 2)

    with jax.default_matmul_precision('highest'):
      results[remat, impl] = jax.jit(jax.grad(loss))(params)
  want = results['none', 'xla']
  for key, grads in results.items():
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_scanned_remat_policies_give_the_same_gradients():
  """Remat inside nn.scan: each policy recomputes the scanned block's drop path masks
  exactly (per-layer rates and rngs are scanned inputs)."""
  tokens = _tokens()
  results = {}
  for remat in ('none', 'full', 'dots_with_no_batch_dims_saveable'):
    model = make_model(dict(variant='tiny', num_classes=5, drop_path_rate=0.5, remat=remat,
                            scan_layers=True))
    params = init_params(model, jax.random.key(0))

    def loss(p, model=model):
      logits, _ = model.apply({'params': p}, tokens, budget=30, head=1, train=True,
                              rngs={'dropout': jax.random.key(1)})
      return jnp.mean(logits ** 2)

    with jax.default_matmul_precision('highest'):
      results[remat] = jax.jit(jax.grad(loss))(params)
  for remat, grads in results.items():
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(results['none'])):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=remat)


def test_scanned_drop_path_rate_differs_per_block():
  """Rates linear from 0 (block 0) to drop_path_rate (the last block), as unrolled: at
  rate 1 the last block drops both residual branches, block 0 never drops."""
  tokens = _tokens()
  for scan in (False, True):
    model = make_model(dict(variant='tiny', num_classes=5, drop_path_rate=1.0,
                            scan_layers=scan))
    params = init_params(model, jax.random.key(0))
    run = jax.jit(lambda p, rng, train, model=model: model.apply(
        {'params': p}, tokens, budget=30, train=train, return_layers=(0, 1),
        rngs={'dropout': rng})[1]['layers'], static_argnums=2)
    train, evaluation = run(params, jax.random.key(1), True), run(params, jax.random.key(1), False)
    np.testing.assert_array_equal(train[1], train[0])  # the last block passed x through
    np.testing.assert_array_equal(train[0], evaluation[0])  # block 0: rate 0
    assert np.abs(np.asarray(evaluation[1] - evaluation[0])).max() > 0
