"""PyTorch checkpoint files (.pth, .pt, .bin) read without torch.

`torch.save` writes a zip archive: `<name>/data.pkl` pickles the object with every
tensor as a call of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
whose storage is a persistent id `('storage', torch.<Type>Storage, key, location,
numel)`, and `<name>/data/<key>` holds that storage's raw bytes (`<name>/byteorder`
their byte order). This module unpickles `data.pkl` with an unpickler that knows a
closed set of globals: the tensor and parameter rebuilds, the storage and dtype names,
OrderedDict and the builtin containers. Any other global (a class of the training code,
argparse.Namespace, os.system in a crafted file) is refused by name before anything is
built, so no code of the file runs. Tensors come back as numpy arrays (bfloat16 as
ml_dtypes.bfloat16), with their strides applied and one buffer per shared storage.
argparse.Namespace (official training checkpoints carry their args) is accepted too:
pickle makes it with `object.__new__` and fills its `__dict__`; no code of the file runs.

Sizes are bounded by what the file really holds, so a small file cannot exhaust memory:
  * the archive may expand to at most MAX_EXPANSION times its size on disk (the sum of
    its members' declared uncompressed sizes, and zipfile never reads past a declared
    size): a zip bomb, a member declaring a huge size beside a tiny compressed one, is
    refused before anything is read;
  * a storage's member must declare exactly numel x itemsize bytes, checked before it
    is read;
  * a tensor's highest element, offset + sum((size - 1) * stride), must lie inside its
    storage; and since every tensor is copied, all tensors together may hold at most
    MAX_EXPANSION times the bytes of the storages (plus 1 MiB): tied weights and views
    fit, a stride-0 view claiming 10**9 elements of a 1-element storage does not.

`load(..., trust_pickle=True)` lifts the closed set: any global the file names is
imported and called, i.e. the file runs code. Only for files the user trusts.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np


class TorchFileError(ValueError):
  """A file that is not a readable PyTorch zip checkpoint, or holds a refused object."""


# How far a file may expand: its members' uncompressed bytes over its size on disk, and
# the bytes of all tensors over the bytes of all storages (module docstring).
MAX_EXPANSION = 4
_SLACK = 1 << 20  # small files and pickles are not held to the ratio


# torch.<Name>Storage and torch.<dtype> globals -> numpy dtypes.
_STORAGES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}
_DTYPES = {
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32,
    'int16': np.int16, 'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn, 'float8_e5m2': ml_dtypes.float8_e5m2,
}


class _Dtype:
  """A storage type or dtype global: stands for its numpy dtype, builds nothing."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _strided(storage: np.ndarray, offset, size, stride, budget: _Budget) -> np.ndarray:
  """A C-contiguous copy of the view (offset, size, stride) of `storage`, refused unless
  its highest element lies inside the storage and its bytes fit the load's budget."""
  where = budget.where
  try:
    offset = int(offset)
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
  except (TypeError, ValueError) as e:
    raise TorchFileError(f'{where}: a tensor with a malformed offset, size or stride '
                         f'({offset!r}, {size!r}, {stride!r})') from e
  numel = 1
  for n in size:
    numel *= n
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset
  if (len(size) != len(stride) or offset < 0 or any(n < 0 for n in size)
      or any(s < 0 for s in stride) or (numel and last >= storage.size)):
    raise TorchFileError(f'{where}: a tensor of size {size}, stride {stride} at offset '
                         f'{offset} does not fit its storage of {storage.size} elements')
  budget.spend(numel * storage.itemsize, size, stride)
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride])
  return np.array(view, order='C')  # owns its memory


class _Budget:
  """Bytes the tensors of one load may take: MAX_EXPANSION times the bytes of the
  storages read so far, plus _SLACK (module docstring)."""

  def __init__(self, where: str):
    self.where = where
    self.storage_bytes = 0
    self.spent = 0

  def spend(self, nbytes: int, size, stride) -> None:
    limit = MAX_EXPANSION * self.storage_bytes + _SLACK
    if self.spent + nbytes > limit:
      raise TorchFileError(
          f'{self.where}: refused a tensor of size {size}, stride {stride}: the tensors '
          f'would hold {self.spent + nbytes} bytes, more than {MAX_EXPANSION}x the '
          f'{self.storage_bytes} bytes of their storages (stride-0 or overlapping views '
          'claiming more than the file holds)')
    self.spent += nbytes


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  del requires_grad, hooks
  return data


