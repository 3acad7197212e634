r"""Classify videos at a token budget: `predict` (a video file, `flux_jax.predict`) and
`classify` (decoded arrays). The command line is flux_jax.cli.predict:

  python -m flux_jax.cli.predict VIDEO --checkpoint DIR --budget 1024 [--top_k 5] \
      [--frames 8 --resolution 224 | --to_table WORKDIR/to.json] [--labels names.txt] \
      [--num_clips 1 --num_crops 1]

The sampling grid (frames, resolution) is chosen in this order:
  1. `grid` (`--frames/--resolution`) when given;
  2. else the row of the Token Optimization table `to_table` (a `to.json` of
     `python -m flux_jax.cli.evaluate`) marked best for exactly this budget;
  3. else the grid the checkpoint was evaluated at (its metadata 'eval');
  4. else 8 x 224^2, the official test grid (SPEC C.7).
The head is the one whose training budget is nearest to the tokens kept. A budget of at
least the grid's raw tokens keeps every token (no selection); a budget below 1 is an
error.

Each view is the evaluation pipeline's (`pipeline.EvalClip`, SPEC C.7): frames of
temporal clip c of `num_clips`, short side resized to the resolution, `num_crops` crops
along the long side (one crop: the central one). Probabilities are the softmax averaged
over the views, as in multi-view evaluation.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flux_jax import checkpoint as ckpt
from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.plan import FluxPlan
from flux_jax.tokens.select import keeps_all
from flux_jax.tokens.token_batch import TokenBatch, patchify
from flux_jax.eval.multiview import make_eval_step

DEFAULT_GRID = FluxPlan(frames=8, resolution=224)  # SPEC C.7: 8 x 224^2 = 2048 tokens


def predict(path: str | os.PathLike, checkpoint: str | os.PathLike, *, budget: int,
            top_k: int = 5, grid: tuple[int, int] | None = None,
            to_table: str | os.PathLike | None = None,
            class_names: Sequence[str] | None = None, num_clips: int = 1,
            num_crops: int = 1) -> list[tuple[str, float]]:
  """The `top_k` most probable labels of the video at `path`.

  Args:
    path: a video file PyAV can decode.
    checkpoint: a params directory of `checkpoint.save_params` (loaded once per process).
    budget: tokens the model keeps (>= 1); at least the grid's raw tokens keeps all.
    top_k: labels returned (at most the number of classes).
    grid: (frames, resolution); None chooses as the module docstring says.
    to_table: path of a Token Optimization table (`to.json`).
    class_names: one name per class, instead of the checkpoint's; without either, the
      labels are class indices as strings.
    num_clips, num_crops: temporal clips x spatial crops averaged (SPEC C.7).

  Returns:
    [(label, probability)], most probable first; the probabilities sum to at most 1.

  Raises:
    ValueError: the file cannot be read or decoded, has fewer frames than the grid
      samples, the budget, top_k or grid is invalid, or the class names do not fit.
  """
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
    raise ValueError(f'budget={budget!r}: must be a whole number of tokens, at least 1')
  if top_k < 1:
    raise ValueError(f'top_k={top_k}: must be at least 1')
  model, params, metadata = _load(os.path.realpath(checkpoint))
  names = _labels(model, class_names if class_names is not None
                  else metadata.get('class_names'), checkpoint)
  plan = choose_grid(budget, grid=grid, to_table=to_table, metadata=metadata)
  tokens = video_views(path, plan, patch_size=model.patch_size,
                       tubelet_size=model.tubelet_size, num_clips=num_clips,
                       num_crops=num_crops)
  raw = plan.num_tokens(model.patch_size, model.tubelet_size)
  kept = min(int(budget), raw)
  head = model.nearest_head(kept, raw)
  logging.info('%s: %d frames x %d^2 (%d tokens), budget %d keeps %d, head %d', path,
               plan.frames, plan.resolution, raw, budget, kept, head)
  probs = np.asarray(_eval_step(model, kept, head)(params, tokens)['probs'])  # [V, C]
  mean = probs.mean(axis=0)  # [C]
  order = np.argsort(-mean, kind='stable')[:top_k]
  return [(names[i], float(mean[i])) for i in order]


def choose_grid(budget: int, *, grid: tuple[int, int] | None = None,
                to_table: str | os.PathLike | None = None,
                metadata: dict | None = None) -> FluxPlan:
  """The sampling grid for `budget`, in the order of the module docstring."""
  if grid is not None:
    frames, resolution = grid
    return FluxPlan(int(frames), int(resolution))
  if to_table is not None:
    row = best_row(to_table, budget)
    if row is not None:
      return FluxPlan(int(row['frames']), int(row['resolution']))
    logging.info('%s: no best row for budget %d; using the checkpoint grid', to_table,
                 budget)
  evaluated = (metadata or {}).get('eval')
  if evaluated:
    return FluxPlan(int(evaluated['frames']), int(evaluated['resolution']))
  return DEFAULT_GRID


def best_row(to_table: str | os.PathLike, budget: int) -> dict | None:
  """The row of a Token Optimization table marked best for `budget`, or None."""
  try:
    with open(to_table) as f:
      rows = json.load(f)['rows']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{to_table}: not a readable Token Optimization table (JSON with '
                     f'"rows"): {e!r}') from e
  best = [r for r in rows if r.get('best') and r.get('budget') == budget]
  if len(best) > 1:
    raise ValueError(f'{to_table}: {len(best)} rows are marked best for budget {budget}')
  return best[0] if best else None


def video_views(path: str | os.PathLike, plan: FluxPlan, *, patch_size: int = 14,
                tubelet_size: int = 1, num_clips: int = 1, num_crops: int = 1
                ) -> TokenBatch:
  """The evaluation views of a video file, unpadded: `num_clips x num_crops` rows.

  Raises:
    ValueError: unreadable or undecodable file, fewer decodable frames than
      `plan.frames`, or a grid that the patch and tubelet sizes do not divide.
  """
  if (plan.frames < 1 or plan.resolution < 1 or plan.frames % tubelet_size
      or plan.resolution % patch_size):
    raise ValueError(f'grid of {plan.frames} frames at {plan.resolution}^2: needs frames '
                     f'a multiple of the tubelet ({tubelet_size}) and a resolution a '
                     f'multiple of the patch size ({patch_size})')
  if num_clips < 1 or num_crops < 1:
    raise ValueError(f'num_clips={num_clips} and num_crops={num_crops} must be >= 1')
  source = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f'{source}: cannot read the file ({e.strerror})') from e
  length = decode.probe(data, source).num_frames  # DecodeError names the file
  if length < plan.frames:
    raise ValueError(f'{source}: {length} decodable frames, fewer than the {plan.frames} '
                     'frames of the grid; choose a grid with fewer frames')
  record = {'video': data, 'num_frames': length, 'label': -1, 'id': source}
  view = pipeline.EvalClip([record], plan.frames, plan.resolution, num_clips, num_crops,
                           plan.num_tokens(patch_size, tubelet_size), patch_size,
                           tubelet_size)
  batch = pipeline.Batcher(patch_size, tubelet_size, view.n_max)(
      [view(clip) for clip in range(num_clips)])  # [V, ...]
  if batch['replaced'].any():  # probed fine but a clip failed: EvalClip logged why
    raise ValueError(f'{source}: decoding the sampled frames failed')
  return TokenBatch(**{k: batch[k] for k in pipeline.TOKEN_FIELDS})


def read_class_names(path: str | os.PathLike) -> list[str]:
  """Class names from a text file, one per line, in class-index order."""
  try:
    with open(path) as f:
      return [line.strip() for line in f.read().strip().splitlines()]
  except OSError as e:
    raise ValueError(f'{path}: cannot read the class names ({e.strerror})') from e


def _labels(model: FluxViT, names: Sequence[str] | None, checkpoint) -> list[str]:
  if names is None:
    return [str(i) for i in range(model.num_classes)]
  if len(names) != model.num_classes:
    raise ValueError(f'{len(names)} class names for the {model.num_classes} classes of '
                     f'{checkpoint}')
  return list(names)


@functools.lru_cache(maxsize=4)
def _load(directory: str) -> tuple[FluxViT, dict, dict]:
  """(model, params, metadata) of a params checkpoint, cached by its real path."""
  model, params = ckpt.load_params(directory)
  return model, params, ckpt.read_config(directory).get('metadata', {})


@functools.lru_cache(maxsize=16)
def _eval_step(model: FluxViT, budget: int, head: int):
  """`make_eval_step` jitted once per (model, budget, head); it compiles per grid."""
  return jax.jit(make_eval_step(model, budget=budget, head=head))


@functools.partial(jax.jit, static_argnames=('model', 'budget', 'head'))
def _classify(model: FluxViT, params, video, budget, head):
  tokens = patchify(video, patch_size=model.patch_size, tubelet_size=model.tubelet_size)
  logits, _ = model.apply({'params': params}, tokens, budget=budget, head=head)
  return logits


def classify(model: FluxViT, params, video, *, budget: int | None = None,
             head: int | None = None) -> jax.Array:
  """Logits of a batch of videos.

  Args:
    model: a FluxViT (e.g. from `load_official_checkpoint`).
    params: its parameters.
    video: float32 `[B, T, H, W, 3]`, ImageNet-normalized (the official model's input,
      channels last); any T, any H and W that are multiples of the patch size.
    budget: tokens to keep (group-dynamic selection); None keeps every token.
    head: projector/classifier index; None picks the head whose training budget is
      nearest to the tokens kept.

  Returns:
    float32 logits `[B, num_classes]`.
  """
  video = jnp.asarray(video, jnp.float32)
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f'video must be [B, T, H, W, 3], got shape {video.shape}')
  _, t, h, w, _ = video.shape
  p, kt = model.patch_size, model.tubelet_size
  if h % p or w % p or t % kt:
    raise ValueError(f'video {t}x{h}x{w} must have H, W multiples of {p} and T a multiple '
                     f'of {kt}')
  n = (t // kt) * (h // p) * (w // p)
  if budget is not None and budget < 1:
    raise ValueError(f'budget must be positive, got {budget}')
  if keeps_all(budget, n):
    budget = None  # every token fits
  if head is None:
    head = model.nearest_head(budget, n)
  return _classify(model, params, video, budget, head)
