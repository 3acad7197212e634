"""Classification and self-distillation losses, float32 throughout (SPEC C.3)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def one_hot_smoothed(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """timm's smoothed one-hot `[B, num_classes]`: 1 - s + s/C on the label, s/C elsewhere.

  Equal to the target of torch's `cross_entropy(..., label_smoothing=s)`.
  """
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """timm's SoftTargetCrossEntropy: mean over the batch of -sum(targets * log_softmax)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
  return jnp.mean(-jnp.sum(targets.astype(jnp.float32) * logp, axis=-1))


def smooth_l1(x: jax.Array, y: jax.Array, beta: float = 1.0) -> jax.Array:
  """torch.nn.SmoothL1Loss(beta=beta): mean over all elements."""
  if beta <= 0:
    raise ValueError(f'smooth_l1 beta={beta} must be positive')
  d = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))
  return jnp.mean(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta))


def _l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))  # official: no epsilon


def flux_multi_loss(logits: Sequence[jax.Array], targets: jax.Array,
                    projected: Sequence[jax.Array], pooled0: jax.Array
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Flux-Multi loss (SPEC C.3, F.10): CE of every budget plus student-to-teacher alignment.

  L = sum_i CE(logits_i, targets) + sum_{i>=1} SmoothL1(n(projected_i), sg(n(pooled0)))
  with n the L2 normalization over the last axis and sg stop-gradient. Plain sums, no
  weights. With one budget and no students this is Flux-Single's CE (SPEC C.4).

  Args:
    logits: `[B, C]` per budget, largest budget first (head i serves budget i).
    targets: soft targets `[B, C]` (mixup output).
    projected: decoder outputs `[B, D]` of the students, budgets 1.. in order.
    pooled0: raw projector output `[B, D]` of the largest budget; the alignment target.

  Returns:
    (loss, metrics) with metrics `ce_{i}`, `align_{i}` (i >= 1) and `total`.
  """
  if len(projected) != len(logits) - 1:
    raise ValueError(f'{len(logits)} budgets need {len(logits) - 1} projected student '
                     f'features, got {len(projected)}')
  metrics = {f'ce_{i}': soft_cross_entropy(x, targets) for i, x in enumerate(logits)}
  target = jax.lax.stop_gradient(_l2_normalize(pooled0))  # [B, D]
  for i, p in enumerate(projected, start=1):
    metrics[f'align_{i}'] = smooth_l1(_l2_normalize(p), target)
  metrics['total'] = sum(metrics.values())
  return metrics['total'], metrics
