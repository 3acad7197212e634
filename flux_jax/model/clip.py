"""FluxViT-CLIP: FluxViT and the MobileCLIP-B text tower as two towers (SPEC G, G.1).

Per budget head j, FluxViT's attention-pooling projector feeds its own
`vision_align_j = LayerNorm -> Dense(align_dim)` (InternVideo2's `vision_align`); the text
tower's projection is already `align_dim` wide. Both embeddings come out L2-normalised,
with the learnable logit scale (and the sigmoid loss's bias) beside them, as big_vision's
two towers return them.

The scale is `exp(t)`, clipped to `max_logit_scale`: InternVideo2 keeps a temperature
`temp` that divides the similarity and is clamped to >= 1/100 before each forward, which is
`exp(t) <= 100` here (SPEC G.1).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from flux_jax.model import layers
from flux_jax.model.fluxvit import FluxViT, dummy_tokens, make_model, model_config
from flux_jax.model.text import (TextTransformer, dummy_ids, make_text_model,
                                 text_model_config)
from flux_jax.tokens.token_batch import TokenBatch

LOSSES = ('softmax', 'sigmoid')
ALIGN = 'align'  # logical name of the joint embedding width


class VisionAlign(nn.Module):
  """LayerNorm(clip_embed) -> Dense(align_dim), InternVideo2's `vision_align`."""
  align_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, clip]
    x = layers.layer_norm((layers.CLIP,), jnp.float32, name='norm')(x)
    return layers.dense(self.align_dim, (layers.CLIP, ALIGN), dtype=self.dtype,
                        name='proj')(x)  # [B, A]


class FluxCLIP(nn.Module):
  """Two towers: a FluxViT with one align layer per budget head, and a text tower.

  Attributes:
    vision: the FluxViT (its classifier heads are unused; freeze or ignore them).
    text: the TextTransformer; its output_dim is the joint width.
    loss: 'softmax' (VTC, SPEC G.4) or 'sigmoid' (SigLIP): decides the initial scale and
      whether a bias is learned.
    temperature_init: initial 1 / logit scale (softmax: InternVideo2's 0.01; sigmoid:
      SigLIP's 0.1).
    bias_init: initial logit bias of the sigmoid loss (SigLIP: -10).
    max_logit_scale: the scale's upper bound (InternVideo2's clamp of temp at 1/100).
  """
  vision: FluxViT
  text: TextTransformer
  loss: str = 'softmax'
  temperature_init: float = 0.01
  bias_init: float = -10.0
  max_logit_scale: float = 100.0

  @property
  def align_dim(self) -> int:
    return self.text.output_dim

  @property
  def head_budgets(self) -> tuple[int, ...]:
    return self.vision.head_budgets

  def setup(self):
    self.aligns = [VisionAlign(self.align_dim, self.vision.dtype, name=f'vision_align_{j}')
                   for j in range(len(self.vision.head_budgets))]
    self.log_scale = self.param('logit_scale', layers.param_with_axes(
        nn.initializers.constant(math.log(1.0 / self.temperature_init)), ()), ())
    if self.loss == 'sigmoid':
      self.bias = self.param('logit_bias', layers.param_with_axes(
          nn.initializers.constant(self.bias_init), ()), ())

  def encode_video(self, tokens: TokenBatch, *, budget: int | None, head: int,
                   train: bool = False):
    """(L2-normalised video embeddings float32 `[B, A]`, FluxViT's aux) at `budget`
    through head `head`'s projector and align layer."""
    _, aux = self.vision(tokens, budget=budget, head=head, train=train)
    return layers.l2_normalize(self.aligns[head](aux['pooled'])), aux

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """L2-normalised caption embeddings float32 `[Bt, A]` of token ids `[Bt, L]`."""
    pooled, _ = self.text(ids)
    return layers.l2_normalize(pooled)

  def logit_params(self) -> tuple[jax.Array, jax.Array]:
    """(logit scale, logit bias): the bias is 0 for the softmax loss."""
    scale = jnp.minimum(jnp.exp(self.log_scale), self.max_logit_scale)
    bias = self.bias if self.loss == 'sigmoid' else jnp.zeros((), jnp.float32)
    return scale, bias

  def __call__(self, tokens: TokenBatch, ids: jax.Array, *, budget: int | None = None,
               head: int = 0, train: bool = False):
    """(video `[B, A]`, text `[Bt, A]`, {'logit_scale', 'logit_bias'}); at init every
    head's align layer is created."""
    if self.is_initializing():
      for j in range(len(self.aligns)):
        video, _ = self.encode_video(tokens, budget=budget, head=j, train=train)
    video, _ = self.encode_video(tokens, budget=budget, head=head, train=train)
    scale, bias = self.logit_params()
    return video, self.encode_text(ids), {'logit_scale': scale, 'logit_bias': bias}


def make_clip_model(config: Mapping[str, Any]) -> FluxCLIP:
  """FluxCLIP from a config block {vision: FluxViT config, text: TextTransformer config,
  loss, temperature_init, bias_init, max_logit_scale}; unknown keys fail here."""
  config = dict(config)
  unknown = sorted(set(config) - {'vision', 'text', 'loss', 'temperature_init', 'bias_init',
                                   'max_logit_scale'})
  if unknown:
    raise ValueError(f'unknown clip model config keys {unknown}')
  vision = make_model(config.pop('vision'))
  text = make_text_model(config.pop('text', {}))
  model = FluxCLIP(vision=vision, text=text, **config)
  if model.loss not in LOSSES:
    raise ValueError(f'clip loss={model.loss!r} is not one of {LOSSES}')
  if not 0 < model.temperature_init or 1 / model.temperature_init > model.max_logit_scale:
    raise ValueError(f'clip temperature_init={model.temperature_init} must be positive and '
                     f'give a logit scale of at most max_logit_scale={model.max_logit_scale}')
  return model


def clip_model_config(model: FluxCLIP) -> dict[str, Any]:
  """Every field as JSON-friendly values; `make_clip_model` rebuilds the model."""
  return dict(vision=model_config(model.vision), text=text_model_config(model.text),
              loss=model.loss,
              temperature_init=model.temperature_init, bias_init=model.bias_init,
              max_logit_scale=model.max_logit_scale)


def dummy_clip_inputs(model: FluxCLIP, batch_size: int = 1):
  return dummy_tokens(model.vision, batch_size), dummy_ids(model.text, batch_size)


def init_clip_params(model: FluxCLIP, rng: jax.Array) -> dict:
  """Float32 parameters (logical-axis boxes removed)."""
  return layers.init_module_params(model, rng, *dummy_clip_inputs(model))


def abstract_clip_params(model: FluxCLIP) -> dict:
  """ShapeDtypeStructs of the params, computed without allocating them."""
  return layers.abstract_module_params(model, *dummy_clip_inputs(model))
