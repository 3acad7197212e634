"""train_and_evaluate(config, workdir): the one training script, in banner sections.

Flux-Multi or Flux-Single fine-tuning, or Flux-UMT distillation, sharded over a
('data', 'fsdp', 'tensor') mesh, resumable from the workdir, with periodic multi-view
evaluation. It joins the floors below it (data, train/program, eval, checkpoint); the
entry points (flux_jax.cli) call it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import tensorboardX
import tqdm

from flux_jax import checkpoint
from flux_jax import sharding
from flux_jax.data import pipeline
from flux_jax.data.sources import CAPTIONED, describe, open_dataset
from flux_jax.data.to_device import batch_stats, host_rows, to_global, to_global_clip
from flux_jax.eval import clip as clip_eval
from flux_jax.eval.multiview import evaluate_dataset, make_eval_step, to_host
from flux_jax.model.clip import FluxCLIP, clip_model_config
from flux_jax.model.fluxvit import FluxViT, make_model, model_config
from flux_jax.tokens.plan import PlanSampler
from flux_jax.train import distill
from flux_jax.train import optim
from flux_jax.train.program import check_batch_axes, make_train_model, train_program
from flux_jax.train.state import TrainState
from flux_jax.xla import CompileCounter


PARAMS_DIR = checkpoint.PARAMS_DIR  # WORKDIR/params: the finished run's params
PROGRESS_SECONDS = 60.0  # the longest gap between progress lines
MAX_NONFINITE_STEPS = 10  # train.max_nonfinite_steps when a config does not set it


class MetricWriter:
  """Metrics to WORKDIR/metrics.jsonl and TensorBoard event files in WORKDIR/tb.

  A run that starts at step `start` (resumed from its checkpoint) continues both from
  there: rows and events of later steps, written before the run stopped, are dropped.
  Process 0 writes; the other processes of a multi-host job make the same calls for free.
  """

  def __init__(self, workdir: str, start: int = 0):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._active = jax.process_index() == 0
    self._tb = None
    if self._active:
      self._truncate(start)
      # TensorBoard hides the events of steps >= purge_step written before this one.
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tb'),
                                            purge_step=start + 1)

  def _truncate(self, start: int) -> None:
    """Drops the rows after step `start` (and a last line cut short by a kill)."""
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)['step'] <= start:
          kept.append(line)
      except (ValueError, KeyError, TypeError):
        pass
    if len(kept) < len(lines):
      logging.info('%s: dropping %d rows after step %d', self._path, len(lines) - len(kept),
                   start)
      with open(self._path + '.tmp', 'w') as f:  # a kill now leaves the old file whole
        f.writelines(kept)
      os.replace(self._path + '.tmp', self._path)

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
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _duration(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _positive_int(key: str, value, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{key}={value!r} must be an integer >= {minimum}')


def max_nonfinite_steps(config) -> int:
  """train.max_nonfinite_steps: consecutive non-finite steps that stop a run."""
  return config.train.get('max_nonfinite_steps', MAX_NONFINITE_STEPS)


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses, before anything is built, a config that would fail later in a run: the
  keys the loop, the evaluation and the params export read (the model and the Flux space
  included). Needs no data and no device, so `bench aot` can call it too.

  Raises:
    ValueError: naming the key and the value.
  """
  model = make_model(config.model)  # refuses unknown or bad model keys
  clip = config.train.mode == 'clip'
  if clip:
    text = make_train_model(config).text  # the text tower's and the clip block's keys too
    if config.data.caption_length > text.context_length:
      raise ValueError(f'data.caption_length={config.data.caption_length} is longer than '
                       f'the text tower\'s context ({text.context_length}, text.context_length)')
  t, d, e = config.train, config.data, config.eval
  for key, value in (('train.log_every', t.log_every),
                     ('train.max_nonfinite_steps', max_nonfinite_steps(config)),
                     ('train.global_batch_size', t.global_batch_size),
                     ('data.num_sample', d.num_sample),
                     ('checkpoint.every_steps', config.checkpoint.every_steps),
                     ('checkpoint.keep', config.checkpoint.keep),
                     ('eval.frames', e.frames), ('eval.resolution', e.resolution),
                     ('eval.num_clips', e.num_clips), ('eval.num_crops', e.num_crops),
                     ('eval.batch_size', e.batch_size)):
    _positive_int(key, value)
  for key in ('workers', 'threads', 'prefetch'):
    _positive_int(f'data.{key}', d.get(key, 0), minimum=0)
  if isinstance(e.every_steps, bool) or not isinstance(e.every_steps, int):
    raise ValueError(f'eval.every_steps={e.every_steps!r} must be an integer (N > 0: every N '
                     'steps, 0: at the end, < 0: never)')
  if t.global_batch_size % d.num_sample:
    raise ValueError(f'train.global_batch_size={t.global_batch_size} must divide by '
                     f'data.num_sample={d.num_sample}')
  for key, (lo, hi), top in (('data.scale', d.scale, 1.0), ('data.ratio', d.ratio, math.inf)):
    if not 0 < lo <= hi <= top:
      raise ValueError(f'{key}={tuple((lo, hi))} must be (low, high) with 0 < low <= high'
                       + (f' <= {top}' if top < math.inf else ''))
  sampler = PlanSampler.from_config(config.flux, patch_size=model.patch_size,
                                    tubelet_size=model.tubelet_size)
  if config.n_max < sampler.max_plan_tokens:
    raise ValueError(f'n_max={config.n_max} is smaller than the largest plan of config.flux '
                     f'({sampler.max_plan_tokens} tokens); raise n_max or lower '
                     'flux.max_tokens')
  if e.resolution % model.patch_size:
    raise ValueError(f'eval.resolution={e.resolution} is not a multiple of the patch size '
                     f'{model.patch_size}')
  if e.frames % model.tubelet_size:
    raise ValueError(f'eval.frames={e.frames} is not a multiple of the tubelet size '
                     f'{model.tubelet_size}')
  if e.batch_size % e.num_crops:
    raise ValueError(f'eval.batch_size={e.batch_size} must divide by '
                     f'eval.num_crops={e.num_crops}')
  if clip:
    for budget in e.budgets:
      _positive_int('eval.budgets', budget)
    _positive_int('data.caption_length', d.caption_length)
    if d.name not in CAPTIONED:
      raise ValueError(f"train.mode='clip' needs a captioned dataset (data.name one of "
                       f'{CAPTIONED}), got {d.name!r}')
    return
  if e.budget is not None:
    _positive_int('eval.budget', e.budget)
  if e.head is not None and not 0 <= e.head < len(model.head_budgets):
    raise ValueError(f'eval.head={e.head} is not a head of the model (head_budgets '
                     f'{tuple(model.head_budgets)})')


