"""The MobileCLIP-B text tower against open_clip's TextTransformer, and its converter."""

import importlib
import importlib.util
import sys
import types
from unittest import mock

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flux_jax.convert.official import CheckpointError
from flux_jax.convert.open_clip import (load_text_tower, text_params_from_state_dict,
                                        text_state_dict_from_params)
from flux_jax.model.text import TEXT_VARIANTS, init_text_params, make_text_model

SOT, EOT = 49406, 49407
TINY = TEXT_VARIANTS['tiny']


def _open_clip_transformer():
  """open_clip/transformer.py, loaded by path: the package's __init__ imports torchvision,
  which does not import beside our torch (DESIGN.md 7). Its `utils` needs only
  torchvision.ops.misc.FrozenBatchNorm2d, so a stand-in serves while it loads, under a
  private package name; sys.modules is restored afterwards."""
  spec = importlib.util.find_spec('open_clip')
  if spec is None:
    pytest.skip('open_clip_torch is not installed (pip install --no-deps open_clip_torch)')
  misc = types.ModuleType('torchvision.ops.misc')
  misc.FrozenBatchNorm2d = type('FrozenBatchNorm2d', (torch.nn.Module,), {})
  package = types.ModuleType('_open_clip_reference')
  package.__path__ = list(spec.submodule_search_locations)
  stand_ins = {'torchvision': types.ModuleType('torchvision'),
               'torchvision.ops': types.ModuleType('torchvision.ops'),
               'torchvision.ops.misc': misc, '_open_clip_reference': package}
  with mock.patch.dict(sys.modules, stand_ins):
    return importlib.import_module('_open_clip_reference.transformer')


def _torch_tower(seed: int, **cfg):
  """open_clip's TextTransformer as open_clip builds MobileCLIP-B's (custom_text, exact
  GELU, causal, argmax pool, bias-free projection), every tensor perturbed so that norms
  and biases are not at their init."""
  oc = _open_clip_transformer()
  torch.manual_seed(seed)
  tower = oc.TextTransformer(**cfg, no_causal_mask=False, pool_type='argmax',
                             proj_bias=False, act_layer=torch.nn.GELU, output_tokens=True)
  with torch.no_grad():
    for name, p in tower.named_parameters():
      scale = 0.1 if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_final.weight')) else 0.02
      p.add_(scale * torch.randn_like(p))
  return tower.eval()


