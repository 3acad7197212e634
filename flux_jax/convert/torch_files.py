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
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class TorchFileError(ValueError):
  """A file that is not a readable PyTorch zip checkpoint, or holds a refused object."""


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


def _strided(storage: np.ndarray, offset: int, size, stride, where: str) -> np.ndarray:
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
  if offset < 0 or any(s < 0 for s in stride) or (all(size) and last >= storage.size):
    raise TorchFileError(f'{where}: a tensor of size {size}, stride {stride} at offset '
                         f'{offset} does not fit its storage of {storage.size} elements')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride])
  return np.array(view, order='C')  # owns its memory


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  del requires_grad, hooks, metadata
  return _strided(storage, offset, size, stride, 'data.pkl')


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
  del requires_grad, hooks, metadata
  return _strided(storage.view(dtype.dtype), offset, size, stride, 'data.pkl')


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
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
    ('builtins', 'dict'): dict, ('builtins', 'list'): list, ('builtins', 'tuple'): tuple,
    ('_codecs', 'encode'): _latin1,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, where: str):
    super().__init__(file)
    self._archive, self._prefix, self._where = archive, prefix, where
    self._storages: dict[str, np.ndarray] = {}  # key -> buffer: shared storages stay shared
    order = f'{prefix}byteorder'
    self._byteorder = (archive.read(order).decode().strip()
                       if order in archive.namelist() else 'little')

  def find_class(self, module: str, name: str):
    module = 'builtins' if module == '__builtin__' else module  # protocol-2 spelling
    if (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    if module in ('torch', 'torch.storage') and name in _STORAGES:
      return _Dtype(_STORAGES[name])
    if module == 'torch' and name in _DTYPES:
      return _Dtype(_DTYPES[name])
    raise TorchFileError(f'{self._where}: refused global {module}.{name}: only tensors, '
                         'OrderedDict and plain containers are read without torch (the '
                         'file holds other objects; load it with torch.load if you trust '
                         'it, and save its state dict alone)')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _Dtype)):
      raise TorchFileError(f'{self._where}: unknown persistent id {pid!r}')
    _, kind, key, _, numel = pid
    if key not in self._storages:
      name = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(name)
      except KeyError:
        raise TorchFileError(f'{self._where}: storage {name} is missing') from None
      dtype = kind.dtype.newbyteorder('<' if self._byteorder == 'little' else '>')
      if len(raw) != numel * dtype.itemsize:
        raise TorchFileError(f'{self._where}: storage {name} has {len(raw)} bytes, '
                             f'{numel} x {dtype.name} expected')
      self._storages[key] = np.frombuffer(raw, dtype).astype(kind.dtype)  # native order
    return self._storages[key]


def is_torch_zip(path: str | os.PathLike) -> bool:
  """Whether `path` is a zip archive with a `*/data.pkl`: the format of torch.save."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(n.endswith('/data.pkl') for n in archive.namelist())


def load(path: str | os.PathLike) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays.

  Raises:
    TorchFileError: not a torch zip archive (e.g. the legacy pre-1.6 format), a damaged
      one, or one that holds a global outside the closed set (module docstring).
  """
  where = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise TorchFileError(f'{where}: not a PyTorch zip checkpoint (the legacy pickle format '
                         'of torch < 1.6 needs torch to read)')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchFileError(f'{where}: expected one */data.pkl in the archive, found '
                           f'{pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    with archive.open(pickles[0]) as f:
      try:
        return _Unpickler(f, archive, prefix, where).load()
      except TorchFileError:
        raise
      except Exception as e:  # a damaged pickle: name the file
        raise TorchFileError(f'{where}: cannot unpickle {pickles[0]}: {e}') from e
