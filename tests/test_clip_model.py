"""FluxViT-CLIP: the two towers, the Flux-CLIP loss against numpy, the sharded loss."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from flux_jax import sharding
from flux_jax.model.clip import FluxCLIP, init_clip_params, make_clip_model
from flux_jax.tokens import ClipBatch, patchify
from flux_jax.train import clip as clip_train
from flux_jax.train.state import TrainState
from flux_jax.xla import CompileCounter

BUDGETS = (16, 8)


@pytest.fixture(scope='module')
def model():
  return make_clip_model(dict(
      vision=dict(variant='tiny', num_classes=3, embed_dim=32, clip_embed_dim=32,
                  head_budgets=BUDGETS, num_decoders=1),
      text=dict(variant='tiny'), loss='softmax', temperature_init=0.1))


@pytest.fixture(scope='module')
def params(model):
  return init_clip_params(model, jax.random.key(0))


def _batch(b=8, seed=0, context=16):
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (b, 2, 28, 28, 3), dtype=np.uint8)  # 2 x 2 x 2 = 8 tokens
  tokens = patchify(video, patch_size=14, n_max=12)
  tokens = tokens.replace(video_index=np.asarray([0, 0, 1, 2, 3, 4, 5, 6][:b], np.int32),
                          label=np.zeros((b,), np.int32))
  text = rng.integers(1, 49405, (b, context)).astype(np.int32)
  ends = rng.integers(3, context, b)
  text[np.arange(b), ends] = 49407  # end-of-text: pooled there
  text[np.arange(context)[None] > ends[:, None]] = 0
  return ClipBatch(tokens=tokens, text=text)


def test_two_towers_give_unit_embeddings_and_the_initial_scale(model, params):
  batch = _batch()
  video, text, out = model.apply({'params': params}, batch.tokens, batch.text, budget=8,
                                 head=1)
  assert video.shape == (8, 24) and text.shape == (8, 24)  # tiny text: output_dim 24
  np.testing.assert_allclose(np.linalg.norm(video, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(out['logit_scale']), 10.0, rtol=1e-5)
  assert float(out['logit_bias']) == 0.0
  assert {'vision', 'text', 'vision_align_0', 'vision_align_1', 'logit_scale'} <= set(params)


def _numpy_loss(video, text, ids, scale):
  """InternVideo2's vtc_loss written out in numpy (SPEC G.4)."""
  sim = scale * video @ text.T
  mask = (ids[:, None] == ids[None, :]).astype(np.float64)

  def side(s):
    logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(
        1, keepdims=True)
    return -np.mean(np.sum(logp * mask / mask.sum(1, keepdims=True), axis=1))
  return (side(sim) + side(sim.T)) / 2


def test_clip_loss_is_vtc_per_budget_plus_smooth_l1_to_the_largest(model, params):
  batch = _batch()
  loss, m = clip_train.clip_loss(model, params, batch, jax.random.key(1), budgets=BUDGETS,
                                 train=False)
  ids = np.asarray(batch.tokens.video_index)
  text = np.asarray(model.apply({'params': params}, batch.text, method=FluxCLIP.encode_text),
                    np.float64)
  want, videos = 0.0, []
  for i, budget in enumerate(BUDGETS):
    video, _ = model.apply({'params': params}, batch.tokens, budget=budget, head=i,
                           method=FluxCLIP.encode_video)
    videos.append(np.asarray(video, np.float64))
    want += _numpy_loss(videos[-1], text, ids, 10.0)
  d = np.abs(videos[1] - videos[0])
  want += np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(m['softmax_0']), _numpy_loss(videos[0], text, ids, 10.0),
                             rtol=1e-5)
  assert set(m) >= {'softmax_0', 'softmax_1', 'align_1', 'acc_v2t_0', 'total', 'logit_scale'}


def test_sharded_loss_equals_the_one_device_loss(model, params):
  """The loss sees the global batch on a (data 2, fsdp 2, tensor 2) mesh: equal to one
  device, gradients too."""
  batch = _batch()

  def loss_and_grads(p, b):
    return jax.value_and_grad(lambda q: clip_train.clip_loss(
        model, q, b, jax.random.key(1), budgets=BUDGETS, train=False)[0])(p)

  want_loss, want_grads = jax.jit(loss_and_grads)(params, batch)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  rows = sharding.batch_sharding(mesh)
  sharded = jax.device_put(batch, jax.tree.map(lambda _: rows, batch))
  assert sharded.text.sharding.spec == P(('data', 'fsdp'))
  with sharding.tracing_context(mesh):
    loss, grads = jax.jit(lambda p, b: loss_and_grads(p, b))(params, sharded)
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-4)


def test_one_compile_serves_every_grid_and_the_loss_falls(model, params):
  """The step is one program for the budget set, whatever grid a batch was drawn at;
  on a fixed batch of distinct captions the loss falls."""
  tx = optax.adam(3e-3)
  state = TrainState.create(params, tx)
  step = jax.jit(clip_train.make_flux_clip_step(model, tx, budgets=BUDGETS))
  counter = CompileCounter()
  first = None
  rng = jax.random.key(0)
  for s in range(6):
    batch = _batch(seed=s % 2)
    if s % 2:  # another grid, the same padded shape: 1 x 3 x 2 = 6 tokens of 12
      video = np.random.default_rng(s).integers(0, 256, (8, 1, 42, 28, 3), dtype=np.uint8)
      batch = batch.replace(tokens=patchify(video, patch_size=14, n_max=12).replace(
          video_index=batch.tokens.video_index, label=batch.tokens.label))
    with counter:
      state, m = step(state, batch, rng)
    first = float(m['loss']) if first is None else first
  assert counter.count == 1
  batch = _batch(seed=0)
  for _ in range(20):
    state, m = step(state, batch, rng)
  assert float(m['loss']) < 0.7 * first, (first, float(m['loss']))
