r"""The demo: Flux-Multi on synthetic_motion 'panning' from scratch, ~12 minutes on 2 CPU cores.

  python -m flux_jax.cli.train --config configs/synthetic_demo.py --workdir /tmp/flux_demo

synthetic_motion has 6 classes (chance 16.7%): a disc moves left/right/up/down or
grows/shrinks among wandering squares over a panning background ('panning', see
flux_jax.data.synthetic). Clips are 32-64 frames of 112-192 px; Flux draws 4..16 frames
at 56..112 px (64 to 256 raw tokens), the selector keeps 64, 32 and 16 (the heads).
The fixed evaluation grid is 8 x 56^2 (128 raw tokens).
`arg`: `configs/synthetic_demo.py:steps=1800,size=panning,batch=16`. From scratch the
model sits at chance for about 400 steps of 16 clips before it finds the disc (measured
with the 'easy' and 'panning' tasks, with or without dual patch norm, LayerScale 1e-5,
0.1 or 1); hence the step count.
"""

from flux_jax.configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, steps=1800, size='panning', data_dir='~/tensorflow_datasets',
                       batch=16)
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''
  config.model = common.model(
      'tiny', num_classes=6, embed_dim=96, depth=4, num_heads=3, attn_pool_num_heads=4,
      clip_embed_dim=96, pos_grid=(8, 8, 8), head_budgets=(64, 32, 16),
      drop_path_rate=0.05,
      pos_temporal_scale=5.0,  # from scratch: see FluxViT.pos_temporal_scale
      scan_layers=False)  # 4 blocks on CPU: unrolled compiles as fast and steps ~25% faster
  config.data = common.data('synthetic_motion', a['size'], a['data_dir'], flip=False,
                            scale=(0.5, 1.0),  # direction-sensitive: no flip
                            train_split='train[:90%]')  # 10% held out for TO's choice
  config.flux = common.flux(frames=(4, 18, 2), resolutions=(56, 126, 14), min_tokens=64,
                            max_tokens=256)
  config.n_max = 256
  config.train = common.ConfigDict(dict(
      mode='multi', budgets=(64, 32, 16), single_budget=32, single_head=1,
      global_batch_size=a['batch'], epochs=0, steps=a['steps'], smoothing=0.1,
      log_every=20, max_nonfinite_steps=10))  # a streak of NaN/inf steps stops the run
  config.mixup = common.mixup(enabled=False)
  config.optim = common.optim(lr=2e-3, scale_lr=False, min_lr=1e-5, warmup_lr=1e-5,
                              warmup_epochs=0.5, weight_decay=0.05, layer_decay=None)
  config.eval = common.ConfigDict(dict(every_steps=0, frames=8, resolution=56, budget=64,
                                       head=common.optional(int), num_clips=1, num_crops=1,
                                       batch_size=32, budgets=(64, 32, 16),
                                       select_split='train[90%:]'))  # unbiased TO
  config.mesh = common.mesh()
  config.sharding = common.sharding()
  config.checkpoint = common.ConfigDict(dict(every_steps=200, keep=2))
  config.lock()
  return config
