"""train_and_evaluate(config, workdir): the one training script, in banner sections.

Flux-Multi or Flux-Single fine-tuning, or Flux-UMT distillation, sharded over a
('data', 'fsdp', 'tensor') mesh, resumable from the workdir, with periodic multi-view
evaluation. It joins the floors below it (data, train/program, eval, checkpoint); the
entry points (flux_jax.cli) call it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import grain
import jax
import ml_collections
import tensorboardX
import tqdm

from flux_jax import checkpoint
from flux_jax import sharding
from flux_jax.data import pipeline
from flux_jax.data.sources import open_dataset
from flux_jax.data.to_device import batch_stats, host_rows, to_global
from flux_jax.eval.multiview import evaluate_dataset, make_eval_step, to_host
from flux_jax.model.fluxvit import FluxViT, make_model, model_config
from flux_jax.tokens.plan import PlanSampler
from flux_jax.train import distill
from flux_jax.train import optim
from flux_jax.train.program import check_batch_axes, train_program
from flux_jax.train.state import TrainState
from flux_jax.xla import CompileCounter


PARAMS_DIR = checkpoint.PARAMS_DIR  # WORKDIR/params: the finished run's params
PROGRESS_SECONDS = 60.0  # the longest gap between progress lines


class MetricWriter:
  """Metrics to WORKDIR/metrics.jsonl and TensorBoard event files in WORKDIR/tb.

  Process 0 writes; the other processes of a multi-host job make the same calls for free.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._active = jax.process_index() == 0
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tb')) if self._active else None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._active:
      return
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in row.items():
      if k != 'step':
        self._tb.add_scalar(k, v, global_step=int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _duration(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at: int | None = None,
                       progress: Callable[[str], Any] = logging.info
                       ) -> tuple[TrainState, dict[str, Any]]:
  """Trains and evaluates; returns the final state and the last evaluation metrics.

  `stop_at` ends this run early (a time-boxed job); the next run resumes from the
  checkpoint exactly as if it had not stopped. `progress` takes a line (step, loss,
  steps/s, ETA) every `train.log_every` steps and at least every PROGRESS_SECONDS, on
  process 0: cluster logs and piped output see the run move, a terminal also gets a bar.
  """
  os.makedirs(workdir, exist_ok=True)
  # ----------------------------------------------------------------- Mesh, model --
  mesh = sharding.make_mesh(dict(config.mesh))
  model = make_model(config.model)
  check_batch_axes(config, mesh)
  logging.info('mesh %s, model %s', dict(mesh.shape), model.__class__.__name__)

  # ---------------------------------------------------------------- Sources --
  train_src, eval_src, class_names = open_dataset(config.data)
  if len(class_names) != model.num_classes:
    raise ValueError(f'model.num_classes={model.num_classes} but the dataset has '
                     f'{len(class_names)} classes')

  # ------------------------------------------------ Program, state, resume --------
  program = train_program(config, mesh, len(train_src), workdir=workdir)
  total, warmup, per_epoch = program.schedule
  distillation, batch_sh, state_sh = (program.distillation, program.batch_sharding,
                                      program.state_shardings)
  d = config.data
  # The input's position is the step: these keys fix what the stream of step s holds.
  stream = dict(seed=config.seed, global_batch_size=config.train.global_batch_size,
                num_sample=d.num_sample)
  ckpt = checkpoint.TrainCheckpointer(workdir, keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every_steps)
  if ckpt.latest_step() is not None:
    saved = {k: v for k, v in ckpt.data().items() if k in stream}
    if saved != stream:
      raise ValueError(f'{workdir}: its checkpoints were written with input {saved}, the '
                       f'config asks for {stream}; resuming would train on other batches. '
                       'Use a new workdir, or the saved values.')
    state = ckpt.restore(None, jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        program.state_shapes, state_sh))
    logging.info('resumed from step %d', int(state.step))
  else:
    state = sharding.shard_init(lambda r: nn.unbox(program.init(r)), state_sh,
                                jax.random.key(config.seed))
    if config.init:
      state = state.replace(params=checkpoint.init_from(config.init, state.params))
  start = int(state.step)

  # ----------------------------------------------------------------------- Data --
  sampler = PlanSampler.from_config(config.flux, patch_size=model.patch_size,
                                    tubelet_size=model.tubelet_size, seed=config.seed)
  block, blocks = host_rows(batch_sh, config.train.global_batch_size)
  train_ds = pipeline.train_dataset(
      train_src, sampler=sampler, global_batch_size=config.train.global_batch_size,
      n_max=config.n_max, num_sample=d.num_sample, flip=d.flip, scale=tuple(d.scale),
      ratio=tuple(d.ratio), seed=config.seed, process_index=block, process_count=blocks,
      start_step=start).to_iter_dataset()
  if d.workers:
    train_ds = train_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.workers))
  train_iter = iter(train_ds)

  # --------------------------------------------------------- Compile, memory -----
  rng = jax.random.key(config.seed + 1)
  teacher = program.teacher_args
  first = next(train_iter)
  tokens = to_global(first, batch_sh)
  counter = CompileCounter()
  with counter:
    compiled = program.lower(state, tokens, rng).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    logging.info('train step: %.1f MiB temp, %.1f MiB arguments, %.1f MiB outputs',
                 memory.temp_size_in_bytes / 2**20, memory.argument_size_in_bytes / 2**20,
                 memory.output_size_in_bytes / 2**20)
  e = config.eval
  eval_step = jax.jit(make_eval_step(model, budget=e.budget, head=e.head))

  def run_eval():
    with sharding.tracing_context(mesh, program.rules):
      return evaluate_dataset(eval_step, state.params, eval_src, model=model,
                              frames=e.frames, resolution=e.resolution,
                              batch_size=e.batch_size, sharding=batch_sh,
                              num_clips=e.num_clips, num_crops=e.num_crops)

  # ----------------------------------------------------------------------- Loop --
  writer = MetricWriter(workdir)
  logging.info('training steps %d..%d (%d per epoch, warmup %d)', start, total, per_epoch,
               warmup)
  stats: dict[str, int] = {}
  result: dict[str, Any] = {}
  t0, seen_tokens, host = time.perf_counter(), 0, first
  last_line = t0
  end = total if stop_at is None else min(stop_at, total)
  # A bar on a terminal only (disable=None); cluster logs get the log lines below.
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                  disable=None if jax.process_index() == 0 else True)
  for step in range(start, end):
    if host is None:
      host = next(train_iter)
    for k, v in batch_stats(host).items():
      stats[k] = stats.get(k, 0) + v
    seen_tokens += int(host['valid'].sum())
    tokens = to_global(host, batch_sh)
    host = None
    with counter:
      state, metrics = compiled(state, tokens, rng, *teacher)
    done = step + 1
    bar.update()
    due = done % config.train.log_every == 0 or done == total
    if due or time.perf_counter() - last_line >= PROGRESS_SECONDS:
      metrics = {k: float(to_host(v)) for k, v in metrics.items()}
      last_line = time.perf_counter()
      dt = last_line - t0
      rate = (done - start) / dt
      metrics.update(steps_per_s=rate, tokens_per_s=seen_tokens / dt,
                     replaced_videos=stats.get('replaced', 0), compiles=counter.count,
                     skipped_updates=optim.skipped_updates(state.opt_state))
      if due:  # metrics.jsonl keeps its log_every cadence
        writer.write(done, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", tokens_per_s=f'{seen_tokens / dt:.0f}')
      if jax.process_index() == 0:
        progress(f'step {done}/{total} loss {metrics["loss"]:.4f}  {rate:.2f} steps/s  '
                 f'ETA {_duration((total - done) / max(rate, 1e-9))}')
    if e.every_steps > 0 and (done % e.every_steps == 0 or done == total):
      result = run_eval()
      writer.write(done, {f'eval_{k}': v for k, v in result.items()})
      logging.info('step %d eval %s', done, result)
    ckpt.save(done, state, dict(stream, step=done), force=done in (total, end))
  bar.close()
  writer.close()
  ckpt.wait()
  ckpt.close()
  # eval.every_steps: N > 0 every N steps and at the end, 0 at the end only, < 0 never;
  # distillation trains no classifier.
  if not result and distillation is None and e.every_steps >= 0:
    result = run_eval()
  if int(state.step) == total:
    export_params(config, workdir, model, state if distillation is None else
                  distill.student_export(distillation.student, state), class_names)
  return state, {'step': int(state.step), **result}


def export_params(config, workdir: str, model: FluxViT, state: TrainState,
                  class_names) -> str:
  """The finished run's params as a deployable checkpoint, WORKDIR/params.

  `checkpoint.load_params(WORKDIR/params)` rebuilds the model; the metadata carries what
  deployment needs (class names, the evaluation grid) and the training config.
  """
  e = config.eval
  path = os.path.join(workdir, PARAMS_DIR)
  checkpoint.save_params(path, state.params, model_config(model), overwrite=True, metadata=dict(
      step=int(state.step), class_names=list(class_names),
      eval=dict(frames=e.frames, resolution=e.resolution, num_clips=e.num_clips,
                num_crops=e.num_crops),
      config=json.loads(config.to_json_best_effort())))
  logging.info('params of step %d saved to %s', int(state.step), path)
  return path
