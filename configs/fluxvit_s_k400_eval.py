r"""FluxViT-S on Kinetics-400: the released model's evaluation setting (SPEC C.6, C.7).

Convert the released checkpoint, then evaluate 4 clips x 3 crops at 8 x 224^2 (2048 tokens,
head 1) and the Token Optimization grids:

  python -m flux_jax.cli.convert --checkpoint fluxvit_small_k400.pth --variant small \
      --num_classes 400 --num_frames 24 --out /ckpt/fluxvit_s_k400
  python -m flux_jax.cli.evaluate --checkpoint /ckpt/fluxvit_s_k400 \
      --config configs/fluxvit_s_k400_eval.py --budgets 3072,2048,1024,512 \
      --frames 4,8,12,16,24 --resolutions 168,224,252,280 --out /results/fluxvit_s_to

`arg` overrides: `configs/fluxvit_s_k400_eval.py:budget=1024,frames=16,data_dir=/data/tfds`.
"""

import ml_collections

from flux_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, budget=2048, frames=8, resolution=224, variant='small',
                       data_dir='/data/tfds')
  config = ml_collections.ConfigDict()
  config.model = common.model(a['variant'], num_classes=400, mlp_activation='gelu_tanh',
                              head_budgets=(3072, 2048, 1024))
  config.data = common.data('video_csv', 'k400', a['data_dir'])  # see configs/fluxvit_k400.py
  config.eval = ml_collections.ConfigDict(dict(
      frames=a['frames'], resolution=a['resolution'], budget=a['budget'],
      head=common.optional(int),  # None: the head whose training budget is nearest (head 1 at 2048)
      num_clips=4, num_crops=3, batch_size=12))
  config.lock()
  return config
