"""Pieces the experiment scripts share."""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app

from flux_jax.model.fluxvit import FluxViT
from flux_jax.loop import PARAMS_DIR, train_and_evaluate

PATCH = FluxViT.patch_size  # the experiments' models keep the default patch


def train_once(config, workdir: str) -> str:
  """Trains unless WORKDIR/params exists; returns that params directory."""
  params = os.path.join(workdir, PARAMS_DIR)
  if not os.path.isdir(params):
    train_and_evaluate(config, workdir)
  return params


def _int_pair(values: Sequence[str], flag: str, want: str, ok) -> tuple[int, int]:
  """A `--flag=a,b` list flag as two ints, refused unless `ok(a, b)`."""
  pair = tuple(int(v) for v in values)
  if len(pair) != 2 or not ok(*pair):
    raise app.UsageError(f'--{flag}={",".join(values)}: want {want}')
  return pair


def parse_grid(values: Sequence[str], flag: str) -> tuple[int, int]:
  """A `--flag=frames,resolution` list flag as ints, refused unless the resolution is a
  multiple of the patch size."""
  return _int_pair(values, flag, f'frames,resolution with the resolution a multiple of '
                   f'{PATCH}', lambda frames, resolution: resolution % PATCH == 0)


def parse_range(values: Sequence[str], flag: str) -> tuple[int, int] | None:
  """A `--flag=min,max` list flag as ints (empty: None), refused unless 0 < min <= max."""
  if not values:
    return None
  return _int_pair(values, flag, 'min,max with 0 < min <= max', lambda lo, hi: 0 < lo <= hi)
