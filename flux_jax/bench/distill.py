"""Flux-UMT step speed and memory, with the frozen teacher and without it.

  python -m flux_jax.bench distill --config configs/umt_synthetic.py:teacher= [--batch=16] \
      [--repeats=3] [--frames=8 --resolution=112]

The config's student, teacher model, optimizer and `distill` options, as the train loop
builds them (`distill.make_distill_parts`); the weights are random (they do not change the
cost), and a `distill.teacher` checkpoint contributes only its model config (an empty
one: `distill.teacher_model`). One clip grid, padded to `config.n_max`. Rows:

  teacher targets   selector + frozen teacher forward (`DistillParts.targets`)
  student update    the student passes, loss and AdamW update given the targets: the step
                    without the teacher (`DistillParts.learn`, state donated)
  distill step      both in one program, as the loop runs it (state donated)

Columns: compile seconds, median ms, the compiled program's argument bytes (the teacher's
params count in the first and last rows), temporary bytes, and peak = arguments + outputs
- donated aliases + temporaries, all from `memory_analysis()`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flux_jax.bench.forward import compile_and_time, markdown_table
from flux_jax.model.fluxvit import init_params, make_model
from flux_jax.tokens import patchify
from flux_jax.train import distill
from flux_jax.train import program
from flux_jax.train.state import TrainState

MIB = 2**20


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:  # backends without the analysis
    return dict(args_mib=None, temp_mib=None, peak_mib=None)
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  return dict(args_mib=m.argument_size_in_bytes / MIB, temp_mib=m.temp_size_in_bytes / MIB,
              peak_mib=peak / MIB)


def run(config, batch: int = 16, repeats: int = 3, frames: int | None = None,
        resolution: int | None = None) -> tuple[list[dict], str]:
  """(rows, teacher description) for the distill config `config`.

  The grid defaults to the config's eval grid (`eval.frames` x `eval.resolution`).
  """
  if config.train.mode != 'distill':
    raise ValueError(f"bench distill needs a config with train.mode='distill', got "
                     f'{config.train.mode!r}')
  cfg = config.distill
  teacher_model = distill.teacher_model(cfg)
  described = (f"D{teacher_model.embed_dim} x {teacher_model.depth} "
               f"({cfg.teacher or 'distill.teacher_model'})")
  teacher = distill.make_teacher(cfg, teacher_model)
  model = make_model(config.model)
  student = distill.make_student(cfg, model, teacher)
  tx = program.make_tx(config, model, total=100, warmup=10)
  parts = distill.make_distill_parts(student, teacher, tx, **distill.step_options(cfg))
  step = distill.make_step_from_config(cfg, student, teacher, tx)

  frames = frames or config.eval.frames
  resolution = resolution or config.eval.resolution
  video = np.random.default_rng(0).integers(
      0, 256, (batch, frames, resolution, resolution, 3), dtype=np.uint8)
  tokens = jax.device_put(patchify(video, patch_size=model.patch_size,
                                   tubelet_size=model.tubelet_size, n_max=config.n_max))
  raw = int(tokens.valid[0].sum())
  teacher_params = init_params(teacher_model, jax.random.key(0))
  params = init_params(student, jax.random.key(1))
  key = jax.random.key(2)

  def fresh_state():  # donation consumes the state: each program gets its own
    return TrainState.create(jax.tree.map(jnp.copy, params), tx)

  common = dict(raw=raw, n_max=config.n_max, t_tokens=int(cfg.t_tokens),
                s_tokens='/'.join(str(int(k)) for k in cfg.s_tokens))
  rows = []
  compiled, compile_s, run_s = compile_and_time(
      jax.jit(parts.targets), (tokens, key, teacher_params, params), repeats)
  rows.append(dict(common, program='teacher targets', compile_s=compile_s, ms=1e3 * run_s,
                   **_memory(compiled)))
  targets = compiled(tokens, key, teacher_params, params)
  compiled, compile_s, run_s = compile_and_time(
      jax.jit(parts.learn, donate_argnums=0), (fresh_state(), targets, key), repeats,
      feed=lambda args, out: (out[0], *args[1:]))
  rows.append(dict(common, program='student update (targets given)', compile_s=compile_s,
                   ms=1e3 * run_s, **_memory(compiled)))
  compiled, compile_s, run_s = compile_and_time(
      jax.jit(step, donate_argnums=0), (fresh_state(), tokens, key, teacher_params), repeats,
      feed=lambda args, out: (out[0], *args[1:]))
  rows.append(dict(common, program='distill step (with teacher)', compile_s=compile_s,
                   ms=1e3 * run_s, **_memory(compiled)))
  return rows, described


def _mib(value) -> str:
  return 'n/a' if value is None else f'{value:.0f}'


COLUMNS = (
    ('program', lambda r: r['program']),
    ('raw / N_max', lambda r: f"{r['raw']} / {r['n_max']}"),
    ('teacher / student tokens', lambda r: f"{r['t_tokens']} / {r['s_tokens']}"),
    ('compile s', lambda r: f"{r['compile_s']:.1f}"),
    ('ms', lambda r: f"{r['ms']:.0f}"),
    ('args MiB', lambda r: _mib(r['args_mib'])),
    ('temp MiB', lambda r: _mib(r['temp_mib'])),
    ('peak MiB', lambda r: _mib(r['peak_mib'])),
)


def format_table(rows, title: str) -> str:
  return markdown_table(title, COLUMNS, rows)
