r"""FluxViT-S/B fine-tuning on Kinetics-400 with Flux-Multi or Flux-Single (SPEC C.3-C.6).

The released recipe: 64 GPUs x 8 videos x num_sample 2, 5 epochs (1 warmup), lr 2e-4
scaled to 8e-4, layer decay 0.75, drop path 0.1, budgets 3072/2048/1024, Flux frames
6..24 at 112..336 px within 2048..6144 tokens. Build the dataset once:

  python -m flux_jax.cli.build_dataset video_csv --name k400 --data_dir /data/tfds \
      --split train=k400_train.txt --split validation=k400_val.txt --root /data/k400 \
      --short_side 320

FluxViT-S, Flux-Multi, from a converted K710 checkpoint, on a TPU pod:

  launch/tpu_pod.sh --name flux --zone us-east5-b --type v5litepod-64 -- \
      -m flux_jax.cli.train --config configs/fluxvit_k400.py:variant=small,mode=multi \
      --workdir gs://bucket/fluxvit_s_multi --config.init=gs://bucket/fluxvit_s_k710

FluxViT-B, Flux-Single (budget 2048, head 1), on SLURM:

  sbatch --nodes=8 --gpus-per-node=8 launch/slurm_gpu.sbatch -m flux_jax.cli.train \
      --config configs/fluxvit_k400.py:variant=base,mode=single --workdir /ckpt/b_single
"""

from flux_jax.configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, variant='small', mode='multi', data_dir='/data/tfds',
                       batch=512, epochs=5, runlocal=False)
  if a['mode'] not in ('multi', 'single'):
    raise ValueError(f"mode={a['mode']!r} is not 'multi' or 'single'")
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''  # a flux_jax checkpoint directory (python -m flux_jax.cli.convert) or ''
  config.model = common.model(a['variant'], num_classes=400, drop_path_rate=0.1,
                              dtype='bfloat16', remat='full', attention='auto')
  config.data = common.data('video_csv', 'k400', a['data_dir'], num_sample=2, workers=8)
  config.flux = common.flux()
  config.n_max = 6144
  config.train = common.ConfigDict(dict(
      mode=a['mode'], budgets=(3072, 2048, 1024), single_budget=2048, single_head=1,
      global_batch_size=a['batch'] * 2,  # clips: videos x num_sample
      epochs=a['epochs'], steps=0,  # steps > 0 overrides epochs
      smoothing=0.1, log_every=50,
      max_nonfinite_steps=10))  # a streak of NaN/inf steps stops the run
  config.mixup = common.mixup()
  config.optim = common.optim(lr=2e-4, warmup_epochs=1.0)
  config.eval = common.ConfigDict(dict(every_steps=0, frames=8, resolution=224, budget=2048,
                                       head=1, num_clips=1, num_crops=1, batch_size=64))
  config.mesh = common.mesh()
  config.sharding = common.sharding()
  config.checkpoint = common.ConfigDict(dict(every_steps=1000, keep=3))
  if a['runlocal']:  # a shape check on one machine
    config.model.variant, config.model.dtype, config.model.remat = 'tiny', 'float32', 'none'
    config.train.steps, config.train.global_batch_size = 2, 4
  config.lock()
  return config
