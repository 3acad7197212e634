"""open_clip and Apple MobileCLIP text-tower checkpoints <-> TextTransformer params (SPEC G.2).

One table of rules in open_clip's names (`TextTransformer.state_dict()`); Apple's names
are renamed to them first, as open_clip's `convert.py::convert_mobile_clip_state_dict`
does. Both directions are exact (transposes and reshapes only).

Accepted layouts, the text keys under any prefix (found by the token embedding's key):
  open_clip: a bare TextTransformer, a CustomTextCLIP (`text.`), or a CLIP whose text
    keys sit unprefixed beside `visual.*`;
  Apple: a bare text encoder or a whole MobileCLIP (`text_encoder.` beside
    `image_encoder.*`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from absl import logging
import flax
import jax
import numpy as np

from flux_jax.convert.official import (CheckpointError, Rule, _linear, _norm, read_file,
                                       _same, check_keys, official_state_dict)
from flux_jax.model.text import (TEXT_VARIANTS, TextTransformer, abstract_text_params,
                                 init_text_params, make_text_model)

# The key that names the layout and, by what precedes it, the text keys' prefix.
OPEN_CLIP_EMBEDDING = 'token_embedding.weight'
APPLE_EMBEDDING = 'embedding_layer.weight'
# Keys beside unprefixed text keys that belong to the rest of a CLIP model.
NOT_TEXT = ('visual.', 'image_encoder.', 'logit_scale', 'logit_bias')

# Apple MobileCLIP -> open_clip names (convert_mobile_clip_state_dict), on keys without
# the prefix. Apple's Sequential indices: pre_norm_mha = (LayerNorm, MHA, Dropout),
# pre_norm_ffn = (LayerNorm, Linear, GELU, Dropout, Linear, Dropout).
_APPLE_NAMES = [
    (r'embedding_layer\.weight', 'token_embedding.weight'),
    (r'positional_embedding\.pos_embed\.pos_embed', 'positional_embedding'),
    (r'final_layer_norm\.(weight|bias)', r'ln_final.\1'),
    (r'projection_layer', 'text_projection'),
    (r'transformer\.(\d+)\.pre_norm_mha\.0\.(weight|bias)', r'transformer.resblocks.\1.ln_1.\2'),
    (r'transformer\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.(weight|bias)',
     r'transformer.resblocks.\1.attn.in_proj_\2'),
    (r'transformer\.(\d+)\.pre_norm_mha\.1\.out_proj\.(weight|bias)',
     r'transformer.resblocks.\1.attn.out_proj.\2'),
    (r'transformer\.(\d+)\.pre_norm_ffn\.0\.(weight|bias)', r'transformer.resblocks.\1.ln_2.\2'),
    (r'transformer\.(\d+)\.pre_norm_ffn\.1\.(weight|bias)',
     r'transformer.resblocks.\1.mlp.c_fc.\2'),
    (r'transformer\.(\d+)\.pre_norm_ffn\.4\.(weight|bias)',
     r'transformer.resblocks.\1.mlp.c_proj.\2'),
]
_BLOCK = re.compile(r'transformer\.resblocks\.(\d+)\.')


def text_rules(model: TextTransformer) -> list[Rule]:
  """Every tensor of open_clip's TextTransformer state dict, in its names."""
  d, nh = model.width, model.heads
  hd = d // nh
  r = [Rule('token_embedding.weight', ('token_embedding', 'embedding'), _same, _same),
       Rule('positional_embedding', ('positional_embedding',), _same, _same)]
  for i in range(model.layers):
    o, b = f'transformer.resblocks.{i}', (f'resblocks_{i}',)
    r += _norm(f'{o}.ln_1', b + ('ln_1',), bias=True)
    # in_proj rows are (q|k|v) x head x head_dim (torch MultiheadAttention, Apple qkv_proj).
    r.append(Rule(f'{o}.attn.in_proj_weight', b + ('attn', 'in_proj', 'kernel'),
                  lambda w: w.T.reshape(d, 3, nh, hd), lambda k: k.reshape(d, 3 * d).T))
    r.append(Rule(f'{o}.attn.in_proj_bias', b + ('attn', 'in_proj', 'bias'),
                  lambda x: x.reshape(3, nh, hd), lambda x: x.reshape(3 * d)))
    r.append(Rule(f'{o}.attn.out_proj.weight', b + ('attn', 'out_proj', 'kernel'),
                  lambda w: w.T.reshape(nh, hd, d), lambda k: k.reshape(d, d).T))
    r.append(Rule(f'{o}.attn.out_proj.bias', b + ('attn', 'out_proj', 'bias'), _same, _same))
    r += _norm(f'{o}.ln_2', b + ('ln_2',), bias=True)
    r += _linear(f'{o}.mlp.c_fc', b + ('mlp', 'fc1'))
    r += _linear(f'{o}.mlp.c_proj', b + ('mlp', 'fc2'))
  r += _norm('ln_final', ('ln_final',), bias=True)
  # [width, output_dim] in both open_clip and Apple: pooled @ W.
  r.append(Rule('text_projection', ('text_projection',), _same, _same))
  return r