def _ids(batch: int, length: int, eot_at, seed: int) -> np.ndarray:
  """Tokenizer-shaped ids: start, random words, end-of-text at `eot_at[b]`, zeros after."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, length), np.int32)
  for b, e in enumerate(eot_at):
    ids[b, 0], ids[b, 1:e], ids[b, e] = SOT, rng.integers(1, SOT, e - 1), EOT
  return ids


def _sd(tower) -> dict[str, np.ndarray]:
  return {k: v.numpy().copy() for k, v in tower.state_dict().items()}


def _assert_same_params(a, b):
  flat_a, flat_b = (flax.traverse_util.flatten_dict(p) for p in (a, b))
  assert set(flat_a) == set(flat_b)
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k))


@pytest.fixture(scope='module')
def tiny_torch():
  return _torch_tower(1, context_length=TINY['context_length'], vocab_size=TINY['vocab_size'],
                      width=TINY['width'], heads=TINY['heads'], layers=TINY['layers'],
                      mlp_ratio=TINY['mlp_ratio'], output_dim=TINY['output_dim'])


def test_mobileclip_b_equals_open_clip():
  cfg = TEXT_VARIANTS['mobileclip_b']
  tower = _torch_tower(0, context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                       mlp_ratio=4.0, output_dim=512)
  model = make_text_model({'variant': 'mobileclip_b'})
  assert {k: getattr(model, k) for k in cfg} == cfg
  params = text_params_from_state_dict(tower.state_dict(), model)
  ids = _ids(3, 77, eot_at=[3, 40, 76], seed=0)
  with torch.no_grad():
    want_pooled, want_tokens = tower(torch.from_numpy(ids).long())
  pooled, tokens = jax.jit(model.apply)({'params': params}, jnp.asarray(ids))
  assert pooled.shape == (3, 512) and pooled.dtype == jnp.float32
  assert tokens.shape == (3, 77, 512)
  np.testing.assert_allclose(pooled, want_pooled.numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(tokens, want_tokens.numpy(), atol=1e-5, rtol=0)


def test_tiny_equals_open_clip_and_is_causal(tiny_torch):
  model = make_text_model({'variant': 'tiny'})
  params = text_params_from_state_dict(_sd(tiny_torch), model)
  ids = _ids(2, 16, eot_at=[1, 9], seed=1)
  with torch.no_grad():
    want_pooled, want_tokens = tiny_torch(torch.from_numpy(ids).long())
  pooled, tokens = model.apply({'params': params}, ids)
  np.testing.assert_allclose(pooled, want_pooled.numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(tokens, want_tokens.numpy(), atol=1e-5, rtol=0)
  # Shorter ids: the first positions only, by causality; pooled at the same end-of-text.
  short_pooled, short_tokens = model.apply({'params': params}, ids[:, :10])
  np.testing.assert_allclose(short_tokens, tokens[:, :10], atol=1e-5, rtol=0)
  np.testing.assert_allclose(short_pooled, pooled, atol=1e-5, rtol=0)


def test_bfloat16_compute_stays_close(tiny_torch):
  params = text_params_from_state_dict(_sd(tiny_torch), make_text_model({'variant': 'tiny'}))
  ids = _ids(2, 16, eot_at=[4, 15], seed=2)
  want, _ = make_text_model({'variant': 'tiny'}).apply({'params': params}, ids)
  got, tokens = make_text_model({'variant': 'tiny', 'dtype': 'bfloat16'}).apply(
      {'params': params}, ids)
  assert got.dtype == jnp.float32 and tokens.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.1)


def test_params_to_state_dict_to_params_is_exact():
  model = make_text_model({'variant': 'tiny'})
  params = init_text_params(model, jax.random.key(3))
  sd = text_state_dict_from_params(params, model)
  assert sd['transformer.resblocks.1.attn.in_proj_weight'].shape == (96, 32)
  _assert_same_params(text_params_from_state_dict(sd, model), params)


def test_state_dict_to_params_to_state_dict_is_exact(tiny_torch):
  sd = _sd(tiny_torch)
  model = make_text_model({'variant': 'tiny'})
  back = text_state_dict_from_params(text_params_from_state_dict(sd, model), model, 'text.')
  assert set(back) == {f'text.{k}' for k in sd}
  for k, v in sd.items():
    assert np.array_equal(back[f'text.{k}'], v), k


def _apple(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """open_clip names -> Apple MobileCLIP's, convert_mobile_clip_state_dict in reverse."""
  out = {}
  for k, v in sd.items():
    if k == 'positional_embedding':
      k, v = 'positional_embedding.pos_embed.pos_embed', v[None, None]  # [1, 1, L, D]
    for ours, theirs in (('token_embedding', 'embedding_layer'),
                         ('text_projection', 'projection_layer'),
                         ('ln_final', 'final_layer_norm'),
                         ('transformer.resblocks.', 'transformer.'),
                         ('ln_1', 'pre_norm_mha.0'),
                         ('attn.in_proj_weight', 'pre_norm_mha.1.qkv_proj.weight'),
                         ('attn.in_proj_bias', 'pre_norm_mha.1.qkv_proj.bias'),
                         ('attn.out_proj', 'pre_norm_mha.1.out_proj'),
                         ('ln_2', 'pre_norm_ffn.0'), ('mlp.c_fc', 'pre_norm_ffn.1'),
                         ('mlp.c_proj', 'pre_norm_ffn.4')):
      k = k.replace(ours, theirs)
    out[f'text_encoder.{k}'] = v
  out['image_encoder.model.conv_exp.weight'] = np.zeros((2, 2), np.float32)
  out['logit_scale'] = np.float32(4.6)
  return out


