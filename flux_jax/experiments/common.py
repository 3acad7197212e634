"""Pieces the experiment scripts share."""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app

from flux_jax.model.fluxvit import FluxViT
from flux_jax.train.loop import PARAMS_DIR, train_and_evaluate

PATCH = FluxViT.patch_size  # the experiments' models keep the default patch


def train_once(config, workdir: str) -> str:
  """Trains unless WORKDIR/params exists; returns that params directory."""
  params = os.path.join(workdir, PARAMS_DIR)
  if not os.path.isdir(params):
    train_and_evaluate(config, workdir)
  return params


def parse_grid(values: Sequence[str], flag: str) -> tuple[int, int]:
  """A `--flag=frames,resolution` list flag as ints, refused unless the resolution is a
  multiple of the patch size."""
  grid = tuple(int(v) for v in values)
  if len(grid) != 2 or grid[1] % PATCH:
    raise app.UsageError(f'--{flag}={",".join(values)}: want frames,resolution with the '
                         f'resolution a multiple of {PATCH}')
  return grid
