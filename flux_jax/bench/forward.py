"""Forward speed of FluxViT per token budget.

  python -m flux_jax.bench forward [--variant=small] [--batch=2] [--repeats=3]

For each raw grid and budget: compile time, median forward ms, tokens/s (kept tokens
through the transformer per second) and the share of the forward spent before the blocks
(patch embedding + selection + GLPE), measured with the same model at depth 0.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import numpy as np

from flux_jax.model import init_params, make_model
from flux_jax.model.fluxvit import BLOCK_NAME, BLOCKS
from flux_jax.tokens import patchify
from flux_jax.tokens.select import keeps_all

GRIDS = ((24, 252), (8, 224))  # (T, R): 7776 and 2048 raw tokens for p = 14
BUDGETS = (None, 3072, 2048, 1024, 512)


def compile_and_time(jitted, args, repeats: int, feed=None):
  """(compiled, compile seconds, median run seconds) of `jitted` on `args`.

  Compile time is `lower().compile()` alone; one warm-up run precedes the timed ones.
  `feed(args, out)` gives the next run's arguments: a step that donates its state feeds
  the returned state back in. Without it every run takes the same `args`.
  """
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    if feed is not None:
      args = feed(args, out)
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compiled, compile_s, statistics.median(times)


def markdown_table(title: str, columns, rows) -> str:
  """A title line and a markdown table; `columns` holds (header, row -> cell) pairs."""
  lines = [title, '| ' + ' | '.join(h for h, _ in columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(r) for _, cell in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def run(variant: str = 'small', batch: int = 2, repeats: int = 3, dtype: str = 'float32',
        grids=GRIDS, budgets=BUDGETS, attention: str = 'auto',
        scan_layers: bool = False) -> list[dict]:
  model = make_model(dict(variant=variant, num_classes=400, dtype=dtype, attention=attention,
                          scan_layers=scan_layers))
  params = init_params(model, jax.random.key(0))
  front = dataclasses.replace(model, depth=0)
  front_params = {k: v for k, v in params.items()
                  if k != BLOCKS and not BLOCK_NAME.fullmatch(k)}
  rng = np.random.default_rng(0)
  rows = []
  for t, r in grids:
    video = rng.integers(0, 256, (batch, t, r, r, 3), dtype=np.uint8)
    tokens = jax.device_put(patchify(video, patch_size=model.patch_size))
    n = tokens.n_max
    for budget in budgets:
      if budget is not None and keeps_all(budget, n):
        continue  # same program as keeping every token
      k = n if budget is None else budget
      full = functools.partial(model.apply, budget=budget, head=1)
      pre = functools.partial(front.apply, budget=budget, head=1)
      _, compile_s, full_s = compile_and_time(
          jax.jit(lambda p, x: full({'params': p}, x)[0]), (params, tokens), repeats)
      _, _, pre_s = compile_and_time(
          jax.jit(lambda p, x: pre({'params': p}, x)[0]), (front_params, tokens), repeats)
      rows.append(dict(grid=f'{t}x{r}^2', raw=n, budget=k, compile_s=compile_s,
                       ms=1e3 * full_s, tokens_per_s=batch * k / full_s,
                       front_share=pre_s / full_s))
  return rows


COLUMNS = (
    ('grid', lambda r: r['grid']),
    ('raw tokens', lambda r: f"{r['raw']}"),
    ('kept K', lambda r: f"{r['budget']}"),
    ('compile s', lambda r: f"{r['compile_s']:.1f}"),
    ('forward ms', lambda r: f"{r['ms']:.0f}"),
    ('tokens/s', lambda r: f"{r['tokens_per_s']:.0f}"),
    ('embed+select+GLPE share', lambda r: f"{100 * r['front_share']:.1f}%"),
)


def format_table(rows, title: str) -> str:
  return markdown_table(title, COLUMNS, rows)
