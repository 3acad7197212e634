"""The training step of a config, compiled for a TPU topology on this (CPU) host.

  python -m flux_jax.bench aot --config configs/fluxvit_k400.py:variant=small,mode=multi \
      --topology v5e:2x4 [--batch_per_chip 16] [--json]

What `flux_jax.cli.train` would compile for the config (train.program.train_program: the same step
builder, shardings, donation, dtype, remat, attention; Flux-Multi, Flux-Single or Flux-UMT
with its teacher), lowered with ShapeDtypeStructs carrying NamedShardings over the TPU
devices of `jax.experimental.topologies` and compiled by libtpu, as MaxText's
train_compile does. Nothing is allocated and no data or checkpoint is read.

Per chip it reports argument, output, temporary and peak bytes (`memory_analysis()`),
the chip's HBM and whether the step fits, the collectives in the optimized program and
the fused attention kernels (Pallas custom calls) in it. The step fits when libtpu
compiles it: libtpu refuses a program that exceeds the chip's HBM (RESOURCE_EXHAUSTED,
with the temporaries it would need, which the report then gives), and under pressure
it rematerializes more on its own, so a peak near the HBM means extra recompute. FLOPs
per step are the model's, whatever kernel runs them: the same step lowered for one CPU
device with every attention as XLA matmuls (XLA's cost analysis counts no FLOPs inside a
Pallas kernel, and a TPU lowering has no cost analysis without a TPU client).

libtpu is needed on the host (never on the runtime path): `make .venv/.aot` installs it
into .venv/libtpu, which this module finds, or set TPU_LIBRARY_PATH, or install
"jax[tpu]" in an environment of its own.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from flux_jax.tokens.token_batch import ClipBatch, TokenBatch

# Topology names as libtpu takes them: generation, then chips per dimension.
TOPOLOGY = re.compile(r'^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$')
# HBM per chip (Cloud TPU system architecture pages), by the device kind libtpu reports.
HBM_GIB_PER_CHIP = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}
# libtpu's refusal of a program that does not fit: temporaries needed, HBM available.
OUT_OF_MEMORY = re.compile(r'memory required for HLO temporaries \(([\d.]+)G\) exceeds '
                           r'available HBM \(([\d.]+)G\)')
COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute',
               'all-to-all')
# <checkout>/.venv/libtpu: where `make .venv/.aot` puts libtpu, away from the runtime venv.
LOCAL_LIBTPU = os.path.join(os.path.dirname(__file__), '..', '..', '.venv', 'libtpu',
                            'libtpu', 'libtpu.so')


class AotError(ValueError):
  """A topology, config or environment that cannot be compiled for, with the reason."""


def find_libtpu() -> str:
  """The libtpu.so to compile with: TPU_LIBRARY_PATH, an installed libtpu package, or
  .venv/libtpu (`make .venv/.aot`); AotError naming the ways to get one otherwise."""
  path = os.environ.get('TPU_LIBRARY_PATH')
  if not path:
    try:
      import libtpu  # pylint: disable=g-import-not-at-top
      path = libtpu.get_library_path()
    except ImportError:
      path = os.path.abspath(LOCAL_LIBTPU)
  if not os.path.isfile(path):
    raise AotError(
        'bench aot needs libtpu to compile for TPU: run `make .venv/.aot` (libtpu into '
        f'.venv/libtpu, pinned by requirements-aot.txt), or set TPU_LIBRARY_PATH to a '
        f'libtpu.so, or pip install "jax[tpu]=={jax.__version__}" (looked for {path})')
  return path


def use_libtpu() -> str:
  """Makes libtpu visible to jax for AOT and keeps this process's own backend on CPU.

  Must run before jax initializes a backend. Returns the library's path.
  """
  path = find_libtpu()
  os.environ['TPU_LIBRARY_PATH'] = path
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # not on a TPU VM: no metadata server
  # Compiling touches no TPU device: other processes may hold libtpu's lock (/tmp/libtpu_lockfile).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  jax.config.update('jax_platforms', 'cpu')  # the host computes nothing on a TPU
  return path


def topology_devices(name: str) -> tuple[list[Any], int]:
  """(TPU devices of topology `name`, chips): e.g. 'v5e:2x4' is 8 v5e chips."""
  m = TOPOLOGY.match(name)
  if not m:
    raise AotError(f'--topology={name!r}: expected GENERATION:AxB or AxBxC with generation '
                   "v4, v5e, v5p or v6e, e.g. 'v5e:2x4' (v5e-8), 'v5p:2x2x1' (v5p-8), "
                   "'v6e:2x4', 'v4:2x2x1'")
  chips = math.prod(int(d) for d in m.groups()[1:] if d)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(platform='tpu', topology_name=name)
  except Exception as e:  # libtpu refuses shapes its generation does not have
    raise AotError(f'--topology={name!r}: libtpu refused it: {e}') from None
  return list(topology.devices), chips


def abstract_batch(global_batch: int, n_max: int, patch_dim: int,
                   sharding: NamedSharding) -> TokenBatch:
  """ShapeDtypeStructs of a training TokenBatch (the pipeline's fields and dtypes)."""
  def spec(shape, dtype):
    return jax.ShapeDtypeStruct((global_batch,) + shape, dtype, sharding=sharding)
  return TokenBatch(patches=spec((n_max, patch_dim), jax.numpy.uint8),
                    coords=spec((n_max, 3), jax.numpy.int32),
                    grid=spec((3,), jax.numpy.int32), valid=spec((n_max,), bool),
                    label=spec((), jax.numpy.int32), video_index=spec((), jax.numpy.int32),
                    view=spec((), jax.numpy.int32))


def count_ops(hlo: str) -> dict[str, int]:
  """Collectives (async starts counted once) and Pallas kernels in an optimized HLO."""
  out = {}
  for op in COLLECTIVES:  # instruction lines `%name = <shape> op(` (shapes may be tuples)
    out[op] = len(re.findall(rf'^\s*(?:ROOT )?%[\w.\-]+ = [^\n]*? {op}(?:-start)?\(', hlo,
                             re.M))
  out['pallas_kernels'] = len(re.findall(r'custom_call_target="tpu_custom_call"', hlo))
  return out


def _abstract_args(program, global_batch: int, n_max: int, patch_dim: int,
                   caption_length: int | None = None):
  """(state, batch, rng) ShapeDtypeStructs; with `caption_length` the batch is a
  ClipBatch (FluxViT-CLIP: one caption of that many ids per clip)."""
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       program.state_shapes, program.state_shardings)
  tokens = abstract_batch(global_batch, n_max, patch_dim, program.batch_sharding)
  if caption_length is not None:
    tokens = ClipBatch(tokens=tokens, text=jax.ShapeDtypeStruct(
        (global_batch, caption_length), jax.numpy.int32, sharding=program.batch_sharding))
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(program.mesh, P()))
  return state, tokens, rng


