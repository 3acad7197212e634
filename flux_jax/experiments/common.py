"""Pieces the experiment scripts share."""

from __future__ import annotations

import os

from flux_jax.train.loop import PARAMS_DIR, train_and_evaluate


def train_once(config, workdir: str) -> str:
  """Trains unless WORKDIR/params exists; returns that params directory."""
  params = os.path.join(workdir, PARAMS_DIR)
  if not os.path.isdir(params):
    train_and_evaluate(config, workdir)
  return params
