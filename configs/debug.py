r"""A seconds-long smoke run: tiny model, tiny synthetic_motion, a few steps.

  python -m flux_jax.cli.train --config configs/debug.py --workdir /tmp/flux_debug
"""

from flux_jax.configs import synthetic_demo


def get_config(arg: str | None = None):
  config = synthetic_demo.get_config(arg or 'steps=4,size=tiny,batch=4')
  config.model.update(embed_dim=64, depth=2, num_heads=2, clip_embed_dim=64,
                      pos_grid=(4, 4, 4))
  config.eval.update(every_steps=4, batch_size=4,
                     select_split='')  # TO picks on validation: all 24 clips train
  config.data.train_split = 'train'
  config.checkpoint.every_steps = 2
  config.train.log_every = 1
  return config
