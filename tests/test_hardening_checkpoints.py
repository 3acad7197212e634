"""Checkpoint files never run code unless the caller says trust_pickle=True, and a small
file cannot claim more memory than it holds (issue 30, item 1)."""

import argparse
import collections
import io
import os
import pickle
import sys
import zipfile

import jax
import numpy as np
import pytest
import torch

from flux_jax.convert import internvideo2, official, torch_files
from flux_jax.convert.official import CheckpointError, load_official_checkpoint
from flux_jax.model import init_params, make_model

KW = dict(variant='tiny', num_classes=5, num_frames=4)


@pytest.fixture(scope='module')
def tiny_official():
  model = make_model(dict(variant='tiny', num_classes=5))
  params = init_params(model, jax.random.key(0))
  return {k: torch.from_numpy(np.array(v))
          for k, v in official.to_official_state_dict(model, params).items()}


class Evil:
  """Unpickling calls os.system: it touches `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _evil_checkpoint(tmp_path, tiny_official):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pth'
  torch.save({'model': tiny_official, 'evil': Evil(marker)}, path)
  return path, marker


def test_a_crafted_pth_is_refused_naming_the_global_with_torch(tmp_path, tiny_official):
  path, marker = _evil_checkpoint(tmp_path, tiny_official)
  with pytest.raises(CheckpointError, match=r'evil\.pth: refused global posix\.system: .*'
                     r'trust_pickle=True'):
    load_official_checkpoint(path, **KW)
  with pytest.raises(CheckpointError, match=r'refused global posix\.system'):
    internvideo2.load_iv2_teacher(path, variant='tiny', num_frames=4)
  assert not marker.exists()
  assert argparse.Namespace not in torch.serialization.get_safe_globals()  # scoped


def test_a_crafted_pth_is_refused_naming_the_global_without_torch(tmp_path, tiny_official,
                                                                  monkeypatch):
  path, marker = _evil_checkpoint(tmp_path, tiny_official)
  with pytest.raises(torch_files.TorchFileError,
                     match=r'evil\.pth: refused global (posix|os)\.system: .*trust_pickle'):
    torch_files.load(path)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(CheckpointError, match=r'refused global (posix|os)\.system'):
    load_official_checkpoint(path, **KW)
  assert not marker.exists()


@pytest.mark.parametrize('with_torch', [True, False])
def test_trust_pickle_runs_the_file_only_when_asked(tmp_path, tiny_official, monkeypatch,
                                                    with_torch):
  path, marker = _evil_checkpoint(tmp_path, tiny_official)
  if not with_torch:
    monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(CheckpointError):
    load_official_checkpoint(path, **KW)
  assert not marker.exists()
  model, _ = load_official_checkpoint(path, trust_pickle=True, **KW)
  assert marker.exists() and model.depth == 2


def test_official_training_checkpoint_with_args_loads_without_full_unpickling(
    tmp_path, tiny_official, monkeypatch):
  """{'model', 'args': Namespace, 'epoch'} as official training saves it: read with
  weights_only=True (torch) or torch_files, never with weights_only=False."""
  path = tmp_path / 'checkpoint-best.pth'
  args = argparse.Namespace(lr=1e-3, model='fluxvit_tiny', num_frames=4, crop=[224, 224])
  torch.save({'model': tiny_official, 'args': args, 'epoch': 3}, path)
  calls = []
  real_load = torch.load

  def recording_load(*a, **kw):
    calls.append(kw.get('weights_only'))
    return real_load(*a, **kw)

  monkeypatch.setattr(torch, 'load', recording_load)
  _, with_torch = load_official_checkpoint(path, **KW)
  assert calls == [True]
  assert torch_files.load(path)['args'] == args
  monkeypatch.setitem(sys.modules, 'torch', None)
  _, without = load_official_checkpoint(path, **KW)
  for a, b in zip(jax.tree.leaves(with_torch), jax.tree.leaves(without)):
    np.testing.assert_array_equal(a, b)


class _Storage:
  pass


class _Claim:
  """Pickles as torch.save pickles a tensor, with any offset, size and stride."""

  def __init__(self, offset, size, stride):
    self.args = (_Storage(), offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, self.args  # pylint: disable=protected-access


def _crafted(path, claim, numel=4, held=None):
  """A torch zip whose one float32 storage claims `numel` elements and holds `held`
  (default: numel), and whose data.pkl rebuilds `claim` from it."""

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ('storage', torch.FloatStorage, '0', 'cpu', numel) if isinstance(
          obj, _Storage) else None

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump({'w': claim})
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', buffer.getvalue())
    archive.writestr('archive/byteorder', 'little')
    archive.writestr('archive/data/0', np.arange(numel if held is None else held,
                                                    dtype='<f4').tobytes())
  return path


def test_tensor_claims_are_bounded_by_their_storage(tmp_path):
  ok = torch_files.load(_crafted(tmp_path / 'ok.pth', _Claim(1, (3,), (1,))))
  np.testing.assert_array_equal(ok['w'], [1, 2, 3])
  small = torch_files.load(_crafted(tmp_path / 'bcast.pth', _Claim(0, (2, 4), (0, 1))))
  np.testing.assert_array_equal(small['w'], [[0, 1, 2, 3]] * 2)  # a small expand is fine
  with pytest.raises(torch_files.TorchFileError, match=r'past\.pth: .*does not fit its '
                     r'storage of 4 elements'):
    torch_files.load(_crafted(tmp_path / 'past.pth', _Claim(2, (2, 2), (2, 1))))
  with pytest.raises(torch_files.TorchFileError, match='does not fit'):
    torch_files.load(_crafted(tmp_path / 'neg.pth', _Claim(0, (-3,), (1,))))
  # A stride-0 view of 4 bytes claiming 64 MiB: in bounds, but no memory is spent on it.
  with pytest.raises(torch_files.TorchFileError, match=r'zero\.pth: refused a tensor of '
                     r'size \(16777216,\), stride \(0,\).*stride-0'):
    torch_files.load(_crafted(tmp_path / 'zero.pth', _Claim(0, (1 << 24,), (0,))))
  # Many full-size views of one storage: each fits, together they may not.
  views = [_Claim(0, (1 << 16,), (1,)) for _ in range(64)]
  with pytest.raises(torch_files.TorchFileError, match=r'more than 4x the 262144 bytes'):
    torch_files.load(_crafted(tmp_path / 'views.pth', views, numel=1 << 16))


def test_a_stride_0_view_is_refused_on_the_torch_path_too(tmp_path):
  """torch.load keeps the view; the converter's float32 copy would take 256 MiB."""
  path = tmp_path / 'expanded.pth'
  torch.save({'w': torch.zeros(1, dtype=torch.bfloat16).expand(1 << 26)}, path)
  with pytest.raises(CheckpointError, match=r"expanded\.pth: entry 'w' of shape "
                     r'\(67108864,\), stride \(0,\) claims more than its storage of 2 bytes'):
    official.official_state_dict(path)


