r"""Classify one video file at a token budget: `flux_jax.predict` and its command line.

  python -m flux_jax.eval.predict VIDEO --checkpoint DIR --budget 1024 [--top_k 5] \
      [--frames 8 --resolution 224 | --to_table WORKDIR/to.json] [--labels names.txt] \
      [--num_clips 1 --num_crops 1]

The sampling grid (frames, resolution) is chosen in this order:
  1. `grid` (`--frames/--resolution`) when given;
  2. else the row of the Token Optimization table `to_table` (a `to.json` of
     `python -m flux_jax.evaluate`) marked best for exactly this budget;
  3. else the grid the checkpoint was evaluated at (its metadata 'eval');
  4. else 8 x 224^2, the official test grid (SPEC C.7).
The head is the one whose training budget is nearest to the tokens kept. A budget of at
least the grid's raw tokens keeps every token (no selection); a budget below 1 is an
error.

Each view is the evaluation pipeline's (`pipeline.EvalClip`, SPEC C.7): frames of
temporal clip c of `num_clips`, short side resized to the resolution, `num_crops` crops
along the long side (one crop: the central one). Probabilities are the softmax averaged
over the views, as in multi-view evaluation.

The command line lives here, behind `__main__`, and not in `flux_jax/predict.py`: a
submodule of that name would replace the function `flux_jax.predict` on import.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from flux_jax import checkpoint as ckpt
from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.plan import FluxPlan
from flux_jax.tokens.token_batch import TokenBatch
from flux_jax.train.steps import make_eval_step

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
  batch = pipeline.concat_batch([view(clip) for clip in range(num_clips)])  # [V, ...]
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


def main(argv):
  cli = flags.FLAGS
  if len(argv) != 2:
    raise app.UsageError('usage: python -m flux_jax.eval.predict VIDEO --checkpoint DIR '
                         '--budget N [flags]')
  if (cli.frames is None) != (cli.resolution is None):
    raise app.UsageError('give --frames and --resolution together')
  grid = None if cli.frames is None else (cli.frames, cli.resolution)
  try:
    names = None if cli.labels is None else read_class_names(cli.labels)
    top = predict(argv[1], cli.checkpoint, budget=cli.budget, top_k=cli.top_k, grid=grid,
                  to_table=cli.to_table, class_names=names, num_clips=cli.num_clips,
                  num_crops=cli.num_crops)
  except ValueError as e:  # the messages name the file, grid or budget
    raise SystemExit(f'flux_jax.eval.predict: {e}') from e
  for label, prob in top:
    print(f'{prob:.4f}  {label}')


def _define_flags() -> None:
  """The command line's flags: defined only when run as a program, so that importing
  the library adds no global flag (`--checkpoint` is also `flux_jax.export`'s)."""
  flags.DEFINE_string('checkpoint', None, 'Params checkpoint directory (save_params).')
  flags.DEFINE_integer('budget', None, 'Tokens the model keeps.')
  flags.DEFINE_integer('top_k', 5, 'Labels printed.')
  flags.DEFINE_integer('frames', None, 'Frames sampled (with --resolution).')
  flags.DEFINE_integer('resolution', None, 'Square crop side in pixels (with --frames).')
  flags.DEFINE_string('to_table', None, 'to.json of python -m flux_jax.evaluate: its best '
                      'grid for the budget.')
  flags.DEFINE_string('labels', None, 'Class names, one per line (for checkpoints '
                      'without them).')
  flags.DEFINE_integer('num_clips', 1, 'Temporal clips averaged.')
  flags.DEFINE_integer('num_crops', 1, 'Spatial crops averaged.')
  flags.mark_flags_as_required(['checkpoint', 'budget'])


if __name__ == '__main__':
  _define_flags()
  app.run(main)
