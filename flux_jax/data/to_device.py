"""Host batches -> TokenBatch of global jax.Arrays for a batch sharding."""

from __future__ import annotations

from typing import Iterable, Iterator

import jax
import numpy as np

from flux_jax.data.pipeline import STAT_FIELDS, TOKEN_FIELDS
from flux_jax.tokens.token_batch import ClipBatch, TokenBatch


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, int]:
  """The host batch's pipeline counters (e.g. replaced videos)."""
  return {k: int(batch[k].sum()) for k in STAT_FIELDS if k in batch}


def host_rows(sharding: jax.sharding.Sharding, global_batch: int) -> tuple[int, int]:
  """(block, blocks): this process's rows of a global batch as block `block` of `blocks`
  equal blocks, the `process_index`/`process_count` of `pipeline.train_dataset`.

  Read off the sharding, not the process index, so that each host loads exactly the rows
  its devices hold; they must be one contiguous block (the batch axes lead the mesh).
  """
  index = sharding.addressable_devices_indices_map((global_batch,))
  rows = sorted({r for (s,) in index.values() for r in range(*s.indices(global_batch))})
  start, size = rows[0], len(rows)
  if rows != list(range(start, start + size)) or start % size or global_batch % size:
    raise ValueError(f'process {jax.process_index()} holds rows {rows[:4]}... of the global '
                     f'batch of {global_batch}: not one aligned contiguous block; order the '
                     'mesh devices by process')
  return start // size, global_batch // size


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> TokenBatch:
  """This process's rows of a global batch -> a TokenBatch of global arrays.

  `sharding` splits the leading (batch) axis, e.g. NamedSharding(mesh, P(('data', 'fsdp'))).
  """
  return TokenBatch(**{k: jax.make_array_from_process_local_data(sharding, batch[k])
                       for k in TOKEN_FIELDS})


def to_global_clip(batch: dict[str, np.ndarray],
                   sharding: jax.sharding.Sharding) -> ClipBatch:
  """`to_global` with the host batch's captions (`text`): a ClipBatch of global arrays."""
  return ClipBatch(tokens=to_global(batch, sharding),
                   text=jax.make_array_from_process_local_data(sharding, batch['text']))


def global_batches(batches: Iterable[dict[str, np.ndarray]],
                   sharding: jax.sharding.Sharding) -> Iterator[TokenBatch]:
  """Yields a global TokenBatch per host batch."""
  for batch in batches:
    yield to_global(batch, sharding)
