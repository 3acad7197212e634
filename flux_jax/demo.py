"""The foundation demo: a random FluxViT-S classifies one short video at four budgets.

  python -m flux_jax.demo      (or: make demo)

A later issue replaces this with the real demo (synthetic data, Flux training, TO table).
"""

from __future__ import annotations

import time

from absl import app
from absl import logging
import jax
import numpy as np

from flux_jax.model import init_params, make_model
from flux_jax.model.fluxvit import IMAGENET_MEAN, IMAGENET_STD
from flux_jax.tokens import patchify

BUDGETS = (3072, 2048, 1024, 512)


def moving_square_video(t: int = 16, size: int = 224, seed: int = 0) -> np.ndarray:
  """A bright square moving over a noisy background: uint8 `[T, H, W, 3]`."""
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 60, (t, size, size, 3), dtype=np.uint8)
  for i in range(t):
    y = x = 20 + i * (size - 80) // max(t - 1, 1)
    video[i, y:y + 40, x:x + 40] = (250, 200, 40)
  return video


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  model = make_model(dict(variant='small', num_classes=400))
  params = init_params(model, jax.random.key(0))
  pixels = moving_square_video()
  video = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)[None]
  t, h, w = video.shape[1:4]
  raw = t * (h // 14) * (w // 14)
  print(f'FluxViT-S (random init), video {t}x{h}x{w} = {raw} raw tokens, '
        f'{jax.devices()[0].platform}')
  print('| budget | kept tokens | head | logits shape | compile s | forward ms |')
  print('|---|---|---|---|---|---|')
  tokens = jax.device_put(patchify(video))
  for budget in BUDGETS:
    head = model.nearest_head(budget, raw)
    forward = jax.jit(lambda p, x, b=budget, h=head: model.apply({'params': p}, x, budget=b,
                                                                 head=h))
    t0 = time.perf_counter()
    jax.block_until_ready(forward(params, tokens))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits, aux = jax.block_until_ready(forward(params, tokens))
    ms = 1e3 * (time.perf_counter() - t0)
    kept = int(aux['kept_valid'].sum()) // video.shape[0]
    print(f'| {budget} | {kept} | {head} | {tuple(logits.shape)} | {compile_s:.1f} | '
          f'{ms:.0f} |')


if __name__ == '__main__':
  app.run(main)
