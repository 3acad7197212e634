"""Multi-head attention over a key-padding mask, on every backend (DESIGN.md 6).

One function, `dot_product_attention(q, k, v, valid, implementation=...)`, computes
softmax(q k^T / sqrt(HD)) v over the keys where `valid` is True, for q `[B, Nq, NH, HD]`
and k, v `[B, Nk, NH, HD]`. The implementations compute the same thing:

  'xla'      jax.nn.dot_product_attention with a boolean mask: the reference. Its
             [B, NH, Nq, Nk] scores are materialised (and kept for the backward pass).
  'chunked'  memory-efficient attention in plain JAX (Rabe & Staats 2021, FlashAttention):
             query and key blocks, an online softmax, and a custom VJP that saves only
             the output and the log-sum-exp and recomputes each block's scores in the
             backward pass, so memory is linear in the token count. Any platform.
  'splash'   the Pallas TPU splash-attention kernel under `jax.shard_map` (batch and heads
             over the mesh axes that the logical rules in context give 'activation_batch'
             and 'activation_heads', `flux_jax.sharding.tracing_context`):
             padding keys get segment id 0, every query id 1, token counts are padded to
             the kernel's 128 block. Off TPU (tests) the kernel runs in Pallas interpret
             mode.
  'cudnn'    jax.nn.dot_product_attention(implementation='cudnn') with a kv length per
             row: it relies on the valid keys being a prefix of every row (`is_prefix`),
             which patchify, every selector and the distillation subsets guarantee.
  'auto'     the platform's fused kernel: splash on TPU (given a mesh in context when
             there are several devices), cudnn on GPU (bf16/fp16), chunked on CPU from
             CHUNKED_MIN_KEYS keys on, xla otherwise; each distinct choice is logged once.

The platform is the one being compiled for: the device kind of the mesh in context
(`jax.set_mesh`; AOT compiles for a TPU topology from a CPU host) or the default backend.
The pooling heads keep 'xla': one query attends over K keys, so their scores are only
[B, NH, 1, K] and no kernel pays for itself there.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'chunked', 'splash', 'cudnn')
CHUNKED_MIN_KEYS = 1024  # below this the [Nq, Nk] scores are small: xla is as small, faster
CHUNK = 512  # default query and key block of 'chunked'
SPLASH_BLOCKS = (512, 256, 128)  # kernel tiles tried, largest first; 128 is the lane width
# Finite, so that a key block of padding only gives exp(-huge) = 0, never NaN (as splash).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

# Logical names of the attention activations' axes; the sharding rules
# (flux_jax/sharding.py) map them to mesh axes.
ACTIVATION_BATCH = 'activation_batch'
ACTIVATION_HEADS = 'activation_heads'

_logged: set[tuple] = set()


def target_platform() -> str:
  """'tpu', 'gpu' or 'cpu': the platform of the mesh in context, else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    platform = mesh.abstract_device.platform
  else:
    platform = jax.default_backend()
  return 'gpu' if platform in ('cuda', 'rocm', 'gpu') else platform


def is_prefix(valid: jax.Array) -> jax.Array:
  """Whether the True entries of each row of `valid` `[B, N]` come first: bool `[B]`."""
  count = jnp.sum(valid, axis=-1, keepdims=True)
  return jnp.all(valid == (jnp.arange(valid.shape[-1]) < count), axis=-1)


