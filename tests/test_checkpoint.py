"""Orbax params checkpoints (flux_jax/checkpoint.py) and the convert CLI, end to end."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from flux_jax import sharding
from flux_jax.checkpoint import (TrainCheckpointer, init_from, load_params, read_config,
                                 save_params)
from flux_jax.convert import to_official_state_dict
from flux_jax.model.fluxvit import init_params, make_model, model_config, stack_blocks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny():
  model = make_model(dict(variant='tiny', num_classes=5))
  # Random values everywhere: zero-initialized params would hide swapped leaves.
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(0)
  return model, jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _assert_bit_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype == np.float32 and g.shape == w.shape
    np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32))


def test_round_trip(tiny, tmp_path):
  model, params = tiny
  save_params(tmp_path / 'ckpt', params, model_config(model), metadata={'source': 'x.pth'})
  got_model, got_params = load_params(tmp_path / 'ckpt')
  assert got_model == model
  _assert_bit_equal(got_params, params)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(got_params))
  assert read_config(tmp_path / 'ckpt') == {'model': model_config(model),
                                            'metadata': {'source': 'x.pth'}}


def test_restores_straight_into_the_given_shardings(tiny, tmp_path):
  # Flux-UMT restores its frozen teacher this way (distill.place_teacher): every array
  # lands in its NamedSharding on the 2x2x2 mesh, no copy on one device first.
  model, params = tiny
  save_params(tmp_path / 'ckpt', params, model_config(model))
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  want = sharding.param_shardings(model, mesh)
  _, got = load_params(tmp_path / 'ckpt', want)
  _assert_bit_equal(got, params)
  assert all(x.sharding == s for x, s in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  split = [x for x in jax.tree.leaves(got) if not x.sharding.is_fully_replicated]
  assert split  # the tiny model's embed axis (64) shards over fsdp, its mlp over tensor
  assert all(len(x.devices()) == 8 for x in jax.tree.leaves(got))


def test_init_from_converts_between_block_layouts(tiny, tmp_path):
  """A checkpoint saved unrolled starts a scanned model (model.scan_layers) and the
  reverse: bit-equal values, each leaf in the sharding of the fresh params."""
  model, params = tiny
  scanned, stacked = model.clone(scan_layers=True), stack_blocks(params, model.depth)
  save_params(tmp_path / 'unrolled', params, model_config(model))
  save_params(tmp_path / 'scanned', stacked, model_config(scanned))
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  for saved, target, want in (('unrolled', scanned, stacked), ('scanned', model, params)):
    shardings = sharding.param_shardings(target, mesh)
    fresh = jax.device_put(jax.tree.map(np.zeros_like, want), shardings)
    got = init_from(tmp_path / saved, fresh)
    _assert_bit_equal(got, want)
    assert all(x.sharding == s for x, s in zip(jax.tree.leaves(got), jax.tree.leaves(shardings)))
  assert shardings['blocks_0']['mlp']['fc1']['kernel'].spec == jax.sharding.PartitionSpec(
      'fsdp', 'tensor')
  assert sharding.param_shardings(scanned, mesh)['blocks']['mlp']['fc1']['kernel'].spec == (
      jax.sharding.PartitionSpec(None, 'fsdp', 'tensor'))  # 'layers' is not split


def test_load_params_in_the_other_block_layout(tiny, tmp_path):
  """`scan_layers` asks for a layout (the teacher follows the student's): restored in the
  saved one, sharded as the requested one, converted on the devices."""
  model, params = tiny
  scanned, stacked = model.clone(scan_layers=True), stack_blocks(params, model.depth)
  save_params(tmp_path / 'ckpt', params, model_config(model))
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  want = sharding.param_shardings(scanned, mesh)
  got_model, got = load_params(tmp_path / 'ckpt', want, scan_layers=True)
  assert got_model == scanned
  _assert_bit_equal(got, stacked)
  assert all(x.sharding == s for x, s in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  save_params(tmp_path / 'scanned', stacked, model_config(scanned))
  got_model, got = load_params(tmp_path / 'scanned', scan_layers=False)
  assert got_model == model
  _assert_bit_equal(got, params)
  assert load_params(tmp_path / 'scanned', scan_layers=True)[0] == scanned


def test_resuming_in_the_other_block_layout_names_the_flag(tiny, tmp_path):
  model, params = tiny
  with TrainCheckpointer(tmp_path, keep=1, save_every=1, async_save=False) as ckpt:
    ckpt.save(1, {'params': params}, {'step': 1}, force=True)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            {'params': stack_blocks(params, model.depth)})
    with pytest.raises(ValueError, match=re.escape(
        "blocks are unrolled, this run's are scanned; resume with "
        '--config.model.scan_layers=False')):
      ckpt.restore(1, abstract)


def test_a_config_saved_before_scan_layers_loads_unrolled(tiny, tmp_path):
  model, params = tiny
  save_params(tmp_path / 'c', params, model_config(model))
  [config_file] = [p for p in (tmp_path / 'c' / 'config').iterdir() if p.suffix != '.txt']
  config = json.loads(config_file.read_text())
  del config['model']['scan_layers']
  config_file.write_text(json.dumps(config))
  got_model, got = load_params(tmp_path / 'c')
  assert not got_model.scan_layers
  _assert_bit_equal(got, params)


def test_relative_paths_work(tiny, tmp_path, monkeypatch):
  # orbax wants absolute paths; `--checkpoint workdir/demo/train/params` is relative.
  model, params = tiny
  monkeypatch.chdir(tmp_path)
  save_params('runs/params', params, model_config(model))
  _assert_bit_equal(load_params('runs/params')[1], params)
  assert read_config('runs/params')['model'] == model_config(model)


def test_overwrite(tiny, tmp_path):
  model, params = tiny
  (tmp_path / 'empty').mkdir()
  save_params(tmp_path / 'empty', params, model_config(model))  # empty dirs are fine
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/empty: exists')):
    save_params(tmp_path / 'empty', params, model_config(model))
  zeros = jax.tree.map(np.zeros_like, params)
  save_params(tmp_path / 'empty', zeros, model_config(model), overwrite=True)
  _assert_bit_equal(load_params(tmp_path / 'empty')[1], zeros)


def test_save_refuses_params_of_another_model(tiny, tmp_path):
  model, params = tiny
  with pytest.raises(ValueError, match=r'head_0/kernel \(64, 5\) float32 \(want \(64, 7\)'):
    save_params(tmp_path / 'c', params, dict(model_config(model), num_classes=7))
  assert not (tmp_path / 'c').exists()


def test_load_errors(tiny, tmp_path):
  model, params = tiny
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/missing: no such checkpoint')):
    load_params(tmp_path / 'missing')
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'weights.npz').write_bytes(b'')
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/other: not a flux_jax')):
    load_params(tmp_path / 'other')
  # A config edited after saving no longer matches the stored params.
  save_params(tmp_path / 'c', params, model_config(model))
  [config_file] = [p for p in (tmp_path / 'c' / 'config').iterdir() if p.suffix != '.txt']
  config = json.loads(config_file.read_text())
  config['model']['num_classes'] = 7
  config_file.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/c: params do not match')):
    load_params(tmp_path / 'c')


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'flux_jax.cli.convert', *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_round_trip(tiny, tmp_path):
  model, params = tiny
  official = to_official_state_dict(model, params)
  torch.save({f'backbone.{k}': torch.from_numpy(np.array(v)) for k, v in official.items()},
             tmp_path / 'in.pth')

  r = _cli('--checkpoint', tmp_path / 'in.pth', '--variant', 'tiny', '--num_classes', 5,
           '--num_frames', 4, '--out', tmp_path / 'ckpt')
  assert r.returncode == 0, r.stderr
  assert f'to {tmp_path}/ckpt' in r.stderr
  got_model, got_params = load_params(tmp_path / 'ckpt')
  assert got_model == model
  _assert_bit_equal(got_params, params)
  assert read_config(tmp_path / 'ckpt')['metadata'] == {
      'source': str(tmp_path / 'in.pth'), 'variant': 'tiny'}

  r = _cli('--reverse', '--checkpoint', tmp_path / 'ckpt', '--out', tmp_path / 'back.pth')
  assert r.returncode == 0, r.stderr
  back = torch.load(tmp_path / 'back.pth', weights_only=True)
  assert sorted(back) == sorted(official)
  for k, v in official.items():
    assert back[k].dtype == torch.float32, k
    np.testing.assert_array_equal(back[k].numpy().view(np.uint32),
                                  np.asarray(v).view(np.uint32), err_msg=k)


def test_cli_rejects_a_text_file(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_text('not a checkpoint\n')
  r = _cli('--checkpoint', path, '--variant', 'tiny', '--num_classes', 5, '--num_frames', 4,
           '--out', tmp_path / 'ckpt')
  assert r.returncode != 0
  assert str(path) in r.stderr
  assert not (tmp_path / 'ckpt').exists()
