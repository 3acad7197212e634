r"""Flux-UMT: distil FluxViT-S from a frozen FluxViT-B (SPEC D.2 recipe, D.5 reconstruction).

The numbers start from InternVideo2's S14 distillation (SPEC D.2): AdamW (0.9, 0.98),
eps 1e-6, lr 1e-3 x batch / 256 (4096 clips: 1.6e-2), wd 0.05, clip 5.0, drop path 0.05,
20 warmup epochs of 101, bf16; teacher 2048 tokens, students 2048/1536/1024 (SPEC D.4),
Flux sampling at 140..252 px with T x (R/14)^2 >= 2048 (SPEC D.5 item 1). Frames and the
token ceiling are unknown for pretraining: the fine-tuning ranges are used.

Convert the teacher, build the K-Mash CSV dataset (video_csv builder, see
configs/fluxvit_k400.py), then on a pod:

  python -m flux_jax.cli.convert --checkpoint fluxvit_b.pth --variant base --num_classes 400 \
      --num_frames 32 --out /ckpt/fluxvit_b
  launch/tpu_pod.sh --name umt --zone us-east5-b --type v5litepod-64 -- \
      -m flux_jax.cli.train --config configs/umt_fluxvit_s_from_b.py:teacher=/ckpt/fluxvit_b \
      --workdir gs://bucket/umt_s

`teacher_model=iv2_1b` distils from the InternVideo2-1B ViT instead (layers 23..39,
SPEC D.2), random unless `teacher=` names a params directory written by
flux_jax.cli.convert_iv2 (configs/umt_fluxvit_s_from_iv2_1b.py sets it);
`teacher=iv2_1b` alone still means a random IV2-1B. `classes` is the
label count of the built dataset (the student's classifier is retrained at fine-tuning).
`runlocal=true`: a tiny random teacher and student, two steps, a shape check.
"""

from flux_jax.configs import common


def distill(**kw) -> common.ConfigDict:
  """The `config.distill` block (flux_jax.train.distill; INFERRED choices marked)."""
  block = dict(
      teacher='',  # a params dir (save_params, WORKDIR/params); '' = random teacher_model
      teacher_model=common.model('base', num_classes=400),  # only when teacher == ''
      teacher_dtype='',  # e.g. 'bfloat16' to run a float32 checkpoint in bf16
      teacher_head=-1,  # projector of the final target; -1: trained nearest to t_tokens
      teacher_layers=(11, 10, 9, 8, 7, 6),  # last 6 blocks (IV2 interval 1 for depth 12)
      teacher_rules=(),  # logical-axis rules for the teacher params; () = DEFAULT_RULES
      student_layers=(11, 10, 9, 8, 7, 6),  # SPEC D.2
      t_tokens=2048, s_tokens=(2048, 1536, 1024),  # SPEC D.4
      heads=(0, 1, 2),  # INFERRED: one projector per student count (D.5 item 4)
      subset='attention',  # INFERRED: attention masking on the teacher set (D.5 item 3)
      selector='group_dynamic', select_with='teacher',  # INFERRED (D.5 item 2)
      passes='all',  # INFERRED: every count each step, losses summed (D.5 item 4)
      layer_decoder='mlp', final_decoder='mlp',  # IV2 MLP_Decoder (SPEC D.2)
      loss_weights=(1.0, 1.0))  # middle, final (clip_loss_ratio, SPEC D.2)
  block.update(kw)
  return common.ConfigDict(block)


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, teacher='', teacher_model='base', data_dir='/data/tfds', dataset='kmash', classes=710,
                       batch=4096, epochs=101, runlocal=False)
  config = common.ConfigDict()
  config.seed = 0
  config.init = ''
  config.model = common.model('small', num_classes=a['classes'], drop_path_rate=0.05,
                              dtype='bfloat16', remat='full', attention='auto')
  config.data = common.data('video_csv', a['dataset'], a['data_dir'], workers=8)
  config.flux = common.flux(frames=(6, 26, 2), resolutions=(140, 266, 28), min_tokens=2048,
                            max_tokens=6144)
  config.n_max = 6144
  config.train = common.ConfigDict(dict(
      mode='distill', budgets=(3072, 2048, 1024), single_budget=2048, single_head=1,
      global_batch_size=a['batch'], epochs=a['epochs'], steps=0, smoothing=0.0,
      log_every=50, max_nonfinite_steps=10))  # a streak of NaN/inf steps stops the run
  iv2 = 'iv2_1b' in (a['teacher'], a['teacher_model'])
  if not iv2 and a['teacher_model'] != 'base':
    raise ValueError(f"teacher_model={a['teacher_model']!r} is not 'base' or 'iv2_1b'")
  config.distill = distill(teacher='' if a['teacher'] == 'iv2_1b' else a['teacher'],
                           teacher_dtype='bfloat16')
  if iv2:
    # Both in block order, as InternVideo2 stacks them: 23 <-> 6, ..., 39 <-> 11.
    config.distill.update(teacher_model=common.model('iv2_1b', num_classes=1),
                          teacher_layers=(23, 26, 29, 33, 36, 39),
                          student_layers=(6, 7, 8, 9, 10, 11))
  config.mixup = common.mixup(enabled=False)
  config.optim = common.optim(lr=1e-3, warmup_epochs=20.0, b1=0.9, b2=0.98, eps=1e-6,
                              weight_decay=0.05, layer_decay=None, clip_grad=5.0)
  config.eval = common.ConfigDict(dict(every_steps=0, frames=8, resolution=224, budget=2048,
                                       head=1, num_clips=1, num_crops=1, batch_size=64))
  config.mesh = common.mesh()
  config.sharding = common.sharding()
  config.checkpoint = common.ConfigDict(dict(every_steps=1000, keep=3))
  if a['runlocal']:
    config.model.update(variant='tiny', dtype='float32', remat='none', pos_grid=(4, 4, 4))
    config.distill.update(teacher='', teacher_dtype='', teacher_model=common.model(
        'tiny', num_classes=1), teacher_layers=(1, 0), student_layers=(1, 0), t_tokens=48,
                          s_tokens=(48, 32, 16))
    config.train.update(steps=2, global_batch_size=4)
    config.flux.update(frames=(2, 6, 2), resolutions=(56, 84, 14), min_tokens=48,
                       max_tokens=96)
    config.n_max = 96
  config.lock()
  return config
