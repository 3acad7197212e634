r"""FluxViT-CLIP: FluxViT-S/B with the MobileCLIP-B text tower, Flux at 2048/1024/512 tokens
(SPEC G; paper section 4.3, Table 9).

The paper's recipe: the pre-trained FluxViT (init) in a two-tower CLIP, the vanilla VTC
loss per budget plus smooth-L1 from the 2048-token embedding to the smaller ones; global
batch 4096; AdamW betas (0.9, 0.98), weight decay 0.2, cosine with warmup (InternVideo2's
CLIP stage-1 config, SPEC G.1). Stage 1 trains only FluxViT's projectors (and the align
layers, the scale) on 25M coarse captions (images are 1-frame videos), 3 epochs; stage 2
trains everything on 2M high-quality captions, 1 epoch. The unused classifier heads and
decoders of the FluxViT stay frozen in both.

Build the annotation sets once (VINDLU / InternVideo2 JSON), e.g.

  python -m flux_jax.cli.build_dataset captioned_video --name webvid_cc3m \
      --split train=/data/anno/webvid_cc3m.json --root /data --short_side 320

Stage 1 on a v5e-64 pod, from a converted FluxViT-S (python -m flux_jax.cli.convert) and
the MobileCLIP-B text tower (python -m flux_jax.cli.convert_text):

  launch/tpu_pod.sh --name clip --zone us-east5-b --type v5litepod-64 -- \
      -m flux_jax.cli.train --config configs/fluxvit_clip.py:variant=small,stage=1 \
      --workdir gs://bucket/fluxvit_s_clip1 --config.init=gs://bucket/fluxvit_s_k710 \
      --config.text_init=gs://bucket/mobileclip_b_text

Stage 2 from stage 1's params: `stage=2 --config.init=gs://bucket/fluxvit_s_clip1/params`.
`arg`: variant (small|base), stage (1|2), data (the captioned_video config), data_dir,
batch (global), epochs (default 3 for stage 1, 1 for stage 2), runlocal (a shape check).
"""

from flux_jax.configs import common

# Parameters that never train: the FluxViT classifier parts CLIP does not use; in stage 1
# also everything but FluxViT's projectors, the align layers and the logit scale.
UNUSED = (r'^vision/head_', r'^vision/fc_norm/', r'^vision/final_clip_decoder_')
STAGE1 = UNUSED + (r'^vision/(?!clip_projector_)', r'^text/')
# InternVideo2's no_weight_decay: the temperature and every text-tower parameter.
NO_DECAY = (r'^logit_', r'^text/')


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, variant='small', stage=1, data='webvid_cc3m',
                       data_dir='/data/tfds', batch=4096, epochs=0, runlocal=False)
  if a['stage'] not in (1, 2):
    raise ValueError(f"stage={a['stage']} is not 1 or 2")
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''  # FluxViT params (stage 1: a classifier or distilled FluxViT; stage 2:
  # a stage-1 run's params, which carry the text tower too)
  config.text_init = ''  # the text tower's params (python -m flux_jax.cli.convert_text)
  config.model = common.model(a['variant'], num_classes=400, drop_path_rate=0.1,
                              head_budgets=(2048, 1024, 512), dtype='bfloat16',
                              remat='full', attention='auto')
  config.text = common.ConfigDict(dict(variant='mobileclip_b', dtype='bfloat16'))
  config.clip = common.ConfigDict(dict(loss='softmax', temperature_init=0.01,
                                       bias_init=-10.0, max_logit_scale=100.0))
  config.data = common.data('captioned_video', a['data'], a['data_dir'], num_sample=1,
                            workers=8, flip=False, scale=(0.5, 1.0),
                            caption_length=32,  # InternVideo2's max_txt_l
                            clean_captions=True)  # InternVideo2's pre_text
  config.flux = common.flux(frames=(4, 16, 2), resolutions=(168, 280, 28),
                            min_tokens=2048, max_tokens=4096)
  config.n_max = 4096
  config.train = common.ConfigDict(dict(
      mode='clip', budgets=(2048, 1024, 512), distill_weight=1.0,
      global_batch_size=a['batch'], epochs=a['epochs'] or (3 if a['stage'] == 1 else 1),
      steps=0, smoothing=0.0, log_every=50, max_nonfinite_steps=10))
  config.mixup = common.mixup(enabled=False)
  config.optim = common.optim(lr=4e-4, scale_lr=False, min_lr=4e-6, warmup_lr=1e-6,
                              warmup_epochs=0.6, weight_decay=0.2, b1=0.9, b2=0.98,
                              eps=1e-6, layer_decay=None,
                              frozen=STAGE1 if a['stage'] == 1 else UNUSED,
                              no_decay=NO_DECAY)
  # Retrieval on the eval split at every budget on the plain 8 x 224^2 grid.
  config.eval = common.ConfigDict(dict(every_steps=0, frames=8, resolution=224,
                                       budgets=(2048, 1024, 512), num_clips=1, num_crops=1,
                                       batch_size=64))
  config.mesh = common.mesh()
  config.sharding = common.sharding()
  config.checkpoint = common.ConfigDict(dict(every_steps=1000, keep=3))
  if a['runlocal']:  # a shape check on one machine
    config.model.update(variant='tiny', dtype='float32', remat='none',
                        head_budgets=(64, 32, 16))
    config.text.update(variant='tiny', dtype='float32')
    config.data.caption_length = 16  # the tiny text tower's context
    config.train.update(steps=2, global_batch_size=4, budgets=(64, 32, 16))
    config.eval.update(frames=4, resolution=56, budgets=(64, 32, 16), batch_size=4)
    config.flux.update(frames=(4, 10, 2), resolutions=(56, 84, 28), min_tokens=64,
                       max_tokens=128)
    config.n_max = 128
  config.lock()
  return config
