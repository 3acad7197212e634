r"""The demo: Flux-Multi on synthetic_motion from scratch, about half an hour on 2 CPU cores.

  python -m flux_jax.main --config configs/synthetic_demo.py --workdir /tmp/flux_demo

synthetic_motion has 6 classes (chance 16.7%): a disc moves left/right/up/down or
grows/shrinks, so frames, resolution and which tokens are kept all matter. Clips are
32-64 frames of 112-192 px; Flux draws 4..12 frames at 56..112 px.
`arg`: `configs/synthetic_demo.py:steps=400,size=demo,batch=32`. At 400 steps the small
budgets have learned (25/50/67% top-1 at 256/128/64 tokens) but the full budget has not.
"""

from configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, steps=800, size='demo', data_dir='~/tensorflow_datasets',
                       batch=32)
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''
  config.model = common.model(
      'tiny', num_classes=6, embed_dim=96, depth=4, num_heads=3, attn_pool_num_heads=4,
      clip_embed_dim=96, pos_grid=(8, 8, 8), head_budgets=(256, 128, 64),
      drop_path_rate=0.05,
      pos_temporal_scale=5.0)  # from scratch: see FluxViT.pos_temporal_scale
  config.data = common.data('synthetic_motion', a['size'], a['data_dir'], flip=False,
                            scale=(0.5, 1.0),  # direction-sensitive: no flip
                            train_split='train[:90%]')  # 10% held out for TO's choice
  config.flux = common.flux(frames=(4, 14, 2), resolutions=(56, 126, 14), min_tokens=128,
                            max_tokens=512)
  config.n_max = 512
  config.train = common.ConfigDict(dict(
      mode='multi', budgets=(256, 128, 64), single_budget=128, single_head=1,
      global_batch_size=a['batch'], epochs=0, steps=a['steps'], smoothing=0.1,
      log_every=20))
  config.mixup = common.mixup(enabled=False)
  config.optim = common.optim(lr=1e-3, scale_lr=False, min_lr=1e-5, warmup_lr=1e-5,
                              warmup_epochs=0.5, weight_decay=0.05, layer_decay=None)
  config.eval = common.ConfigDict(dict(every_steps=200, frames=8, resolution=112, budget=256,
                                       head=common.optional(int), num_clips=1, num_crops=1,
                                       batch_size=32, budgets=(256, 128, 64),
                                       select_split='train[90%:]'))  # unbiased TO
  config.mesh = common.mesh()
  config.checkpoint = common.ConfigDict(dict(every_steps=200, keep=2))
  config.lock()
  return config
