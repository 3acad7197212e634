"""FluxViT-CLIP for users: tokenize captions, load a text tower, embed texts and videos.

  from flux_jax import clip
  ids = clip.tokenize(['a red disc moves left'])            # open_clip's ids, int32 [1, 77]
  text_model, text_params = clip.load_text_tower('mobileclip_blt.pt')
  t = clip.embed_text(text_model, text_params, ['a dog runs'])   # [1, 512], unit norm
  v = clip.embed_video('clip.mp4', 'WORKDIR/params', budget=1024)   # [512], unit norm

A FluxViT-CLIP checkpoint (a `train.mode='clip'` run's WORKDIR/params) carries both towers:
`embed_text(*clip.load(checkpoint), texts)` embeds captions in the same space as
`embed_video`. Captions are cleaned as in training (InternVideo2's `pre_text`) unless
`clean=False`; `tokenize` alone never cleans, as open_clip.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import numpy as np

from flux_jax import checkpoint as ckpt
from flux_jax.convert.open_clip import load_text_tower
from flux_jax.data.pipeline import tokenize_captions
from flux_jax.data.tokenizer import tokenize
from flux_jax.eval import clip as clip_eval
from flux_jax.eval.predict import choose_grid, video_views
from flux_jax.model.clip import FluxCLIP
from flux_jax.model.layers import l2_normalize
from flux_jax.model.text import TextTransformer

__all__ = ['embed_text', 'embed_video', 'load', 'load_text_tower', 'tokenize']


@functools.lru_cache(maxsize=4)
def _load(directory: str) -> tuple[FluxCLIP, dict, dict]:
  model, params = ckpt.load_params(directory)
  if not isinstance(model, FluxCLIP):
    raise ValueError(f'{directory}: a {type(model).__name__} checkpoint, not FluxViT-CLIP '
                     "(a train.mode='clip' run's params)")
  return model, params, ckpt.read_config(directory).get('metadata', {})


def load(checkpoint: str | os.PathLike) -> tuple[FluxCLIP, dict]:
  """(model, params) of a FluxViT-CLIP params checkpoint, cached by its real path."""
  model, params, _ = _load(os.path.realpath(checkpoint))
  return model, params


@functools.lru_cache(maxsize=8)
def _text_tower_fn(model: TextTransformer):
  return jax.jit(lambda p, ids: l2_normalize(model.apply({'params': p}, ids)[0]))


def embed_text(model: TextTransformer | FluxCLIP, params, texts: str | Sequence[str], *,
               clean: bool = True, batch_size: int = 256) -> np.ndarray:
  """float32 `[N, D]` L2-normalised embeddings of `texts` (D: the text projection's width).

  `model` is a text tower (`load_text_tower`) or FluxViT-CLIP (`load`).
  """
  texts = [texts] if isinstance(texts, str) else list(texts)
  if isinstance(model, FluxCLIP):
    return clip_eval.embed_text(model, params, texts, batch_size=batch_size, clean=clean)
  ids = tokenize_captions(texts, model.context_length, clean)
  fn = _text_tower_fn(model)
  out = [np.asarray(fn(params, ids[i:i + batch_size])) for i in range(0, len(ids), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, model.output_dim), np.float32)


@functools.lru_cache(maxsize=16)
def _video_fn(model: FluxCLIP, budget: int, head: int):
  return jax.jit(lambda p, tokens: model.apply({'params': p}, tokens, budget=budget, head=head,
                                               method=FluxCLIP.encode_video)[0])


def embed_video(path: str | os.PathLike, checkpoint: str | os.PathLike, *, budget: int,
                grid: tuple[int, int] | None = None, num_clips: int = 1,
                num_crops: int = 1) -> np.ndarray:
  """float32 `[D]` L2-normalised embedding of the video at `path` at `budget` tokens.

  The grid is `grid` (frames, resolution), else the checkpoint's evaluation grid; the
  views (clips x crops, SPEC C.7) are embedded through the head nearest to the budget,
  averaged and renormalised, as the retrieval evaluation does.

  Raises:
    ValueError: the file cannot be decoded or has fewer frames than the grid, the budget
      is not positive, or the checkpoint is not FluxViT-CLIP.
  """
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
    raise ValueError(f'budget={budget!r}: must be a whole number of tokens, at least 1')
  model, params, metadata = _load(os.path.realpath(checkpoint))
  vision = model.vision
  plan = choose_grid(budget, grid=grid, metadata=metadata)
  tokens = video_views(path, plan, patch_size=vision.patch_size,
                       tubelet_size=vision.tubelet_size, num_clips=num_clips,
                       num_crops=num_crops)
  raw = plan.num_tokens(vision.patch_size, vision.tubelet_size)
  kept = min(int(budget), raw)
  views = np.asarray(_video_fn(model, kept, vision.nearest_head(kept, raw))(params, tokens))
  mean = views.mean(axis=0)  # [D]
  return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
