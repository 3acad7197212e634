"""Host batches -> TokenBatch of global jax.Arrays for a batch sharding."""

from __future__ import annotations

from typing import Iterable, Iterator

import jax
import numpy as np

from flux_jax.data.pipeline import STAT_FIELDS, TOKEN_FIELDS
from flux_jax.tokens.token_batch import TokenBatch


def split_stats(batch: dict[str, np.ndarray]) -> tuple[dict, dict[str, int]]:
  """TokenBatch fields and the batch's pipeline counters (e.g. replaced videos)."""
  fields = {k: batch[k] for k in TOKEN_FIELDS}
  stats = {k: int(batch[k].sum()) for k in STAT_FIELDS if k in batch}
  return fields, stats


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> TokenBatch:
  """This process's rows of a global batch -> a TokenBatch of global arrays.

  `sharding` splits the leading (batch) axis, e.g. NamedSharding(mesh, P(('data', 'fsdp'))).
  """
  fields, _ = split_stats(batch)
  arrays = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in fields.items()}
  return TokenBatch(**arrays)


def global_batches(batches: Iterable[dict[str, np.ndarray]], sharding: jax.sharding.Sharding,
                   stats: dict[str, int] | None = None) -> Iterator[TokenBatch]:
  """Yields global TokenBatches; accumulates the pipeline counters into `stats`."""
  for batch in batches:
    if stats is not None:
      for k, v in split_stats(batch)[1].items():
        stats[k] = stats.get(k, 0) + v
    yield to_global(batch, sharding)
