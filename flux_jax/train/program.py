"""The training program of a config: model, optimizer, sharded state and the jitted step.

`train_program` is what `flux_jax.loop.train_and_evaluate` runs and what `python -m
flux_jax.bench aot` lowers for a TPU topology: one builder, so the AOT figures are the
figures of the real step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from flux_jax import sharding
from flux_jax.model.clip import FluxCLIP, dummy_clip_inputs, make_clip_model
from flux_jax.model.fluxvit import FluxViT, dummy_tokens, make_model
from flux_jax.train import clip as clip_lib
from flux_jax.train import distill
from flux_jax.train import optim
from flux_jax.train import steps as steps_lib
from flux_jax.train.state import TrainState


def schedule_steps(config, num_videos: int) -> tuple[int, int, int]:
  """(total steps, warmup steps, steps per epoch); an epoch counts videos (SPEC C.5)."""
  videos_per_step = config.train.global_batch_size // config.data.num_sample
  per_epoch = max(1, num_videos // videos_per_step)
  total = config.train.steps or int(config.train.epochs * per_epoch)
  if total <= 0:
    raise ValueError('train.steps or train.epochs must give at least one step')
  warmup = int(round(config.optim.warmup_epochs * per_epoch))
  return total, min(warmup, total), per_epoch


def make_train_model(config) -> FluxViT | FluxCLIP:
  """The module a config trains: FluxViT, or with train.mode='clip' FluxViT-CLIP (the
  FluxViT of `config.model`, the text tower of `config.text`, the options of
  `config.clip`)."""
  if config.train.mode == 'clip':
    return make_clip_model(dict(vision=config.model, text=config.text, **config.clip))
  return make_model(config.model)


def make_tx(config, model: FluxViT | FluxCLIP, total: int, warmup: int):
  o = config.optim
  scale = 1.0
  if o.scale_lr:
    scale = optim.scaled_lr(1.0, config.train.global_batch_size // config.data.num_sample, 1,
                            config.data.num_sample)
  depth = (model.vision if isinstance(model, FluxCLIP) else model).depth
  patterns = {k: tuple(o[k]) for k in optim.OPTIONAL_KEYS if k in o}  # frozen, no_decay
  return optim.make_optimizer(dict(
      lr=o.lr * scale, min_lr=o.min_lr * scale, warmup_lr=o.warmup_lr * scale,
      warmup_steps=warmup, total_steps=total, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
      eps=o.eps, layer_decay=o.layer_decay, clip_grad=o.clip_grad, depth=depth, **patterns))


def make_train_step(config, model: FluxViT | FluxCLIP, tx,
                    distillation: distill.Distillation | None = None):
  if config.train.mode == 'distill':
    return distill.make_step_from_config(config.distill, distillation.student,
                                         distillation.teacher, tx)
  mix = None
  if config.mixup.enabled:
    mix = {k: config.mixup[k] for k in ('mixup_alpha', 'cutmix_alpha', 'prob', 'switch_prob')}
  if config.train.mode == 'multi':
    return steps_lib.make_flux_multi_step(model, tx, budgets=config.train.budgets, mix=mix,
                                          smoothing=config.train.smoothing)
  if config.train.mode == 'single':
    return steps_lib.make_flux_single_step(model, tx, budget=config.train.single_budget,
                                           head=config.train.single_head, mix=mix,
                                           smoothing=config.train.smoothing)
  if config.train.mode == 'clip':
    return clip_lib.make_flux_clip_step(model, tx, budgets=config.train.budgets,
                                        distill_weight=config.train.distill_weight)
  raise ValueError(f"train.mode={config.train.mode!r} is not 'multi', 'single', "
                   "'distill' or 'clip'")


def _dummy_inputs(model) -> tuple:
  if isinstance(model, FluxCLIP):
    return dummy_clip_inputs(model)
  return (dummy_tokens(model),)


def abstract_state(model, tx, mesh, rules):
  """Shapes and shardings of the train state, computed without allocating it."""
  def init(rng):
    boxed = model.init({'params': rng}, *_dummy_inputs(model))['params']
    return TrainState.create(boxed, tx)  # optax keeps the logical boxes of the params
  boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.logical_shardings(nn.get_partition_spec(boxed), nn.unbox(boxed), mesh,
                                         rules)
  return nn.unbox(boxed), shardings, init


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The training step of a config, as train_and_evaluate compiles it: the same builder
  serves `python -m flux_jax.bench aot`, which lowers it for a TPU topology.

  Attributes:
    mesh, rules: the device mesh and logical-axis rules.
    model: the module trained: FluxViT, the student when distilling, FluxCLIP for CLIP.
    tx: the optimizer.
    schedule: (total steps, warmup steps, steps per epoch).
    distillation: the Flux-UMT teacher and student, or None.
    state_shapes, state_shardings: the train state's ShapeDtypeStructs and shardings.
    init: rng -> the boxed initial state.
    batch_sharding: the TokenBatch's sharding (batch over data x fsdp).
    step: the jitted step, `step(state, tokens, rng, *teacher_args)`, state donated.
  """
  mesh: jax.sharding.Mesh
  rules: Any
  model: FluxViT | FluxCLIP
  tx: Any
  schedule: tuple[int, int, int]
  distillation: distill.Distillation | None
  state_shapes: Any
  state_shardings: Any
  init: Callable[[jax.Array], Any]
  batch_sharding: jax.sharding.NamedSharding
  step: Any

  @property
  def teacher_args(self) -> tuple:
    """The step's arguments after rng: the frozen teacher's params, an argument of their
    own (never donated or checkpointed)."""
    return () if self.distillation is None else (self.distillation.teacher_params,)

  def lower(self, state, tokens, rng) -> jax.stages.Lowered:
    """Lowers the step under the mesh and rules (sharded activations, splash)."""
    with sharding.tracing_context(self.mesh, self.rules):
      return self.step.lower(state, tokens, rng, *self.teacher_args)


