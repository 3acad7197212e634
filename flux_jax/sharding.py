"""Device mesh, logical-axis rules and sharded placement (DESIGN.md 4, 6).

Every parameter and every activation that crosses a block carries logical axis names
(flux_jax/model/layers.py). `DEFAULT_RULES` maps them onto the mesh axes
('data', 'fsdp', 'tensor'):

  logical name              mesh axes          why
  batch, activation_batch   ('data', 'fsdp')   every device that holds no tensor shard
                                               takes its own rows of the batch
  embed, clip_embed         'fsdp'             ZeRO-3: every D-wide (and projector-wide)
                                               weight is split over fsdp and gathered
                                               per use
  mlp, activation_mlp       'tensor'           Megatron MLP: fc1 columns, fc2 rows, the
                                               hidden activations split alike
  heads, joined_kv,         'tensor'           attention and pooling split by head (the
  activation_heads                             splash kernel's shard_map follows it)
  layers                    None               the leading axis of scanned blocks' params
                                               (model.scan_layers) is not split: each
                                               device holds its shards of every block,
                                               as in the unrolled layout
  everything else           replicated         kv, qkv, patch, pos_t/h/w (small), classes
                                               (the classifier is <0.5M params; whole
                                               logits keep the softmax local),
                                               activation_length, activation_embed,
                                               activation_kv

A run's rules are `config.sharding.rules` (configs/common.py starts them from
DEFAULT_RULES, the one default); e.g. ('activation_length', 'tensor') asks for sequence
sharding of the tokens between blocks. `tracing_context` enters them as flax's
`nn.logical_axis_rules`, so the activations' constraints and attention's shard_map follow
the same rules as the parameters.

A mesh axis only splits a dimension it divides: `layers.fit_spec` drops it (replicates that
dimension) otherwise, so tiny test models and odd class counts work on any mesh. One
array never uses a mesh axis twice; a logical name repeated in one array (the decoders'
clip_embed x clip_embed kernel) is sharded at its first dimension only.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from flux_jax.model import layers
from flux_jax.model.fluxvit import FluxViT, abstract_params, param_specs

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the leading axis of every batch and activation

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ('batch', BATCH_AXES),
    (layers.ACT_BATCH, BATCH_AXES),
    (layers.EMBED, 'fsdp'),
    (layers.CLIP, 'fsdp'),
    (layers.MLP, 'tensor'),
    (layers.HEADS, 'tensor'),
    (layers.JOINED_KV, 'tensor'),
    (layers.ACT_HEADS, 'tensor'),
    (layers.ACT_MLP, 'tensor'),
    (layers.LAYERS, None),
)


def _mesh_sizes(shape: Mapping[str, int] | Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Mesh axis sizes from `config.mesh`; -1 on one axis takes the remaining devices."""
  if isinstance(shape, Mapping):
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
      raise ValueError(f'unknown mesh axes {unknown} (mesh.{unknown[0]}); known: {MESH_AXES}')
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    if len(shape) != len(MESH_AXES):
      raise ValueError(f'mesh shape {tuple(shape)} needs one size per axis of {MESH_AXES}')
    sizes = [int(s) for s in shape]
  named = ', '.join(f'mesh.{a}={s}' for a, s in zip(MESH_AXES, sizes))
  bad = [f'mesh.{a}={s}' for a, s in zip(MESH_AXES, sizes) if s < 1 and s != -1]
  if bad:
    raise ValueError(f'{", ".join(bad)}: a mesh size must be positive or -1')
  rest = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(rest) > 1:
    raise ValueError(f'{named}: at most one mesh axis may be -1')
  fixed = math.prod(s for s in sizes if s != -1)
  if rest:
    if num_devices % fixed:
      raise ValueError(f'{named}: mesh.{rest[0]}=-1 cannot fill {num_devices} devices, the '
                       f'other axes ({fixed} devices) do not divide them')
    sizes = [num_devices // fixed if s == -1 else s for s in sizes]
  elif fixed != num_devices:
    raise ValueError(f'{named} covers {fixed} devices, but there are {num_devices}; make '
                     'the sizes multiply to the device count or set one of them to -1')
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int] | Sequence[int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices).

  `shape` is `config.mesh`: a mapping from axis name to size (missing axes are 1) or
  three sizes; -1 on at most one axis means "the remaining devices".

  Axes are `AxisType.Auto`: shardings come from jit in/out shardings and logical
  constraints, and the compiler propagates the rest (jax.make_mesh defaults to Explicit).
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = _mesh_sizes(shape, len(devices))
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(sizes),
                       devices=devices)