def resolve(implementation: str, q: jax.Array, k: jax.Array) -> tuple[str, str]:
  """(implementation to run, why) for a requested one; 'auto' picks by platform."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'attention={implementation!r} is not one of {IMPLEMENTATIONS}')
  if implementation != 'auto':
    return implementation, 'requested'
  platform = target_platform()
  if platform == 'tpu':
    if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
      return 'xla', ('TPU, but no mesh in context (jax.set_mesh) for the splash kernel\'s '
                     'shard_map over the devices')
    return 'splash', 'TPU: the Pallas splash kernel'
  if platform == 'gpu':
    ok, why = _cudnn_supports(q)
    return ('cudnn', 'GPU: cuDNN fused attention') if ok else ('xla', f'GPU, {why}')
  if k.shape[1] >= CHUNKED_MIN_KEYS:
    return 'chunked', f'{platform}: {k.shape[1]} keys, memory linear in K'
  return 'xla', f'{platform}: {k.shape[1]} keys, scores are small'


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *,
                          implementation: str = 'xla') -> jax.Array:
  """softmax(q k^T / sqrt(HD)) v over the valid keys: `[B, Nq, NH, HD]` in q's dtype.

  Args:
    q: queries `[B, Nq, NH, HD]`.
    k, v: keys and values `[B, Nk, NH, HD]`.
    valid: bool `[B, Nk]`, False on padding keys; every row needs a valid key (cls).
    implementation: one of IMPLEMENTATIONS (module docstring).
  """
  name, why = resolve(_OVERRIDE.get() or implementation, q, k)
  key = (implementation, name, why)
  if implementation == 'auto' and key not in _logged:
    _logged.add(key)
    logging.info("attention='auto' runs %r (%s)", name, why)
  if name == 'xla':
    return jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :])
  if name == 'chunked':
    return chunked_attention(q, k, v, valid)
  if name == 'splash':
    return splash_attention(q, k, v, valid)
  return cudnn_attention(q, k, v, valid)


# ---------------------------------------------------------------------- chunked --


def chunked_attention(q, k, v, valid, *, block_q: int = CHUNK, block_k: int = CHUNK):
  """Blockwise attention with an online softmax; memory linear in the token counts.

  Token counts are padded to whole blocks (padding keys masked, padding queries cut);
  blocks shrink to the (8-rounded) token count when it is smaller.
  """
  b, nq, nh, hd = q.shape
  nk = k.shape[1]
  bq, bk = min(block_q, _round_up(nq, 8)), min(block_k, _round_up(nk, 8))
  pq, pk = _round_up(nq, bq) - nq, _round_up(nk, bk) - nk
  q = jnp.pad(q, ((0, 0), (0, pq), (0, 0), (0, 0)))
  k, v = (jnp.pad(x, ((0, 0), (0, pk), (0, 0), (0, 0))) for x in (k, v))
  bias = jnp.where(jnp.pad(valid, ((0, 0), (0, pk))), 0.0, MASK_VALUE)  # [B, Nk'] f32
  out = _flash(q, k, v, bias, bq, bk)
  return out[:, :nq]


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _blocks(x, size):
  """[B, N, ...] -> [N / size, B, size, ...]: the leading axis is what lax.map/scan walk."""
  b, n = x.shape[:2]
  return jnp.swapaxes(x.reshape(b, n // size, size, *x.shape[2:]), 0, 1)


def _unblock(x):
  """[n, B, size, ...] -> [B, n * size, ...]."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def _scores(qi, kj, bj, scale):
  """float32 `[B, NH, bq, bk]` logits of one query block against one key block."""
  s = jnp.einsum('bqhd,bkhd->bhqk', qi, kj, preferred_element_type=jnp.float32)
  return s * scale + bj[:, None, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, bias, bq, bk):
  return _flash_forward(q, k, v, bias, bq, bk)[0]