def _latin1(text, encoding='latin1'):
  """_codecs.encode, as protocol-2 pickles use it for bytes: text to bytes, nothing else."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise TorchFileError(f'data.pkl: refused _codecs.encode({type(text).__name__}, '
                         f'{encoding!r})')
  return text.encode('latin1')


_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('argparse', 'Namespace'): argparse.Namespace,  # made by __new__, then __dict__
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
    ('builtins', 'dict'): dict, ('builtins', 'list'): list, ('builtins', 'tuple'): tuple,
    ('_codecs', 'encode'): _latin1,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, where: str,
               trust_pickle: bool):
    super().__init__(file)
    self._archive, self._prefix, self._where = archive, prefix, where
    self._trust = trust_pickle
    self._budget = _Budget(where)
    self._storages: dict[str, np.ndarray] = {}  # key -> buffer: shared storages stay shared
    order = f'{prefix}byteorder'
    self._byteorder = (_read(archive, order, where).decode().strip()
                       if order in archive.namelist() else 'little')

  def find_class(self, module: str, name: str):
    module = 'builtins' if module == '__builtin__' else module  # protocol-2 spelling
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return self._rebuild_tensor
    if (module, name) == ('torch._utils', '_rebuild_tensor_v3'):
      return self._rebuild_tensor_v3
    if (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    if module in ('torch', 'torch.storage') and name in _STORAGES:
      return _Dtype(_STORAGES[name])
    if module == 'torch' and name in _DTYPES:
      return _Dtype(_DTYPES[name])
    if self._trust:
      return super().find_class(module, name)  # imports and may run anything: asked for
    raise TorchFileError(f'{self._where}: refused global {module}.{name}: only tensors, '
                         'OrderedDict, argparse.Namespace and plain containers are read '
                         'unless the file is trusted. If you trust it, load it with '
                         'trust_pickle=True, which lets it run code; better, save its '
                         'state dict alone')

  def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False,
                      hooks=None, metadata=None):
    del requires_grad, hooks, metadata
    return _strided(storage, offset, size, stride, self._budget)

  def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype,
                         metadata=None):
    del requires_grad, hooks, metadata
    return _strided(storage.view(dtype.dtype), offset, size, stride, self._budget)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _Dtype) and isinstance(pid[4], int) and pid[4] >= 0):
      raise TorchFileError(f'{self._where}: unknown persistent id {pid!r}')
    _, kind, key, _, numel = pid
    if key not in self._storages:
      name = f'{self._prefix}data/{key}'
      try:
        info = self._archive.getinfo(name)
      except KeyError:
        raise TorchFileError(f'{self._where}: storage {name} is missing') from None
      dtype = kind.dtype.newbyteorder('<' if self._byteorder == 'little' else '>')
      if info.file_size != numel * dtype.itemsize:  # before reading it
        raise TorchFileError(f'{self._where}: storage {name} has {info.file_size} bytes, '
                             f'{numel} x {dtype.name} expected')
      raw = _read(self._archive, name, self._where)
      if len(raw) != info.file_size:
        raise TorchFileError(f'{self._where}: storage {name} holds {len(raw)} bytes, its '
                             f'entry declares {info.file_size}')
      self._storages[key] = np.frombuffer(raw, dtype).astype(kind.dtype)  # native order
      self._budget.storage_bytes += len(raw)
    return self._storages[key]


def _read(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
  try:
    return archive.read(name)  # never more than the declared size, checked in `load`
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:  # e.g. a bad CRC
    raise TorchFileError(f'{where}: cannot read {name}: {e}') from e


def _check_sizes(archive: zipfile.ZipFile, where: str) -> None:
  """Refuses an archive whose members declare more than MAX_EXPANSION times the
  file's size (module docstring), naming the largest member."""
  on_disk = os.path.getsize(archive.filename)
  declared = sum(info.file_size for info in archive.infolist())
  if declared > MAX_EXPANSION * on_disk + _SLACK:
    big = max(archive.infolist(), key=lambda info: info.file_size)
    raise TorchFileError(f'{where}: refused: its members declare {declared} bytes '
                         f'uncompressed, more than {MAX_EXPANSION}x its {on_disk} bytes on '
                         f'disk ({big.filename} alone declares {big.file_size} bytes from '
                         f'{big.compress_size} compressed): a zip bomb or a damaged file')


def is_torch_zip(path: str | os.PathLike) -> bool:
  """Whether `path` is a zip archive with a `*/data.pkl`: the format of torch.save."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(n.endswith('/data.pkl') for n in archive.namelist())


def load(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays.

  Args:
    path: a torch zip archive.
    trust_pickle: import and call any global the file names (full unpickling: the file
      runs code). Only for files you trust; the default reads the closed set of globals
      of the module docstring and refuses the others by name.

  Raises:
    TorchFileError: not a torch zip archive (e.g. the legacy pre-1.6 format), a damaged
      one, one larger inside than its size allows, or one that holds a global outside
      the closed set (module docstring).
  """
  where = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise TorchFileError(f'{where}: not a PyTorch zip checkpoint (the legacy pickle format '
                         'of torch < 1.6 needs torch to read)')
  with zipfile.ZipFile(path) as archive:
    _check_sizes(archive, where)
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchFileError(f'{where}: expected one */data.pkl in the archive, found '
                           f'{pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    with archive.open(pickles[0]) as f:
      try:
        return _Unpickler(f, archive, prefix, where, trust_pickle).load()
      except TorchFileError:
        raise
      except Exception as e:  # a damaged pickle: name the file
        raise TorchFileError(f'{where}: cannot unpickle {pickles[0]}: {e}') from e
