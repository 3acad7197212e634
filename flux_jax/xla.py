"""XLA bookkeeping shared by tests, benchmarks and training: compile counts, memory."""

from __future__ import annotations

import threading

import jax

_BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'


class CompileCounter:
  """Counts XLA backend compilations while active (a context manager).

  Prepare inputs before entering: creating arrays on device can compile small programs.
  """

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _BACKEND_COMPILE:
      with self._lock:
        self.count += 1

  def __enter__(self) -> 'CompileCounter':
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listener)