def test_storage_must_declare_its_real_size_before_it_is_read(tmp_path):
  path = _crafted(tmp_path / 'claims.pth', _Claim(0, (4,), (1,)), numel=1 << 30, held=4)
  with pytest.raises(torch_files.TorchFileError, match=r'storage archive/data/0 has 16 '
                     r'bytes, 1073741824 x float32 expected'):
    torch_files.load(path)


def test_a_zip_bomb_member_is_refused_before_it_is_read(tmp_path):
  """A real torch file whose storage member is deflated: 16 MiB of zeros in ~16 KiB."""
  torch.save({'w': torch.zeros(1 << 22)}, tmp_path / 'plain.pth')
  bomb = tmp_path / 'bomb.pth'
  with zipfile.ZipFile(tmp_path / 'plain.pth') as src, zipfile.ZipFile(
      bomb, 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for name in src.namelist():
      dst.writestr(name, src.read(name))
  assert os.path.getsize(bomb) < 100_000
  with pytest.raises(torch_files.TorchFileError, match=r'bomb\.pth: refused: its members '
                     r'declare \d+ bytes uncompressed, .*data/0 alone declares 16777216'):
    torch_files.load(bomb)
  assert torch_files.load(tmp_path / 'plain.pth')['w'].shape == (1 << 22,)  # stored: fine
