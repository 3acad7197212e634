"""Building blocks of FluxViT (SPEC A.3-A.5, B.1, B.5, B.6).

Every parameter carries logical axis names (the constants below); `flux_jax.sharding`
maps them to mesh axes by rules from the config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flux_jax.model import attention as attention_lib

Dtype = Any

# Logical axis names of parameters.
EMBED = 'embed'  # model width D
MLP = 'mlp'  # MLP hidden width
HEADS = 'heads'  # attention heads NH
KV = 'kv'  # head dim HD
QKV = 'qkv'  # the (q, k, v) triple
PATCH = 'patch'  # patch vector P
JOINED_KV = 'joined_kv'  # flat heads x head dim of the pooling attention
CLIP = 'clip_embed'  # projector output width
CLASSES = 'classes'
DECODER = 'decoder'  # width inside and out of the distillation decoders (teacher width)
POS_T, POS_H, POS_W = 'pos_t', 'pos_h', 'pos_w'
LAYERS = 'layers'  # the leading axis of scanned blocks' params (model.scan_layers)

# Logical axis names of the activations that cross layers (`constrain`).
ACT_BATCH = attention_lib.ACTIVATION_BATCH
ACT_LENGTH = 'activation_length'  # tokens
ACT_EMBED = 'activation_embed'  # width D
ACT_HEADS = attention_lib.ACTIVATION_HEADS
ACT_KV = 'activation_kv'  # head dim
ACT_MLP = 'activation_mlp'  # MLP hidden width
TOKENS = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # [B, N, D] between blocks

def trunc_normal(std: float, bound: float = 2.0):
  """timm's trunc_normal_(std, a=-bound, b=bound): bounds are absolute, not in stds."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)
  return init


# Every nn.Linear of the official model (SPEC B.7); with std 0.02 the +-2 bounds never bind.
linear_init = trunc_normal(0.02)


class _Partitioned(nn.LogicallyPartitioned):
  """flax's logical box, constrained by `constrain` when read under a mesh and rules.

  flax's own unbox fails there twice (flax 0.12): DenseGeneral unboxes its kernel at the
  flat 2-D init shape, before the reshape to the named shape (no constraint then), and a
  name repeated in one array (the decoders' clip_embed x clip_embed) is refused.
  """

  def unbox(self, apply_constraint=True):
    if not apply_constraint or jnp.ndim(self.value) != len(self.names):
      return self.value
    return constrain(self.value, self.names)


def param_with_axes(init: Callable, names: tuple[str | None, ...]):
  """`init` whose output carries logical axis names (nn.with_logical_partitioning)."""
  def wrapped(*args, **kwargs):
    return _Partitioned(init(*args, **kwargs), names)
  return wrapped


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """`x` sharded as the logical rules in context map `names`; a no-op without rules.

  flax's `nn.with_logical_constraint` with repeated names dropped (`unique_names`) and
  the mesh axes that do not divide a dimension dropped (`fit_spec`), so that tiny models
  and odd head counts trace on any mesh.
  """
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = fit_spec(nn.logical_to_mesh_axes(unique_names(names), rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def unique_names(names) -> list:
  """A logical name repeated in one array is sharded at its first dimension only (one
  mesh axis can split one dimension; flax refuses repeats)."""
  out, seen = [], set()
  for name in names:
    out.append(None if isinstance(name, str) and name in seen else name)
    seen.add(name)
  return out


def fit_spec(spec: P, shape: Sequence[int], mesh) -> P:
  """Drops mesh axes that do not divide their dimension.

  For a dimension sharded over several axes, the longest prefix of them whose sizes
  multiply to a divisor is kept: a batch of 2 on ('data', 'fsdp') = (2, 2) keeps 'data'.
  """
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = entry if isinstance(entry, tuple) else (() if entry is None else (entry,))
    kept = ()
    for axis in axes:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]):
        break
      kept += (axis,)
    out.append(kept if isinstance(entry, tuple) and kept else kept[0] if kept else None)
  return P(*out)


