"""Official checkpoint names <-> params: exact round trips and clear refusals."""

import flax
import jax
import numpy as np
import pytest
import torch

from flux_jax.convert.official import (CheckpointError, load_official_checkpoint,
                                       to_official_state_dict)
from flux_jax.model import init_params, make_model
from flux_jax.model.fluxvit import stack_blocks, unstack_blocks
import reference_torch

KW = dict(variant='tiny', num_classes=5, num_frames=4)


@pytest.fixture(scope='module')
def official():
  """A perturbed official-layout state dict from the independent PyTorch reference."""
  tm = reference_torch.TorchFluxViT(embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=4,
                                    clip_embed_dim=64, num_classes=5, num_frames=4,
                                    img_size=56)
  reference_torch.init_perturbed_(tm, 1)
  return {k: v.numpy().copy() for k, v in tm.state_dict().items()}


def test_official_to_params_to_official_is_bit_equal(official):
  model, params = load_official_checkpoint(official, **KW)
  back = to_official_state_dict(model, params)
  assert list(back) != [] and set(back) == set(official)
  for name, value in official.items():
    assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name


def test_params_to_official_to_params_is_bit_equal():
  model = make_model(dict(variant='tiny', num_classes=5))
  params = init_params(model, jax.random.key(3))
  _, again = load_official_checkpoint(to_official_state_dict(model, params), **KW)
  flat_a = flax.traverse_util.flatten_dict(params)
  flat_b = flax.traverse_util.flatten_dict(again)
  assert set(flat_a) == set(flat_b)
  for k in flat_a:
    assert np.array_equal(np.asarray(flat_a[k]), flat_b[k]), k


def test_official_to_scanned_params_to_official_is_bit_equal(official):
  """scan_layers=True: the blocks' tensors stacked [depth, ...] in block order, written
  back from either layout bit-equal."""
  model, params = load_official_checkpoint(official, scan_layers=True, **KW)
  assert model.scan_layers and 'blocks_0' not in params
  assert params['blocks']['attn']['qkv']['kernel'].shape == (2, 64, 3, 2, 32)
  unrolled_model, unrolled = load_official_checkpoint(official, **KW)
  jax.tree.map(np.testing.assert_array_equal, params, stack_blocks(unrolled, 2))
  jax.tree.map(np.testing.assert_array_equal, unstack_blocks(params), unrolled)
  for back in (to_official_state_dict(model, params),
               to_official_state_dict(unrolled_model, params)):
    assert set(back) == set(official)
    for name, value in official.items():
      assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name


def test_stack_blocks_names_what_does_not_fit():
  params = init_params(make_model(dict(variant='tiny', num_classes=5)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"missing \['blocks_2'\]"):
    stack_blocks(params, 3)
  with pytest.raises(ValueError, match=r"beyond the depth \['blocks_1'\]"):
    stack_blocks(params, 1)
  with pytest.raises(ValueError, match="'blocks'"):
    unstack_blocks(params)


def test_reads_pth_with_model_key_and_prefix(official, tmp_path):
  path = tmp_path / 'ckpt.pth'
  wrapped = {'model': {f'backbone.{k}': torch.from_numpy(v) for k, v in official.items()},
             'epoch': 4}
  torch.save(wrapped, path)
  _, params = load_official_checkpoint(str(path), **KW)
  _, direct = load_official_checkpoint(official, **KW)
  jax.tree.map(np.testing.assert_array_equal, params, direct)


def test_reads_npz_and_bf16_tensors(official, tmp_path):
  np.savez(tmp_path / 'ckpt.npz', **official)
  _, params = load_official_checkpoint(str(tmp_path / 'ckpt.npz'), **KW)
  bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in official.items()}
  _, from_bf16 = load_official_checkpoint({'module': bf16}, **KW)
  got = np.asarray(from_bf16['head_0']['kernel'])
  np.testing.assert_allclose(got, params['head_0']['kernel'], rtol=1e-2)
  assert got.dtype == np.float32


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
  bad = tmp_path / 'notes.pth'
  bad.write_text('hello, I am not a checkpoint')
  with pytest.raises(CheckpointError, match='notes.pth'):
    load_official_checkpoint(str(bad), **KW)
  with pytest.raises(CheckpointError, match='missing.pth'):
    load_official_checkpoint(str(tmp_path / 'missing.pth'), **KW)
  (tmp_path / 'weights.ckpt').write_bytes(b'\0')
  with pytest.raises(CheckpointError, match='weights.ckpt'):
    load_official_checkpoint(str(tmp_path / 'weights.ckpt'), **KW)


def test_names_missing_and_unexpected_keys(official):
  sd = dict(official)
  del sd['blocks.1.mlp.fc2.bias']
  sd['blocks.2.norm1.weight'] = sd['blocks.0.norm1.weight']
  with pytest.raises(CheckpointError) as e:
    load_official_checkpoint(sd, **KW)
  assert 'blocks.1.mlp.fc2.bias' in str(e.value) and 'blocks.2.norm1.weight' in str(e.value)


def test_non_strict_keeps_init_for_missing(official):
  sd = {k: v for k, v in official.items() if not k.startswith('final_clip_decoder')}
  sd['clip_decoder.0.head.weight'] = np.zeros((2, 2), np.float32)  # pretraining leftover
  model, params = load_official_checkpoint(sd, strict=False, **KW)
  assert params['final_clip_decoder_for_projs_0']['head']['kernel'].shape == (64, 64)
  np.testing.assert_array_equal(params['head_1']['bias'], official['head.1.bias'])


def test_refuses_wrong_sizes(official):
  with pytest.raises(CheckpointError, match='head_0'):
    load_official_checkpoint(official, variant='tiny', num_classes=7, num_frames=4)
  with pytest.raises(CheckpointError, match='num_frames'):
    load_official_checkpoint(official, variant='tiny', num_classes=5, num_frames=3)
  with pytest.raises(CheckpointError, match='variant'):
    load_official_checkpoint(official, variant='small', num_classes=5, num_frames=4)


def test_small_layout_matches_spec():
  """246 tensors, 28,845,948 parameters (SPEC A.2) from our init, via the exporter."""
  model = make_model(dict(variant='small', num_classes=400))
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  sd = to_official_state_dict(model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                  shapes))
  assert len(sd) == 246
  assert sum(v.size for v in sd.values()) == 28_845_948
  assert sd['patch_embed.proj.weight'].shape == (384, 3, 1, 14, 14)
  assert sd['blocks.11.attn.qkv.weight'].shape == (1152, 384)
  assert sd['pos_embed'].shape == (1, 7777, 384)
