"""The MobileCLIP-B text tower of FluxViT-CLIP: open_clip's TextTransformer (SPEC G.2).

Token and learned position embeddings, pre-LN residual blocks with causal self-attention
and an exact-GELU MLP, `ln_final`, pooling at the argmax token id (end-of-text, 49407, is
the largest id) and a bias-free `text_projection` (x @ W). Parameter names follow
open_clip's so that `flux_jax.convert.open_clip` maps them one to one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# Imported by name: `layers` is also the depth field of TextTransformer, as in open_clip.
from flux_jax.model.layers import (CLIP, EMBED, HEADS, KV, QKV, Mlp, abstract_module_params,
                                   config_kwargs, dense, init_module_params, layer_norm,
                                   module_param_specs, param_with_axes)

Dtype = Any

# Logical axis names of the text tower's own parameters.
VOCAB = 'vocab'  # token ids
TEXT_POS = 'text_pos'  # positions 0 .. context_length - 1

TEXT_VARIANTS: dict[str, dict[str, Any]] = {
    # open_clip model_configs/MobileCLIP-B.json text_cfg; Apple's mobileclip_b.json.
    'mobileclip_b': dict(width=512, layers=12, heads=8, mlp_ratio=4.0, vocab_size=49408,
                         context_length=77, output_dim=512),
    # Test size; the real vocabulary, so real token ids (49406, 49407) embed.
    'tiny': dict(width=32, layers=2, heads=2, mlp_ratio=4.0, vocab_size=49408,
                 context_length=16, output_dim=24),
}


class CausalSelfAttention(nn.Module):
  """nn.MultiheadAttention(batch_first) under a causal mask, no padding mask (SPEC G.2).

  `in_proj` holds q, k, v stacked as torch's in_proj_weight rows are: (q|k|v) x head x
  head_dim. The init is open_clip's `init_parameters`.
  """
  num_heads: int
  num_layers: int  # the tower's depth: it scales the output projection's init
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, L, D]
    d = x.shape[-1]
    nh, hd = self.num_heads, d // self.num_heads
    qkv = dense((3, nh, hd), (EMBED, QKV, HEADS, KV), init=nn.initializers.normal(d ** -0.5),
                dtype=self.dtype, name='in_proj')(x)  # [B, L, 3, NH, HD]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, NH, HD]
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, L, NH, HD]
    proj_std = d ** -0.5 * (2 * self.num_layers) ** -0.5
    return dense(d, (HEADS, KV, EMBED), axis=(-2, -1), init=nn.initializers.normal(proj_std),
                 dtype=self.dtype, name='out_proj')(a)  # [B, L, D]


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x)): open_clip's block without LayerScale.

  The MLP is FluxViT's (fc1/fc2 are open_clip's c_fc/c_proj) with its init, not
  open_clip's: the tower always starts from MobileCLIP weights (SPEC G.1).
  """
  num_heads: int
  mlp_hidden: int
  num_layers: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, L, D]
    y = layer_norm((EMBED,), self.dtype, name='ln_1')(x)
    x = x + CausalSelfAttention(self.num_heads, self.num_layers, self.dtype, name='attn')(y)
    y = layer_norm((EMBED,), self.dtype, name='ln_2')(x)
    # The exact erf GELU of torch's nn.GELU().
    return x + Mlp(self.mlp_hidden, 'gelu', dtype=self.dtype, name='mlp')(y)


class TextTransformer(nn.Module):
  """open_clip `TextTransformer`, MobileCLIP-B by default (SPEC G.2).

  Attributes:
    dtype: compute dtype of the embeddings and blocks; params are float32, `ln_final`,
      the pooling and the projection run in float32 (Apple's LayerNormFP32).
  """
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_ratio: float = 4.0  # MLP hidden = int(width * mlp_ratio), as open_clip
  vocab_size: int = 49408
  context_length: int = 77
  output_dim: int = 512
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    """ids int32 `[B, L]`, L <= context_length -> (pooled `[B, output_dim]` float32,
    tokens `[B, L, width]` float32 after ln_final)."""
    b, length = ids.shape
    if length > self.context_length:
      raise ValueError(f'text ids have length {length}, more than context_length '
                       f'{self.context_length}')
    d = self.width
    x = nn.Embed(self.vocab_size, d, dtype=self.dtype, name='token_embedding',
                 embedding_init=param_with_axes(nn.initializers.normal(0.02), (VOCAB, EMBED))
                 )(ids)  # [B, L, D]
    pos = self.param('positional_embedding',
                     param_with_axes(nn.initializers.normal(0.01), (TEXT_POS, EMBED)),
                     (self.context_length, d))
    x = x + pos[:length].astype(x.dtype)  # [B, L, D]
    hidden = int(d * self.mlp_ratio)
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.heads, hidden, self.layers, self.dtype,
                                 name=f'resblocks_{i}')(x)
    tokens = layer_norm((EMBED,), jnp.float32, name='ln_final')(x)  # [B, L, D]
    eot = jnp.argmax(ids, axis=-1)  # [B]: end-of-text is the largest id
    pooled = jnp.take_along_axis(tokens, eot[:, None, None], axis=1).reshape(b, d)  # [B, D]
    proj = self.param('text_projection',
                      param_with_axes(nn.initializers.normal(d ** -0.5), (EMBED, CLIP)),
                      (d, self.output_dim))
    return pooled @ proj, tokens  # [B, out], [B, L, D]


def make_text_model(config: Mapping[str, Any]) -> TextTransformer:
  """A TextTransformer from `variant` (a TEXT_VARIANTS key) plus overrides of any field.

  Unknown keys fail here, before anything is compiled.
  """
  model = TextTransformer(**config_kwargs(TextTransformer, TEXT_VARIANTS, config,
                                         default='mobileclip_b', block='text',
                                         noun='text model'))
  if model.width % model.heads:
    raise ValueError(f'text width {model.width} must divide by heads {model.heads}')
  return model


def text_model_config(model: TextTransformer) -> dict[str, Any]:
  """Every field as JSON-friendly values; `make_text_model` rebuilds the model."""
  out = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
         if f.name not in ('parent', 'name')}
  out['dtype'] = jnp.dtype(out['dtype']).name
  return out


def dummy_ids(model: TextTransformer, batch_size: int = 1) -> jax.Array:
  return jnp.zeros((batch_size, model.context_length), jnp.int32)


def init_text_params(model: TextTransformer, rng: jax.Array) -> dict:
  """Float32 parameters (logical-axis boxes removed)."""
  return init_module_params(model, rng, dummy_ids(model))


def abstract_text_params(model: TextTransformer) -> dict:
  """ShapeDtypeStructs of the model's params, computed without allocating them."""
  return abstract_module_params(model, dummy_ids(model))


def text_param_specs(model: TextTransformer) -> dict:
  """Logical axis names of every parameter, as a pytree of PartitionSpecs."""
  return module_param_specs(model, dummy_ids(model))