def gelu(kind: str) -> Callable[[jax.Array], jax.Array]:
  if kind == 'gelu_tanh':  # the fused flash-attn MLP of the released weights (SPEC A.3)
    return lambda x: jax.nn.gelu(x, approximate=True)
  if kind == 'gelu':  # exact erf GELU, the official plain path
    return lambda x: jax.nn.gelu(x, approximate=False)
  raise ValueError(f"mlp_activation must be 'gelu_tanh' or 'gelu', got {kind!r}")


def rms_norm(names: tuple[str, ...], axes: tuple[int, ...] = (-1,), dtype: Dtype = None,
             name: str | None = None) -> nn.RMSNorm:
  """RMSNorm, eps 1e-6, computed in float32 (SPEC A.3 item 3)."""
  return nn.RMSNorm(epsilon=1e-6, dtype=dtype, reduction_axes=axes, feature_axes=axes,
                    scale_init=param_with_axes(nn.initializers.ones, names), name=name)


def layer_norm(names: tuple[str, ...], dtype: Dtype = None,
               name: str | None = None) -> nn.LayerNorm:
  """PyTorch LayerNorm defaults (eps 1e-5), float32 statistics."""
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                      scale_init=param_with_axes(nn.initializers.ones, names),
                      bias_init=param_with_axes(nn.initializers.zeros, names), name=name)


def dense(features, names, *, axis=-1, use_bias=True, init=linear_init, dtype=None,
          name=None) -> nn.DenseGeneral:
  out_names = names[-1:] if isinstance(features, int) else names[-len(features):]
  return nn.DenseGeneral(
      features, axis=axis, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=param_with_axes(init, names),
      bias_init=param_with_axes(nn.initializers.zeros, out_names))


class ChannelAffine(nn.Module):
  """Per-channel w * x + b: the official depthwise Conv3d of kernel 1 (GPE proj, LPE)."""
  names: tuple[str, ...]

  @nn.compact
  def __call__(self, x):
    shape = x.shape[-len(self.names):]
    w = self.param('scale', param_with_axes(nn.initializers.ones, self.names), shape)
    b = self.param('bias', param_with_axes(nn.initializers.zeros, self.names), shape)
    return x * w.astype(x.dtype) + b.astype(x.dtype)


class LayerScale(nn.Module):
  init_value: float = 1e-5

  @nn.compact
  def __call__(self, x):
    gamma = self.param('gamma', param_with_axes(nn.initializers.constant(self.init_value),
                                                (EMBED,)), (x.shape[-1],))
    # force_fp32 in the official LayerScale (SPEC A.3 item 4).
    return (x.astype(jnp.float32) * gamma).astype(x.dtype)


class DropPath(nn.Module):
  """Per-sample stochastic depth (timm DropPath).

  `rate` is a float, or under scanned blocks this layer's rate as a traced scalar: a rate
  of 0 then keeps every sample (bernoulli(1) is always True) and x / 1 is x.
  """
  rate: float | jax.Array

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class PatchEmbed(nn.Module):
  """Dual patch norm: RMSNorm(P) -> Dense(P -> D) -> RMSNorm(D) (SPEC B.1).

  Equal to the official RMSNorm -> Conv3d(kernel = stride = patch) -> RMSNorm; the Dense
  kernel is the conv weight in (kt, kh, kw, c) x D order. `dual_norm=False` is the plain
  Conv3d of InternVideo2 (SPEC D.2 teacher): no norm before or after.
  """
  embed_dim: int
  dtype: Dtype = jnp.float32
  dual_norm: bool = True

  @nn.compact
  def __call__(self, patches):  # [B, N, P]
    p = patches.shape[-1]
    x = patches.astype(jnp.float32)
    if self.dual_norm:
      x = rms_norm((PATCH,), name='norm_before')(x)
    # PyTorch Conv3d default: kaiming_uniform(a=sqrt 5) -> U(+-1/sqrt(fan_in)), SPEC B.7.
    bound = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    bias_bound = lambda key, shape, dtype=jnp.float32: jax.random.uniform(  # noqa: E731
        key, shape, dtype, -1 / p ** 0.5, 1 / p ** 0.5)
    x = nn.Dense(self.embed_dim, dtype=self.dtype, name='proj',
                 kernel_init=param_with_axes(bound, (PATCH, EMBED)),
                 bias_init=param_with_axes(bias_bound, (EMBED,)))(x.astype(self.dtype))
    if not self.dual_norm:
      return x  # [B, N, D]
    return rms_norm((EMBED,), dtype=self.dtype, name='norm')(x)  # [B, N, D]