def stream_fingerprint(config, train_src) -> dict[str, Any]:
  """Everything that shapes the batches of step s, as JSON: saved with each checkpoint
  and compared on resume. The input's position is the step; these fix what it holds."""
  d = config.data
  out = {'seed': config.seed, 'global_batch_size': config.train.global_batch_size,
         'num_sample': d.num_sample, 'n_max': config.n_max,
         **{f'flux.{k}': v for k, v in config.flux.items()},
         **{f'data.{k}': d[k] for k in ('flip', 'scale', 'ratio', 'caption_length',
                                         'clean_captions') if k in d},
         **describe(train_src)}  # dataset name, config, version, split, size, bytes
  return json.loads(json.dumps(out))  # tuples as lists, as they come back


def _check_stream(saved: Mapping[str, Any], stream: Mapping[str, Any], where: str) -> None:
  """Refuses to resume on other batches than the checkpoint's run saw, naming the keys."""
  differ = [f'{k}: checkpoint {saved[k]!r}, config {v!r}' for k, v in stream.items()
            if k in saved and saved[k] != v]
  if differ:
    raise ValueError(f'{where}: its checkpoints were written for another input stream; '
                     'resuming would train on other batches:\n  ' + '\n  '.join(differ)
                     + '\nUse a new workdir, or the saved values.')
  unknown = sorted(set(stream) - set(saved))
  if unknown:  # a checkpoint written before these keys were saved
    logging.warning('%s: the checkpoint does not record %s; not compared', where, unknown)


