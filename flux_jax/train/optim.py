"""AdamW with the official parameter groups, warmup + cosine, clipping, skipping (SPEC C.5).

The official code builds one torch param group per (layer id, decay or not), each with
`lr = schedule[it] * lr_scale` and DeepSpeed's decoupled AdamW. Here the same update is
one optax chain over the whole tree:

  skip non-finite -> clip by global norm -> Adam -> + wd * param (masked) -> * -lr(step)
  -> * layer scale

The layer scale multiplies the whole AdamW step, weight decay included, exactly as a
param group's lr_scale does.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flux_jax.model.fluxvit import BLOCK_NAME, BLOCKS

CONFIG_KEYS = frozenset({'lr', 'min_lr', 'warmup_lr', 'warmup_steps', 'total_steps',
                         'weight_decay', 'b1', 'b2', 'eps', 'layer_decay', 'clip_grad',
                         'depth'})
# Optional keys: regexes over 'a/b/c' parameter paths (re.search).
OPTIONAL_KEYS = {'frozen': (), 'no_decay': ()}
# The official loop skips every non-finite step, however many in a row; the train loop
# stops a run after `train.max_nonfinite_steps` (`nonfinite_streak`) instead of letting optax
# apply NaNs after a streak.
_MAX_CONSECUTIVE_SKIPS = int(np.iinfo(np.int32).max)
_EMBEDDING = ('cls_token', 'cls_pos', 'pos_embed', 'patch_embed')


def scaled_lr(base_lr: float, batch_per_device: int, num_devices: int, num_sample: int,
              update_freq: int = 1) -> float:
  """The official linear scaling rule (SPEC C.5, F.11).

  lr_eff = base_lr * batch_per_device * update_freq * num_devices * num_sample / 256.
  The same factor applies to `min_lr` and `warmup_lr`. `num_sample` (repeated
  augmentation) counts: the scripts' 2e-4 with 8 clips x 64 GPUs x 2 gives 8e-4.
  """
  return base_lr * batch_per_device * update_freq * num_devices * num_sample / 256


def schedule(*, peak_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int,
             total_steps: int) -> optax.Schedule:
  """Per-step linear warmup then cosine, the official `utils.cosine_scheduler`.

  For step s, with W = warmup_steps and S = total_steps:
    s < W:  warmup_lr + (peak_lr - warmup_lr) * s / (W - 1)   (np.linspace: the last
            warmup step already reaches peak_lr)
    s >= W: min_lr + (peak_lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2
            (peak_lr again at s = W; min_lr is approached, never reached)
  Steps past S - 1 hold the last value (the official array would be indexed past its end).
  """
  if not 0 <= warmup_steps <= total_steps or total_steps < 1:
    raise ValueError(f'need 0 <= warmup_steps <= total_steps and total_steps >= 1, got '
                     f'warmup_steps={warmup_steps} total_steps={total_steps}')
  warmup_span = max(warmup_steps - 1, 1)
  cosine_span = max(total_steps - warmup_steps, 1)

  def fn(step):
    s = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps - 1)
    warm = warmup_lr + (peak_lr - warmup_lr) * s / warmup_span
    cos = min_lr + 0.5 * (peak_lr - min_lr) * (
        1 + jnp.cos(math.pi * (s - warmup_steps) / cosine_span))
    return jnp.where(s < warmup_steps, warm, cos)

  return fn


def _names(path) -> tuple[str, ...]:
  return tuple(jax.tree_util.keystr(path, simple=True, separator='/').split('/'))


def layer_id(path: tuple[str, ...], depth: int) -> int | np.ndarray:
  """Layer-decay group of a parameter (SPEC C.5, F.9).

  0 for cls_token, cls_pos, pos_embed and patch_embed/*; i + 1 for blocks_{i}/*;
  depth + 1 for everything else. The official name matching puts gpe_proj in the top
  group, with the projectors, heads, fc_norm and decoders; so do we. In the scanned
  layout (model.scan_layers) `blocks/*` holds every block on a leading axis: its ids are
  the int array 1 .. depth along that axis.
  """
  top = path[0]
  if top in _EMBEDDING:
    return 0
  if top == BLOCKS:
    return np.arange(1, depth + 1)
  match = BLOCK_NAME.fullmatch(top)
  if match:
    i = int(match.group(1))
    if i >= depth:
      raise ValueError(f'parameter {"/".join(path)} is beyond optimizer depth={depth}')
    return i + 1
  return depth + 1


def layer_decay_scales(params, depth: int, decay: float):
  """Per-parameter lr multipliers decay ** (depth + 1 - layer_id).

  A tree of floats, except for the scanned layout's `blocks/*` leaves `[depth, ...]`:
  float32 arrays `[depth, 1, ...]` of the same per-block values, broadcast along the
  stacked axis. `params` is the model's param tree itself (top keys blocks_{i} or
  blocks, patch_embed, ...), not a `{'params': ...}` variables dict, which would
  silently put everything on top.
  """
  ids = jax.tree_util.tree_map_with_path(lambda path, _: layer_id(_names(path), depth), params)
  if not any(np.ndim(i) or 0 < i <= depth for i in jax.tree.leaves(ids)):
    raise ValueError('no blocks_{i} or blocks at the top of the param tree: pass the '
                     "params, not a {'params': ...} variables dict")

  def scale(path, i, leaf):
    if np.ndim(i) == 0:
      return float(decay ** (depth + 1 - i))
    if leaf.shape[:1] != (depth,):
      raise ValueError(f'parameter {param_path(path)} {tuple(leaf.shape)} does not stack '
                       f'optimizer depth={depth} blocks on its leading axis')
    # The unrolled layout's Python floats, each rounded to float32 as `u * s` rounds them.
    values = [decay ** (depth + 1 - int(k)) for k in i]
    return np.asarray(values, np.float32).reshape((depth,) + (1,) * (len(leaf.shape) - 1))

  return jax.tree_util.tree_map_with_path(scale, ids, params)


def _decays(path: tuple[str, ...], ndim: int) -> bool:
  if BLOCKS in path[:-1]:
    ndim -= 1  # a scanned block's leaf: the rule is about one block's tensor
  name, parent = path[-1], (path[-2] if len(path) > 1 else '')
  if name in ('pos_embed', 'cls_token', 'cls_pos') or name.endswith('bias'):
    return False
  if parent in ('gpe_proj', 'lpe'):
    return True  # official 5-D depthwise conv weights [C, 1, 1, 1, 1]
  if parent in ('q_norm', 'k_norm'):
    return False  # official 1-D RMSNorm weights [C]; ours are [NH, HD]
  return ndim > 1


def decay_mask(params):
  """True where AdamW weight decay applies, mapped from the official rule (SPEC C.5, F.9).

  The official rule is "no decay for 1-D tensors, names ending in `.bias`, pos_embed and
  cls_token". Where our shapes differ from the official ones, the decision follows the
  official tensor, matched by name:

  | parameter                                  | ours      | official        | decay |
  |--------------------------------------------|-----------|-----------------|-------|
  | pos_embed, cls_token, cls_pos              | any       | skip list       | no    |
  | */bias, */q_bias, */k_bias, */v_bias       | any       | 1-D or `.bias`  | no    |
  | gpe_proj/scale                             | [D]       | [C, 1, 1, 1, 1] | yes   |
  | blocks_i/attn/lpe/scale                    | [NH, HD]  | [C, 1, 1, 1, 1] | yes   |
  | blocks_i/attn/{q,k}_norm/scale             | [NH, HD]  | [C]             | no    |
  | other 1-D (norm scales, LayerScale gamma)  | [D]       | [C]             | no    |
  | other kernels (qkv, proj, fc, heads, ...)  | >= 2-D    | >= 2-D          | yes   |

  Scanned blocks (`blocks/*`, one leaf `[depth, ...]` for all blocks) are judged by one
  block's shape, so both layouts decay the same tensors.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, x: _decays(_names(path), len(x.shape)), params)


def _scale_by_layer(depth: int, decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer-decay scale, read from the tree paths."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, depth, decay)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init, update)


def param_path(path) -> str:
  """'blocks_0/attn/qkv/kernel': the path the `frozen` and `no_decay` patterns match.

  Scanned blocks (model.scan_layers) have one path for all blocks,
  'blocks/attn/qkv/kernel' (the leaf holds every block): a pattern there moves all
  blocks or none.
  """
  return '/'.join(_names(path))


def matches(params, patterns) -> Any:
  """A tree of bools: whether any of the regexes `patterns` finds its parameter's path.

  Raises:
    ValueError: a pattern names single blocks (`blocks_`) while the blocks are scanned
      (it would silently match nothing).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  scanned = any(BLOCKS in _names(path)[:-1] for path, _ in leaves)
  for pattern in patterns:
    if scanned and 'blocks_' in pattern:
      raise ValueError(f'optimizer pattern {pattern!r} names single blocks (blocks_{{i}}/...), '
                       f"but the blocks are scanned: one 'blocks/...' leaf holds them all. "
                       "Match 'blocks/' (every block), or set model.scan_layers=False")
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.search(param_path(path)) for c in compiled), params)


def _check_keys(config: Mapping[str, Any]) -> None:
  unknown = sorted(set(config) - CONFIG_KEYS - set(OPTIONAL_KEYS))
  missing = sorted(CONFIG_KEYS - set(config))
  if unknown:
    raise ValueError(f'unknown optimizer config keys {unknown}; known: {sorted(CONFIG_KEYS)}')
  if missing:
    raise ValueError(f'missing optimizer config keys {missing}')


def make_optimizer(config: Mapping[str, Any]) -> optax.GradientTransformation:
  """AdamW with layer decay, warmup + cosine, optional clipping; skips non-finite grads.

  Args:
    config: `lr`, `min_lr`, `warmup_lr` (already scaled, see `scaled_lr`),
      `warmup_steps`, `total_steps`, `weight_decay`, `b1`, `b2`, `eps`, `layer_decay`
      (None or 1.0: off), `clip_grad` (global norm; None: off), `depth` (blocks);
      optional `frozen` (regexes of parameter paths that never move: their updates are
      zero and the optimizer keeps no state for them, big_vision's `schedule` with
      None) and `no_decay` (regexes of paths without weight decay, beside the official
      rule of `decay_mask`); paths as `param_path` writes them, scanned blocks as
      'blocks/...' (all blocks in one leaf).

  Returns:
    A GradientTransformation whose state is optax's ApplyIfFiniteState; a skipped step
    does not advance the schedule (the official one advances with the iteration).
  """
  _check_keys(config)
  depth, layer_decay, clip = config['depth'], config['layer_decay'], config['clip_grad']
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f'optimizer depth={depth!r} must be a positive int')
  if layer_decay is not None and not 0 < layer_decay <= 1:
    raise ValueError(f'optimizer layer_decay={layer_decay} must be in (0, 1] or None')
  if clip is not None and clip <= 0:
    raise ValueError(f'optimizer clip_grad={clip} must be positive or None')
  lr = schedule(peak_lr=config['lr'], min_lr=config['min_lr'],
                warmup_lr=config['warmup_lr'], warmup_steps=config['warmup_steps'],
                total_steps=config['total_steps'])
  frozen, no_decay = (tuple(config.get(k, OPTIONAL_KEYS[k])) for k in OPTIONAL_KEYS)
  for pattern in frozen + no_decay:
    re.compile(pattern)  # a bad regex fails here, before anything is traced

  def decays(params):
    if not no_decay:
      return decay_mask(params)
    return jax.tree.map(lambda d, n: d and not n, decay_mask(params), matches(params, no_decay))

  chain = [] if clip is None else [optax.clip_by_global_norm(clip)]
  chain.append(optax.adamw(lr, b1=config['b1'], b2=config['b2'], eps=config['eps'],
                           weight_decay=config['weight_decay'], mask=decays))
  if frozen:
    # Trained leaves go through the chain (masked: no state for the frozen ones), frozen
    # ones get zero updates. Clipping sees the trained gradients only.
    chain = [optax.multi_transform(
        {'train': optax.chain(*chain), 'frozen': optax.set_to_zero()},
        lambda params: jax.tree.map(lambda f: 'frozen' if f else 'train',
                                    matches(params, frozen)))]
  if layer_decay is not None and layer_decay != 1.0:  # on the whole tree: ids by path
    chain.append(_scale_by_layer(depth, layer_decay))
  return optax.apply_if_finite(optax.chain(*chain), _MAX_CONSECUTIVE_SKIPS)


def skipped_updates(opt_state) -> jax.Array:
  """How many steps `make_optimizer`'s optimizer skipped for non-finite gradients."""
  return opt_state.total_notfinite


def nonfinite_streak(opt_state) -> jax.Array:
  """How many steps in a row, up to the last, `make_optimizer`'s optimizer skipped (0:
  the last step was finite)."""
  return opt_state.notfinite_count
