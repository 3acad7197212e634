"""Flux sampling plans: one (frames, resolution) per global batch (SPEC C.1).

Every valid (T, R) pair of the config's frame and resolution ranges whose raw token count
lies in [min_tokens, max_tokens] is equally likely. The draw for batch `step` comes from an
RNG keyed on (seed, step), so every host draws the same plan without talking.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class FluxPlan:
  """The sampling grid of one batch: `frames` frames at `resolution` x `resolution`."""
  frames: int
  resolution: int

  def num_tokens(self, patch_size: int, tubelet_size: int = 1) -> int:
    return (self.frames // tubelet_size) * (self.resolution // patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class PlanSampler:
  """Draws a FluxPlan per global batch.

  Attributes:
    frames: candidate frame counts, e.g. range(6, 26, 2).
    resolutions: candidate square crop sizes, multiples of `patch_size`.
    min_tokens, max_tokens: inclusive raw-token limits (official: 2048, 6144).
    patch_size, tubelet_size: token shape.
    seed: the plan RNG seed.
  """
  frames: tuple[int, ...]
  resolutions: tuple[int, ...]
  min_tokens: int
  max_tokens: int
  patch_size: int = 14
  tubelet_size: int = 1
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, 'frames', tuple(int(t) for t in self.frames))
    object.__setattr__(self, 'resolutions', tuple(int(r) for r in self.resolutions))
    bad = [r for r in self.resolutions if r % self.patch_size]
    if bad:
      raise ValueError(f'resolutions {bad} are not multiples of the patch size '
                       f'{self.patch_size}')
    bad = [t for t in self.frames if t % self.tubelet_size or t <= 0]
    if bad:
      raise ValueError(f'frames {bad} are not positive multiples of the tubelet size '
                       f'{self.tubelet_size}')
    if not self.plans:
      raise ValueError(
          f'no (frames, resolution) pair has between min_tokens={self.min_tokens} and '
          f'max_tokens={self.max_tokens} tokens (frames {self.frames}, resolutions '
          f'{self.resolutions})')

  @property
  def plans(self) -> tuple[FluxPlan, ...]:
    """Every valid plan, frames-major."""
    out = []
    for t in self.frames:
      for r in self.resolutions:
        plan = FluxPlan(t, r)
        if self.min_tokens <= plan.num_tokens(self.patch_size, self.tubelet_size) <= self.max_tokens:
          out.append(plan)
    return tuple(out)

  @property
  def max_plan_tokens(self) -> int:
    return max(p.num_tokens(self.patch_size, self.tubelet_size) for p in self.plans)

  def __call__(self, step: int) -> FluxPlan:
    plans = self.plans
    rng = np.random.default_rng([self.seed, step])
    return plans[int(rng.integers(len(plans)))]

  @classmethod
  def from_config(cls, config: Mapping[str, Any], *, patch_size: int = 14,
                  tubelet_size: int = 1, seed: int = 0) -> 'PlanSampler':
    """From `frames = (start, stop, step)`, `resolutions = (start, stop, step)` (Python
    range arguments, as the official `range_frame_*`/`range_res_*` flags) and token limits.
    """
    try:
      return cls(frames=tuple(range(*config['frames'])),
                 resolutions=tuple(range(*config['resolutions'])),
                 min_tokens=int(config['min_tokens']), max_tokens=int(config['max_tokens']),
                 patch_size=patch_size, tubelet_size=tubelet_size, seed=seed)
    except KeyError as e:
      raise ValueError(f'flux config needs key {e}') from e
