"""Flux-UMT distillation: a frozen teacher, student passes on subsets of its tokens.

One step (SPEC D.5, an INFERRED reconstruction; D.1/D.2 are the official UMT and
InternVideo2 recipes it extends):

  clip (any grid, N tokens) --selector--> teacher set, `t_tokens` tokens
      teacher (frozen): L2-normalised middle layers at those tokens (cls first), its
      L2-normalised pooled feature, its pooling attention over them
  for each student pass j: a subset of `s_tokens[j]` tokens of the teacher set
      student FluxViT on the subset -> decoders -> loss 2 - 2cos per token and layer
      (middle) plus 2 - 2cos of the final feature; passes summed

The INFERRED choices are options of `make_distill_parts` (config `distill.*`):
  select_with  'teacher' | 'student': whose patch embeddings the selector scores for the
               teacher set (SPEC D.5 item 2; 'teacher' is the reading given first).
  subset       'attention' (multinomial on the teacher's pooling attention, UMT/IV2
               masking, SPEC D.1/D.2), 'group_dynamic' or 'random' (the selector run on
               the clip with only the teacher set eligible; group_dynamic subsets of the
               same embeddings are nested in the teacher set). SPEC D.5 item 3.
  heads        the student projector of each pass: per-count (0, 1, 2) or shared (0, 0, 0)
               (SPEC D.5 item 4); one final decoder per distinct head.
  passes       'all' (every pass each step, losses summed) or 'one' (one pass drawn per
               step). SPEC D.5 item 4.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import optax

from flux_jax import checkpoint
from flux_jax import sharding
from flux_jax.model.fluxvit import (DECODERS, DistillStudent, FluxViT, abstract_params,
                                    init_params, make_model, model_config, patch_embeddings)
from flux_jax.model.teacher import Teacher, TeacherOutput
from flux_jax.tokens.select import SELECTORS, all_tokens, keeps_all, select_tokens
from flux_jax.tokens.token_batch import TokenBatch
from flux_jax.train.state import TrainState
# The fine-tuning steps' update, not a copy of it.
from flux_jax.train.steps import apply_gradients

SUBSETS = ('attention', 'group_dynamic', 'random')
TEACHER_RECORD = 'teacher.json'  # WORKDIR/teacher.json: the teacher a run distils from


def gather_tokens(tokens: TokenBatch, index: jax.Array, keep: jax.Array) -> TokenBatch:
  """The tokens at `index` `[B, K]` as a TokenBatch of K slots; valid = keep.

  An index in raster order with the kept slots first (what the selectors return) keeps
  the TokenBatch contract (DESIGN.md 2); the grid stays the clip's.
  """
  def take(x):  # [B, N, ...] -> [B, K, ...]
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
  return tokens.replace(patches=take(tokens.patches), coords=take(tokens.coords),
                        valid=keep & take(tokens.valid))


def _select(embeddings, tokens: TokenBatch, k: int, method: str, rng):
  """select_tokens, or every token when K >= N_max (the official r = 0)."""
  if keeps_all(k, tokens.valid.shape[1]):
    return all_tokens(tokens.valid)
  return select_tokens(embeddings, tokens, k, method, rng)


def choose_subset(method: str, k: int, teacher: TeacherOutput, tokens: TokenBatch,
                  embeddings: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """K tokens of the teacher set, as positions in it.

  Args:
    method: 'attention', 'group_dynamic' or 'random' (module docstring).
    k: static student token count.
    teacher: the teacher's output on its set (attention, index, valid).
    tokens: the whole clip the teacher set was chosen from.
    embeddings: `[B, N, D]` the patch embeddings the teacher set was selected with.
    rng: PRNG key.

  Returns:
    (positions int32 `[B, K]` into the teacher set, ascending with the kept slots
    first; keep bool `[B, K]`, False where the teacher set has fewer than K tokens).
  """
  b, kt = teacher.valid.shape
  if keeps_all(k, kt):
    return all_tokens(teacher.valid)
  if method == 'attention':
    # Sampling without replacement in proportion to the attention (torch.multinomial)
    # is the top-K of log(attention) + Gumbel noise.
    logp = jnp.log(jnp.maximum(teacher.attention, jnp.finfo(jnp.float32).tiny))
    key = jnp.where(teacher.valid, logp + jax.random.gumbel(rng, (b, kt)), -jnp.inf)
    _, pos = jax.lax.top_k(key, k)  # [B, K]
    keep = jnp.take_along_axis(teacher.valid, pos, axis=1)
    _, pos, keep = jax.lax.sort((jnp.where(keep, pos, kt + pos), pos, keep), dimension=1,
                                num_keys=1)  # ascending, kept first
    return pos, keep
  if method in ('group_dynamic', 'random'):
    rows = jnp.arange(b)[:, None]
    member = jnp.zeros(tokens.valid.shape, bool).at[rows, teacher.index].max(teacher.valid)
    index, keep = select_tokens(embeddings, tokens.replace(valid=member), k, method, rng)
    rank = jnp.cumsum(member, axis=1, dtype=jnp.int32) - 1  # [B, N] position in the set
    return jnp.where(keep, jnp.take_along_axis(rank, index, axis=1), 0), keep
  raise ValueError(f'distill.subset={method!r} is not one of {SUBSETS}')


def cosine_loss(student: jax.Array, target: jax.Array,
                mask: jax.Array | None = None) -> jax.Array:
  """Mean of 2 - 2<s, t> over unit vectors: UMT/IV2's 'l2' loss (SPEC D.1, D.2).

  `mask` (broadcast to the leading axes) restricts the mean to its True rows.
  """
  d = 2.0 - 2.0 * jnp.sum(student.astype(jnp.float32) * target.astype(jnp.float32), -1)
  if mask is None:
    return jnp.mean(d)
  mask = jnp.broadcast_to(mask, d.shape).astype(jnp.float32)
  return jnp.sum(d * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Targets(NamedTuple):
  """What the frozen teacher gives one step: everything the student passes need.

  Attributes:
    clip: the input TokenBatch (N slots).
    embeddings: `[B, N, D]` the patch embeddings the teacher set was selected with (the
      subset selectors score them again).
    teacher_set: the teacher's K_t tokens gathered from the clip.
    teacher: the teacher's output on them, `index` into the clip.
  """
  clip: TokenBatch
  embeddings: jax.Array
  teacher_set: TokenBatch
  teacher: TeacherOutput


class DistillParts(NamedTuple):
  """The two halves of the Flux-UMT step; `make_distill_step` composes them.

  targets(tokens, rng, teacher_params, student_params) -> Targets: selector and frozen
    teacher, no gradients.
  learn(state, targets, rng) -> (state, metrics): the student passes, the loss and the
    update. Apart, they time the step without the teacher (python -m flux_jax.bench
    distill) or serve teacher targets computed elsewhere.
  """
  targets: Callable[..., Targets]
  learn: Callable[..., tuple[TrainState, dict]]


def make_distill_parts(student: DistillStudent, teacher: Teacher,
                       tx: optax.GradientTransformation, *, t_tokens: int,
                       s_tokens: Sequence[int], heads: Sequence[int],
                       subset: str = 'attention', selector: str = 'group_dynamic',
                       select_with: str = 'teacher', passes: str = 'all',
                       loss_weights: Sequence[float] = (1.0, 1.0)) -> DistillParts:
  """The halves of `make_distill_step` (same arguments, checked the same way)."""
  s_tokens, heads = tuple(int(k) for k in s_tokens), tuple(int(h) for h in heads)
  if len(heads) != len(s_tokens):
    raise ValueError(f'distill.heads {heads} needs one head per distill.s_tokens {s_tokens}')
  if any(k > t_tokens for k in s_tokens):
    raise ValueError(f'distill.s_tokens {s_tokens} must not exceed distill.t_tokens '
                     f'{t_tokens}: student tokens are a subset of the teacher\'s')
  if set(heads) - set(student.heads):
    raise ValueError(f'distill.heads {heads}: the student has final decoders for '
                     f'{student.heads} only')
  if len(student.layers) != len(teacher.layers):
    raise ValueError(f'distill.student_layers {student.layers} and distill.teacher_layers '
                     f'{teacher.layers} must pair up')
  for name, value, known in (('subset', subset, SUBSETS), ('selector', selector, SELECTORS),
                             ('select_with', select_with, ('teacher', 'student')),
                             ('passes', passes, ('all', 'one'))):
    if value not in known:
      raise ValueError(f'distill.{name}={value!r} is not one of {known}')
  w_mid, w_final = (float(w) for w in loss_weights)

  def targets(tokens: TokenBatch, rng: jax.Array, teacher_params, student_params) -> Targets:
    chooser_model, chooser_params = ((teacher.model, teacher_params) if select_with ==
                                     'teacher' else (student.model, student_params))
    embeddings = jax.lax.stop_gradient(patch_embeddings(chooser_model, chooser_params,
                                                        tokens))  # [B, N, D]
    t_index, t_keep = _select(embeddings, tokens, t_tokens, selector, rng)
    t_batch = gather_tokens(tokens, t_index, t_keep)  # [B, Kt] slots
    out = teacher.apply({'params': teacher_params}, t_batch)
    # The teacher saw the gathered set; its index is into the clip from here on.
    return Targets(tokens, embeddings, t_batch, out.replace(index=t_index))

  def learn(state: TrainState, t: Targets, rng: jax.Array):
    subset_rng, pass_rng, drop_rng = jax.random.split(rng, 3)
    target = jax.lax.stop_gradient(t.teacher)
    b = target.index.shape[0]

    def pass_loss(params, j):
      pos, keep = choose_subset(subset, s_tokens[j], target, t.clip, t.embeddings,
                                jax.random.fold_in(subset_rng, j))  # [B, Ks]
      mid, final, _ = student.apply(
          {'params': params}, gather_tokens(t.teacher_set, pos, keep), head=heads[j],
          train=True, rngs={'dropout': jax.random.fold_in(drop_rng, j)})  # [L, B, 1+Ks, Dt]
      rows = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), pos + 1], axis=1)  # cls first
      t_mid = jnp.take_along_axis(target.layers, rows[None, :, :, None], axis=2)
      mask = jnp.concatenate([jnp.ones((b, 1), bool), keep], axis=1)  # [B, 1 + Ks]
      mid_loss = cosine_loss(mid, t_mid, mask[None])
      final_loss = cosine_loss(final, target.pooled)
      return w_mid * mid_loss + w_final * final_loss, (mid_loss, final_loss)

    def loss_fn(params):
      if passes == 'one':
        j = jax.random.randint(pass_rng, (), 0, len(s_tokens))
        loss, (mid, final) = jax.lax.switch(
            j, [lambda p, i=i: pass_loss(p, i) for i in range(len(s_tokens))], params)
        return loss, {'pass': j, 'mid': mid, 'final': final}
      total, metrics = 0.0, {}
      for j in range(len(s_tokens)):
        loss, (metrics[f'mid_{j}'], metrics[f'final_{j}']) = pass_loss(params, j)
        total = total + loss
      return total, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return apply_gradients(state, tx, grads), metrics

  return DistillParts(targets, learn)


def make_distill_step(student: DistillStudent, teacher: Teacher,
                      tx: optax.GradientTransformation, **options):
  """The Flux-UMT step `step(state, tokens, rng, teacher_params) -> (state, metrics)`.

  `options`: t_tokens, s_tokens, heads (required), subset, selector, select_with, passes,
  loss_weights (the module docstring; `make_distill_parts`). `teacher_params` is an
  argument of its own (its own shardings, never in the optimizer state, never
  differentiated). Metrics: `loss`, `grad_norm`, and per pass j `mid_{j}`, `final_{j}`
  ('all'), or `pass`, `mid`, `final` of the drawn pass ('one').
  """
  parts = make_distill_parts(student, teacher, tx, **options)

  def step(state: TrainState, tokens: TokenBatch, rng: jax.Array, teacher_params):
    target_rng, learn_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    targets = parts.targets(tokens, target_rng, teacher_params, state.params)
    return parts.learn(state, targets, learn_rng)

  return step


# ------------------------------------------------------------- From the config --


def teacher_model(cfg: Mapping[str, Any], scan_layers: bool | None = None) -> FluxViT:
  """The teacher FluxViT: `distill.teacher`'s saved model, or `distill.teacher_model`
  when `distill.teacher` is empty (random params: smoke runs and memory checks only).
  `distill.teacher_dtype` overrides the compute dtype (e.g. bfloat16 for a float32
  checkpoint); `scan_layers` (None: as saved or configured) the block layout, which
  changes the compiled program, never the targets (`setup` gives the student's)."""
  if cfg['teacher']:
    model = checkpoint.load_model(cfg['teacher'])
  else:
    model = make_model(cfg['teacher_model'])
    logging.warning('distill.teacher is empty: distilling from a RANDOM %s teacher',
                    cfg['teacher_model'].get('variant', 'small'))
  if cfg['teacher_dtype']:
    model = model.clone(dtype=jnp.dtype(cfg['teacher_dtype']))
  if scan_layers is not None:
    model = model.clone(scan_layers=scan_layers)
  return model


def make_teacher(cfg: Mapping[str, Any], model: FluxViT) -> Teacher:
  """`distill.teacher_head` < 0 picks the head trained nearest to `t_tokens`."""
  head = int(cfg['teacher_head'])
  if head < 0:
    head = model.nearest_head(int(cfg['t_tokens']), int(cfg['t_tokens']))
  return Teacher(model, tuple(int(i) for i in cfg['teacher_layers']), head)


def make_student(cfg: Mapping[str, Any], model: FluxViT, teacher: Teacher) -> DistillStudent:
  for key in ('layer_decoder', 'final_decoder'):
    if cfg[key] not in DECODERS:
      raise ValueError(f'distill.{key}={cfg[key]!r} is not one of {sorted(DECODERS)}')
  return DistillStudent(model, tuple(int(i) for i in cfg['student_layers']),
                        teacher.model.embed_dim, teacher.model.clip_embed_dim,
                        tuple(sorted({int(h) for h in cfg['heads']})), cfg['layer_decoder'],
                        cfg['final_decoder'])


def step_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The `make_distill_parts` / `make_distill_step` options of a `config.distill` block."""
  return dict(t_tokens=int(cfg['t_tokens']), s_tokens=cfg['s_tokens'], heads=cfg['heads'],
              subset=cfg['subset'], selector=cfg['selector'],
              select_with=cfg['select_with'], passes=cfg['passes'],
              loss_weights=cfg['loss_weights'])


def make_step_from_config(cfg: Mapping[str, Any], student: DistillStudent, teacher: Teacher,
                          tx: optax.GradientTransformation):
  return make_distill_step(student, teacher, tx, **step_options(cfg))


def teacher_shardings(cfg: Mapping[str, Any], model: FluxViT, mesh):
  """NamedShardings of the teacher params under `distill.teacher_rules` (empty: the
  student's DEFAULT_RULES)."""
  rules = tuple(cfg['teacher_rules']) or sharding.DEFAULT_RULES
  return sharding.param_shardings(model, mesh, rules)


def place_teacher(cfg: Mapping[str, Any], model: FluxViT, mesh, seed: int
                  ) -> tuple[dict, Any]:
  """Teacher params on the mesh under `distill.teacher_rules` (empty: the student's
  DEFAULT_RULES) and their shardings: `distill.teacher` restored straight into them (a
  host reads only its shards; saved in the other block layout, converted to `model`'s),
  or a random init from `seed` when it is empty."""
  shardings = teacher_shardings(cfg, model, mesh)
  if not cfg['teacher']:
    return sharding.shard_init(lambda r: init_params(model, r), shardings,
                               jax.random.key(seed)), shardings
  return checkpoint.load_params(cfg['teacher'], shardings,
                                scan_layers=model.scan_layers)[1], shardings


def record_teacher(workdir: str, cfg: Mapping[str, Any], model: FluxViT) -> None:
  """Writes WORKDIR/teacher.json on a run's first start; on resume, refuses a teacher
  that differs from the recorded one (path and model config; the block layout is not
  recorded: it follows the student's and gives the same targets)."""
  path = os.path.join(workdir, TEACHER_RECORD)
  config = {k: v for k, v in model_config(model).items() if k != 'scan_layers'}
  record = {'teacher': os.path.abspath(cfg['teacher']) if cfg['teacher'] else '',
            'model': config}
  if os.path.exists(path):
    with open(path) as f:
      seen = json.load(f)
    if seen != record:
      raise ValueError(f'{path}: this run distils from teacher {seen["teacher"]!r} '
                       f'({seen["model"]}), but distill.teacher is {record["teacher"]!r} '
                       f'({record["model"]}); use a new workdir for another teacher')
  elif jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(record, f, indent=1)


@dataclasses.dataclass(frozen=True)
class Distillation:
  """What the train loop needs beside the train state: the module it trains, the frozen
  teacher and its params on the mesh (a jit argument of their own)."""
  student: DistillStudent
  teacher: Teacher
  teacher_params: Any
  teacher_shardings: Any


def setup(config, model: FluxViT, mesh, workdir: str | None) -> Distillation:
  """The `train.mode = 'distill'` pieces from the config; checks the teacher against
  the one WORKDIR/teacher.json recorded (resume uses the same teacher).

  With `workdir=None` (AOT compilation, `bench aot`) nothing is written and no teacher
  params are read: they are ShapeDtypeStructs carrying their shardings. The teacher's
  blocks are scanned when the student's are (`model.scan_layers`), whatever layout its
  checkpoint was saved in: one switch for the step's compile time.
  """
  cfg = config.distill
  frozen = teacher_model(cfg, scan_layers=model.scan_layers)
  teacher = make_teacher(cfg, frozen)
  if workdir is None:
    shardings = teacher_shardings(cfg, frozen, mesh)
    params = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          abstract_params(frozen), shardings)
    return Distillation(make_student(cfg, model, teacher), teacher, params, shardings)
  record_teacher(workdir, cfg, frozen)
  params, shardings = place_teacher(cfg, frozen, mesh, config.seed + 2)
  logging.info('distilling %s from teacher %s (%s)', model.__class__.__name__,
               cfg.teacher or 'RANDOM', frozen.__class__.__name__)
  return Distillation(make_student(cfg, model, teacher), teacher, params, shardings)


def student_export(student: DistillStudent, state: TrainState) -> TrainState:
  """The state with only the student FluxViT's params: what WORKDIR/params holds."""
  return state.replace(params=student.fluxvit_params(state.params))