def _flash_forward(q, k, v, bias, bq, bk):
  """(out `[B, Nq, NH, HD]` in q's dtype, lse float32 `[B, NH, Nq]`)."""
  b, _, nh, hd = q.shape
  scale = hd ** -0.5
  kb, vb, biasb = _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk)

  def one_query_block(qi):  # [B, bq, NH, HD]
    def body(carry, kv):
      m, l, acc = carry  # [B, NH, bq], [B, NH, bq], [B, bq, NH, HD] float32
      kj, vj, bj = kv
      s = _scores(qi, kj, bj, scale)  # [B, NH, bq, bk]
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      p = jnp.exp(s - m_new[..., None])
      corr = jnp.exp(m - m_new)  # 0 on the first block (m = -inf)
      l = l * corr + jnp.sum(p, axis=-1)
      pv = jnp.einsum('bhqk,bkhd->bqhd', p.astype(vj.dtype), vj,
                      preferred_element_type=jnp.float32)
      acc = acc * jnp.swapaxes(corr, 1, 2)[..., None] + pv
      return (m_new, l, acc), None

    init = (jnp.full((b, nh, bq), -jnp.inf, jnp.float32), jnp.zeros((b, nh, bq), jnp.float32),
            jnp.zeros((b, bq, nh, hd), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(body, init, (kb, vb, biasb))
    out = acc / jnp.swapaxes(l, 1, 2)[..., None]
    return out.astype(q.dtype), m + jnp.log(l)  # [B, bq, NH, HD], [B, NH, bq]

  out, lse = jax.lax.map(one_query_block, _blocks(q, bq))  # [nq, B, bq, ...], [nq, B, NH, bq]
  lse = jnp.moveaxis(lse, 0, 2).reshape(b, nh, -1)  # [B, NH, Nq]
  return _unblock(out), lse


def _flash_fwd(q, k, v, bias, bq, bk):
  out, lse = _flash_forward(q, k, v, bias, bq, bk)
  return out, (q, k, v, bias, out, lse)


def _flash_bwd(bq, bk, res, g):
  """FlashAttention-2's backward: dq over key blocks per query block, dk and dv over
  query blocks per key block, each block's probabilities recomputed from the saved lse."""
  q, k, v, bias, out, lse = res
  b, _, nh, hd = q.shape
  scale = hd ** -0.5
  g = g.astype(jnp.float32)
  delta = jnp.swapaxes(jnp.sum(g * out.astype(jnp.float32), axis=-1), 1, 2)  # [B, NH, Nq]
  qb, gb = _blocks(q, bq), _blocks(g, bq)
  lseb = jnp.moveaxis(lse.reshape(b, nh, -1, bq), 2, 0)  # [nq, B, NH, bq]
  deltab = jnp.moveaxis(delta.reshape(b, nh, -1, bq), 2, 0)
  kb, vb, biasb = _blocks(k, bk), _blocks(v, bk), _blocks(bias, bk)

  def probs(qi, kj, bj, li, gi, vj, di):
    p = jnp.exp(_scores(qi, kj, bj, scale) - li[..., None])  # [B, NH, bq, bk]
    dp = jnp.einsum('bqhd,bkhd->bhqk', gi, vj.astype(jnp.float32))
    return p, p * (dp - di[..., None])  # p, ds

  def dq_block(xs):
    qi, gi, li, di = xs

    def body(dq, kv):
      kj, vj, bj = kv
      _, ds = probs(qi, kj, bj, li, gi, vj, di)
      return dq + jnp.einsum('bhqk,bkhd->bqhd', ds, kj.astype(jnp.float32)) * scale, None

    dq, _ = jax.lax.scan(body, jnp.zeros(qi.shape, jnp.float32), (kb, vb, biasb))
    return dq

  def dkv_block(xs):
    kj, vj, bj = xs

    def body(carry, qs):
      dk, dv = carry
      qi, gi, li, di = qs
      p, ds = probs(qi, kj, bj, li, gi, vj, di)
      dv = dv + jnp.einsum('bhqk,bqhd->bkhd', p, gi)
      dk = dk + jnp.einsum('bhqk,bqhd->bkhd', ds, qi.astype(jnp.float32)) * scale
      return (dk, dv), None

    zeros = jnp.zeros(kj.shape, jnp.float32)
    (dk, dv), _ = jax.lax.scan(body, (zeros, zeros), (qb, gb, lseb, deltab))
    return dk, dv

  dq = _unblock(jax.lax.map(dq_block, (qb, gb, lseb, deltab)))
  dk, dv = jax.lax.map(dkv_block, (kb, vb, biasb))
  return (dq.astype(q.dtype), _unblock(dk).astype(k.dtype), _unblock(dv).astype(v.dtype),
          jnp.zeros_like(bias))


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------- splash --


def splash_attention(q, k, v, valid, *, interpret: bool | None = None):
  """The Pallas splash kernel: self-attention (Nq = Nk), one kernel call per example.

  `interpret` defaults to "not compiling for TPU" (Pallas interpret mode on CPU).
  """
  # Imported here: the TPU kernels are only needed when this backend runs.
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as masks)
  b, n, nh, hd = q.shape
  if k.shape[1] != n:
    raise ValueError(f"attention='splash' is self-attention: {n} queries, {k.shape[1]} keys")
  interpret = target_platform() != 'tpu' if interpret is None else interpret
  padded = _round_up(n, SPLASH_BLOCKS[-1])
  block = next(s for s in SPLASH_BLOCKS if padded % s == 0)
  pad = ((0, 0), (0, padded - n), (0, 0), (0, 0))
  # [B, N', NH, HD] -> [B, NH, N', HD]; the kernel applies no 1/sqrt(HD) (DESIGN.md 7).
  q, k, v = (jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in (q * hd ** -0.5, k, v))
  kv_segment = jnp.pad(valid, ((0, 0), (0, padded - n))).astype(jnp.int32)  # 0 on padding
  q_segment = jnp.ones((b, padded), jnp.int32)  # every query attends to the valid keys
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block,
                            block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

  def local(q, k, v, q_segment, kv_segment):  # this device's rows and heads
    mask = masks.MultiHeadMask([masks.FullMask((padded, padded))] * q.shape[1])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    return jax.vmap(lambda *x: kernel(*x[:3], segment_ids=splash.SegmentIds(*x[3:])))(
        q, k, v, q_segment, kv_segment)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    if jax.device_count() > 1 and not interpret:
      raise ValueError(f"attention='splash' on {jax.device_count()} devices needs the mesh: "
                       'trace under jax.set_mesh(mesh) (the train loop and bench aot do), or '
                       "use attention='auto', which falls back to 'xla' without one")
    out = local(q, k, v, q_segment, kv_segment)
  else:
    batch_axes, head_axes = _mesh_axes(mesh, b, nh)
    spec = jax.P(batch_axes, head_axes, None, None)
    seg = jax.P(batch_axes, None)
    out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, seg, seg),
                        out_specs=spec, check_vma=False)(q, k, v, q_segment, kv_segment)
  return jnp.swapaxes(out, 1, 2)[:, :n]  # [B, N, NH, HD]


