"""InternVideo2 vision-encoder checkpoints -> the Flux-UMT `Teacher` (SPEC D.2), and back.

The InternVideo2 teacher (`internvideo2_teacher.py`) is FluxViT's ViT without DPN, GPE
proj or LPE, with one attention-pooling projector: a FluxViT of variant 'iv2_1b' (or any
variant with those flags off and one head). Its tensors carry the FluxViT names, except
that the projector is `clip_projector.*` (one, not a list) and there is no classifier.
The stage-2 checkpoints hold the vision encoder under `vision_encoder.` beside the text
side; the loader keeps the vision encoder, drops what the teacher does not use (its
pretraining decoders and extra pos embeds, SPEC D.2) and names anything else that does
not fit.

The stored pos_embed is [1, 1 + T0 * G * G, C]; T0 is read off the checkpoint (the
spatial side is 16, the 224 px grid, unless `checkpoint_frames` says otherwise), and the
table is resized in time to `num_frames` as InternVideo2 does on load (linear,
align_corners=False; stage 2 stores 4 frames, the teacher runs 8). The teacher then
resizes it to each clip's grid like any FluxViT (SPEC B.3).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flux_jax.convert.official import (CheckpointError, Rule, check_keys, official_state_dict,
                                       params_from_rules, rules_for, state_dict_from_rules)
from flux_jax.model import posemb
from flux_jax.model.fluxvit import FluxViT, make_model
from flux_jax.model.teacher import Teacher
from flux_jax.tokens.token_batch import grid_coords

PREFIX = 'vision_encoder.'
# Vision-encoder tensors of the pretraining checkpoints that the teacher does not use.
DROPPED = ('clip_decoder.', 'final_clip_decoder.', 'clip_pos_embed', 'clip_img_pos_embed',
           'img_pos_embed')
# The layers the IV2-1B teacher returns, depth - 1 - int(i * 3.34) for i < 6 (SPEC D.2),
# in block order: the order its forward stacks them in (`z`).
IV2_1B_LAYERS = (23, 26, 29, 33, 36, 39)
SPATIAL_GRID = 16  # 224 px / patch 14: the grid InternVideo2 is pretrained at


def iv2_rules(model: FluxViT) -> list[Rule]:
  """The FluxViT rules under InternVideo2 names: one projector, no classifier."""
  out = []
  for rule in rules_for(model):
    if rule.official.startswith(('head.', 'fc_norm.')):
      continue  # the teacher has no classifier (ours exists, at init, unused)
    if rule.official.startswith('clip_projector.0.'):
      rule = dataclasses.replace(rule, official='clip_projector.' + rule.official[17:])
    out.append(rule)
  return out


def iv2_state_dict(path_or_state_dict, *, trust_pickle: bool = False
                   ) -> tuple[dict[str, np.ndarray], str]:
  """(the vision encoder's tensors by teacher name as numpy, the source's name);
  `trust_pickle` as in `load_iv2_teacher`."""
  source = (os.fspath(path_or_state_dict)
            if isinstance(path_or_state_dict, (str, os.PathLike)) else '<state dict>')
  sd = official_state_dict(path_or_state_dict, source, trust_pickle=trust_pickle)
  if any(k.startswith(PREFIX) for k in sd):
    others = [k for k in sd if not k.startswith(PREFIX)]
    if others:
      logging.info('%s: keeping the vision encoder, ignoring %d other tensors (%s...)',
                   source, len(others), others[:3])
    sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
  dropped = [k for k in sd if k.startswith(DROPPED)]
  if dropped:
    logging.info('%s: dropping %d tensors the teacher does not use: %s', source,
                 len(dropped), dropped[:6])
  return {k: v for k, v in sd.items() if not k.startswith(DROPPED)}, source


def _stored_grid(pos_embed: np.ndarray, num_frames: int, checkpoint_frames: int | None,
                 source: str) -> tuple[int, int]:
  """(T0, G) of a stored [1, 1 + T0 * G * G, C] pos_embed."""
  n = pos_embed.shape[1] - 1
  for t0 in ([checkpoint_frames] if checkpoint_frames else
             [num_frames, n // SPATIAL_GRID ** 2]):
    g = int(round((n / t0) ** 0.5)) if t0 and n % t0 == 0 else 0
    if g and t0 * g * g == n:
      return t0, g
  raise CheckpointError(f'{source}: pos_embed holds {n} grid positions, neither '
                        f'num_frames={num_frames} nor a {SPATIAL_GRID}x{SPATIAL_GRID} grid '
                        'per frame; pass checkpoint_frames (the frames it was saved with)')


def _resize_time(table: np.ndarray, frames: int) -> np.ndarray:
  """[T0, G, G, C] -> [frames, G, G, C], linear in time (the GLPE's own resize)."""
  t, g, _, c = table.shape
  coords = grid_coords(frames, g, g)[None]  # [1, frames * G * G, 3]
  grid = np.array([[frames, g, g]], np.int32)
  out = jax.jit(posemb.interpolate_at)(jnp.asarray(table), coords, grid)
  return np.asarray(out).reshape(frames, g, g, c)


def load_iv2_teacher(path_or_state_dict, *, variant: str = 'iv2_1b', num_frames: int = 8,
                     layers: Sequence[int] | None = None, head: int = 0,
                     checkpoint_frames: int | None = None, strict: bool = True,
                     trust_pickle: bool = False, **model_overrides) -> tuple[Teacher, dict]:
  """An InternVideo2 vision encoder as the frozen Teacher of Flux-UMT (SPEC D.2, D.5).

  Args:
    path_or_state_dict: a .pth/.pt/.bin file (read without torch when torch is absent),
      an .npz, or a mapping of names to arrays; the stage-1 or stage-2 1B checkpoint as
      released (`module`/`model` unwrapped, `vision_encoder.` stripped).
    variant: the FluxViT variant of the teacher's shape ('iv2_1b', or any variant with
      no DPN, GPE proj or LPE and one head, e.g. a small test model via overrides).
    num_frames: the frames the teacher's pos_embed is resized to (InternVideo2: 8).
    layers: block indices returned, in this order; None: the IV2-1B teacher's, in its
      order (23, 26, 29, 33, 36, 39).
    head: the projector (the only one: 0).
    checkpoint_frames: the frames of the stored pos_embed when its grid is not
      num_frames x G x G or per frame 16 x 16.
    strict: refuse missing tensors (else they stay at init, logged).
    trust_pickle: unpickle the file fully, which runs any code it names (logged). The
      default reads tensors, plain containers and argparse.Namespace only and refuses
      any other global by name.
    **model_overrides: other FluxViT fields (dtype, embed_dim, depth, ... for tests;
      scan_layers=True: the teacher's blocks scanned, their params stacked).

  Returns:
    (Teacher, float32 params); the params are the teacher FluxViT's (its classifier,
    which the teacher never calls, at init).

  Raises:
    CheckpointError: a file that is not an InternVideo2 vision encoder of this shape,
      naming the missing and unexpected tensors and any shape that does not fit, or
      one holding a global that an untrusted file may not (named).
  """
  sd, source = iv2_state_dict(path_or_state_dict, trust_pickle=trust_pickle)
  if 'pos_embed' not in sd or 'patch_embed.proj.weight' not in sd:
    raise CheckpointError(f'{source}: not an InternVideo2 vision encoder (no pos_embed or '
                          f'patch_embed.proj.weight; keys start {sorted(sd)[:5]})')
  t0, g = _stored_grid(sd['pos_embed'], num_frames, checkpoint_frames, source)
  model = make_model(dict(variant=variant, num_classes=1, pos_grid=(num_frames, g, g),
                          **model_overrides))
  if (model.dual_norm_in_patch_embed or model.use_gpe_proj or model.use_lpe
      or len(model.head_budgets) != 1):
    raise CheckpointError(f'{source}: variant {variant!r} is not an InternVideo2 ViT (it '
                          'needs no DPN, GPE proj or LPE and one head)')
  layers = tuple(IV2_1B_LAYERS if layers is None else layers)
  if any(not 0 <= i < model.depth for i in layers):
    raise CheckpointError(f'layers {layers} out of range for depth {model.depth}')

  rules = iv2_rules(model)
  known = {r.official for r in rules} | {'pos_embed'}
  missing, unexpected = sorted(known - set(sd)), sorted(set(sd) - known)
  check_keys(source, f'the InternVideo2 ViT of variant={variant!r} (depth {model.depth}, '
             f'width {model.embed_dim})', missing, unexpected, strict)
  c = model.embed_dim
  pe = sd['pos_embed']
  if pe.shape[-1] != c:
    raise CheckpointError(f'{source}: pos_embed has width {pe.shape[-1]}, variant '
                          f'{variant!r} has {c}')
  table = pe[0, 1:].reshape(t0, g, g, c).astype(np.float32)
  if t0 != num_frames:
    logging.info('%s: pos_embed resized in time from %d to %d frames', source, t0, num_frames)
    table = _resize_time(table, num_frames)
  flat = {('cls_pos',): pe[0, 0], ('pos_embed',): table}
  params = params_from_rules(model, rules, sd, flat, source, f'variant {variant!r}')
  return Teacher(model, layers, head), params


def to_iv2_state_dict(model: FluxViT, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The teacher's params (either block layout) under InternVideo2 names and layouts (no
  `vision_encoder.`), pos_embed at the teacher's frames: `load_iv2_teacher` of it gives
  the params back."""
  return state_dict_from_rules(iv2_rules(model), model, params)