class Attention(nn.Module):
  """MHSA with qk-RMSNorm over all heads jointly and LPE on V (SPEC B.5).

  `use_lpe=False` drops the LPE (InternVideo2 blocks, SPEC D.2). `attention` is the
  implementation (flux_jax.model.attention): all compute the same function.
  `layer_index` only scales the init of `proj` (a traced scalar under scanned blocks).
  """
  num_heads: int
  layer_index: int | jax.Array = 0
  dtype: Dtype = jnp.float32
  use_lpe: bool = True
  attention: str = 'xla'

  @nn.compact
  def __call__(self, x, mask):  # x [B, N, D], mask [B, N]
    d = x.shape[-1]
    nh, hd = self.num_heads, d // self.num_heads
    qkv = dense((3, nh, hd), (EMBED, QKV, HEADS, KV), use_bias=False, dtype=self.dtype,
                name='qkv')(x)  # [B, N, 3, NH, HD]
    q, k, v = (constrain(qkv[:, :, i], (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_KV))
               for i in range(3))  # [B, N, NH, HD]
    q = rms_norm((HEADS, KV), axes=(-2, -1), dtype=self.dtype, name='q_norm')(q)
    k = rms_norm((HEADS, KV), axes=(-2, -1), dtype=self.dtype, name='k_norm')(k)
    a = attention_lib.dot_product_attention(q, k, v, mask,
                                            implementation=self.attention)  # [B, N, NH, HD]
    if self.use_lpe:
      a = a + ChannelAffine((HEADS, KV), name='lpe')(v)
    out_init = trunc_normal(0.02 / (2.0 * (self.layer_index + 1)) ** 0.5)  # fix_init_weight
    return dense(d, (HEADS, KV, EMBED), axis=(-2, -1), init=out_init, dtype=self.dtype,
                 name='proj')(a)  # [B, N, D]


class Mlp(nn.Module):
  hidden: int
  activation: str = 'gelu_tanh'
  layer_index: int | jax.Array = 0  # scales the init of fc2, as in Attention
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = dense(self.hidden, (EMBED, MLP), dtype=self.dtype, name='fc1')(x)
    h = constrain(gelu(self.activation)(h), (ACT_BATCH, ACT_LENGTH, ACT_MLP))  # [B, N, F]
    out_init = trunc_normal(0.02 / (2.0 * (self.layer_index + 1)) ** 0.5)  # fix_init_weight
    return dense(d, (MLP, EMBED), init=out_init, dtype=self.dtype, name='fc2')(h)


class Block(nn.Module):
  """Pre-norm block: attention and MLP, each with LayerScale and drop path (SPEC B.5).

  Under `nn.scan` (model.scan_layers) one Block serves every layer, so what differs per
  layer, the drop path rate and the layer index of fix_init_weight, comes as call
  arguments (scanned inputs) that replace the fields; None keeps the fields.
  """
  num_heads: int
  mlp_hidden: int
  activation: str = 'gelu_tanh'
  layer_index: int = 0
  drop_path: float = 0.0
  layerscale_init: float = 1e-5
  dtype: Dtype = jnp.float32
  use_lpe: bool = True
  attention: str = 'xla'

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True, drop_path: jax.Array | None = None,
               layer_index: jax.Array | None = None):
    rate = self.drop_path if drop_path is None else drop_path
    index = self.layer_index if layer_index is None else layer_index
    y = rms_norm((EMBED,), dtype=self.dtype, name='norm1')(x)
    y = Attention(num_heads=self.num_heads, layer_index=index, dtype=self.dtype,
                  use_lpe=self.use_lpe, attention=self.attention, name='attn')(y, mask)
    y = LayerScale(self.layerscale_init, name='ls1')(y)
    x = x + DropPath(rate)(y, deterministic)
    y = rms_norm((EMBED,), dtype=self.dtype, name='norm2')(x)
    y = Mlp(hidden=self.mlp_hidden, activation=self.activation, layer_index=index,
            dtype=self.dtype, name='mlp')(y)
    y = LayerScale(self.layerscale_init, name='ls2')(y)
    return constrain(x + DropPath(rate)(y, deterministic), TOKENS)  # [B, N, D]


