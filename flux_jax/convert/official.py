"""Official PyTorch FluxViT checkpoints <-> flux_jax params (SPEC A.2, A.3).

The mapping is one table of rules, each naming an official tensor, its place in our
params and the two array transforms (to ours and back). Both directions are exact
(transposes and reshapes only), so official -> params -> official is bit-equal. The rules
name the unrolled layout (`blocks_{i}`, one per official `blocks.{i}`); a model with
`scan_layers` gets its blocks stacked by `stack_blocks`, and its params are unstacked
before they are written back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Mapping

from absl import logging
import flax
import jax
import ml_dtypes
import numpy as np

from flux_jax.convert import torch_files
from flux_jax.model.fluxvit import (FluxViT, abstract_params, as_layout, init_params,
                                    make_model, stack_blocks)

PREFIXES = ('backbone.', 'encoder.')
# Keys of the official pretraining model that the fine-tuning model does not have.
PRETRAIN_ONLY = ('clip_decoder.', 'clip_pos_embed', 'final_clip_decoder.')


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded; the message names the file and the problem."""


def check_keys(source: str, expected: str, missing: list[str], unexpected: list[str],
               strict: bool) -> None:
  """Refuses a state dict with unexpected tensors (or missing ones when strict), naming
  them and what was `expected`; logs the missing ones a non-strict load leaves at init."""
  if unexpected or (missing and strict):
    raise CheckpointError(f'{source} does not match {expected}:\n  missing: {missing}\n'
                          f'  unexpected: {unexpected}')
  if missing:
    logging.warning('%s: %d tensors missing, left at init: %s', source, len(missing), missing)