def check_batch_axes(config, mesh: jax.sharding.Mesh) -> None:
  """Refuses batch sizes that the mesh's batch axes (data x fsdp) do not divide."""
  rows = mesh.shape['data'] * mesh.shape['fsdp']
  for key in ('train.global_batch_size', 'eval.batch_size'):
    size = config[key.split('.')[0]][key.split('.')[1]]
    if size % rows:
      raise ValueError(f'{key}={size} must divide by the batch axes of the mesh '
                       f'(data x fsdp = {rows})')


def train_program(config, mesh: jax.sharding.Mesh, num_videos: int, *,
                  workdir: str | None) -> TrainProgram:
  """Model, optimizer, state shardings and the jitted step of `config` on `mesh`.

  `num_videos` sizes the schedule (an epoch counts videos). `workdir=None` builds the
  program only (AOT): a distillation teacher is then abstract, nothing is read or written.
  """
  rules = sharding.rules_of(config)
  model = make_train_model(config)
  check_batch_axes(config, mesh)
  schedule = schedule_steps(config, num_videos)
  tx = make_tx(config, model, *schedule[:2])
  distillation = None  # Flux-UMT: the state trains model + decoders; a frozen teacher
  if config.train.mode == 'distill':
    distillation = distill.setup(config, model, mesh, workdir)
  shapes, state_sh, init = abstract_state(
      model if distillation is None else distillation.student, tx, mesh, rules)
  batch_sh = sharding.batch_sharding(mesh)
  teacher_sh = () if distillation is None else (distillation.teacher_shardings,)
  step = jax.jit(make_train_step(config, model, tx, distillation),
                 in_shardings=(state_sh, batch_sh, None) + teacher_sh,
                 out_shardings=(state_sh, None), donate_argnums=0)
  return TrainProgram(mesh, rules, model, tx, schedule, distillation, shapes, state_sh, init,
                      batch_sh, step)
