"""PyTorch checkpoints read without torch (flux_jax/convert/torch_files.py) against
torch.load on files torch.save writes here."""

import argparse
import collections
import os
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from flux_jax.convert import load_official_checkpoint, torch_files
from flux_jax.convert.official import to_official_state_dict
from flux_jax.model import init_params, make_model


def _as_numpy(x):
  """torch.load's result with tensors as numpy (bf16 through its bits)."""
  if isinstance(x, torch.Tensor):
    if x.dtype == torch.bfloat16:
      return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.detach().numpy()
  if isinstance(x, dict):
    return type(x)((k, _as_numpy(v)) for k, v in x.items())
  if isinstance(x, (list, tuple)):
    return type(x)(_as_numpy(v) for v in x)
  return x


def _assert_same(got, want, where='root'):
  if isinstance(want, np.ndarray):
    assert isinstance(got, np.ndarray), where
    assert got.dtype == want.dtype and got.shape == want.shape, (where, got.dtype, want.dtype)
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), where
  elif isinstance(want, dict):
    assert type(got) is type(want) and list(got) == list(want), where
    for k in want:
      _assert_same(got[k], want[k], f'{where}/{k}')
  elif isinstance(want, (list, tuple)):
    assert type(got) is type(want) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_same(g, w, f'{where}/{i}')
  else:
    assert got == want, where


def test_every_dtype_stride_and_shared_storage_equals_torch_load(tmp_path):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  sd = collections.OrderedDict()
  for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
    sd[str(dtype)] = (base * 10).to(dtype)
  sd['transposed'] = base.t()  # non-contiguous: shares the storage of `base`
  sd['base'] = base
  sd['strided'] = base[1:, ::2]  # offset and steps into the same storage
  sd['scalar'] = torch.tensor(3.5)
  sd['empty'] = torch.zeros(0, 3)
  sd['param'] = torch.nn.Parameter(torch.ones(2, 2))
  obj = {'model': sd, 'epoch': 7, 'lr': [1e-3, (2, 'x')], 'name': 'run', 'none': None,
         'tags': {'a', 'b'}, 'raw': b'\x00\xff'}
  path = tmp_path / 'ckpt.pth'
  torch.save(obj, path)
  got = torch_files.load(path)
  want = _as_numpy(torch.load(path, weights_only=True))
  assert got['tags'] == {'a', 'b'}
  got.pop('tags'), want.pop('tags')
  _assert_same(got, want)
  assert got['model']['torch.bfloat16'].dtype == ml_dtypes.bfloat16
  assert got['model']['transposed'].flags['C_CONTIGUOUS']


def test_refuses_objects_other_than_tensors_and_containers_without_running_them(tmp_path):
  path = tmp_path / 'args.pth'
  torch.save({'model': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1)}, path)
  assert torch_files.load(path)['args'] == argparse.Namespace(lr=1)  # official args: read
  torch.save({'model': {'w': torch.ones(2)}, 'step': collections.Counter(a=1)}, path)
  with pytest.raises(torch_files.TorchFileError,
                     match=r'args\.pth: refused global collections\.Counter'):
    torch_files.load(path)

  # A crafted data.pkl that would call os.system on load.
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return os.system, (f'touch {marker}',)

  torch.save({'w': torch.ones(1)}, tmp_path / 'good.pth')
  evil = tmp_path / 'evil.pth'
  with zipfile.ZipFile(tmp_path / 'good.pth') as src, zipfile.ZipFile(evil, 'w') as dst:
    for name in src.namelist():
      data = pickle.dumps(Evil(), protocol=2) if name.endswith('data.pkl') else src.read(name)
      dst.writestr(name, data)
  with pytest.raises(torch_files.TorchFileError, match=r'refused global (posix|os)\.system'):
    torch_files.load(evil)
  assert not marker.exists()


def test_damaged_and_legacy_files_are_refused_by_name(tmp_path):
  torch.save({'w': torch.ones(4)}, tmp_path / 'ok.pth')
  cut = tmp_path / 'cut.pth'
  with zipfile.ZipFile(tmp_path / 'ok.pth') as src, zipfile.ZipFile(cut, 'w') as dst:
    for name in src.namelist():
      data = src.read(name)
      dst.writestr(name, data[:-4] if '/data/' in name and not name.endswith('/') else data)
  with pytest.raises(torch_files.TorchFileError, match=r'cut\.pth: storage .*data/0 has 12 '
                     r'bytes, 4 x float32 expected'):
    torch_files.load(cut)
  legacy = tmp_path / 'legacy.pth'
  torch.save({'w': torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
  with pytest.raises(torch_files.TorchFileError, match='legacy pickle format'):
    torch_files.load(legacy)


def test_the_converter_reads_a_pth_without_torch(tmp_path, monkeypatch):
  """With torch unimportable, load_official_checkpoint reads the .pth through
  torch_files and gives the params that torch.load gives."""
  model = make_model(dict(variant='tiny', num_classes=5))
  params = init_params(model, __import__('jax').random.key(0))
  official = to_official_state_dict(model, params)
  path = tmp_path / 'fluxvit_tiny.pth'
  torch.save({'model': {k: torch.from_numpy(np.array(v)).to(torch.bfloat16 if 'blocks.0'
                                                            in k else torch.float32)
                        for k, v in official.items()}}, path)
  kwargs = dict(variant='tiny', num_classes=5, num_frames=4)
  _, with_torch = load_official_checkpoint(path, **kwargs)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  _, without = load_official_checkpoint(path, **kwargs)
  leaves = __import__('jax').tree.leaves
  for a, b in zip(leaves(with_torch), leaves(without)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(b).dtype == np.float32