@dataclasses.dataclass(frozen=True)
class Rule:
  official: str
  path: tuple[str, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_official: Callable[[np.ndarray], np.ndarray]


def _same(x):
  return x


def _linear(name: str, path: tuple[str, ...], bias: bool = True) -> list[Rule]:
  """nn.Linear weight [out, in] -> Dense kernel [in, out]."""
  rules = [Rule(f'{name}.weight', path + ('kernel',), lambda w: w.T, lambda k: k.T)]
  if bias:
    rules.append(Rule(f'{name}.bias', path + ('bias',), _same, _same))
  return rules


def _norm(name: str, path: tuple[str, ...], bias: bool) -> list[Rule]:
  rules = [Rule(f'{name}.weight', path + ('scale',), _same, _same)]
  if bias:
    rules.append(Rule(f'{name}.bias', path + ('bias',), _same, _same))
  return rules


def _conv1x1(name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> list[Rule]:
  """Depthwise Conv3d of kernel 1, weight [C, 1, 1, 1, 1] -> per-channel scale."""
  c = int(np.prod(shape))
  return [
      Rule(f'{name}.weight', path + ('scale',), lambda w: w.reshape(shape),
           lambda s: s.reshape(c, 1, 1, 1, 1)),
      Rule(f'{name}.bias', path + ('bias',), lambda b: b.reshape(shape),
           lambda b: b.reshape(c)),
  ]


def rules_for(model: FluxViT) -> list[Rule]:
  """Every official tensor except pos_embed (split into two params, see below), for the
  parts the model has (GPE proj, DPN norms and LPE follow its flags)."""
  c, nh = model.embed_dim, model.num_heads
  hd = c // nh
  kt, p = model.tubelet_size, model.patch_size
  pdim = model.patch_dim
  r = [Rule('cls_token', ('cls_token',), lambda x: x.reshape(c), lambda x: x.reshape(1, 1, c))]
  if model.use_gpe_proj:
    r += _conv1x1('gpe_proj.depthwise_conv', ('gpe_proj',), (c,))
  # Conv3d [C, 3, kt, p, p] -> Dense [(kt, p, p, 3), C], rgb fastest (SPEC A.3).
  r.append(Rule('patch_embed.proj.weight', ('patch_embed', 'proj', 'kernel'),
                lambda w: w.transpose(2, 3, 4, 1, 0).reshape(pdim, c),
                lambda k: k.reshape(kt, p, p, 3, c).transpose(4, 3, 0, 1, 2)))
  r.append(Rule('patch_embed.proj.bias', ('patch_embed', 'proj', 'bias'), _same, _same))
  if model.dual_norm_in_patch_embed:
    r += _norm('patch_embed.norm', ('patch_embed', 'norm'), bias=False)
    r += _norm('patch_embed.norm_before', ('patch_embed', 'norm_before'), bias=False)
  for i in range(model.depth):
    o, b = f'blocks.{i}', (f'blocks_{i}',)
    r += _norm(f'{o}.norm1', b + ('norm1',), bias=False)
    # qkv rows are (q|k|v) x head x head_dim.
    r.append(Rule(f'{o}.attn.qkv.weight', b + ('attn', 'qkv', 'kernel'),
                  lambda w: w.T.reshape(c, 3, nh, hd), lambda k: k.reshape(c, 3 * c).T))
    r.append(Rule(f'{o}.attn.proj.weight', b + ('attn', 'proj', 'kernel'),
                  lambda w: w.T.reshape(nh, hd, c), lambda k: k.reshape(c, c).T))
    r.append(Rule(f'{o}.attn.proj.bias', b + ('attn', 'proj', 'bias'), _same, _same))
    if model.use_lpe:
      r += _conv1x1(f'{o}.attn.lpe.depthwise_conv', b + ('attn', 'lpe'), (nh, hd))
    for qk in ('q_norm', 'k_norm'):
      r.append(Rule(f'{o}.attn.{qk}.weight', b + ('attn', qk, 'scale'),
                    lambda w: w.reshape(nh, hd), lambda s: s.reshape(c)))
    r.append(Rule(f'{o}.ls1.gamma', b + ('ls1', 'gamma'), _same, _same))
    r += _norm(f'{o}.norm2', b + ('norm2',), bias=False)
    r += _linear(f'{o}.mlp.fc1', b + ('mlp', 'fc1'))
    r += _linear(f'{o}.mlp.fc2', b + ('mlp', 'fc2'))
    r.append(Rule(f'{o}.ls2.gamma', b + ('ls2', 'gamma'), _same, _same))
  for j in range(len(model.head_budgets)):
    o, b = f'clip_projector.{j}', (f'clip_projector_{j}',)
    for n in ('norm1_q', 'norm1_k', 'norm1_v'):
      r += _norm(f'{o}.{n}', b + (n,), bias=True)
    for n in ('q', 'k', 'v'):
      r.append(Rule(f'{o}.cross_attn.{n}_bias', b + ('cross_attn', f'{n}_bias'), _same, _same))
      r += _linear(f'{o}.cross_attn.{n}', b + ('cross_attn', n), bias=False)
    r += _linear(f'{o}.cross_attn.proj', b + ('cross_attn', 'proj'))
  for j in range(len(model.head_budgets)):
    r += _linear(f'head.{j}', (f'head_{j}',))
  r += _norm('fc_norm', ('fc_norm',), bias=True)
  for j in range(model.num_decoders):
    o, b = f'final_clip_decoder_for_projs.{j}', (f'final_clip_decoder_for_projs_{j}',)
    r += _linear(f'{o}.head', b + ('head',))
    r += _norm(f'{o}.norm', b + ('norm',), bias=True)
  return r


def _to_numpy(value, name: str, source: str) -> np.ndarray:
  if hasattr(value, 'detach'):  # torch.Tensor
    import torch  # pylint: disable=g-import-not-at-top
    value = value.detach().cpu()
    # torch.load keeps a stride-0 view a view; the float32 copy below would not.
    held = value.untyped_storage().nbytes()
    if value.numel() * value.element_size() > torch_files.MAX_EXPANSION * held + (1 << 20):
      raise CheckpointError(f'{source}: entry {name!r} of shape {tuple(value.shape)}, '
                            f'stride {value.stride()} claims more than its storage of '
                            f'{held} bytes holds (a stride-0 view); refused')
    if value.is_floating_point():
      value = value.to(torch.float32)
    return value.numpy()
  arr = np.asarray(value)
  if arr.dtype == object:
    raise CheckpointError(f'{source}: entry {name!r} is not an array')
  if arr.dtype == ml_dtypes.bfloat16 or np.issubdtype(arr.dtype, np.floating):
    return arr.astype(np.float32)  # as the torch path: floats to float32
  return arr


# Globals official checkpoints carry besides tensors and containers, allowed to
# torch.load(weights_only=True) while it reads them: the training args.
SAFE_GLOBALS = (argparse.Namespace,)


def read_file(path: str, *, trust_pickle: bool = False) -> Mapping[str, Any]:
  """The object a checkpoint file holds; no code of the file runs unless `trust_pickle`.

  Untrusted (the default), a PyTorch file is read by torch.load(weights_only=True) with
  SAFE_GLOBALS allowed for this call only, or by `torch_files` when torch is absent: any
  other global is refused by name. `trust_pickle=True` unpickles fully, which runs any
  code the file names: only for files you trust.
  """
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: no such checkpoint file')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path) as f:  # allow_pickle=False: object arrays are refused
      return dict(f)
  if ext not in ('.pth', '.pt', '.bin'):
    raise CheckpointError(f'{path}: unknown checkpoint type {ext!r}; expected .pth, .pt, '
                          '.bin (PyTorch) or .npz')
  if trust_pickle:
    logging.warning('%s: trust_pickle=True: unpickling fully, which runs any code the file '
                    'names. Only do this with files you trust.', path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:  # a TPU VM without torch: the zip format, restricted unpickling
    try:
      return torch_files.load(path, trust_pickle=trust_pickle)
    except torch_files.TorchFileError as e:
      raise CheckpointError(f'{e} (torch is not installed)') from e
  if not zipfile.is_zipfile(path):
    with open(path, 'rb') as f:
      head = f.read(2)
    if head[:1] != b'\x80':  # neither a torch zip archive nor a legacy pickle
      raise CheckpointError(f'{path}: not a PyTorch checkpoint (neither a zip archive '
                            'nor a pickle)')
  if trust_pickle:
    try:
      return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'{path}: cannot be read by torch.load: {e}') from e
  try:
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):  # this call only
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:  # weights_only refused something: never retried
    refused = re.search(r'GLOBAL (\S+)', str(e))
    # torch's message: a generic preamble, the refusal, a pointer to its docs.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if not line.startswith('Check the doc')),
                  lines[0] if lines else type(e).__name__)
    what = (f'refused global {refused.group(1)}' if refused else
            f'refused by torch.load(weights_only=True): {detail}')
    raise CheckpointError(
        f'{path}: {what}: only tensors, plain containers and '
        f'{", ".join(f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS)} are read '
        'from an untrusted file. If you trust it, load it with trust_pickle=True (the '
        'converters: --trust_pickle), which '
        'lets it run code; better, save its state dict alone') from e
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{path}: cannot be read by torch.load: {e}') from e


