"""Pure training and evaluation steps (DESIGN.md 4).

`step(state, batch, rng) -> (state, metrics)`: the budgets and heads are static, the grid
is data, so one compiled program serves every sampled grid. The rng of a step is
fold_in(rng, state.step), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import optax

from flux_jax.model.fluxvit import FluxViT, normalize_patches
from flux_jax.tokens.token_batch import TokenBatch
from flux_jax.train import losses
from flux_jax.train import mixup
from flux_jax.train.state import TrainState

StepFn = Callable[[TrainState, TokenBatch, jax.Array], tuple[TrainState, dict]]


def _targets(rng, tokens: TokenBatch, num_classes: int, mix: Mapping[str, Any] | None,
             smoothing: float):
  """Normalized (possibly mixed) patches and soft targets."""
  patches = normalize_patches(tokens.patches)
  if mix:
    patches, targets = mixup.mix(rng, patches, tokens.coords, tokens.grid, tokens.valid,
                                 tokens.label, num_classes, smoothing=smoothing, **mix)
  else:
    targets = losses.one_hot_smoothed(tokens.label, num_classes, smoothing)
  return tokens.replace(patches=patches), targets


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads):
  """One optimizer update of the params; the step counter advances."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def make_flux_multi_step(model: FluxViT, tx: optax.GradientTransformation, *,
                         budgets: Sequence[int], mix: Mapping[str, Any] | None = None,
                         smoothing: float = 0.0) -> StepFn:
  """Flux-Multi (SPEC C.3): one forward per budget, largest first, head i for budget i;
  cross-entropy on each plus smooth-L1 alignment of heads 1.. to head 0's feature.
  A budget of at least N_max keeps every token (the official r = 0), as in the model.
  """
  budgets = tuple(int(b) for b in budgets)
  if list(budgets) != sorted(budgets, reverse=True):
    raise ValueError(f'train.budgets {budgets} must be largest first')
  if len(budgets) > len(model.head_budgets) or len(budgets) - 1 > model.num_decoders:
    raise ValueError(f'train.budgets {budgets}: the model has {len(model.head_budgets)} heads '
                     f'and {model.num_decoders} decoders')

  def step(state: TrainState, tokens: TokenBatch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    mix_rng, drop_rng = jax.random.split(rng)
    inputs, targets = _targets(mix_rng, tokens, model.num_classes, mix, smoothing)

    def loss_fn(params):
      logits, projected, pooled0 = [], [], None
      for i, budget in enumerate(budgets):
        out, aux = model.apply(
            {'params': params}, inputs, budget=budget, head=i,
            align_proj=None if i == 0 else i - 1, train=True,
            rngs={'dropout': jax.random.fold_in(drop_rng, i)})
        logits.append(out)
        if i == 0:
          pooled0 = aux['pooled']
        else:
          projected.append(aux['projected'])
      return losses.flux_multi_loss(logits, targets, projected, pooled0)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return apply_gradients(state, tx, grads), metrics

  return step


def make_flux_single_step(model: FluxViT, tx: optax.GradientTransformation, *, budget: int,
                          head: int, mix: Mapping[str, Any] | None = None,
                          smoothing: float = 0.0) -> StepFn:
  """Flux-Single (SPEC C.4): one forward at one budget and head, cross-entropy only."""

  def step(state: TrainState, tokens: TokenBatch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    mix_rng, drop_rng = jax.random.split(rng)
    inputs, targets = _targets(mix_rng, tokens, model.num_classes, mix, smoothing)

    def loss_fn(params):
      logits, _ = model.apply({'params': params}, inputs, budget=budget, head=head, train=True,
                              rngs={'dropout': drop_rng})
      return losses.soft_cross_entropy(logits, targets)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    metrics = {'loss': loss, 'ce_0': loss, 'grad_norm': optax.global_norm(grads)}
    return apply_gradients(state, tx, grads), metrics

  return step
