"""The Flux-CLIP training step: a contrastive loss per budget plus self-distillation.

FluxViT-CLIP (SPEC G; DESIGN.md 8): for budgets K_0 > K_1 > ..., head i's aligned video
embedding at K_i against the captions' embeddings, each budget with its own contrastive
loss (softmax VTC or sigmoid), plus smooth-L1 from the largest budget's embedding
(stop-gradient) to each smaller one's, the rule of Flux-Multi (SPEC C.3). The text tower
runs once per step; every budget's loss sees the same caption embeddings.

The loss sees the global batch: the embeddings are constrained to replicated inside the
jitted step, so XLA all-gathers them across the data axes and one program computes the
one-device loss on any mesh.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax

from flux_jax.model import layers
from flux_jax.model.clip import FluxCLIP
from flux_jax.tokens.token_batch import ClipBatch
from flux_jax.train import contrastive
from flux_jax.train import losses
from flux_jax.train.state import TrainState
from flux_jax.train.steps import apply_gradients


def _whole(x: jax.Array) -> jax.Array:
  """`x` replicated on every device (the global batch's rows gathered); no-op off-mesh."""
  return layers.constrain(x, (None,) * x.ndim)


def clip_loss(model: FluxCLIP, params, batch: ClipBatch, rng: jax.Array, *,
              budgets: Sequence[int], distill_weight: float = 1.0, train: bool = True):
  """(loss, metrics) of one Flux-CLIP step: per budget i `{loss}_{i}`, `acc_v2t_{i}`,
  `acc_t2v_{i}` and, for i >= 1, `align_{i}`; `logit_scale`; `total`."""
  variables = {'params': params}
  text = _whole(model.apply(variables, batch.text, method=FluxCLIP.encode_text))  # [B, A]
  scale, bias = model.apply(variables, method=FluxCLIP.logit_params)
  ids = _whole(batch.tokens.video_index)  # positives: captions of the same video
  metrics, target = {'logit_scale': scale}, None
  for i, budget in enumerate(budgets):
    video, _ = model.apply(variables, batch.tokens, budget=budget, head=i, train=train,
                           method=FluxCLIP.encode_video,
                           rngs={'dropout': jax.random.fold_in(rng, i)})
    video = _whole(video)  # [B, A]
    if model.loss == 'sigmoid':
      loss, m = contrastive.sigmoid_loss(video, text, ids, ids, scale, bias)
    else:
      loss, m = contrastive.vtc_loss(video, text, ids, ids, scale)
      metrics.update({f'acc_v2t_{i}': m['acc_v2t'], f'acc_t2v_{i}': m['acc_t2v']})
    metrics[f'{model.loss}_{i}'] = loss
    if i == 0:
      target = jax.lax.stop_gradient(video)
    else:
      metrics[f'align_{i}'] = distill_weight * losses.smooth_l1(video, target)
  total = sum(v for k, v in metrics.items() if k.startswith((model.loss, 'align')))
  metrics['total'] = total
  return total, metrics


def make_flux_clip_step(model: FluxCLIP, tx: optax.GradientTransformation, *,
                        budgets: Sequence[int], distill_weight: float = 1.0):
  """`step(state, batch: ClipBatch, rng) -> (state, metrics)`, one program for the
  budget set (largest first; head i serves budget i)."""
  budgets = tuple(int(b) for b in budgets)
  if list(budgets) != sorted(budgets, reverse=True):
    raise ValueError(f'train.budgets {budgets} must be largest first')
  if len(budgets) > len(model.head_budgets):
    raise ValueError(f'train.budgets {budgets}: the model has {len(model.head_budgets)} '
                     'heads')

  def step(state: TrainState, batch: ClipBatch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return clip_loss(model, params, batch, rng, budgets=budgets,
                       distill_weight=distill_weight)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return apply_gradients(state, tx, grads), metrics

  return step
