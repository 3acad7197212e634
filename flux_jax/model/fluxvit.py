"""FluxViT: a ViT that runs on any token grid and any token budget (SPEC A, B).

Data flow of one forward pass:
  TokenBatch -> DPN patch embed -> select K tokens (static K) -> + GLPE at the kept
  coordinates -> cls -> blocks (key-padding mask) -> attention-pooling projector of the
  chosen head -> fc_norm -> classifier; aux holds the pooled and projected features.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from flux_jax.model import attention as attention_lib
from flux_jax.model import layers
from flux_jax.model import posemb
from flux_jax.model.layers import EMBED, POS_H, POS_T, POS_W
from flux_jax.tokens.select import SELECTORS, all_tokens, keeps_all, select_tokens
from flux_jax.tokens.token_batch import TokenBatch, patchify

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The modules FluxViT makes once per head (clip_projector_j, head_j) or per alignment
# decoder (final_clip_decoder_for_projs_j); models of other head counts share the rest.
PER_HEAD_MODULES = ('clip_projector', 'head', 'final_clip_decoder_for_projs')
# The params of scanned blocks (FluxViT.scan_layers): one subtree, every leaf [depth, ...];
# the unrolled layout has `blocks_{i}` instead, one subtree per block.
BLOCKS = 'blocks'
BLOCK_NAME = re.compile(r'blocks_(\d+)')  # fullmatch: an unrolled block's subtree

# SPEC A.1. `pos_grid` is the stored table (T0, H0, W0); it only matters for loading.
VARIANTS: dict[str, dict[str, Any]] = {
    'tiny': dict(embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=4,
                 clip_embed_dim=64, pos_grid=(4, 4, 4), head_budgets=(48, 32, 16)),
    'small': dict(embed_dim=384, depth=12, num_heads=6, attn_pool_num_heads=16,
                  clip_embed_dim=768, pos_grid=(24, 18, 18)),
    'base': dict(embed_dim=768, depth=12, num_heads=12, attn_pool_num_heads=16,
                 clip_embed_dim=768, pos_grid=(32, 20, 20)),
    # No official FluxViT-L exists; InternVideo2-L sizes, config only.
    'large': dict(embed_dim=1024, depth=24, num_heads=16, attn_pool_num_heads=16,
                  clip_embed_dim=768, pos_grid=(32, 20, 20)),
    # The InternVideo2-1B distillation teacher (SPEC D.2): no DPN, GPE proj or LPE, one
    # pooling projector; 6144 = int(1408 * 48 / 11) MLP hidden. Config only.
    'iv2_1b': dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11,
                   attn_pool_num_heads=16, clip_embed_dim=768, pos_grid=(8, 16, 16),
                   head_budgets=(2048,), num_decoders=0, dual_norm_in_patch_embed=False,
                   use_gpe_proj=False, use_lpe=False),
}


# The official model names (SPEC A.1), as users copy them from the official scripts.
VARIANTS['fluxvit_small_patch14'] = VARIANTS['small']
VARIANTS['fluxvit_base_patch14'] = VARIANTS['base']


def normalize_patches(patches: jax.Array) -> jax.Array:
  """uint8 pixel patches -> ImageNet-normalized float32; float patches pass unchanged.

  The patch vector is ordered (kt, py, px, rgb) with rgb fastest (DESIGN.md 2).
  """
  if patches.dtype != jnp.uint8:
    return patches.astype(jnp.float32)
  reps = patches.shape[-1] // 3
  mean = jnp.tile(jnp.asarray(IMAGENET_MEAN, jnp.float32), reps)
  std = jnp.tile(jnp.asarray(IMAGENET_STD, jnp.float32), reps)
  return (patches.astype(jnp.float32) / 255.0 - mean) / std


def scan_blocks(block: nn.Module, x: jax.Array, mask: jax.Array, deterministic: bool,
                rates: np.ndarray, return_layers: tuple[int, ...]
                ) -> tuple[jax.Array, list[jax.Array]]:
  """Runs `block` once per layer under nn.scan, its params stacked on a 'layers' axis.

  The drop path rate and the layer index (fix_init_weight's scale) differ per block: they
  are scanned inputs. The outputs of `return_layers` go into a carried buffer with one
  slot per distinct requested layer, not into the scan's stacked outputs: those would
  hold every layer's `[B, N, D]` (40 of them for the IV2-1B teacher, which returns 6).

  Returns:
    (the last block's output `[B, N, D]`, the outputs of `return_layers` in that order).
  """
  depth = len(rates)
  wanted = sorted(set(return_layers))
  slot = np.zeros(depth, np.int32)
  slot[wanted] = np.arange(len(wanted))
  per_layer = {'index': jnp.arange(depth, dtype=jnp.int32), 'slot': jnp.asarray(slot),
               'keep': jnp.asarray(np.isin(np.arange(depth), wanted))}
  if rates.any():  # else every rate is 0: the block's field, no dropout rng drawn
    per_layer['rate'] = jnp.asarray(rates, jnp.float32)

  def body(blk, carry, key_mask, layer):
    x, kept = carry
    x = blk(x, key_mask, deterministic, layer.get('rate'), layer['index'])  # [B, N, D]
    if kept is not None:
      s = layer['slot']
      kept = jax.lax.dynamic_update_index_in_dim(
          kept, jnp.where(layer['keep'], x, kept[s]), s, 0)  # [R, B, N, D]
      kept = layers.constrain(kept, (None,) + layers.TOKENS)
    return (x, kept), None

  kept = jnp.zeros((len(wanted),) + x.shape, x.dtype) if wanted else None
  scan = nn.scan(body, variable_axes={'params': 0},
                 split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast, 0),
                 length=depth, metadata_params={nn.PARTITION_NAME: layers.LAYERS})
  (x, kept), _ = scan(block, (x, kept), mask, per_layer)
  return x, [kept[wanted.index(i)] for i in return_layers]


class FluxViT(nn.Module):
  """FluxViT classifier with one attention-pooling head per training budget.

  Attributes:
    num_classes: classifier outputs.
    embed_dim, depth, num_heads, mlp_ratio: transformer size.
    patch_size, tubelet_size: token shape; P = tubelet * p * p * 3.
    pos_grid: (T0, H0, W0) of the learned positional table, resized to any grid.
    attn_pool_num_heads: heads of the pooling projectors.
    clip_embed_dim: projector output width (768 in the released models).
    head_budgets: training budget of each head, largest first: head i serves budget i
      (the engine's mapping, SPEC B.6).
    num_decoders: Linear decoders used by Flux-Multi self-distillation (heads 1.. align
      to head 0 through decoder head - 1).
    mlp_activation: 'gelu_tanh' (released weights) or 'gelu'.
    selector: token selector used when a budget is given (flux_jax.tokens.select).
    drop_path_rate: stochastic depth at the last block (linear from 0).
    layerscale_init: LayerScale gamma at init.
    pos_temporal_scale: multiplies the time channels of the sin-cos init of pos_embed
      (SPEC B.7 is 1; init only, a loaded table replaces it). With 10000 as the sin-cos
      temperature, adjacent frames of a short clip differ in a few channels only, and a
      small model trained from scratch learns frame order slowly or not at all: on
      synthetic_motion it stayed order-blind at 1 and learned direction at 5.
    dtype: compute dtype; params are float32, norms and pooling statistics float32.
    remat: what the backward pass keeps of each block: 'none', 'full' (recompute the
      block), 'dots_saveable', 'dots_with_no_batch_dims_saveable' (layers.REMAT_POLICIES);
      True / False mean 'full' / 'none'.
    attention: the blocks' attention implementation, 'auto' (the platform's fused kernel),
      'xla', 'chunked', 'splash' or 'cudnn' (flux_jax.model.attention); all compute the
      same function.
    dual_norm_in_patch_embed, use_gpe_proj, use_lpe: the official FluxViT flags (SPEC
      A.1); all False is the InternVideo2 ViT (SPEC D.2).
    scan_layers: run the blocks as one `nn.scan` over a block whose params carry a leading
      'layers' axis (params['blocks'], every leaf [depth, ...]) instead of a Python loop
      over `blocks_{i}`: XLA compiles one block instead of depth of them, forward, remat
      and backward. Same numbers; `stack_blocks` / `unstack_blocks` convert the params.
      False by default, the layout of converted official checkpoints and of params saved
      before the field existed; the training configs turn it on (configs/common.py).
  """
  num_classes: int
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  patch_size: int = 14
  tubelet_size: int = 1
  pos_grid: tuple[int, int, int] = (24, 18, 18)
  attn_pool_num_heads: int = 16
  clip_embed_dim: int = 768
  head_budgets: tuple[int, ...] = (3072, 2048, 1024)
  num_decoders: int = 2
  mlp_activation: str = 'gelu_tanh'
  selector: str = 'group_dynamic'
  drop_path_rate: float = 0.0
  layerscale_init: float = 1e-5
  pos_temporal_scale: float = 1.0
  dtype: Any = jnp.float32
  remat: bool | str = 'none'
  attention: str = 'auto'
  dual_norm_in_patch_embed: bool = True
  use_gpe_proj: bool = True
  use_lpe: bool = True
  scan_layers: bool = False

  @property
  def patch_dim(self) -> int:
    return self.tubelet_size * self.patch_size ** 2 * 3

  def nearest_head(self, budget: int | None, num_tokens: int) -> int:
    """The head whose training budget is nearest to the tokens the model will see."""
    seen = num_tokens if budget is None else min(budget, num_tokens)
    return int(np.argmin([abs(b - seen) for b in self.head_budgets]))

  @nn.compact
  def __call__(self, tokens: TokenBatch, *, budget: int | None = None, head: int = 0,
               align_proj: int | None = None, train: bool = False,
               return_layers: tuple[int, ...] = (), return_attention: bool = False):
    """Classifies a TokenBatch.

    Args:
      tokens: patches `[B, N_max, P]` with coords, grid and valid (DESIGN.md 2).
      budget: static K; None keeps every valid token. K >= N_max keeps every token too.
      head: static index of the projector and classifier.
      align_proj: if given, aux['projected'] = decoder[align_proj](pooled) (SPEC B.6).
      train: enables drop path.
      return_layers: static block indices whose outputs go to aux['layers'].
      return_attention: put the projector's attention in aux['attention'].

    Returns:
      (logits float32 `[B, num_classes]`, aux) with aux keys 'pooled' (raw projector
      output `[B, clip_embed_dim]`), 'projected' (when align_proj is given),
      'kept_index' `[B, K]` (positions in the TokenBatch), 'kept_valid' `[B, K]`,
      'layers' `[len(return_layers), B, 1 + K, D]` (cls first) when asked, and
      'attention' float32 `[B, 1 + K]` (the pooling query's attention, head mean).
    """
    if not 0 <= head < len(self.head_budgets):
      raise ValueError(f'head {head} out of range for {len(self.head_budgets)} heads')
    if any(not 0 <= i < self.depth for i in return_layers):
      raise ValueError(f'return_layers {return_layers} out of range for depth {self.depth}')
    if tokens.patches.shape[-1] != self.patch_dim:
      raise ValueError(f'patch vectors have {tokens.patches.shape[-1]} values, the model '
                       f'expects {self.patch_dim} (tubelet {self.tubelet_size}, patch '
                       f'{self.patch_size})')
    b, n = tokens.valid.shape
    d = self.embed_dim

    x = layers.PatchEmbed(embed_dim=d, dtype=self.dtype,
                          dual_norm=self.dual_norm_in_patch_embed, name='patch_embed')(
        normalize_patches(tokens.patches))  # [B, N, D]

    if not keeps_all(budget, n):
      rng = self.make_rng('selection') if self.selector == 'random' else None
      index, kept = select_tokens(x, tokens, budget, self.selector, rng)  # [B, K]
      x = jnp.take_along_axis(x, index[..., None], axis=1)  # [B, K, D]
      coords = jnp.take_along_axis(tokens.coords, index[..., None], axis=1)  # [B, K, 3]
    else:
      index, kept = all_tokens(tokens.valid)
      coords = tokens.coords

    t0, h0, w0 = self.pos_grid
    table = self.param('pos_embed', layers.param_with_axes(
        lambda *_: jnp.asarray(posemb.sincos_3d(t0, h0, w0, d, self.pos_temporal_scale)),
        (POS_T, POS_H, POS_W, EMBED)),
        (t0, h0, w0, d))
    if self.use_gpe_proj:
      table = layers.ChannelAffine((EMBED,), name='gpe_proj')(table)  # GPE proj, SPEC B.3
    x = x + posemb.interpolate_at(table, coords, tokens.grid).astype(x.dtype)

    cls_token = self.param('cls_token', layers.param_with_axes(
        layers.trunc_normal(0.02), (EMBED,)), (d,))
    cls_pos = self.param('cls_pos', layers.param_with_axes(
        nn.initializers.zeros, (EMBED,)), (d,))
    cls = jnp.broadcast_to((cls_token + cls_pos).astype(x.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + K, D]
    mask = jnp.concatenate([jnp.ones((b, 1), bool), kept], axis=1)  # [B, 1 + K]
    x = layers.constrain(x, layers.TOKENS)  # [B, 1 + K, D]

    block = layers.remat_block(layers.Block, self.remat, prevent_cse=not self.scan_layers)
    block_args = dict(num_heads=self.num_heads, mlp_hidden=int(d * self.mlp_ratio),
                      activation=self.mlp_activation, layerscale_init=self.layerscale_init,
                      dtype=self.dtype, use_lpe=self.use_lpe, attention=self.attention)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)  # stochastic depth per block
    if self.scan_layers and self.depth:
      x, returned = scan_blocks(block(**block_args, name=BLOCKS), x, mask, not train, rates,
                                return_layers)
    else:
      outputs = {}
      for i in range(self.depth):
        x = block(**block_args, layer_index=i, drop_path=float(rates[i]),
                  name=f'blocks_{i}')(x, mask, not train)
        if i in return_layers:
          outputs[i] = x
      returned = [outputs[i] for i in return_layers]
    # No final norm: the pooling LayerNorms normalize (SPEC F.2).

    # Every head and decoder exists after init; a call runs only the ones it needs.
    initializing = self.is_initializing()
    fc_norm = layers.layer_norm((layers.CLIP,), jnp.float32, name='fc_norm')
    pooled, logits_of, attention = {}, {}, None
    for j in (range(len(self.head_budgets)) if initializing else (head,)):
      pool = layers.AttentionPooling(num_heads=self.attn_pool_num_heads,
                                     out_dim=self.clip_embed_dim, dtype=self.dtype,
                                     name=f'clip_projector_{j}')
      if return_attention and j == head:
        z, attention = pool(x, mask, return_attention=True)  # [B, clip], [B, 1 + K]
      else:
        z = pool(x, mask)
      pooled[j] = z.astype(jnp.float32)  # [B, clip]
      logits_of[j] = layers.dense(self.num_classes, (layers.CLIP, layers.CLASSES),
                                  dtype=jnp.float32, name=f'head_{j}')(fc_norm(pooled[j]))
    aux = {'pooled': pooled[head], 'kept_index': index, 'kept_valid': kept}
    if return_layers:
      aux['layers'] = jnp.stack(returned)  # [L, B, 1 + K, D]
    if return_attention:
      aux['attention'] = attention
    decoders = range(self.num_decoders) if initializing else (
        () if align_proj is None else (align_proj,))
    for j in decoders:
      projected = layers.LinearDecoder(out_dim=self.clip_embed_dim, dtype=self.dtype,
                                        name=f'final_clip_decoder_for_projs_{j}')(pooled[head])
      if j == align_proj:
        aux['projected'] = projected
    logits = logits_of[head]
    return logits, aux


def make_model(config: Mapping[str, Any]) -> FluxViT:
  """Builds FluxViT from a config: `variant` plus overrides of any module field.

  Unknown keys fail here, before anything is compiled.
  """
  kwargs = layers.config_kwargs(FluxViT, VARIANTS, config, default='small', block='model',
                                noun='model')
  if 'num_classes' not in kwargs:
    raise ValueError('model.num_classes is required')
  for key in ('pos_grid', 'head_budgets'):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  model = FluxViT(**kwargs)
  if model.embed_dim % model.num_heads or model.embed_dim % model.attn_pool_num_heads:
    raise ValueError(f'embed_dim {model.embed_dim} must divide by num_heads '
                     f'{model.num_heads} and attn_pool_num_heads {model.attn_pool_num_heads}')
  if list(model.head_budgets) != sorted(model.head_budgets, reverse=True):
    raise ValueError(f'head_budgets {model.head_budgets} must be largest first')
  if model.mlp_activation not in ('gelu_tanh', 'gelu'):
    raise ValueError(f'mlp_activation {model.mlp_activation!r} is not gelu_tanh or gelu')
  if model.selector not in SELECTORS:
    raise ValueError(f'selector {model.selector!r} is not one of {SELECTORS}')
  if not isinstance(model.scan_layers, bool):
    raise ValueError(f'model.scan_layers={model.scan_layers!r} must be True or False')
  if model.attention not in attention_lib.IMPLEMENTATIONS:
    raise ValueError(f'model.attention={model.attention!r} is not one of '
                     f'{attention_lib.IMPLEMENTATIONS}')
  return model.clone(remat=layers.remat_policy_name(model.remat))


def dummy_tokens(model: FluxViT, batch_size: int = 1, grid: tuple[int, int, int] = (2, 2, 2),
                 n_max: int | None = None) -> TokenBatch:
  """A small uint8 TokenBatch for initialization and shape inference."""
  t, hp, wp = grid
  p = model.patch_size
  video = np.zeros((batch_size, t * model.tubelet_size, hp * p, wp * p, 3), np.uint8)
  return patchify(video, patch_size=p, tubelet_size=model.tubelet_size, n_max=n_max)


def init_params(model: FluxViT, rng: jax.Array) -> dict:
  """Float32 parameters (logical-axis boxes removed)."""
  return layers.init_module_params(model, rng, dummy_tokens(model))


def abstract_params(model: FluxViT) -> dict:
  """ShapeDtypeStructs of the model's params, computed without allocating them."""
  return layers.abstract_module_params(model, dummy_tokens(model))


def param_specs(model: FluxViT) -> dict:
  """Logical axis names of every parameter, as a pytree of PartitionSpecs."""
  return layers.module_param_specs(model, dummy_tokens(model))


def model_config(model: FluxViT) -> dict[str, Any]:
  """Every field of the model as JSON-friendly values; `make_model` rebuilds it."""
  out = {}
  for f in dataclasses.fields(model):
    if f.name in ('parent', 'name'):
      continue
    value = getattr(model, f.name)
    if f.name == 'dtype':
      value = jnp.dtype(value).name
    elif isinstance(value, tuple):
      value = list(value)
    out[f.name] = value
  return out


def _stack(leaves: tuple) -> Any:
  """One leaf of every block, stacked on a new leading axis: numpy stays numpy (the
  converters' exact host copies), jax arrays stack on device, and ShapeDtypeStructs gain
  the axis, unsharded, in their NamedSharding (what a restore into shardings needs)."""
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh, P(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  if all(isinstance(v, np.ndarray) for v in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _unstack(leaf: Any, i: int) -> Any:
  """Block i of a stacked leaf (the reverse of `_stack`)."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
  return leaf[i]


def stack_blocks(params: Mapping[str, Any], depth: int) -> dict:
  """Unrolled params -> the scanned layout: `blocks_0` .. `blocks_{depth-1}` become one
  `blocks` subtree whose leaves are `[depth, ...]`; every other entry passes unchanged.

  `params` are a FluxViT's (or those of a module that shares its scope: DistillStudent,
  Teacher), unboxed; leaves may be numpy or jax arrays or ShapeDtypeStructs.
  """
  names = [f'blocks_{i}' for i in range(depth)]
  missing = [n for n in names if n not in params]
  beyond = sorted(k for k in params if BLOCK_NAME.fullmatch(k) and k not in names)
  if BLOCKS in params or missing or beyond:
    raise ValueError(f'stack_blocks(depth={depth}) needs unrolled params blocks_0 .. '
                     f'blocks_{depth - 1}: missing {missing}, beyond the depth {beyond}, '
                     f'already stacked {BLOCKS!r}: {BLOCKS in params}')
  out = {k: v for k, v in params.items() if not BLOCK_NAME.fullmatch(k)}
  out[BLOCKS] = jax.tree.map(lambda *leaves: _stack(leaves), *(params[n] for n in names))
  return out


def unstack_blocks(params: Mapping[str, Any]) -> dict:
  """Scanned params -> the unrolled layout: `blocks` `[depth, ...]` becomes `blocks_{i}`
  (the reverse of `stack_blocks`; the depth is the leaves' leading dimension)."""
  if BLOCKS not in params:
    raise ValueError(f'unstack_blocks needs scanned params with a {BLOCKS!r} entry; these '
                     f'have {sorted(params)[:8]}')
  depths = {leaf.shape[0] for leaf in jax.tree.leaves(params[BLOCKS])}
  if len(depths) != 1:
    raise ValueError(f'unstack_blocks: the leaves of {BLOCKS!r} stack different numbers of '
                     f'blocks {sorted(depths)}')
  depth = depths.pop()
  out = {k: v for k, v in params.items() if k != BLOCKS}
  for i in range(depth):
    out[f'blocks_{i}'] = jax.tree.map(lambda leaf, i=i: _unstack(leaf, i), params[BLOCKS])
  return out


def as_layout(params: Mapping[str, Any], scan_layers: bool, depth: int) -> dict:
  """`params` in the scanned layout if `scan_layers`, else the unrolled one, whichever
  layout they come in (`stack_blocks` / `unstack_blocks`)."""
  if depth == 0 or (BLOCKS in params) == scan_layers:
    return dict(params)
  return stack_blocks(params, depth) if scan_layers else unstack_blocks(params)


def patch_embeddings(model: FluxViT, params: dict, tokens: TokenBatch) -> jax.Array:
  """The model's patch embeddings of every token, `[B, N, D]`: what its selector scores."""
  embed = layers.PatchEmbed(embed_dim=model.embed_dim, dtype=model.dtype,
                            dual_norm=model.dual_norm_in_patch_embed)
  return embed.apply({'params': params['patch_embed']}, normalize_patches(tokens.patches))


DECODERS = {'mlp': layers.MLPDecoder, 'linear': layers.LinearDecoder,
            'identity': layers.L2Decoder}


class DistillStudent(nn.Module):
  """FluxViT plus the decoders of Flux-UMT distillation (SPEC D.2, D.5).

  The FluxViT params sit at the top of this module's params (shared scope), beside
  `clip_pos_embed/*`, `clip_decoder_{i}/*` and `final_clip_decoder_{head}/*`; so layer
  decay, the decay mask and sharding rules treat the FluxViT part as in fine-tuning, and
  `fluxvit_params` is a plain FluxViT checkpoint (`checkpoint.init_from`).

  Attributes:
    model: the student FluxViT.
    layers: student blocks aligned to the teacher layers, in the teacher's order.
    target_dim: teacher width (middle-layer targets).
    target_final_dim: teacher projector width (final target).
    heads: projectors the passes train; each gets its own final decoder (SPEC D.5 item 4
      is INFERRED: per-count heads, or one shared head).
    layer_decoder, final_decoder: 'mlp' (IV2 MLP_Decoder), 'linear' (Linear_Decoder) or
      'identity' (L2 only; IV2's final decoder when the teacher has no final dim).
  """
  model: FluxViT
  layers: tuple[int, ...]
  target_dim: int
  target_final_dim: int
  heads: tuple[int, ...] = (0,)
  layer_decoder: str = 'mlp'
  final_decoder: str = 'mlp'

  @property
  def patch_size(self) -> int:  # dummy_tokens and the loop treat it as its FluxViT
    return self.model.patch_size

  @property
  def tubelet_size(self) -> int:
    return self.model.tubelet_size

  def setup(self):
    for kind in (self.layer_decoder, self.final_decoder):
      if kind not in DECODERS:
        raise ValueError(f'distill decoder {kind!r} is not one of {sorted(DECODERS)}')
    nn.share_scope(self, self.model)
    self.clip_pos_embed = ClipPosEmbed(self.model.pos_grid, self.model.embed_dim)
    self.clip_decoder = [DECODERS[self.layer_decoder](self.target_dim, self.model.dtype)
                         for _ in self.layers]
    self.final_clip_decoder = {str(h): DECODERS[self.final_decoder](
        self.target_final_dim, self.model.dtype) for h in self.heads}

  def __call__(self, tokens: TokenBatch, *, head: int | None = None, train: bool = False):
    """Decoded, L2-normalised student features of all tokens the model keeps.

    `head` (default: the first of `heads`) picks the projector and final decoder.

    Returns:
      (layers float32 `[L, B, 1 + K, target_dim]` with cls first, final float32
      `[B, target_final_dim]`, kept_valid bool `[B, K]`).
    """
    head = self.heads[0] if head is None else head
    if head not in self.heads:
      raise ValueError(f'head {head} has no final decoder; distill heads are {self.heads}')
    _, aux = self.model(tokens, head=head, train=train, return_layers=self.layers)
    coords = jnp.take_along_axis(tokens.coords, aux['kept_index'][..., None], axis=1)
    x = aux['layers'] + self.clip_pos_embed(coords, tokens.grid)[None]  # [L, B, 1 + K, D]
    mid = jnp.stack([dec(x[i]) for i, dec in enumerate(self.clip_decoder)])
    for h in (self.heads if self.is_initializing() else ()):
      self.final_clip_decoder[str(h)](aux['pooled'])
    final = self.final_clip_decoder[str(head)](aux['pooled'])  # [B, target_final_dim]
    return mid, final, aux['kept_valid']

  def fluxvit_params(self, params: dict) -> dict:
    """The FluxViT part of this module's params: a checkpoint of `self.model`."""
    names = abstract_params(self.model)
    return {k: v for k, v in params.items() if k in names}


class ClipPosEmbed(nn.Module):
  """IV2's learnable `clip_pos_embed` (init 3D sin-cos, cls row 0), added to the student's
  returned layers before the decoders; resized to the grid like the GLPE (SPEC B.3, D.5)."""
  pos_grid: tuple[int, int, int]
  dim: int

  @nn.compact
  def __call__(self, coords: jax.Array, grid: jax.Array) -> jax.Array:  # coords [B, K, 3]
    t0, h0, w0 = self.pos_grid
    table = self.param('pos_embed', layers.param_with_axes(
        lambda *_: jnp.asarray(posemb.sincos_3d(t0, h0, w0, self.dim)),
        (POS_T, POS_H, POS_W, EMBED)), (t0, h0, w0, self.dim))
    cls_pos = self.param('cls_pos', layers.param_with_axes(
        nn.initializers.zeros, (EMBED,)), (self.dim,))
    body = posemb.interpolate_at(table, coords, grid)  # [B, K, D]
    cls = jnp.broadcast_to(cls_pos, (body.shape[0], 1, self.dim))
    return jnp.concatenate([cls, body], axis=1)  # [B, 1 + K, D]
