"""The processes of a job: starting one, and coordinating them without devices.

`start` is every entry point's first call: it joins a multi-host job (found from the
environment on a TPU pod or under SLURM, or given explicitly for a local job), logs where
jax runs and refuses a platform other than the one the launcher asked for.

A dataset build or another one-off write happens on process 0 while the others wait
(DESIGN.md 6). The wait is a barrier of jax's coordination service with a timeout of its
own, not a device collective: a build may take minutes, longer than a collective waits.
"""

from __future__ import annotations

import itertools
from typing import Callable, TypeVar

from absl import logging
import jax

_T = TypeVar('_T')
WAIT_S = 6 * 3600.0  # a build on process 0 may take hours (video_csv of a large set)
_CALLS = itertools.count()  # every process calls in the same order: same barrier names


def barrier(name: str, timeout_s: float = WAIT_S) -> None:
  """Blocks until every process of the job reaches `name`; no-op with one process.

  Raises when the timeout passes or a process fails (the coordination service says so).
  """
  if jax.process_count() == 1:
    return
  # The coordination service's barrier (what orbax's distributed barrier calls); jax has
  # no public barrier with a timeout.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def process_zero_first(name: str, fn: Callable[[], _T], timeout_s: float = WAIT_S) -> _T:
  """Runs `fn` on process 0, then, once it has returned, on every other process.

  For work whose result later calls reuse: process 0 writes a dataset to a shared
  directory, the others find it there (or, with host-local directories, write their own).
  Every process must make the same calls in the same order.
  """
  if jax.process_count() == 1:
    return fn()
  name = f'flux_jax {name} #{next(_CALLS)}'
  result = fn() if jax.process_index() == 0 else None
  logging.info('process %d waits for process 0 (%s)', jax.process_index(), name)
  barrier(name, timeout_s)
  return result if jax.process_index() == 0 else fn()


def on_process_zero(name: str, fn: Callable[[], None], timeout_s: float = WAIT_S) -> None:
  """Runs `fn` on process 0 while the others wait for it: a write to shared storage that
  every process reads after this call."""
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    barrier(f'flux_jax {name} #{next(_CALLS)}', timeout_s)


# --accelerator: the platform a launcher expects, and the jax extras that provide it.
ACCELERATOR_EXTRAS = {'tpu': ('tpu',), 'gpu': ('cuda12', 'cuda13')}


def start(multihost: bool, accelerator: str = '', *, coordinator_address: str | None = None,
          num_processes: int | None = None, process_id: int | None = None) -> str:
  """Joins the job, logs where jax runs, and refuses to go on when the launcher asked for
  `accelerator` ('tpu', 'gpu'; '' accepts any) and jax found another platform (a venv
  without the accelerator's jax trains on the CPU, slowly). Returns the platform.

  With `multihost`, `jax.distributed.initialize` reads the peers from the environment
  (Cloud TPU metadata, SLURM, JAX_COORDINATOR_ADDRESS...) unless `coordinator_address`,
  `num_processes` and `process_id` name them. It must run before anything touches a
  device.
  """
  if accelerator and accelerator not in ACCELERATOR_EXTRAS:
    raise ValueError(f'--accelerator={accelerator!r} is not one of '
                     f'{sorted(ACCELERATOR_EXTRAS)} (or empty for any)')
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if not multihost or any(v is None for v in explicit):
      raise ValueError('--coordinator_address, --num_processes and --process_id go together, '
                       'with --multihost')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif multihost:
    jax.distributed.initialize()
  platform = jax.default_backend()
  logging.info('jax %s on %s (%s): process %d of %d, %d local devices, %d in all',
               jax.__version__, platform, jax.devices()[0].device_kind, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if accelerator and platform != accelerator:
    extras = ACCELERATOR_EXTRAS[accelerator]
    raise RuntimeError(
        f'--accelerator={accelerator} but jax runs on {platform} '
        f'({jax.device_count()} {platform} devices): this environment has jax without its '
        f'{accelerator.upper()} plugin. Install the pinned jax with it: make clean && make '
        f'.venv/.base ACCEL={extras[0]} (pip install "jax[{extras[0]}]=={jax.__version__}"'
        + (f', or ACCEL={extras[1]}' if len(extras) > 1 else '') + ')')
  return platform
