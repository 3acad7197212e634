r"""FluxViT-CLIP on synthetic_captions, minutes on 2 CPU cores: the Table 9 analogue's recipe.

  python -m flux_jax.cli.train --config configs/clip_synthetic.py --workdir /tmp/clip

synthetic_motion's scenes with templated captions that name the disc's colour and its
motion (flux_jax.data.captions; 3 templates held out of training, so validation captions
include unseen sentences). The vision tower is the demo's FluxViT (heads for 64/32/16
tokens, Flux grids of 64-256 raw tokens), the text tower a tiny CLIP text transformer,
both from scratch; the VTC loss per budget plus smooth-L1 to the 64-token embedding.
`arg`: steps, size ('tiny' | 'small' | 'small_panning'), data_dir, batch, budgets
('multi': Flux-CLIP at 64/32/16; 'single': one head at 64, the single-budget baseline).
flux_jax/experiments/clip_synthetic.py trains both and prints Table 9's rows.
"""

from flux_jax.configs import common
from flux_jax.configs import fluxvit_clip
from flux_jax.configs import synthetic_demo


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, steps=600, size='small', data_dir='~/tensorflow_datasets',
                       batch=32, budgets='multi')
  if a['budgets'] not in ('multi', 'single'):
    raise ValueError(f"budgets={a['budgets']!r} is not 'multi' or 'single'")
  budgets = (64, 32, 16) if a['budgets'] == 'multi' else (64,)
  demo = synthetic_demo.get_config()
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''
  config.text_init = ''
  config.model = common.model(**dict(demo.model.to_dict(), head_budgets=budgets))
  config.text = common.ConfigDict(dict(variant='tiny', width=64, layers=2, heads=2,
                                       context_length=32, output_dim=64))
  config.clip = common.ConfigDict(dict(loss='softmax', temperature_init=0.07,
                                       bias_init=-10.0, max_logit_scale=100.0))
  config.data = common.data('synthetic_captions', a['size'], a['data_dir'], flip=False,
                            scale=(0.5, 1.0),  # direction-sensitive: no flip
                            caption_length=32, clean_captions=True)
  config.flux = demo.flux.copy_and_resolve_references()
  config.n_max = demo.n_max
  config.train = common.ConfigDict(dict(
      mode='clip', budgets=budgets, distill_weight=1.0, global_batch_size=a['batch'],
      epochs=0, steps=a['steps'], smoothing=0.0, log_every=20, max_nonfinite_steps=10))
  config.mixup = common.mixup(enabled=False)
  config.optim = common.optim(lr=1e-3, scale_lr=False, min_lr=1e-5, warmup_lr=1e-5,
                              warmup_epochs=0.5, weight_decay=0.05, b1=0.9, b2=0.98,
                              layer_decay=None, frozen=fluxvit_clip.UNUSED,
                              no_decay=fluxvit_clip.NO_DECAY)
  config.eval = common.ConfigDict(dict(every_steps=0, frames=8, resolution=56,
                                       budgets=(64, 32, 16), num_clips=1, num_crops=1,
                                       batch_size=32))
  config.mesh = common.mesh()
  config.sharding = common.sharding()
  config.checkpoint = common.ConfigDict(dict(every_steps=200, keep=2))
  config.lock()
  return config
