r"""FluxViT-S on Kinetics-400: the released model's evaluation setting (SPEC C.6, C.7).

Convert the released checkpoint, then evaluate (evaluation entry point: a later issue):

  python -m flux_jax.convert --checkpoint fluxvit_small_k400.pth --variant small \
      --num_classes 400 --num_frames 24 --out /tmp/fluxvit_s_k400

`arg` overrides: `configs/fluxvit_s_k400_eval.py:budget=1024,frames=16`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, budget=2048, frames=8, resolution=224, variant='small')
  config = ml_collections.ConfigDict()
  config.model = common.model(a['variant'], num_classes=400, mlp_activation='gelu_tanh',
                              head_budgets=(3072, 2048, 1024))
  config.eval = ml_collections.ConfigDict(dict(
      frames=a['frames'], resolution=a['resolution'], budget=a['budget'],
      head=None,  # None: the head whose training budget is nearest (head 1 at 2048)
      clips=4, crops=3))
  config.lock()
  return config
