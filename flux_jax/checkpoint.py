"""Orbax checkpoints: the one module of flux_jax that talks to orbax.

A params checkpoint is one orbax composite directory, self-describing:

  DIR/params   the float32 param pytree (`ocp.args.StandardSave`)
  DIR/config   JSON {'model': model_config(model), 'metadata': {...}}

so `load_params(DIR)` rebuilds the model and its params from DIR alone; `init_from`
starts a run from one. `save_params` writes DIR.partial beside DIR and renames it: DIR
holds the old params until the new ones are whole (between the two renames, for an
instant, the old ones are DIR.replaced, which the readers take when DIR is missing).

A training checkpoint is one step of one orbax CheckpointManager (DESIGN.md 4, house
style 6), under WORKDIR/checkpoints:

  STEP/state       the train state pytree, arrays sharded as in the run
  STEP/data        JSON: where the input stands ({'step', 'global_batch_size', ...})

so a resumed run sees the same next batch and computes the same next loss. The input's
position is a record, not grain's per-process iterator state: the pipeline's batches are a
function of (seed, step) and a host's block of rows (DESIGN.md 6), so a run saved by 2
processes resumes in 1 (or 64), each restoring the state into its own shardings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Iterator, Mapping

from absl import logging
from etils import epath
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from flux_jax import hosts
from flux_jax.model.clip import FluxCLIP, abstract_clip_params, make_clip_model
from flux_jax.model.fluxvit import (BLOCKS, PER_HEAD_MODULES, FluxViT, abstract_params,
                                    as_layout, make_model, param_specs)
from flux_jax.model.layers import CLASSES
from flux_jax.model.text import TextTransformer, abstract_text_params, make_text_model

PARAMS = 'params'
CONFIG = 'config'
STATE = 'state'
DATA = 'data'
CHECKPOINTS = 'checkpoints'  # the CheckpointManager's folder inside a workdir
PARAMS_DIR = 'params'  # WORKDIR/params: a finished run's params checkpoint (load_params)
_MAX_LISTED = 8  # per kind of mismatch in error messages
PARTIAL, REPLACED = '.partial', '.replaced'  # beside a params checkpoint while it is saved


def _absolute(directory: str | os.PathLike) -> epath.Path:
  """orbax refuses relative paths: a relative local path is taken from the working
  directory (gs:// and other absolute paths pass unchanged)."""
  path = epath.Path(directory)
  return path if path.is_absolute() else epath.Path(os.path.abspath(os.fspath(directory)))


def _registry() -> ocp.DefaultCheckpointHandlerRegistry:
  """The handlers of every item flux_jax writes, by item name."""
  registry = ocp.DefaultCheckpointHandlerRegistry()
  for item, arg_types in ((PARAMS, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                          (CONFIG, (ocp.args.JsonSave, ocp.args.JsonRestore)),
                          (STATE, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                          (DATA, (ocp.args.JsonSave, ocp.args.JsonRestore))):
    for args in arg_types:
      registry.add(item, args)  # the handler registered for these args
  return registry


def _beside(path: epath.Path, suffix: str) -> epath.Path:
  return path.parent / (path.name + suffix)


def _params_dir(directory: str | os.PathLike) -> epath.Path:
  """The params checkpoint at `directory`, or the old one that a save killed between its
  two renames left beside it."""
  path = _absolute(directory)
  replaced = _beside(path, REPLACED)
  if not path.exists() and replaced.is_dir():
    logging.warning('%s is missing: a save_params was interrupted; reading the previous '
                    'params from %s', path, replaced)
    return replaced
  return path


@contextlib.contextmanager
def _checkpointer() -> Iterator[ocp.Checkpointer]:
  """A synchronous composite checkpointer that knows our items' handlers."""
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=_registry()))
  try:
    yield ckptr
  finally:
    ckptr.close()


def _flat(tree) -> dict[str, Any]:
  """'a/b/0/c' -> leaf; dicts, lists and named tuples alike (orbax stores named tuples
  as dicts, so their fields are matched by name)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): leaf for path, leaf in leaves}


def _check_tree(expected, seen, header: str) -> None:
  """Raises `header` and the differences if `seen` (leaves with .shape and .dtype) is not
  `expected` leaf for leaf."""
  expected, seen = _flat(expected), _flat(seen)
  missing = sorted(set(expected) - set(seen))
  unexpected = sorted(set(seen) - set(expected))
  wrong = []
  for k in sorted(set(expected) & set(seen)):
    got = (tuple(seen[k].shape), np.dtype(seen[k].dtype))
    want = (tuple(expected[k].shape), np.dtype(expected[k].dtype))
    if got != want:
      wrong.append(f'{k} {got[0]} {got[1]} (want {want[0]} {want[1]})')
  if missing or unexpected or wrong:
    raise ValueError(f'{header}:\n'
                     f'  missing: {missing[:_MAX_LISTED]}\n'
                     f'  unexpected: {unexpected[:_MAX_LISTED]}\n'
                     f'  wrong shape or dtype: {wrong[:_MAX_LISTED]}')


# What a params checkpoint holds, by its config's 'kind' (absent: 'fluxvit'): the
# factory that rebuilds the module from the config, and its params' shapes.
KINDS = {
    'fluxvit': (make_model, abstract_params),
    'clip': (make_clip_model, abstract_clip_params),  # FluxViT-CLIP's two towers
    'text': (make_text_model, abstract_text_params),  # a text tower alone
}
Module = FluxViT | FluxCLIP | TextTransformer


def build_model(model_config: Mapping[str, Any]) -> tuple[Module, Any]:
  """(module, abstract params) of a checkpoint's model config, any kind."""
  config = dict(model_config)
  kind = config.pop('kind', 'fluxvit')
  if kind not in KINDS:
    raise ValueError(f"model kind {kind!r} is not one of {sorted(KINDS)}")
  make, abstract = KINDS[kind]
  model = make(config)
  return model, abstract(model)


def kind_of(directory: str | os.PathLike) -> str:
  """'fluxvit', 'clip' or 'text': what the params checkpoint at `directory` holds."""
  return read_config(directory)['model'].get('kind', 'fluxvit')


def _check_params(expected, seen, where: str) -> None:
  _check_tree(expected, seen, f'{where}: params do not match the model config')


def save_params(directory: str | os.PathLike, params, model_config: Mapping[str, Any], *,
                metadata: Mapping[str, Any] | None = None, overwrite: bool = False,
                kind: str = 'fluxvit') -> None:
  """Writes `params` and the config that rebuilds their model to `directory`.

  Args:
    directory: the checkpoint directory; created, or replaced if `overwrite`.
    params: the float32 param pytree of `make_model(model_config)`.
    model_config: `model_config(model)` (or any config `make_model` accepts), or for
      another `kind` its config (`clip_model_config`, `text_model_config`).
    metadata: JSON-friendly notes kept beside the config (e.g. the source file).
    overwrite: replace an existing non-empty directory, which stays whole until the new
      params are (written to DIR.partial, then renamed; a failed save leaves DIR.partial,
      which the next one removes).
    kind: a key of KINDS: 'fluxvit', 'clip' (FluxViT-CLIP) or 'text' (a text tower).

  Raises:
    ValueError: the directory holds files and `overwrite` is False, the params do not
      match the config, or the config or metadata is not JSON-serializable.
  """
  path, existing = _absolute(directory), _params_dir(directory)
  if existing.exists() and (not existing.is_dir() or any(existing.iterdir())) and not overwrite:
    raise ValueError(f'{directory}: exists and is not an empty directory; pass '
                     'overwrite=True to replace it')
  config = {'model': dict(model_config, **({} if kind == 'fluxvit' else {'kind': kind})),
            'metadata': dict(metadata or {})}
  try:
    json.dumps(config)
  except TypeError as e:
    raise ValueError(f'{directory}: model_config and metadata must be JSON-serializable: '
                     f'{e}') from e
  _, abstract = build_model(config['model'])
  _check_params(abstract, params, f'save_params({directory})')
  partial, replaced = _beside(path, PARTIAL), _beside(path, REPLACED)

  def clean():  # what a failed or killed save left, orbax's temporary dirs too
    for leftover in path.parent.glob(partial.name + '*'):
      leftover.rmtree()

  hosts.on_process_zero('save_params clean', clean)
  with _checkpointer() as ckptr:
    # Beside, not in place: orbax's force=True deletes the old params before writing.
    ckptr.save(partial, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params), CONFIG: ocp.args.JsonSave(config)}),
               force=True)

  def swap():  # at every instant the old params or the new ones are whole
    if path.exists():
      if replaced.exists():  # an older interrupted save's, older than `path`
        replaced.rmtree()
      path.rename(replaced)
    partial.rename(path)
    if replaced.exists():
      replaced.rmtree()

  hosts.on_process_zero('save_params rename', swap)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON of a params checkpoint: {'model': model config, 'metadata': {...}}."""
  path = _params_dir(directory)
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


def load_model(directory: str | os.PathLike) -> Module:
  """The model saved by `save_params`, rebuilt from its config; no params are read."""
  return _load_model(directory)[0]


def _load_model(directory) -> tuple[Module, Any]:
  config = read_config(directory)
  try:
    return build_model(config['model'])
  except (TypeError, ValueError) as e:
    raise ValueError(f'{directory}: bad model config: {e}') from e


def load_params(directory: str | os.PathLike, shardings=None, *,
                scan_layers: bool | None = None) -> tuple[Module, dict]:
  """Rebuilds the model saved by `save_params` and restores its params.

  Params come back as float32 jax arrays, checked leaf by leaf against the shapes of the
  rebuilt model's init: on the first local device, or, given `shardings` (a tree of
  `jax.sharding.Sharding` like the params, e.g. `sharding.param_shardings(model, ...)`),
  each array restored straight into its sharding, every host reading only its shards.

  `scan_layers` (FluxViT checkpoints) asks for the model and params in that block layout
  whatever layout they were saved in (None: as saved); the params are restored in the
  saved layout, sharded as `shardings` say for the other, and converted on the devices.

  Raises:
    ValueError: the directory is missing, is not a params checkpoint, or its params do
      not match its config.
  """
  saved, stored_abstract = _load_model(directory)
  model, abstract = saved, stored_abstract
  if scan_layers is not None:
    if not isinstance(saved, FluxViT):
      raise ValueError(f'{directory}: scan_layers applies to FluxViT checkpoints; this one '
                       f'holds a {kind_of(directory)} model')
    if saved.scan_layers != scan_layers:
      model = saved.clone(scan_layers=scan_layers)
      abstract = abstract_params(model)
  if shardings is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), abstract)
  path = _params_dir(directory)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        abstract, shardings)
  if model is not saved:  # the saved layout's arrays, sharded like their blocks will be
    target = as_layout(target, saved.scan_layers, saved.depth)
  with _checkpointer() as ckptr:
    stored = ckptr.metadata(path).item_metadata[PARAMS].tree
    _check_params(stored_abstract, stored, os.fspath(directory))
    params = ckptr.restore(path, args=ocp.args.Composite(
        **{PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  if model is not saved:
    params = jax.jit(lambda p: as_layout(p, model.scan_layers, model.depth),
                     out_shardings=shardings)(params)
  return model, params


def _restore_target(abstract_state, where: str):
  """ShapeDtypeStructs with the shardings to restore into; jax.Arrays lend theirs."""
  def one(path, leaf):
    if isinstance(leaf, jax.Array):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if getattr(leaf, 'sharding', None) is None:
      raise ValueError(f'{where}: the abstract state leaf '
                       f'{jax.tree_util.keystr(path, simple=True, separator="/")} has no '
                       'sharding; give ShapeDtypeStructs with sharding= or jax.Arrays')
    return leaf
  return jax.tree_util.tree_map_with_path(one, abstract_state)


class TrainCheckpointer:
  """Saves and restores `{state, data}` of a training run in WORKDIR/checkpoints.

  One orbax CheckpointManager: saves every `save_every` steps (or when forced, or when
  orbax sees a preemption), keeps the latest `keep`, and writes arrays in the background
  when `async_save`. A save captures the state before it returns, so the loop may go on
  (and donate the state) at once. Every process of a multi-host job makes the same calls.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int, save_every: int,
               async_save: bool = True):
    if keep < 1 or save_every < 1:
      raise ValueError(f'{workdir}: keep={keep} and save_every={save_every} must be >= 1')
    self.directory = _absolute(workdir) / CHECKPOINTS
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_every),
            policies.PreemptionCheckpointingPolicy()]),
        preservation_policy=policies.LatestN(keep),
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=_registry())
    self._closed = False

  def latest_step(self) -> int | None:
    """The newest finished checkpoint's step, None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether `save(step, ...)` would save without `force` (interval or preemption)."""
    return self._manager.should_save(step)

  def save(self, step: int, state, data: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves `state` and the input's position `data` (JSON) if `step` is due (or `force`).

    Returns:
      whether a checkpoint was started.
    """
    saved = self._manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(dict(data))}),
        force=force)
    if saved:
      logging.info('checkpoint of step %d started in %s', step, self.directory)
    return saved

  def _step(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise ValueError(f'{self.directory}: no checkpoint to restore')
      return steps[-1]
    if step not in steps:
      raise ValueError(f'{self.directory}: no checkpoint of step {step}; have {steps}')
    return step

  def restore(self, step: int | None, abstract_state):
    """The state of checkpoint `step` (None: the latest), arrays in the given shardings
    (those of this run's mesh, whatever the saving run's topology was).

    Args:
      step: the step to restore, or None for the latest.
      abstract_state: the state's tree with ShapeDtypeStructs (with `sharding=`) or
        jax.Arrays as leaves; restored arrays get exactly these shardings.

    Raises:
      ValueError: no such checkpoint, or its state does not match `abstract_state`
        leaf for leaf (names, shapes, dtypes).
    """
    step = self._step(step)
    where = f'{self.directory} step {step}'
    target = _restore_target(abstract_state, where)
    stored = self._manager.item_metadata(step)[STATE].tree
    saved, wanted = _block_layout(stored), _block_layout(target)
    if saved and wanted and saved != wanted:
      raise ValueError(f'{where}: the checkpoint\'s blocks are {saved}, this run\'s are '
                       f'{wanted}; resume with --config.model.scan_layers='
                       f'{saved == "scanned"} (the layout it was saved with)')
    _check_tree(target, stored, f'{where}: the checkpointed state does not match the '
                f'abstract state ("missing": only in the abstract state; "want": its shape)')
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target)}))
    logging.info('restored step %d from %s', step, self.directory)
    return restored[STATE]

  def data(self, step: int | None = None) -> dict[str, Any]:
    """The input position saved with checkpoint `step` (None: the latest)."""
    step = self._step(step)
    return self._manager.restore(step, args=ocp.args.Composite(**{
        DATA: ocp.args.JsonRestore()}))[DATA]

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager; once."""
    if not self._closed:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> TrainCheckpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _block_layout(tree) -> str | None:
  """'scanned' (a stacked `blocks`), 'unrolled' (`blocks_{i}`) or None: how the FluxViT
  blocks inside a params or train-state tree are laid out."""
  keys = list(_flat(tree))
  if any(re.search(r'(^|/)blocks/', k) for k in keys):
    return 'scanned'
  if any(re.search(r'(^|/)blocks_\d+/', k) for k in keys):
    return 'unrolled'
  return None


def _put_like(value, like: jax.Array) -> jax.Array:
  """`value` as a global array with `like`'s sharding (each process fills its shards)."""
  host = np.asarray(value)
  return jax.make_array_from_callback(host.shape, like.sharding, lambda index: host[index])


# A checkpoint with other heads than the params (a one-head run starting a Flux-Multi
# one, or the reverse: SPEC E.3's "Single | Multi" rows) shares everything else.
_PER_HEAD = re.compile(rf"^({'|'.join(PER_HEAD_MODULES)})_\d+/")


def _modules(keys) -> str:
  return ', '.join(sorted({k.split('/')[0] for k in keys})) or 'none'


def _num_heads(flat: Mapping[str, Any]) -> int:
  return len({k.split('/')[0] for k in flat if k.startswith('head_')})


def _layout_of(params: Mapping[str, Any], source: Module, loaded: dict) -> dict:
  """The checkpoint's params `loaded` (of model `source`) in the block layout of
  `params`: scanned where `params` hold a stacked `blocks`, unrolled otherwise."""
  if isinstance(source, FluxViT):
    return as_layout(loaded, BLOCKS in params, source.depth)
  if isinstance(source, FluxCLIP) and isinstance(params.get('vision'), Mapping):
    return dict(loaded, vision=as_layout(loaded['vision'], BLOCKS in params['vision'],
                                         source.vision.depth))
  return loaded


def init_from(directory: str | os.PathLike, params: dict) -> dict:
  """`params` (freshly initialised, any sharding) with the values of a params checkpoint.

  The `--init` of a run: fine-tuning starts from a converted official checkpoint
  (`save_params` / `python -m flux_jax.cli.convert`) or from another run's params. Arrays keep
  the shardings of `params`. Leaves that stay at their init, named in a log line:
  classifier leaves (those with a 'classes' axis) whose class count differs from the
  checkpoint's, and the modules of heads the checkpoint lacks (a Flux-Multi run started
  from a one-head run); the checkpoint's heads the params lack are dropped, also logged.
  Every other leaf must match in name, shape and dtype.

  A checkpoint of another kind (a FluxViT-CLIP run's, a text tower's) must fit `params`
  leaf for leaf.

  The block layout follows `params`: a checkpoint saved unrolled (`blocks_{i}`, its
  config's scan_layers False) starts a scanned model (a stacked `blocks`), and the
  reverse; for FluxViT-CLIP, the vision tower's.

  Raises:
    ValueError: the directory is not a params checkpoint, or its params do not fit
      `params` beyond the class count and the heads.
  """
  source, loaded = load_params(directory)
  loaded = _layout_of(params, source, loaded)
  fresh, got = _flat(params), _flat(loaded)
  if not isinstance(source, FluxViT):
    _check_tree(fresh, got, f'init_from({directory}): the checkpoint does not fit the '
                'params (want: the shape of the params)')
    return flax.traverse_util.unflatten_dict(
        {tuple(k.split('/')): _put_like(got[k], v) for k, v in fresh.items()})
  specs = _flat(param_specs(source.clone(scan_layers=BLOCKS in params)))  # as `got`
  new_heads = sorted(k for k in fresh if k not in got and _PER_HEAD.match(k))
  dropped = sorted(k for k in got if k not in fresh and _PER_HEAD.match(k))
  got = {k: v for k, v in got.items() if k not in dropped}

  def other_classes(k):
    """Whether leaf k differs from the checkpoint's in its class dimension alone."""
    if k not in fresh or CLASSES not in specs[k]:
      return False
    want, have = tuple(fresh[k].shape), tuple(got[k].shape)
    return want != have and len(want) == len(have) and all(
        w == h for w, h, name in zip(want, have, specs[k]) if name != CLASSES)

  at_init = sorted(k for k in got if other_classes(k))
  _check_tree({k: v for k, v in fresh.items() if k not in at_init and k not in new_heads},
              {k: v for k, v in got.items() if k not in at_init},
              f'init_from({directory}): the checkpoint does not fit the params (want: the '
              'shape of the params)')
  if at_init:
    logging.info('init_from(%s): the checkpoint has %d classes; kept at init: %s',
                 directory, source.num_classes,
                 ', '.join(f'{k} {tuple(fresh[k].shape)}' for k in at_init))
  if new_heads or dropped:
    logging.info('init_from(%s): the checkpoint has heads for budgets %s, the params for '
                 '%d heads; kept at init: %s; dropped: %s', directory,
                 tuple(source.head_budgets), _num_heads(fresh),
                 _modules(new_heads), _modules(dropped))
  at_init = set(at_init) | set(new_heads)
  out = {k: v if k in at_init else _put_like(got[k], v) for k, v in fresh.items()}
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})