def _vision(program):
  """The FluxViT of a program (FluxViT-CLIP's vision tower)."""
  return getattr(program.model, 'vision', program.model)


def _caption_length(config) -> int | None:
  return config.data.caption_length if config.train.mode == 'clip' else None


def model_flops(config, global_batch: int) -> float | None:
  """FLOPs of one step of the whole global batch: the same step lowered (not compiled)
  for one CPU device with every attention as XLA matmuls, by XLA's cost analysis."""
  from flux_jax import sharding  # pylint: disable=g-import-not-at-top
  from flux_jax.model import attention  # pylint: disable=g-import-not-at-top
  from flux_jax.train.program import train_program  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(config)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.model.scan_layers = False  # XLA's cost analysis counts a scan's body once
  mesh = sharding.make_mesh(dict(config.mesh), jax.devices('cpu')[:1])
  program = train_program(config, mesh, global_batch, workdir=None)
  args = _abstract_args(program, global_batch, config.n_max, _vision(program).patch_dim,
                        _caption_length(config))
  with attention.override('xla'):
    cost = program.lower(*args).cost_analysis()
  return None if not cost else cost.get('flops')


def run(config, topology: str, batch_per_chip: int | None = None) -> dict[str, Any]:
  """Compiles `config`'s train step for `topology`; one report dict (see module doc)."""
  from flux_jax import sharding  # pylint: disable=g-import-not-at-top
  from flux_jax.model import attention  # pylint: disable=g-import-not-at-top
  from flux_jax.loop import validate  # pylint: disable=g-import-not-at-top
  from flux_jax.train.program import train_program  # pylint: disable=g-import-not-at-top

  use_libtpu()
  devices, chips = topology_devices(topology)
  config = copy.deepcopy(config)
  if batch_per_chip is not None:
    if batch_per_chip < 1:
      raise AotError(f'--batch_per_chip={batch_per_chip} must be positive')
    config.train.global_batch_size = batch_per_chip * chips
  global_batch = config.train.global_batch_size
  if global_batch % chips:
    raise AotError(f'train.global_batch_size={global_batch} does not divide over the '
                   f'{chips} chips of {topology}')
  try:
    validate(config)  # a bad config is refused before anything compiles
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    videos = global_batch // config.data.num_sample  # one step per epoch: shapes only
    program = train_program(config, mesh, videos, workdir=None)
  except ValueError as e:
    raise AotError(f'{topology} ({len(devices)} devices): {e}') from None
  model = _vision(program)
  args = _abstract_args(program, global_batch, config.n_max, model.patch_dim,
                        _caption_length(config))

  kind = devices[0].device_kind
  per_chip = len(devices) // chips  # v4 topologies expose two devices per chip
  hbm = HBM_GIB_PER_CHIP[kind] * 2**30 // per_chip if kind in HBM_GIB_PER_CHIP else None
  with sharding.tracing_context(mesh, program.rules):
    probe = jax.ShapeDtypeStruct((1, 2048, model.num_heads, model.embed_dim // model.num_heads),
                                 model.dtype)
    resolved = attention.resolve(model.attention, probe, probe)[0]
  report = dict(
      topology=topology, device_kind=kind, chips=chips, devices=len(devices),
      mesh=dict(mesh.shape), mode=config.train.mode,
      model=f'D{model.embed_dim} x {model.depth}', dtype=jax.numpy.dtype(model.dtype).name,
      remat=model.remat, attention=model.attention, attention_runs=resolved,
      n_max=config.n_max, budgets=list(config.train.budgets)
      if config.train.mode in ('multi', 'clip')
      else [config.train.single_budget] if config.train.mode == 'single'
      else list(config.distill.s_tokens),
      global_batch=global_batch, batch_per_chip=global_batch / chips,
      hbm_bytes_per_chip=hbm, flops_per_step=model_flops(config, global_batch))
  report['flops_per_chip'] = (None if report['flops_per_step'] is None else
                              report['flops_per_step'] / len(devices))

  t0 = time.perf_counter()
  lowered = program.lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # libtpu refuses a program that exceeds the chip's HBM, with what it would need.
    need = OUT_OF_MEMORY.search(str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not need:
      raise
    arguments, temp = _bytes_per_device(args), int(float(need.group(1)) * 2**30)
    return dict(report, compile_s=time.perf_counter() - t0, fits=False,
                argument_bytes_per_chip=arguments, output_bytes_per_chip=None,
                alias_bytes_per_chip=None, temp_bytes_per_chip=temp,
                peak_bytes_per_chip=arguments + temp,
                usable_hbm_bytes_per_chip=int(float(need.group(2)) * 2**30),
                xla_flops_per_chip=None, ops=None, error=need.group(0))
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  return dict(
      report, compile_s=time.perf_counter() - t0,
      fits=True,  # libtpu compiled it for this chip: it fits (else RESOURCE_EXHAUSTED)
      argument_bytes_per_chip=mem.argument_size_in_bytes,
      output_bytes_per_chip=mem.output_size_in_bytes,
      alias_bytes_per_chip=mem.alias_size_in_bytes,
      temp_bytes_per_chip=mem.temp_size_in_bytes,
      peak_bytes_per_chip=mem.peak_memory_in_bytes or total, total_bytes_per_chip=total,
      xla_flops_per_chip=(compiled.cost_analysis() or {}).get('flops'),
      ops=count_ops(compiled.as_text()))


def _bytes_per_device(tree) -> int:
  """Bytes of one device's shards of a tree of ShapeDtypeStructs with shardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def format_report(r: dict[str, Any]) -> str:
  gib = lambda b: 'n/a' if b is None else f'{b / 2**30:.2f} GiB'  # noqa: E731
  tflop = lambda f: 'n/a' if f is None else f'{f / 1e12:.2f} TFLOP'  # noqa: E731
  lines = [
      f"{r['mode']} step, {r['model']} {r['dtype']}, remat {r['remat']}, attention "
      f"{r['attention']} -> {r['attention_runs']}, budgets {r['budgets']}, N_max "
      f"{r['n_max']}",
      f"{r['topology']}: {r['chips']} x {r['device_kind']} ({r['devices']} devices), mesh "
      f"{r['mesh']}, {r['batch_per_chip']:g} clips per chip (global {r['global_batch']})",
      f"compiled in {r['compile_s']:.1f} s" if r['fits'] else
      f"libtpu refused it in {r['compile_s']:.1f} s: {r['error']}",
      '',
      '| per chip | |', '|---|---|',
      f"| arguments | {gib(r['argument_bytes_per_chip'])} |",
  ]
  if r['fits']:
    ops = ', '.join(f'{k} {v}' for k, v in r['ops'].items() if k in COLLECTIVES and v)
    lines += [
        f"| outputs (donated state aliased: {gib(r['alias_bytes_per_chip'])}) | "
        f"{gib(r['output_bytes_per_chip'])} |",
        f"| temporaries | {gib(r['temp_bytes_per_chip'])} |",
        f"| peak (XLA's buffer assignment) | {gib(r['peak_bytes_per_chip'])} |",
        f"| arguments + outputs - aliased + temporaries | {gib(r['total_bytes_per_chip'])} |",
        f"| HBM | {gib(r['hbm_bytes_per_chip'])} |",
        '| fits | yes (libtpu compiled it for this chip) |',
        f"| FLOPs per chip-step (model) | {tflop(r['flops_per_chip'])} |",
        f"| FLOPs per chip-step (XLA count, no Pallas) | {tflop(r['xla_flops_per_chip'])} |",
        f"| fused attention kernels | {r['ops']['pallas_kernels']} |",
        f"| collectives | {ops or 'none'} |",
    ]
  else:
    lines += [
        f"| temporaries needed | {gib(r['temp_bytes_per_chip'])} |",
        f"| HBM usable | {gib(r['usable_hbm_bytes_per_chip'])} of "
        f"{gib(r['hbm_bytes_per_chip'])} |",
        '| fits | NO |',
        f"| FLOPs per chip-step (model) | {tflop(r['flops_per_chip'])} |",
    ]
  return '\n'.join(lines)
