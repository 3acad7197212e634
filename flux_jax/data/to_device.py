"""Host batches -> TokenBatch of global jax.Arrays for a batch sharding."""

from __future__ import annotations

from typing import Iterable, Iterator

import jax
import numpy as np

from flux_jax.data.pipeline import STAT_FIELDS, TOKEN_FIELDS
from flux_jax.tokens.token_batch import TokenBatch


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, int]:
  """The host batch's pipeline counters (e.g. replaced videos)."""
  return {k: int(batch[k].sum()) for k in STAT_FIELDS if k in batch}


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> TokenBatch:
  """This process's rows of a global batch -> a TokenBatch of global arrays.

  `sharding` splits the leading (batch) axis, e.g. NamedSharding(mesh, P(('data', 'fsdp'))).
  """
  return TokenBatch(**{k: jax.make_array_from_process_local_data(sharding, batch[k])
                       for k in TOKEN_FIELDS})


def global_batches(batches: Iterable[dict[str, np.ndarray]],
                   sharding: jax.sharding.Sharding) -> Iterator[TokenBatch]:
  """Yields a global TokenBatch per host batch."""
  for batch in batches:
    yield to_global(batch, sharding)
