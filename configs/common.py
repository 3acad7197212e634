"""Pieces shared by the experiment configs."""

from __future__ import annotations

import ml_collections


def model(variant: str = 'small', num_classes: int = 400, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block: a FluxViT variant plus field overrides (see make_model)."""
  return ml_collections.ConfigDict(dict(variant=variant, num_classes=num_classes, **overrides))


def parse_arg(arg: str | None, **defaults):
  """`--config configs/x.py:key=value,key2=value2` -> dict with typed defaults."""
  out = dict(defaults)
  for item in (arg or '').split(','):
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config arg {key!r}; known: {sorted(defaults)}')
    kind = type(defaults[key])
    out[key] = (value.lower() in ('1', 'true', 'yes')) if kind is bool else kind(value)
  return out