def test_every_layout_gives_the_same_params(tiny_torch):
  sd = _sd(tiny_torch)
  model = make_text_model({'variant': 'tiny'})
  want = text_params_from_state_dict(sd, model)
  apple = _apple(sd)
  assert 'text_encoder.transformer.1.pre_norm_ffn.4.bias' in apple
  layouts = {
      'apple': apple,
      'custom_text_clip': {**{f'text.{k}': v for k, v in sd.items()},
                           'visual.trunk.stem.weight': np.zeros(3, np.float32)},
      'clip': {**sd, 'visual.proj': np.zeros((2, 2), np.float32), 'logit_scale': 4.6},
      'torch_tensors': {k: torch.from_numpy(v) for k, v in sd.items()},
  }
  for layout in layouts.values():
    _assert_same_params(text_params_from_state_dict(layout, model), want)


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_torch):
  sd = _sd(tiny_torch)
  model = make_text_model({'variant': 'tiny'})
  missing = {k: v for k, v in sd.items() if k != 'transformer.resblocks.1.mlp.c_proj.bias'}
  with pytest.raises(CheckpointError, match=r'missing: \[.transformer\.resblocks\.1\.mlp'
                     r'\.c_proj\.bias.\]'):
    text_params_from_state_dict(missing, model)
  loose = text_params_from_state_dict(missing, model, strict=False)
  np.testing.assert_array_equal(loose['resblocks_1']['mlp']['fc2']['bias'], 0.0)
  with pytest.raises(CheckpointError, match=r'unexpected: \[.transformer\.resblocks\.0\.attn'
                     r'\.extra.\]'):
    text_params_from_state_dict({**sd, 'transformer.resblocks.0.attn.extra': sd['ln_final.bias']},
                                model)
  bad = dict(sd, **{'transformer.resblocks.0.attn.out_proj.weight': np.zeros((32, 16))})
  with pytest.raises(CheckpointError, match=r'transformer\.resblocks\.0\.attn\.out_proj\.weight '
                     r'\(32, 16\) does not fit resblocks_0/attn/out_proj/kernel'):
    text_params_from_state_dict(bad, model)
  # Apple checkpoints: the error names Apple's key, prefix included.
  with pytest.raises(CheckpointError, match=r'text_encoder\.transformer\.0\.pre_norm_mha\.1'
                     r'\.out_proj\.weight \(32, 16\)'):
    load_text_tower(_apple(bad), 'tiny')
  with pytest.raises(CheckpointError, match='no .token_embedding.weight.'):
    text_params_from_state_dict({'visual.proj': np.zeros(2)}, model)


def test_load_text_tower_from_pth(tiny_torch, tmp_path):
  sd = _sd(tiny_torch)
  want = text_params_from_state_dict(sd, make_text_model({'variant': 'tiny'}))
  # An open_clip training checkpoint: DDP prefix, weights under `state_dict`, non-tensors.
  path = tmp_path / 'epoch_3.pt'
  torch.save({'epoch': 3, 'name': 'run',
              'state_dict': {f'module.text.{k}': torch.from_numpy(v) for k, v in sd.items()}},
             path)
  model, params = load_text_tower(str(path), 'tiny')
  assert model == make_text_model({'variant': 'tiny'})
  _assert_same_params(params, want)
  # Apple's file, read with MobileCLIP-B's heads count overridden: the shapes come from it.
  path = tmp_path / 'mobileclip_tiny.pt'
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in _apple(sd).items()}, path)
  model, params = load_text_tower(path, heads=TINY['heads'])
  assert model == make_text_model({'variant': 'tiny'})
  _assert_same_params(params, want)