def _check_finite(state: TrainState, step: int, limit: int,
                  ckpt: checkpoint.TrainCheckpointer) -> None:
  """Stops a diverged run: its last `limit` steps all had non-finite gradients (optax
  skipped them, so it would otherwise train on to the end with frozen params).

  The loop reads the streak at its log steps and every `limit` steps, not per step (a
  host sync): a run that stays non-finite stops at most `limit` steps after its streak
  reached `limit`; a streak that ended before a check was survived and is not an error.
  """
  streak = int(optim.nonfinite_streak(state.opt_state))
  if streak < limit:
    return
  ckpt.wait()  # saves in flight count
  good = [s for s in ckpt.all_steps() if s <= step - streak]  # saved before the streak
  raise FloatingPointError(
      f'step {step}: the last {streak} steps had non-finite gradients '
      f'(train.max_nonfinite_steps={limit}); the run diverged. ' +
      (f'The last good checkpoint is step {good[-1]} in {ckpt.directory}.' if good else
       f'No checkpoint in {ckpt.directory} precedes step {step - streak + 1}.'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at: int | None = None,
                       progress: Callable[[str], Any] = logging.info
                       ) -> tuple[TrainState, dict[str, Any]]:
  """Trains and evaluates; returns the final state and the last evaluation metrics.

  `stop_at` ends this run early (a time-boxed job); the next run resumes from the
  checkpoint exactly as if it had not stopped. `progress` takes a line (step, loss,
  steps/s, ETA) every `train.log_every` steps and at least every PROGRESS_SECONDS, on
  process 0: cluster logs and piped output see the run move, a terminal also gets a bar.
  The config is validated first; the input iterator, checkpointer and metric writer are
  closed on every exit path.

  Raises:
    FloatingPointError: `train.max_nonfinite_steps` steps in a row had non-finite
      gradients, or the last step did (then the params are not exported).
  """
  validate(config)
  with contextlib.ExitStack() as resources:
    return _run(config, workdir, stop_at, progress, resources)


def _run(config, workdir: str, stop_at: int | None, progress: Callable[[str], Any],
         resources: contextlib.ExitStack) -> tuple[TrainState, dict[str, Any]]:
  """train_and_evaluate's body; `resources` closes whatever it opens."""
  os.makedirs(workdir, exist_ok=True)
  # ----------------------------------------------------------------- Mesh, model --
  mesh = sharding.make_mesh(dict(config.mesh))
  model = make_model(config.model)
  check_batch_axes(config, mesh)
  logging.info('mesh %s, model %s', dict(mesh.shape), model.__class__.__name__)

  # ---------------------------------------------------------------- Sources --
  clip = config.train.mode == 'clip'  # FluxViT-CLIP: captions, retrieval evaluation
  train_src, eval_src, class_names = open_dataset(config.data)
  if not clip and len(class_names) != model.num_classes:
    raise ValueError(f'model.num_classes={model.num_classes} but the dataset has '
                     f'{len(class_names)} classes')

  # ------------------------------------------------ Program, state, resume --------
  program = train_program(config, mesh, len(train_src), workdir=workdir)
  total, warmup, per_epoch = program.schedule
  distillation, batch_sh, state_sh = (program.distillation, program.batch_sharding,
                                      program.state_shardings)
  d = config.data
  stream = stream_fingerprint(config, train_src)
  ckpt = resources.enter_context(checkpoint.TrainCheckpointer(
      workdir, keep=config.checkpoint.keep, save_every=config.checkpoint.every_steps))
  if ckpt.latest_step() is not None:
    _check_stream(ckpt.data(), stream, workdir)
    state = ckpt.restore(None, jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        program.state_shapes, state_sh))
    logging.info('resumed from step %d', int(state.step))
  else:
    state = sharding.shard_init(lambda r: nn.unbox(program.init(r)), state_sh,
                                jax.random.key(config.seed))
    if config.init or clip and config.text_init:
      state = state.replace(params=_init_params(config, state.params, clip))
  start = int(state.step)

  # ----------------------------------------------------------------------- Data --
  sampler = PlanSampler.from_config(config.flux, patch_size=model.patch_size,
                                    tubelet_size=model.tubelet_size, seed=config.seed)
  block, blocks = host_rows(batch_sh, config.train.global_batch_size)
  train_ds = pipeline.train_dataset(
      train_src, sampler=sampler, global_batch_size=config.train.global_batch_size,
      n_max=config.n_max, num_sample=d.num_sample, flip=d.flip, scale=tuple(d.scale),
      ratio=tuple(d.ratio), seed=config.seed, process_index=block, process_count=blocks,
      start_step=start, captioner=pipeline.Captioner(d.caption_length, d.clean_captions)
      if clip else None)
  train_iter = iter(pipeline.host_batches(  # configs without threads/prefetch: defaults
      train_ds, **{k: d[k] for k in ('workers', 'threads', 'prefetch') if k in d}))
  resources.callback(train_iter.close)  # grain's workers and their shared memory

  # --------------------------------------------------------- Compile, memory -----
  rng = jax.random.key(config.seed + 1)
  teacher = program.teacher_args
  host = next(train_iter)  # compiled for, then trained on; not kept (grain's shared memory)
  on_device = to_global_clip if clip else to_global
  tokens = on_device(host, batch_sh)
  counter = CompileCounter()
  with counter:
    compiled = program.lower(state, tokens, rng).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    logging.info('train step: %.1f MiB temp, %.1f MiB arguments, %.1f MiB outputs',
                 memory.temp_size_in_bytes / 2**20, memory.argument_size_in_bytes / 2**20,
                 memory.output_size_in_bytes / 2**20)
  e = config.eval
  if clip:
    def run_eval():
      with sharding.tracing_context(mesh, program.rules):
        return clip_eval.evaluate_plain(program.model, state.params, eval_src,
                                        budgets=tuple(e.budgets), frames=e.frames,
                                        resolution=e.resolution, batch_size=e.batch_size,
                                        sharding=batch_sh, num_clips=e.num_clips,
                                        num_crops=e.num_crops)
  else:
    eval_step = jax.jit(make_eval_step(model, budget=e.budget, head=e.head))

    def run_eval():
      with sharding.tracing_context(mesh, program.rules):
        return evaluate_dataset(eval_step, state.params, eval_src, model=model,
                                frames=e.frames, resolution=e.resolution,
                                batch_size=e.batch_size, sharding=batch_sh,
                                num_clips=e.num_clips, num_crops=e.num_crops)

  # ----------------------------------------------------------------------- Loop --
  writer = resources.enter_context(MetricWriter(workdir, start))
  limit = max_nonfinite_steps(config)
  logging.info('training steps %d..%d (%d per epoch, warmup %d)', start, total, per_epoch,
               warmup)
  stats: dict[str, int] = {}
  result: dict[str, Any] = {}
  t0, seen_tokens = time.perf_counter(), 0
  last_line = t0
  waited = 0.0  # seconds in next(train_iter) since the last metrics line
  end = total if stop_at is None else min(stop_at, total)
  # A bar on a terminal only (disable=None); cluster logs get the log lines below.
  bar = resources.enter_context(tqdm.tqdm(
      total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
      disable=None if jax.process_index() == 0 else True))
  for step in range(start, end):
    if host is None:
      w0 = time.perf_counter()
      host = next(train_iter)
      waited += time.perf_counter() - w0
    for k, v in batch_stats(host).items():
      stats[k] = stats.get(k, 0) + v
    seen_tokens += int(host['valid'].sum())
    tokens = on_device(host, batch_sh)
    host = None
    with counter:
      state, metrics = compiled(state, tokens, rng, *teacher)
    done = step + 1
    bar.update()
    due = done % config.train.log_every == 0 or done == total
    if due or done % limit == 0:  # no sync per step: a diverged run is stopped within
      _check_finite(state, done, limit, ckpt)  # `limit` steps of its streak reaching it
    if due or time.perf_counter() - last_line >= PROGRESS_SECONDS:
      metrics = {k: float(to_host(v)) for k, v in metrics.items()}
      now = time.perf_counter()
      # The share of this interval the loop waited for its next host batch: an
      # input-bound run shows it (more data.workers, or see docs/data.md).
      input_wait = waited / max(now - last_line, 1e-9)
      last_line, waited = now, 0.0
      dt = last_line - t0
      rate = (done - start) / dt
      metrics.update(steps_per_s=rate, tokens_per_s=seen_tokens / dt,
                     input_wait_share=input_wait,
                     replaced_videos=stats.get('replaced', 0), compiles=counter.count,
                     skipped_updates=optim.skipped_updates(state.opt_state))
      if due:  # metrics.jsonl keeps its log_every cadence
        writer.write(done, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", tokens_per_s=f'{seen_tokens / dt:.0f}')
      if jax.process_index() == 0:
        progress(f'step {done}/{total} loss {metrics["loss"]:.4f}  {rate:.2f} steps/s  '
                 f'input wait {100 * input_wait:.0f}%  '
                 f'ETA {_duration((total - done) / max(rate, 1e-9))}')
    if e.every_steps > 0 and (done % e.every_steps == 0 or done == total):
      result = run_eval()
      writer.write(done, {f'eval_{k}': v for k, v in result.items()})
      logging.info('step %d eval %s', done, result)
    force = done in (total, end)
    # Not in a streak of skipped steps: its saves would push out the last good ones (a
    # save waits for the step anyway, so reading the streak then costs nothing).
    if force or (ckpt.due(done) and not int(optim.nonfinite_streak(state.opt_state))):
      ckpt.save(done, state, dict(stream, step=done), force=force)
  bar.close()
  writer.close()
  train_iter.close()
  ckpt.wait()
  _check_finite(state, end, limit, ckpt)
  ckpt.close()
  # eval.every_steps: N > 0 every N steps and at the end, 0 at the end only, < 0 never;
  # distillation trains no classifier.
  if not result and distillation is None and e.every_steps >= 0:
    result = run_eval()
  if int(state.step) == total:
    export_params(config, workdir, program.model, state if distillation is None else
                  distill.student_export(distillation.student, state), class_names)
  return state, {'step': int(state.step), **result}


def _init_params(config, params: dict, clip: bool) -> dict:
  """The fresh params with `config.init` (and for CLIP `config.text_init`) loaded in.

  For FluxViT-CLIP, `init` is a FluxViT checkpoint (into the vision tower; its classifier
  heads may differ) or a FluxViT-CLIP run's params (stage 2 from stage 1: everything);
  `text_init` a text tower's (python -m flux_jax.cli.convert_text).
  """
  if not clip:
    return checkpoint.init_from(config.init, params)
  if config.init and checkpoint.kind_of(config.init) == 'clip':
    params = checkpoint.init_from(config.init, params)
  elif config.init:
    params = dict(params, vision=checkpoint.init_from(config.init, params['vision']))
  if config.text_init:
    params = dict(params, text=checkpoint.init_from(config.text_init, params['text']))
  return params


def export_params(config, workdir: str, model: FluxViT | FluxCLIP, state: TrainState,
                  class_names) -> str:
  """The finished run's params as a deployable checkpoint, WORKDIR/params.

  `checkpoint.load_params(WORKDIR/params)` rebuilds the model; the metadata carries what
  deployment needs (class names, the evaluation grid) and the training config.

  Raises:
    FloatingPointError: the state's last step had non-finite gradients: its params are
      those before the skipped steps, not the trained result.
  """
  streak = int(optim.nonfinite_streak(state.opt_state))
  if streak:
    step = int(state.step)
    raise FloatingPointError(
        f'{workdir}: the last {streak} steps up to step {step} had non-finite gradients; '
        f'the params are not exported. Train again from the checkpoint of step '
        f'{step - streak} or earlier (a lower optim.lr, optim.clip_grad).')
  e = config.eval
  path = os.path.join(workdir, PARAMS_DIR)
  clip = isinstance(model, FluxCLIP)
  checkpoint.save_params(
      path, state.params, clip_model_config(model) if clip else model_config(model),
      kind='clip' if clip else 'fluxvit', overwrite=True, metadata=dict(
          step=int(state.step), class_names=None if class_names is None else list(class_names),
          eval=dict(frames=e.frames, resolution=e.resolution, num_clips=e.num_clips,
                    num_crops=e.num_crops),
          config=json.loads(config.to_json_best_effort())))
  logging.info('params of step %d saved to %s', int(state.step), path)
  return path
