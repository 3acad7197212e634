"""Orbax checkpoints: the one module of flux_jax that talks to orbax.

A params checkpoint is one orbax composite directory, self-describing:

  DIR/params   the float32 param pytree (`ocp.args.StandardSave`)
  DIR/config   JSON {'model': model_config(model), 'metadata': {...}}

so `load_params(DIR)` rebuilds the model and its params from DIR alone. The training
checkpoint (state and data iterator under one CheckpointManager, house style 6) will
live here too and use the same item names.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Mapping

from etils import epath
import flax
import jax
import orbax.checkpoint as ocp

from flux_jax.model.fluxvit import FluxViT, abstract_params, make_model

PARAMS = 'params'
CONFIG = 'config'
_MAX_LISTED = 8  # per kind of mismatch in error messages


@contextlib.contextmanager
def _checkpointer() -> Iterator[ocp.Checkpointer]:
  """A synchronous composite checkpointer that knows our items' handlers."""
  registry = ocp.DefaultCheckpointHandlerRegistry()
  registry.add(PARAMS, ocp.args.StandardSave)
  registry.add(PARAMS, ocp.args.StandardRestore)
  registry.add(CONFIG, ocp.args.JsonSave)
  registry.add(CONFIG, ocp.args.JsonRestore)
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))
  try:
    yield ckptr
  finally:
    ckptr.close()


def _check_params(expected, seen, where: str) -> None:
  """Raises if `seen` (leaves with .shape and .dtype) differs from `expected`."""
  expected = flax.traverse_util.flatten_dict(expected, sep='/')
  seen = flax.traverse_util.flatten_dict(seen, sep='/')
  missing = sorted(set(expected) - set(seen))
  unexpected = sorted(set(seen) - set(expected))
  wrong = []
  for k in sorted(set(expected) & set(seen)):
    got, want = (tuple(seen[k].shape), seen[k].dtype), (tuple(expected[k].shape), expected[k].dtype)
    if got != want:
      wrong.append(f'{k} {got[0]} {got[1]} (want {want[0]} {want[1]})')
  if missing or unexpected or wrong:
    raise ValueError(f'{where}: params do not match the model config:\n'
                     f'  missing: {missing[:_MAX_LISTED]}\n'
                     f'  unexpected: {unexpected[:_MAX_LISTED]}\n'
                     f'  wrong shape or dtype: {wrong[:_MAX_LISTED]}')


def save_params(directory: str | os.PathLike, params, model_config: Mapping[str, Any], *,
                metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
  """Writes `params` and the config that rebuilds their model to `directory`.

  Args:
    directory: the checkpoint directory; created, or replaced if `overwrite`.
    params: the float32 param pytree of `make_model(model_config)`.
    model_config: `model_config(model)` (or any config `make_model` accepts).
    metadata: JSON-friendly notes kept beside the config (e.g. the source file).
    overwrite: replace an existing non-empty directory.

  Raises:
    ValueError: the directory holds files and `overwrite` is False, the params do not
      match the config, or the config or metadata is not JSON-serializable.
  """
  path = epath.Path(directory)
  if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
    raise ValueError(f'{directory}: exists and is not an empty directory; pass '
                     'overwrite=True to replace it')
  config = {'model': dict(model_config), 'metadata': dict(metadata or {})}
  try:
    json.dumps(config)
  except TypeError as e:
    raise ValueError(f'{directory}: model_config and metadata must be JSON-serializable: '
                     f'{e}') from e
  model = make_model(config['model'])
  _check_params(abstract_params(model), params, f'save_params({directory})')
  with _checkpointer() as ckptr:
    # force: orbax refuses any existing path, even the empty one we accept.
    ckptr.save(path, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params),
                                                CONFIG: ocp.args.JsonSave(config)}),
               force=True)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON of a params checkpoint: {'model': model config, 'metadata': {...}}."""
  path = epath.Path(directory)
  if not path.is_dir():
    raise ValueError(f'{directory}: no such checkpoint directory')
  if not (path / CONFIG).is_dir() or not (path / PARAMS).is_dir():
    raise ValueError(f'{directory}: not a flux_jax params checkpoint (expected '
                     f'{CONFIG}/ and {PARAMS}/ written by save_params; found '
                     f'{sorted(p.name for p in path.iterdir())[:_MAX_LISTED]})')
  with _checkpointer() as ckptr:
    config = ckptr.restore(path, args=ocp.args.Composite(
        **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
  if not isinstance(config, dict) or 'model' not in config:
    raise ValueError(f'{directory}: not a flux_jax params checkpoint ({CONFIG} has no '
                     "'model' entry)")
  return config


def load_params(directory: str | os.PathLike) -> tuple[FluxViT, dict]:
  """Rebuilds the model saved by `save_params` and restores its params.

  Params come back as float32 jax arrays on the first local device, checked leaf by
  leaf against the shapes of the rebuilt model's init.

  Raises:
    ValueError: the directory is missing, is not a params checkpoint, or its params do
      not match its config.
  """
  config = read_config(directory)
  try:
    model = make_model(config['model'])
  except (TypeError, ValueError) as e:
    raise ValueError(f'{directory}: bad model config: {e}') from e
  abstract = abstract_params(model)
  path = epath.Path(directory)
  with _checkpointer() as ckptr:
    stored = ckptr.metadata(path).item_metadata[PARAMS].tree
    _check_params(abstract, stored, os.fspath(directory))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          abstract)
    params = ckptr.restore(path, args=ocp.args.Composite(
        **{PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  return model, params
