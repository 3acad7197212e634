"""Train-step speed of FluxViT per budget set.

  python -m flux_jax.bench step [--variant=small] [--batch=2] [--repeats=3] \
      [--budgets=3072,2048,1024 --budgets=2048]

One jitted train step with the state donated, as the train loop runs it: Flux-Multi
(SPEC C.3) for a set of several budgets, Flux-Single (SPEC C.4) for one, with the K400
recipe's AdamW and layer decay (C.5), Mixup/CutMix and drop path 0.1 (C.6). The clip is a
fixed grid padded to the Flux token limit N_max. For each budget set: compile seconds
(`lower().compile()`), median step ms after a warm-up, kept tokens/s (the budgets'
tokens through the transformer, summed over the forwards, per second), the compiled
step's temporary and peak memory (`memory_analysis()`) and the process's peak resident
memory so far (`getrusage`, which includes compilation and the host copies).
"""

from __future__ import annotations

import resource
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flux_jax.bench.forward import compile_and_time, markdown_table
from flux_jax.model import init_params, make_model
from flux_jax.tokens import patchify
from flux_jax.train import optim
from flux_jax.train import steps
from flux_jax.train.state import TrainState


class Setup(NamedTuple):
  frames: int
  resolution: int
  n_max: int  # token slots per clip: the raw grid padded to it
  budget_sets: tuple[tuple[int, ...], ...]


_RELEASED = Setup(16, 224, 6144, ((3072, 2048, 1024), (2048, 1024, 512), (2048,)))
SETUPS = {
    'small': _RELEASED,
    'base': _RELEASED,
    'tiny': Setup(4, 56, 96, ((48, 32, 16), (32, 16, 8), (32,))),  # 64 raw tokens
}
NUM_CLASSES = 400
MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)  # SPEC C.2
SMOOTHING = 0.1


def setup(variant: str) -> Setup:
  if variant not in SETUPS:
    raise ValueError(f'bench step --variant={variant!r} is not one of {sorted(SETUPS)}')
  return SETUPS[variant]


def _optimizer(depth: int):
  # SPEC C.5/C.6 after the scaling rule; the schedule's length does not change the cost.
  return optim.make_optimizer(dict(
      lr=8e-4, min_lr=4e-6, warmup_lr=4e-6, warmup_steps=10, total_steps=100,
      weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, layer_decay=0.75, clip_grad=None,
      depth=depth))


def make_step(model, tx, budgets: Sequence[int], n_max: int):
  """(step, recipe, heads): Flux-Multi for several budgets; Flux-Single for one, at the
  head whose training budget is nearest."""
  if len(budgets) > 1:
    return steps.make_flux_multi_step(model, tx, budgets=budgets, mix=MIX,
                                      smoothing=SMOOTHING), 'Flux-Multi', range(len(budgets))
  head = model.nearest_head(budgets[0], n_max)
  return steps.make_flux_single_step(model, tx, budget=budgets[0], head=head, mix=MIX,
                                     smoothing=SMOOTHING), 'Flux-Single', (head,)


def run(variant: str = 'small', batch: int = 2, repeats: int = 3, dtype: str = 'float32',
        budget_sets: Sequence[Sequence[int]] | None = None, remat: bool | str = 'none',
        attention: str = 'auto', scan_layers: bool = False) -> list[dict]:
  """One row per budget set (default: the variant's `SETUPS` entry).

  `remat` is the model's policy (configs/fluxvit_k400.py uses 'full'); `attention` its
  implementation: with 'xla' a FluxViT-S Flux-Multi step at 3072 tokens outgrew 19 GB of
  host memory on CPU, 'auto' runs 'chunked' there (memory linear in the tokens);
  `scan_layers` runs the blocks as one scan (the recipes' layout on TPU).
  """
  s = setup(variant)
  budget_sets = s.budget_sets if budget_sets is None else budget_sets
  n_max = s.n_max
  model = make_model(dict(variant=variant, num_classes=NUM_CLASSES, dtype=dtype,
                          drop_path_rate=0.1, remat=remat, attention=attention,
                          scan_layers=scan_layers))
  tx = _optimizer(model.depth)
  params = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (batch, s.frames, s.resolution, s.resolution, 3), dtype=np.uint8)
  tokens = patchify(video, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                    n_max=n_max)
  tokens = jax.device_put(tokens.replace(
      label=rng.integers(0, NUM_CLASSES, batch).astype(np.int32)))
  raw = int(tokens.valid[0].sum())
  key = jax.random.key(1)
  rows = []
  for budgets in budget_sets:
    budgets = tuple(int(b) for b in budgets)
    step, recipe, heads = make_step(model, tx, budgets, n_max)
    # Donation consumes the state: each budget set starts from its own copy of params.
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx)
    compiled, compile_s, step_s = compile_and_time(
        jax.jit(step, donate_argnums=0), (state, tokens, key), repeats,
        feed=lambda args, out: (out[0], *args[1:]))
    memory = compiled.memory_analysis()
    kept = sum(min(b, n_max) for b in budgets)  # a budget >= N_max keeps every slot
    rows.append(dict(
        recipe=recipe, budgets='/'.join(map(str, budgets)),
        heads='/'.join(map(str, heads)), raw=raw, n_max=n_max, kept=kept,
        compile_s=compile_s, ms=1e3 * step_s, tokens_per_s=batch * kept / step_s,
        temp_mib=None if memory is None else memory.temp_size_in_bytes / 2**20,
        peak_mib=None if memory is None else memory.peak_memory_in_bytes / 2**20,
        rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
  return rows


COLUMNS = (
    ('recipe', lambda r: r['recipe']),
    ('budgets', lambda r: r['budgets']),
    ('heads', lambda r: r['heads']),
    ('raw / N_max', lambda r: f"{r['raw']} / {r['n_max']}"),
    ('compile s', lambda r: f"{r['compile_s']:.1f}"),
    ('step ms', lambda r: f"{r['ms']:.0f}"),
    ('kept tokens/s', lambda r: f"{r['tokens_per_s']:.0f}"),
    ('temp MiB', lambda r: 'n/a' if r['temp_mib'] is None else f"{r['temp_mib']:.0f}"),
    ('peak MiB', lambda r: 'n/a' if r['peak_mib'] is None else f"{r['peak_mib']:.0f}"),
    ('process peak RSS MiB', lambda r: f"{r['rss_mib']:.0f}"),
)


def format_table(rows, title: str) -> str:
  return markdown_table(title, COLUMNS, rows)
