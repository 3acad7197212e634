"""The distillation teacher: targets against the PyTorch reference, IV2-style configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flux_jax import checkpoint
from flux_jax.convert.official import load_official_checkpoint
from flux_jax.model.fluxvit import (abstract_params, init_params, make_model, model_config)
from flux_jax.model.teacher import Teacher
from flux_jax.tokens import patchify
import reference_torch

TINY = dict(embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=64,
            num_classes=5, num_frames=4, img_size=56)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope='module')
def pair():
  tm = reference_torch.init_perturbed_(
      reference_torch.TorchFluxViT(mlp_activation='gelu_tanh', **TINY).eval(), 0)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  model, params = load_official_checkpoint(sd, variant='tiny', num_classes=5, num_frames=4,
                                           mlp_activation='gelu_tanh')
  return tm, model, params


@pytest.mark.parametrize('budget', [None, 48])
def test_targets_match_torch_reference(pair, budget):
  """Block outputs (cls first), projector output and its attention, at the kept tokens."""
  tm, model, params = pair
  # 12 frames: 4 groups of 3, where the reference selector is defined (SPEC B.2).
  video = np.random.default_rng(1).normal(size=(2, 12, 42, 42, 3)).astype(np.float32)
  blocks, pool_in = [], {}
  hooks = [b.register_forward_hook(lambda m, i, o: blocks.append(o.numpy()))
           for b in tm.blocks]
  hooks.append(tm.clip_projector[1].cross_attn.register_forward_hook(
      lambda m, i, o: pool_in.update(q=i[0], k=i[1])))
  with torch.no_grad():
    _, z = tm(torch.from_numpy(video).permute(0, 4, 1, 2, 3), output_head=1, return_cls=True,
              keep_per_group=None if budget is None else budget // 4)
    ca = tm.clip_projector[1].cross_attn
    q = torch.nn.functional.linear(pool_in['q'], ca.q.weight, ca.q_bias)  # [B, 1, C]
    k = torch.nn.functional.linear(pool_in['k'], ca.k.weight, ca.k_bias)  # [B, N, C]
    q, k = q.reshape(2, 1, 4, 16).transpose(1, 2), k.reshape(2, -1, 4, 16).transpose(1, 2)
    attn = ((q * ca.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)[:, 0, 1:].numpy()
  for h in hooks:
    h.remove()

  out = jax.jit(lambda p, t: Teacher(model, (1, 0), head=1).apply({'params': p}, t,
                                                                    budget=budget))(
      params, patchify(video))
  want_layers = _unit(np.stack([blocks[1], blocks[0]]))
  np.testing.assert_allclose(out.layers, want_layers, atol=2e-5)
  np.testing.assert_allclose(out.pooled, _unit(z.numpy()), atol=2e-5)
  np.testing.assert_allclose(out.attention, attn, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.layers), axis=-1), 1.0, rtol=1e-5)
  if budget is not None:
    np.testing.assert_array_equal(out.index, tm.last_kept_index.numpy())


def test_readouts_leave_the_forward_unchanged(pair):
  _, model, params = pair
  tokens = patchify(np.random.default_rng(2).normal(size=(2, 4, 56, 56, 3)).astype(np.float32))
  a, aux_a = model.apply({'params': params}, tokens, budget=24, head=2)
  b, aux_b = model.apply({'params': params}, tokens, budget=24, head=2, return_layers=(0,),
                         return_attention=True)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(aux_a['pooled'], aux_b['pooled'])
  np.testing.assert_allclose(np.asarray(aux_b['attention']).sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match='return_layers'):
    model.apply({'params': params}, tokens, return_layers=(2,))


def test_iv2_style_flags_drop_dpn_gpe_lpe():
  """Without GPE proj and LPE the model equals one whose GPE proj is the identity and
  whose LPE is 0 (both official init-free forms of "absent")."""
  base = dict(variant='tiny', num_classes=3, embed_dim=32, num_heads=2, attn_pool_num_heads=2,
              clip_embed_dim=32, dual_norm_in_patch_embed=False, layerscale_init=1.0)
  iv2 = make_model(dict(base, use_gpe_proj=False, use_lpe=False))
  full = make_model(base)
  params = init_params(full, jax.random.key(0))
  assert 'norm_before' not in params['patch_embed'] and 'norm' not in params['patch_embed']
  for i in range(full.depth):
    lpe = params[f'blocks_{i}']['attn']['lpe']
    lpe['scale'] = jnp.zeros_like(lpe['scale'])
  stripped = {k: v for k, v in params.items() if k != 'gpe_proj'}
  for i in range(full.depth):
    stripped[f'blocks_{i}'] = dict(params[f'blocks_{i}'], attn={
        k: v for k, v in params[f'blocks_{i}']['attn'].items() if k != 'lpe'})
  assert jax.tree.structure(stripped) == jax.tree.structure(abstract_params(iv2))
  tokens = patchify(np.random.default_rng(3).integers(0, 256, (2, 4, 42, 42, 3), np.uint8))
  want, _ = full.apply({'params': params}, tokens, budget=20)
  got, _ = iv2.apply({'params': stripped}, tokens, budget=20)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_iv2_1b_teacher_config():
  model = make_model(dict(variant='iv2_1b', num_classes=1))
  shapes = abstract_params(model)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert 1.0e9 < count < 1.05e9, count  # "1B" (SPEC D.2)
  block = shapes['blocks_39']
  assert block['mlp']['fc1']['kernel'].shape == (1408, 6144)
  assert block['attn']['qkv']['kernel'].shape == (1408, 3, 16, 88)
  assert set(block['attn']) == {'qkv', 'q_norm', 'k_norm', 'proj'}  # no LPE
  assert 'gpe_proj' not in shapes and set(shapes['patch_embed']) == {'proj'}
  assert 'clip_projector_1' not in shapes and shapes['pos_embed'].shape == (8, 16, 16, 1408)


def test_a_saved_model_serves_as_teacher(tmp_path):
  """Any flux_jax params checkpoint (e.g. a run's WORKDIR/params) is a teacher as is."""
  model = make_model(dict(variant='tiny', num_classes=3, embed_dim=32, num_heads=2,
                          attn_pool_num_heads=2, clip_embed_dim=32))
  params = init_params(model, jax.random.key(1))
  checkpoint.save_params(tmp_path / 'p', params, model_config(model))
  loaded_model, loaded = checkpoint.load_params(tmp_path / 'p')
  tokens = patchify(np.random.default_rng(4).integers(0, 256, (2, 4, 42, 42, 3), np.uint8))
  teacher = Teacher(loaded_model, (1,), head=0)
  out = teacher.apply({'params': loaded}, tokens, budget=16)
  _, aux = model.apply({'params': params}, tokens, budget=16, return_layers=(1,))
  np.testing.assert_allclose(out.layers, _unit(aux['layers']), atol=1e-6)
  assert out.attention.shape == (2, 16) and out.index.shape == (2, 16)


def test_an_unrolled_checkpoint_serves_a_scanned_teacher(tmp_path):
  """Flux-UMT's teacher follows the student's model.scan_layers whatever layout its
  checkpoint has: restored sharded and stacked, the same targets; the run's teacher
  record does not change with the layout."""
  from flux_jax import sharding  # pylint: disable=g-import-not-at-top
  from flux_jax.train import distill  # pylint: disable=g-import-not-at-top
  model = make_model(dict(variant='tiny', num_classes=3, embed_dim=32, num_heads=2,
                          attn_pool_num_heads=2, clip_embed_dim=32))
  params = init_params(model, jax.random.key(1))
  checkpoint.save_params(tmp_path / 'p', params, model_config(model))
  cfg = dict(teacher=str(tmp_path / 'p'), teacher_dtype='', teacher_rules=())
  frozen = distill.teacher_model(cfg, scan_layers=True)
  assert frozen == model.clone(scan_layers=True)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  placed, shardings = distill.place_teacher(cfg, frozen, mesh, seed=0)
  assert placed['blocks']['mlp']['fc1']['kernel'].sharding == (
      shardings['blocks']['mlp']['fc1']['kernel'])
  tokens = patchify(np.random.default_rng(4).integers(0, 256, (2, 4, 42, 42, 3), np.uint8))
  want = Teacher(model, (1, 0)).apply({'params': params}, tokens, budget=16)
  got = Teacher(frozen, (1, 0)).apply({'params': placed}, tokens, budget=16)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
  distill.record_teacher(str(tmp_path), cfg, model)
  distill.record_teacher(str(tmp_path), cfg, frozen)  # resumed with the other layout