def official_state_dict(path_or_state_dict, source: str | None = None, *,
                        trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """The official tensors as numpy arrays: unwraps `model`/`module`, strips prefixes.
  A file is read by `read_file` (`trust_pickle=True`: full unpickling, runs code)."""
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    sd = read_file(source, trust_pickle=trust_pickle)
  else:
    source = source or '<state dict>'
    sd = path_or_state_dict
  if not isinstance(sd, Mapping):
    raise CheckpointError(f'{source}: expected a mapping of names to tensors, got '
                          f'{type(sd).__name__}')
  for key in ('model', 'module'):
    if key in sd and isinstance(sd[key], Mapping):
      sd = sd[key]
      break
  out = {}
  for name, value in sd.items():
    for prefix in PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
    out[name] = _to_numpy(value, name, source)
  return out


def _pos_grid(sd, num_frames: int, source: str) -> tuple[int, int, int]:
  if 'pos_embed' not in sd:
    raise CheckpointError(f'{source}: no pos_embed; not a FluxViT checkpoint '
                          f'(keys start {sorted(sd)[:5]})')
  n = sd['pos_embed'].shape[1] - 1
  g = int(round((n / num_frames) ** 0.5)) if n % num_frames == 0 else 0
  if g == 0 or num_frames * g * g != n:
    raise CheckpointError(f'{source}: pos_embed has {n} grid positions, not num_frames='
                          f'{num_frames} times a square; pass the num_frames it was saved with')
  return num_frames, g, g


def load_official_checkpoint(path_or_state_dict, *, variant: str, num_classes: int,
                             num_frames: int, mlp_activation: str = 'gelu_tanh',
                             strict: bool = True, trust_pickle: bool = False,
                             **model_overrides):
  """Loads an official FluxViT checkpoint.

  Args:
    path_or_state_dict: a .pth/.pt/.bin file (state dict at the root or under
      `model`/`module`; `backbone.`/`encoder.` prefixes stripped), an .npz file, or a
      mapping of official names to arrays (numpy or torch).
    variant: 'small', 'base', 'tiny' or 'large' (SPEC A.1).
    num_classes: classifier size; must equal the checkpoint's heads.
    num_frames: T0 of the stored pos_embed (24 for the released S, 32 for B).
    mlp_activation: 'gelu_tanh' for the released (flash-attn) weights, 'gelu' for the
      plain path.
    strict: refuse missing tensors (else they keep their initial values, logged).
    trust_pickle: unpickle the file fully, which runs any code it names (logged). The
      default reads tensors, plain containers and argparse.Namespace only and refuses
      any other global by name.
    **model_overrides: other FluxViT fields (e.g. dtype, selector, head_budgets;
      scan_layers=True gives the blocks' params stacked, the scanned layout).

  Returns:
    (model, params): a FluxViT and its float32 params.
  """
  source = (os.fspath(path_or_state_dict)
            if isinstance(path_or_state_dict, (str, os.PathLike)) else '<state dict>')
  sd = official_state_dict(path_or_state_dict, source, trust_pickle=trust_pickle)
  pos_grid = _pos_grid(sd, num_frames, source)
  model = make_model(dict(variant=variant, num_classes=num_classes, pos_grid=pos_grid,
                          mlp_activation=mlp_activation, **model_overrides))
  rules = rules_for(model)
  known = {r.official for r in rules} | {'pos_embed'}
  missing = sorted(known - set(sd))
  unexpected = sorted(set(sd) - known)
  ignorable = [k for k in unexpected if k.startswith(PRETRAIN_ONLY)]
  unexpected = [k for k in unexpected if k not in ignorable]
  if ignorable:
    logging.info('%s: ignoring %d pretraining-only tensors: %s', source, len(ignorable),
                 ignorable[:8])
  check_keys(source, f'FluxViT variant={variant!r} (depth {model.depth}, width '
             f'{model.embed_dim}, {len(model.head_budgets)} heads)', missing, unexpected,
             strict)

  flat = {}
  if 'pos_embed' in sd:
    pe = sd['pos_embed']
    flat[('cls_pos',)] = pe[0, 0]
    flat[('pos_embed',)] = pe[0, 1:].reshape(*pos_grid, model.embed_dim)
  return model, params_from_rules(model, rules, sd, flat, source,
                                  f'variant {variant!r} (num_classes={num_classes}?)')


def params_from_rules(model: FluxViT, rules: list[Rule], sd: Mapping[str, np.ndarray],
                      flat: dict, source: str, expected: str) -> dict:
  """float32 params of `model`: `flat` (entries already made, e.g. the position tables)
  plus every rule's tensor in `sd`, each checked against the model's shape (a mismatch
  names the tensor, the param and `expected`); params no tensor gave stay at init. The
  rules fill the unrolled layout; a scanned model's blocks are stacked at the end."""
  unrolled = model.clone(scan_layers=False)
  shapes = flax.traverse_util.flatten_dict(abstract_params(unrolled))
  for path, value in flat.items():
    if value.shape != shapes[path].shape:
      raise CheckpointError(f'{source}: {"/".join(path)} has shape {value.shape}, '
                            f'{expected} expects {shapes[path].shape}')
  for rule in rules:
    if rule.official in sd:
      value = rule.to_ours(sd[rule.official])
      if value.shape != shapes[rule.path].shape:
        raise CheckpointError(f'{source}: {rule.official} {tuple(sd[rule.official].shape)} '
                              f'does not fit {"/".join(rule.path)} '
                              f'{shapes[rule.path].shape} of {expected}')
      flat[rule.path] = value
  if set(shapes) - set(flat):
    fresh = flax.traverse_util.flatten_dict(init_params(unrolled, jax.random.key(0)))
    for path in shapes:
      flat.setdefault(path, np.asarray(fresh[path]))
  params = flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()})
  return stack_blocks(params, model.depth) if model.scan_layers else params


def to_official_state_dict(model: FluxViT, params) -> dict[str, np.ndarray]:
  """Our params (either block layout) -> official names and layouts (the reverse of the
  loader)."""
  return state_dict_from_rules(rules_for(model), model, params)


def state_dict_from_rules(rules: list[Rule], model: FluxViT, params) -> dict[str, np.ndarray]:
  """`model`'s params -> the tensors of `rules` under their names and layouts, and
  pos_embed [1, 1 + T * H * W, C] rejoined from cls_pos and the position table."""
  params = as_layout(flax.linen.unbox(params), False, model.depth)  # the rules' layout
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  pos = flat[('pos_embed',)]
  out = {'pos_embed': np.concatenate([flat[('cls_pos',)][None],
                                      pos.reshape(-1, pos.shape[-1])], axis=0)[None]}
  for rule in rules:
    out[rule.official] = rule.to_official(flat[rule.path])
  return out


def save_official_checkpoint(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict of official names as a PyTorch .pth file."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(f'{path}: writing PyTorch checkpoints needs torch '
                          '(pip install torch)') from e
  # np.array copies: the layouts are transposed views, and torch wants owned memory.
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
