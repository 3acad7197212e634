"""InternVideo2 checkpoints into the Flux-UMT Teacher (flux_jax/convert/internvideo2.py)
against tests/reference_torch.TorchIV2Teacher, a PyTorch teacher written from SPEC D.2."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from flux_jax import checkpoint
from flux_jax.convert import CheckpointError
from flux_jax.convert.internvideo2 import (IV2_1B_LAYERS, _stored_grid, load_iv2_teacher,
                                           to_iv2_state_dict)
from flux_jax.tokens import patchify
import reference_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(embed_dim=64, depth=5, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=48)
LAYERS = (4, 2, 1)  # any order: the teacher returns this order, the reference block order


def _torch_teacher(num_frames=4):
  torch.manual_seed(0)
  tm = reference_torch.TorchIV2Teacher(num_frames=num_frames, img_size=56,
                                       return_index=LAYERS, **SHAPE).eval()
  return reference_torch.init_perturbed_(tm, 3)


def _sd(tm):
  return {k: v.numpy() for k, v in tm.state_dict().items()}


def _load(sd, **kw):
  return load_iv2_teacher(sd, **{**dict(num_frames=4, layers=LAYERS, checkpoint_frames=4),
                                 **kw}, **SHAPE)


# (T, H, W) and the tokens kept per frame group (None: all): the stored 4 x 56^2 grid, and
# other grids with a budget of whole groups (SPEC B.2; T = 4 has one frame per group,
# where the official selector is undefined).
CASES = [((4, 56, 56), None), ((8, 42, 70), 12), ((12, 28, 28), 6), ((8, 42, 70), None)]


@pytest.mark.parametrize('grid,per_group', CASES)
def test_teacher_equals_the_torch_reference(grid, per_group):
  tm = _torch_teacher()
  teacher, params = _load(_sd(tm))
  t, h, w = grid
  video = np.random.default_rng(1).normal(size=(2, t, h, w, 3)).astype(np.float32)
  with torch.no_grad():
    z, final, attn = tm(torch.from_numpy(video).permute(0, 4, 1, 2, 3), per_group)
  budget = None if per_group is None else 4 * per_group
  with jax.default_matmul_precision('highest'):
    out = jax.jit(lambda p, x: teacher.apply({'params': p}, x, budget=budget))(
        params, patchify(video))
  # The reference stacks in block order; the teacher in the order of its layers.
  want = {i: z[j].numpy() for j, i in enumerate(sorted(LAYERS))}
  for got, i in zip(np.asarray(out.layers), teacher.layers):
    np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5, err_msg=f'block {i}')
  np.testing.assert_allclose(out.pooled, final.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.attention, attn.numpy(), rtol=1e-5, atol=1e-7)
  if per_group is not None:
    np.testing.assert_array_equal(out.index, tm.last_kept_index.numpy())
    assert out.layers.shape[2] == 1 + budget


def test_the_stored_frames_are_resized_in_time_as_internvideo2_does():
  """Stage 2 stores 4 frames; the teacher runs 8: the table is resized linearly on load
  (PyTorch F.interpolate, align_corners=False), then serves the 8-frame clip as is."""
  tm4 = _torch_teacher(num_frames=4)
  sd = _sd(tm4)
  teacher, params = load_iv2_teacher(sd, num_frames=8, layers=LAYERS, checkpoint_frames=4,
                                     **SHAPE)
  assert teacher.model.pos_grid == (8, 4, 4)
  tm8 = _torch_teacher(num_frames=8)
  with torch.no_grad():
    tm8.load_state_dict({k: v for k, v in tm4.state_dict().items() if k != 'pos_embed'},
                        strict=False)
    grid = tm4.pos_embed[0, 1:].reshape(4, 4, 4, -1)
    resized = reference_torch._resize_grid_torch(grid, 8, 4, 4).reshape(1, -1, grid.shape[-1])
    tm8.pos_embed.copy_(torch.cat([tm4.pos_embed[:, :1], resized], 1))
  np.testing.assert_allclose(params['pos_embed'],
                             tm8.pos_embed.detach()[0, 1:].reshape(8, 4, 4, -1),
                             rtol=1e-6, atol=1e-6)
  video = np.random.default_rng(2).normal(size=(1, 8, 56, 56, 3)).astype(np.float32)
  with torch.no_grad():
    _, final, _ = tm8(torch.from_numpy(video).permute(0, 4, 1, 2, 3))
  with jax.default_matmul_precision('highest'):
    out = teacher.apply({'params': params}, patchify(video))
  np.testing.assert_allclose(out.pooled, final.numpy(), rtol=1e-5, atol=1e-5)


def test_the_released_grid_is_read_off_the_checkpoint():
  stage1 = np.zeros((1, 1 + 8 * 256, 4))  # 8 frames of 16 x 16
  stage2 = np.zeros((1, 1 + 4 * 256, 4))  # 4 frames of 16 x 16
  assert _stored_grid(stage1, 8, None, 'x') == (8, 16)
  assert _stored_grid(stage2, 8, None, 'x') == (4, 16)
  with pytest.raises(CheckpointError, match='x: pos_embed holds 65 grid positions.*'
                     'pass checkpoint_frames'):
    _stored_grid(np.zeros((1, 66, 4)), 8, None, 'x')
  assert IV2_1B_LAYERS == tuple(sorted(39 - int(i * 3.34) for i in range(6)))


def test_round_trip_is_bit_equal_and_the_stage2_layout_loads():
  tm = _torch_teacher()
  sd = _sd(tm)
  teacher, params = _load(sd)
  back = to_iv2_state_dict(teacher.model, params)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and back[k].tobytes() == sd[k].tobytes(), k
  # Stage 2: under vision_encoder., beside the text side and pretraining-only tensors.
  stage2 = {f'vision_encoder.{k}': v for k, v in sd.items()}
  stage2.update({'text_encoder.layer.0.weight': np.zeros(3),
                 'vision_encoder.clip_decoder.0.head.weight': np.zeros((2, 2)),
                 'vision_encoder.clip_pos_embed': np.zeros((1, 5, 2)),
                 'vision_encoder.final_clip_decoder.head.weight': np.zeros((2, 2))})
  _, again = _load({'module': stage2})
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_a_scanned_teacher_equals_the_reference_and_round_trips():
  """scan_layers=True: 5 blocks in one scan, the middle layers (any order) from its
  carried buffer; the InternVideo2 tensors written back bit-equal."""
  tm = _torch_teacher()
  sd = _sd(tm)
  teacher, params = _load(sd, scan_layers=True)
  assert teacher.model.scan_layers and params['blocks']['mlp']['fc1']['kernel'].shape[0] == 5
  video = np.random.default_rng(2).normal(size=(2, 8, 42, 70, 3)).astype(np.float32)
  with torch.no_grad():
    z, final, attn = tm(torch.from_numpy(video).permute(0, 4, 1, 2, 3), 12)
  with jax.default_matmul_precision('highest'):
    out = jax.jit(lambda p, x: teacher.apply({'params': p}, x, budget=48))(
        params, patchify(video))
  want = {i: z[j].numpy() for j, i in enumerate(sorted(LAYERS))}
  for got, i in zip(np.asarray(out.layers), teacher.layers):
    np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5, err_msg=f'block {i}')
  np.testing.assert_allclose(out.pooled, final.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.attention, attn.numpy(), rtol=1e-5, atol=1e-7)
  back = to_iv2_state_dict(teacher.model, params)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and back[k].tobytes() == sd[k].tobytes(), k


def test_wrong_files_are_refused_naming_what_does_not_fit(tmp_path):
  sd = _sd(_torch_teacher())
  short = dict(sd)
  del short['blocks.1.attn.proj.bias']
  extra = dict(sd, **{'blocks.9.ls1.gamma': np.ones(64, np.float32)})
  with pytest.raises(CheckpointError, match=r"missing: \['blocks\.1\.attn\.proj\.bias'\]"):
    _load(short)
  with pytest.raises(CheckpointError, match=r"unexpected: \['blocks\.9\.ls1\.gamma'\]"):
    _load(extra)
  wide = dict(sd, **{'blocks.0.norm1.weight': np.ones(65, np.float32)})
  with pytest.raises(CheckpointError, match=r'blocks\.0\.norm1\.weight \(65,\) does not fit'):
    _load(wide)
  fluxvit = reference_torch.init_perturbed_(reference_torch.TorchFluxViT(
      embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=64,
      num_classes=5, num_frames=4, img_size=56), 0)
  with pytest.raises(CheckpointError, match=r"unexpected: \[.*'gpe_proj\.depthwise_conv"):
    load_iv2_teacher({k: v.numpy() for k, v in fluxvit.state_dict().items()}, num_frames=4,
                     layers=(1, 0), checkpoint_frames=4, embed_dim=64, depth=2, num_heads=2,
                     attn_pool_num_heads=4, clip_embed_dim=64)
  np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
  with pytest.raises(CheckpointError, match=r'other\.npz: not an InternVideo2 vision encoder'):
    load_iv2_teacher(tmp_path / 'other.npz')
  with pytest.raises(CheckpointError, match='is not an InternVideo2 ViT'):
    _load(sd, use_lpe=True)


def test_cli_writes_a_teacher_checkpoint_read_without_torch(tmp_path):
  """The .pth goes through the torch-free reader (torch hidden from the CLI), and the
  written directory is what config.distill.teacher loads."""
  tm = _torch_teacher()
  torch.save({'module': {f'vision_encoder.{k}': v for k, v in tm.state_dict().items()}},
             tmp_path / 'iv2.pth')
  hide_torch = tmp_path / 'hide'
  hide_torch.mkdir()
  (hide_torch / 'torch.py').write_text('raise ImportError("torch is hidden in this test")\n')
  env = dict(os.environ, PYTHONPATH=f'{hide_torch}{os.pathsep}{ROOT}')
  subprocess.run([sys.executable, '-m', 'flux_jax.cli.convert_iv2', '--checkpoint',
                  str(tmp_path / 'iv2.pth'), '--out', str(tmp_path / 'teacher'),
                  '--num_frames', '4', '--checkpoint_frames', '4', '--layers', '4,2,1',
                  '--model_overrides', json.dumps(SHAPE)], check=True, env=env, cwd=ROOT,
                 capture_output=True, text=True)
  model, params = checkpoint.load_params(tmp_path / 'teacher')
  meta = checkpoint.read_config(tmp_path / 'teacher')['metadata']
  assert meta['teacher_layers'] == [4, 2, 1] and meta['kind'] == 'iv2_teacher'
  teacher, want = _load(_sd(tm))
  assert model == teacher.model
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_the_released_distillation_config_has_the_paper_shape():
  from flux_jax.configs import umt_fluxvit_s_from_iv2_1b  # pylint: disable=g-import-not-at-top
  from flux_jax.train import distill  # pylint: disable=g-import-not-at-top
  config = umt_fluxvit_s_from_iv2_1b.get_config()
  teacher = distill.make_teacher(config.distill, distill.teacher_model(config.distill))
  assert (teacher.model.embed_dim, teacher.model.depth, teacher.model.num_heads) == (1408, 40, 16)
  assert teacher.layers == IV2_1B_LAYERS and config.distill.t_tokens == 2048
  assert tuple(config.distill.s_tokens) == (2048, 1536, 1024)
  assert config.model.variant == 'small' and config.train.mode == 'distill'
  assert umt_fluxvit_s_from_iv2_1b.get_config('teacher=/ckpt/iv2').distill.teacher == '/ckpt/iv2'