def _find_prefix(keys, source: str) -> tuple[str, bool]:
  """(prefix of the text keys, whether they are Apple's), from the token embedding's key."""
  found = [(k[:-len(e)], e == APPLE_EMBEDDING) for k in keys
           for e in (OPEN_CLIP_EMBEDDING, APPLE_EMBEDDING)
           if k.endswith(e) and (len(k) == len(e) or k[-len(e) - 1] == '.')]
  if not found:
    raise CheckpointError(f'{source}: no {OPEN_CLIP_EMBEDDING!r} (open_clip) or '
                          f'{APPLE_EMBEDDING!r} (Apple MobileCLIP) under any prefix; not a '
                          f'text tower (keys start {sorted(keys)[:5]})')
  if len(found) > 1:
    raise CheckpointError(f'{source}: several text towers, at prefixes '
                          f'{[p for p, _ in found]}; pass prefix= to pick one')
  return found[0]


def _text_keys(sd: Mapping[str, Any], prefix: str | None, source: str) -> dict[str, str]:
  """open_clip name -> the checkpoint's own key, for every key of the text tower."""
  if prefix is None:
    prefix, apple = _find_prefix(list(sd), source)
  else:
    apple = f'{prefix}{APPLE_EMBEDDING}' in sd
  names = {}
  for key in sd:
    if not key.startswith(prefix) or (not prefix and key.startswith(NOT_TEXT)):
      continue
    name = key[len(prefix):]
    if apple:
      for pattern, repl in _APPLE_NAMES:
        name, n = re.subn(f'^{pattern}$', repl, name)
        if n:
          break
    names[name] = key
  ignored = len(sd) - len(names)
  if ignored:
    logging.info('%s: text tower at prefix %r (%s names); ignoring %d other tensors', source,
                 prefix, 'Apple' if apple else 'open_clip', ignored)
  return names


def _text_tensors(state_dict: Mapping[str, Any], prefix: str | None,
                  source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(open_clip name -> float32 numpy tensor, open_clip name -> the checkpoint's key)."""
  names = _text_keys(state_dict, prefix, source)
  tensors = official_state_dict({n: state_dict[k] for n, k in names.items()}, source)
  if 'positional_embedding' in tensors:
    pos = tensors['positional_embedding']
    # Apple's LearnablePositionalEmbedding is [1, 1, context, width].
    if pos.ndim == 4 and pos.shape[:2] == (1, 1):
      tensors['positional_embedding'] = pos.reshape(pos.shape[2:])
  return tensors, names


def text_params_from_state_dict(state_dict: Mapping[str, Any], model: TextTransformer, *,
                                prefix: str | None = None, strict: bool = True,
                                source: str = '<state dict>') -> dict:
  """float32 params of `model` from an open_clip or Apple MobileCLIP state dict.

  Args:
    state_dict: names -> numpy or torch tensors, in any layout of the module docstring.
    model: the TextTransformer whose shapes every tensor must have.
    prefix: the text keys' prefix (e.g. 'text.'); found from the token embedding if None.
    strict: refuse missing tensors (else they keep their initial values, logged).
    source: what to call the state dict in errors (its file).

  Raises:
    CheckpointError: missing (when strict) or unexpected tensors, or a tensor whose shape
      does not fit; the message names the checkpoint's own key.
  """
  tensors, names = _text_tensors(state_dict, prefix, source)
  return _params(tensors, names, model, strict, source)


def _params(tensors, names, model, strict, source) -> dict:
  rules = text_rules(model)
  expected = (f'TextTransformer(width={model.width}, layers={model.layers}, heads='
              f'{model.heads}, vocab_size={model.vocab_size}, context_length='
              f'{model.context_length}, output_dim={model.output_dim})')
  known = {r.official for r in rules}
  missing = sorted(known - set(tensors))
  unexpected = sorted(names[n] for n in set(tensors) - known)
  check_keys(source, expected, missing, unexpected, strict)
  shapes = flax.traverse_util.flatten_dict(abstract_text_params(model))
  flat = {}
  for rule in rules:
    if rule.official in tensors:
      value, shape = tensors[rule.official], shapes[rule.path].shape
      # Compared in the checkpoint's layout: a wrong shape may not even reshape to ours.
      want = rule.to_official(np.broadcast_to(np.float32(0), shape)).shape
      if value.shape != want:
        raise CheckpointError(f'{source}: {names[rule.official]} {value.shape} does not fit '
                              f'{"/".join(rule.path)} {shape} (expected {want}) of {expected}')
      flat[rule.path] = rule.to_ours(value)
  if missing:
    fresh = flax.traverse_util.flatten_dict(init_text_params(model, jax.random.key(0)))
    for path in shapes:
      flat.setdefault(path, np.asarray(fresh[path]))
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()})