def _canonical_rules(rules: Sequence[Sequence[Any]]) -> Rules:
  """Rules as hashable pairs; configs may hold them as lists of lists."""
  out = []
  for rule in rules:
    name, axes = rule
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def _check_rules(rules: Rules, mesh: jax.sharding.Mesh) -> None:
  for name, axes in rules:
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in mesh.axis_names:
        raise ValueError(f'sharding rule {name!r} -> {axes!r} names mesh axis {axis!r}; the '
                         f'mesh has {mesh.axis_names}')


def logical_to_mesh_spec(logical: P, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> P:
  """A PartitionSpec of mesh axes for one array's logical names (flax rule semantics)."""
  return nn.logical_to_mesh_axes(layers.unique_names(logical), _canonical_rules(rules))


def _padded(spec: P, ndim: int) -> tuple:
  return tuple(spec) + (None,) * (ndim - len(spec))


def logical_shardings(logical_specs, abstract_tree, mesh: jax.sharding.Mesh,
                         rules: Sequence[Sequence[Any]] = DEFAULT_RULES):
  """NamedShardings for a tree of logical PartitionSpecs and the matching shapes.

  Args:
    logical_specs: PartitionSpecs of logical names (e.g. `param_specs(model)`, or
      `nn.get_partition_spec` of a boxed train state); None leaves are replicated.
    abstract_tree: the same tree with leaves that have `.shape` (ShapeDtypeStructs).
    mesh: the device mesh.
    rules: (logical name, mesh axes) pairs; unlisted names are replicated.
  """
  rules = _canonical_rules(rules)
  _check_rules(rules, mesh)
  fallbacks = []

  def one(path, logical, leaf):
    if not hasattr(leaf, 'shape'):  # an empty subtree (optax.MaskedNode: a frozen leaf's
      return leaf  # optimizer state) under a parameter's names: nothing to place
    wanted = logical_to_mesh_spec(P() if logical is None else logical, rules)
    spec = layers.fit_spec(wanted, leaf.shape, mesh)
    if _padded(spec, len(leaf.shape)) != _padded(wanted, len(leaf.shape)):
      fallbacks.append(f'{jax.tree_util.keystr(path, simple=True, separator="/")} '
                       f'{tuple(leaf.shape)} {tuple(wanted)} -> {tuple(spec)}')
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(one, logical_specs, abstract_tree,
                                         is_leaf=lambda x: x is None or isinstance(x, P))
  if fallbacks:
    logging.info('%d arrays keep some dimensions unsharded (the mesh axes do not divide '
                 'them): %s', len(fallbacks), '; '.join(fallbacks[:8]))
  return out


@contextlib.contextmanager
def tracing_context(mesh: jax.sharding.Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES):
  """The mesh and logical rules while a sharded step is traced and lowered.

  Inside it the activations' logical constraints (`layers.constrain`) take effect, and
  attention='auto'/'splash' sees the mesh's platform and runs the splash kernel under
  `jax.shard_map`, batch and heads split as the rules split 'activation_batch' and
  'activation_heads'. Batches traced inside must divide them.
  """
  rules = _canonical_rules(rules)
  _check_rules(rules, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def rules_of(config) -> Rules:
  """The logical-axis rules of a config (`config.sharding.rules`), DEFAULT_RULES if it
  names none."""
  block = config.get('sharding') if hasattr(config, 'get') else None
  rules = None if block is None else block.get('rules')
  return DEFAULT_RULES if rules is None else _canonical_rules(rules)


def param_shardings(model: FluxViT, mesh: jax.sharding.Mesh,
                    rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> dict:
  """NamedSharding of every parameter of `model`, following `rules` where divisible."""
  return logical_shardings(param_specs(model), abstract_params(model), mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over data and fsdp; the rest is replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_init(init_fn: Callable[..., Any], shardings: Any, *args) -> Any:
  """Runs `init_fn(*args)` so that its outputs are born sharded (shape-first init).

  Args:
    init_fn: a jittable function, e.g. `lambda rng: init_params(model, rng)`.
    shardings: a tree of Shardings matching the output, or a function from the
      output's ShapeDtypeStructs (`jax.eval_shape`, nothing allocated) to that tree.
    *args: arguments of `init_fn`.
  """
  if callable(shardings):
    shardings = shardings(jax.eval_shape(init_fn, *args))
  return jax.jit(init_fn, out_shardings=shardings)(*args)
