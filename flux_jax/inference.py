"""One-call classification of decoded videos with a FluxViT at a token budget."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.select import keeps_all
from flux_jax.tokens.token_batch import patchify


@functools.partial(jax.jit, static_argnames=('model', 'budget', 'head'))
def _classify(model: FluxViT, params, video, budget, head):
  tokens = patchify(video, patch_size=model.patch_size, tubelet_size=model.tubelet_size)
  logits, _ = model.apply({'params': params}, tokens, budget=budget, head=head)
  return logits


def classify(model: FluxViT, params, video, *, budget: int | None = None,
             head: int | None = None) -> jax.Array:
  """Logits of a batch of videos.

  Args:
    model: a FluxViT (e.g. from `load_official_checkpoint`).
    params: its parameters.
    video: float32 `[B, T, H, W, 3]`, ImageNet-normalized (the official model's input,
      channels last); any T, any H and W that are multiples of the patch size.
    budget: tokens to keep (group-dynamic selection); None keeps every token.
    head: projector/classifier index; None picks the head whose training budget is
      nearest to the tokens kept.

  Returns:
    float32 logits `[B, num_classes]`.
  """
  video = jnp.asarray(video, jnp.float32)
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f'video must be [B, T, H, W, 3], got shape {video.shape}')
  _, t, h, w, _ = video.shape
  p, kt = model.patch_size, model.tubelet_size
  if h % p or w % p or t % kt:
    raise ValueError(f'video {t}x{h}x{w} must have H, W multiples of {p} and T a multiple '
                     f'of {kt}')
  n = (t // kt) * (h // p) * (w // p)
  if budget is not None and budget < 1:
    raise ValueError(f'budget must be positive, got {budget}')
  if keeps_all(budget, n):
    budget = None  # every token fits
  if head is None:
    head = model.nearest_head(budget, n)
  return _classify(model, params, video, budget, head)