# model.remat: which activations of a block the backward pass keeps; the rest it recomputes.
REMAT_POLICIES = {
    'none': None,  # no rematerialization: every activation is kept
    'full': jax.checkpoint_policies.nothing_saveable,  # keep the block inputs only
    'dots_saveable': jax.checkpoint_policies.dots_saveable,  # keep every matmul output
    # keep the weight matmuls (qkv, proj, fc1, fc2), recompute attention's batched ones
    'dots_with_no_batch_dims_saveable':
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy_name(remat: bool | str) -> str:
  """`model.remat` as a REMAT_POLICIES key; the old boolean means 'full' or 'none'."""
  if isinstance(remat, bool):
    return 'full' if remat else 'none'
  if remat not in REMAT_POLICIES:
    raise ValueError(f'model.remat={remat!r} is not one of {sorted(REMAT_POLICIES)} (or a bool)')
  return remat


def remat_block(block: type[nn.Module], remat: bool | str,
                prevent_cse: bool = True) -> type[nn.Module]:
  """`block` rematerialized by the policy `remat` (big_vision/MaxText style names).

  Under nn.scan pass `prevent_cse=False` (MaxText's pattern; jax.checkpoint's docs): the
  scan already keeps XLA from merging the recomputation with the forward pass, and the
  barriers that prevent_cse adds would only cost.
  """
  name = remat_policy_name(remat)
  if name == 'none':
    return block
  # static_argnums counts the module: (self, x, mask, deterministic) -> `deterministic`.
  return nn.remat(block, static_argnums=(3,), policy=REMAT_POLICIES[name],
                  prevent_cse=prevent_cse)


class AttentionPooling(nn.Module):
  """One query (the masked mean token) attends over all tokens (SPEC A.5, B.6).

  No residual and no MLP; q/k/v biases are separate parameters as in the official code.
  With `return_attention` it also returns the query's attention over the tokens,
  averaged over heads: float32 `[B, N]` (the InternVideo2 teacher's `attn`, SPEC D.2).
  """
  num_heads: int
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, return_attention: bool = False):  # x [B, N, D], mask [B, N]
    b, _, d = x.shape
    nh, hd = self.num_heads, d // self.num_heads
    w = mask[..., None].astype(jnp.float32)
    q_in = jnp.sum(x.astype(jnp.float32) * w, axis=1, keepdims=True) / jnp.sum(
        w, axis=1, keepdims=True)  # [B, 1, D]
    q = layer_norm((EMBED,), self.dtype, name='norm1_q')(q_in.astype(x.dtype))
    k = layer_norm((EMBED,), self.dtype, name='norm1_k')(x)
    v = layer_norm((EMBED,), self.dtype, name='norm1_v')(x)
    out, attention = PoolCrossAttention(num_heads=nh, head_dim=hd, out_dim=self.out_dim,
                                        dtype=self.dtype, name='cross_attn')(
        q, k, v, mask, return_attention)
    out = out.reshape(b, self.out_dim)  # [B, out]
    return (out, attention) if return_attention else out


