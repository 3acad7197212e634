r"""Learning rate x Flux-Multi/Single on the synthetic demo: 6 runs of a few minutes each.

  python -m flux_jax.cli.sweep configs/sweeps/synthetic_demo_lr.py --workdir /tmp/flux_sweep \
      [--launch=local] [--only=0,3]

`arg`: `configs/sweeps/synthetic_demo_lr.py:steps=200` sets the base config's steps.
"""

from flux_jax.configs import common
from flux_jax.cli import sweep


def get_sweep(arg: str | None = None) -> sweep.Sweep:
  a = common.parse_arg(arg, steps=400)
  return sweep.Sweep(
      config=f'configs/synthetic_demo.py:steps={a["steps"]}',
      points=sweep.product({
          'optim.lr': [3e-4, 1e-3, 3e-3],
          'train.mode': ['multi', 'single'],
      }))