def _mesh_axes(mesh, batch: int, heads: int):
  """Mesh axes of the batch and head dimensions: what the logical rules in context
  (`nn.logical_axis_rules`, entered by sharding.tracing_context) give them."""
  rules = nn.get_logical_axis_rules()
  out = []
  for name, size, what in ((ACTIVATION_BATCH, batch, 'batch'),
                           (ACTIVATION_HEADS, heads, 'heads')):
    entry = nn.logical_to_mesh_axes((name,), rules)[0] if rules else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    axes = tuple(a for a in axes if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    if size % shards:
      raise ValueError(f"attention='splash': {what} {size} does not divide over mesh axes "
                       f'{axes} ({shards} shards)')
    out.append(axes or None)
  return tuple(out)


_OVERRIDE = contextvars.ContextVar('attention_override', default=None)


@contextlib.contextmanager
def override(implementation: str):
  """Every attention traced inside runs `implementation`, whatever the model asks: e.g.
  'xla' to count a step's FLOPs (XLA's cost analysis sees no FLOPs in a Pallas kernel and
  counts a loop body once)."""
  token = _OVERRIDE.set(implementation)
  try:
    yield
  finally:
    _OVERRIDE.reset(token)


# ------------------------------------------------------------------------ cudnn --


def _cudnn_supports(q) -> tuple[bool, str]:
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return False, f'cuDNN attention needs bf16 or fp16, got {q.dtype}'
  if q.shape[-1] % 8 or q.shape[-1] > 128:
    return False, f'cuDNN attention needs a head dim that is a multiple of 8 up to 128, ' \
                  f'got {q.shape[-1]}'
  return True, ''


def cudnn_attention(q, k, v, valid, *, implementation: str = 'cudnn'):
  """cuDNN fused attention with a kv length per row: valid keys must be a prefix.

  `implementation='xla'` runs the same length-based formulation without cuDNN (tests).
  """
  if implementation == 'cudnn':
    ok, why = _cudnn_supports(q)
    if target_platform() != 'gpu':
      ok, why = False, f'cuDNN runs on NVIDIA GPUs, this compiles for {target_platform()}'
    if not ok:
      raise ValueError(f"attention='cudnn': {why}; use attention='auto'")
  lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # [B]
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                      implementation=implementation)