class PoolCrossAttention(nn.Module):
  num_heads: int
  head_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q, k, v, mask, return_attention: bool = False):
    """(output `[B, 1, out]`, head-mean attention `[B, N]` or None)."""
    b, n, d = k.shape
    nh, hd = self.num_heads, self.head_dim
    zeros = param_with_axes(nn.initializers.zeros, (JOINED_KV,))

    def project(x, name):
      bias = self.param(f'{name}_bias', zeros, (d,))
      y = dense(d, (EMBED, JOINED_KV), use_bias=False, dtype=self.dtype, name=name)(x)
      return (y + bias.astype(y.dtype)).reshape(b, -1, nh, hd)  # [B, n, NH, HD]

    q, k = project(q, 'q'), project(k, 'k')  # [B, 1, NH, HD], [B, N, NH, HD]
    a = jax.nn.dot_product_attention(q, k, project(v, 'v'),
                                     mask=mask[:, None, None, :])  # [B, 1, NH, HD]
    a = a.reshape(b, 1, nh * hd)
    out = dense(self.out_dim, (JOINED_KV, CLIP), dtype=self.dtype, name='proj')(a)
    attention = None
    if return_attention:  # the weights dot_product_attention does not expose
      logits = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32), k.astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST) * hd ** -0.5  # [B, NH, 1, N]
      logits = jnp.where(mask[:, None, None, :], logits, -jnp.inf)
      attention = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)[:, 0]  # [B, N]
    return out, attention


class LinearDecoder(nn.Module):
  """Linear -> LayerNorm -> L2 normalize (official Linear_Decoder, SPEC B.6)."""
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = dense(self.out_dim, (CLIP, CLIP), dtype=self.dtype, name='head')(x)
    x = layer_norm((CLIP,), jnp.float32, name='norm')(x)
    return l2_normalize(x)


class MLPDecoder(nn.Module):
  """Linear(D -> D) -> exact GELU -> Linear(D -> out) -> LayerNorm -> L2 normalize.

  The official MLP_Decoder of InternVideo2 distillation (SPEC D.2), the student side of
  Flux-UMT (SPEC D.5).
  """
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [..., D]
    h = dense(x.shape[-1], (DECODER, DECODER), dtype=self.dtype, name='head')(x)
    h = gelu('gelu')(h)
    h = dense(self.out_dim, (DECODER, DECODER), dtype=self.dtype, name='proj')(h)
    h = layer_norm((DECODER,), jnp.float32, name='norm')(h)
    return l2_normalize(h)  # [..., out]


class L2Decoder(nn.Module):
  """No parameters: L2 normalize only (InternVideo2's identity final decoder)."""
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [..., D]
    if x.shape[-1] != self.out_dim:
      raise ValueError(f'identity decoder: features have width {x.shape[-1]}, the target '
                       f'{self.out_dim}; use an mlp or linear decoder')
    return l2_normalize(x)


def l2_normalize(x, eps: float = 1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# Parameters of any module of the model, from example inputs: FluxViT, the text tower and
# FluxViT-CLIP each call these with their own dummy inputs.
def config_kwargs(cls: type[nn.Module], variants: Mapping[str, Mapping[str, Any]],
                  config: Mapping[str, Any], *, default: str, block: str,
                  noun: str) -> dict[str, Any]:
  """A module's constructor arguments from a config: `variant` (a key of `variants`,
  `default` when absent) plus overrides of any field, a dtype by name made a jnp dtype.

  Unknown variants and keys are refused here, before anything compiles, naming the
  config `block` ('model' -> 'model.variant=...') and the `noun` of its keys.
  """
  config = dict(config)
  variant = config.pop('variant', default)
  if variant not in variants:
    raise ValueError(f'{block}.variant={variant!r} is not one of {sorted(variants)}')
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise ValueError(f'unknown {noun} config keys {unknown}; known: {sorted(fields)}')
  kwargs = {**variants[variant], **config}
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  return kwargs


def init_module_params(module: nn.Module, rng: jax.Array, *inputs) -> dict:
  """Float32 parameters (logical-axis boxes removed)."""
  variables = jax.jit(lambda r: module.init({'params': r}, *inputs))(rng)
  return nn.unbox(variables['params'])


def _abstract_variables(module: nn.Module, *inputs) -> dict:
  return jax.eval_shape(lambda: module.init({'params': jax.random.key(0)}, *inputs))


def abstract_module_params(module: nn.Module, *inputs) -> dict:
  """ShapeDtypeStructs of the module's params, computed without allocating them."""
  return nn.unbox(_abstract_variables(module, *inputs)['params'])


def module_param_specs(module: nn.Module, *inputs) -> dict:
  """Logical axis names of every parameter, as a pytree of PartitionSpecs."""
  return nn.get_partition_spec(_abstract_variables(module, *inputs))['params']