def text_state_dict_from_params(params, model: TextTransformer,
                                prefix: str = '') -> dict[str, np.ndarray]:
  """Params -> open_clip's names and layouts under `prefix` (the loader's reverse)."""
  flat = {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(flax.linen.unbox(params)).items()}
  return {prefix + r.official: r.to_official(flat[r.path]) for r in text_rules(model)}


def _inferred_config(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The model fields the tensors' shapes tell (all but heads and dtype)."""
  config = {}
  if OPEN_CLIP_EMBEDDING in tensors:
    config['vocab_size'], config['width'] = tensors[OPEN_CLIP_EMBEDDING].shape
  if 'positional_embedding' in tensors:
    config['context_length'] = tensors['positional_embedding'].shape[0]
  if 'text_projection' in tensors:
    config['output_dim'] = tensors['text_projection'].shape[-1]
  blocks = [int(m.group(1)) for m in map(_BLOCK.match, tensors) if m]
  if blocks:
    config['layers'] = max(blocks) + 1
  fc = tensors.get('transformer.resblocks.0.mlp.c_fc.weight')
  if fc is not None and 'width' in config:
    config['mlp_ratio'] = fc.shape[0] / config['width']
  return config


def load_text_tower(path_or_state_dict, variant: str = 'mobileclip_b', *,
                    prefix: str | None = None, strict: bool = True, trust_pickle: bool = False,
                    **model_overrides):
  """Loads an open_clip or Apple MobileCLIP text tower.

  Args:
    path_or_state_dict: a .pth/.pt/.bin file (state dict at the root or under
      `state_dict`/`model`/`module`), an .npz file, or a mapping of names to arrays
      (numpy or torch); any layout of the module docstring.
    variant: a TEXT_VARIANTS key; the shapes the tensors show (width, layers, vocab,
      context, MLP and output widths) replace its values, `heads` comes from it.
    prefix: the text keys' prefix; found from the token embedding if None.
    strict: refuse missing tensors (else they keep their initial values, logged).
    trust_pickle: unpickle the file fully, running any code it holds (official.read_file);
      only for files you trust.
    **model_overrides: other TextTransformer fields (e.g. dtype, heads).

  Returns:
    (model, params): a TextTransformer and its float32 params.
  """
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    sd = read_file(source, trust_pickle=trust_pickle)
  else:
    source, sd = '<state dict>', path_or_state_dict
  if not isinstance(sd, Mapping):
    raise CheckpointError(f'{source}: expected a mapping of names to tensors, got '
                          f'{type(sd).__name__}')
  # open_clip training checkpoints keep the weights under `state_dict`.
  for key in ('state_dict', 'model', 'module'):
    if isinstance(sd.get(key), Mapping):
      sd = sd[key]
      break
  tensors, names = _text_tensors(sd, prefix, source)
  inferred = _inferred_config(tensors)
  model = make_text_model({'variant': variant, **inferred, **model_overrides})
  changed = {k: v for k, v in inferred.items() if TEXT_VARIANTS[variant][k] != v}
  if changed:
    logging.info('%s: shapes differ from text variant %r; using the checkpoint\'s %s',
                 source, variant, changed)
  return model, _params(tensors, names, model, strict, source)
