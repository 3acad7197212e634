r"""Flux-UMT on synthetic_motion: distil a small student from a trained synthetic teacher.

The teacher is a finished synthetic_demo run (its WORKDIR/params); minutes on 2 CPU cores:

  python -m flux_jax.cli.train --config configs/synthetic_demo.py --workdir /tmp/flux_demo
  python -m flux_jax.cli.train --config configs/umt_synthetic.py:teacher=/tmp/flux_demo/params \
      --workdir /tmp/flux_umt

The student (WORKDIR/params) then fine-tunes with Flux-Multi through `config.init`;
flux_jax/experiments/umt_synthetic.py runs the whole chain and a from-scratch baseline.
Teacher 128 tokens, students 128/96/64 (the 2048/1536/1024 ratios of SPEC D.4).
"""

from flux_jax.configs import common
from flux_jax.configs import synthetic_demo
from flux_jax.configs import umt_fluxvit_s_from_b

# The student: synthetic_demo's layout at two thirds of the width.
STUDENT = dict(embed_dim=64, depth=4, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=64)


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, teacher='/tmp/flux_demo/params', steps=300, size='panning',
                       data_dir='~/tensorflow_datasets', batch=16)
  config = synthetic_demo.get_config(f"steps={a['steps']},size={a['size']},"
                                     f"data_dir={a['data_dir']},batch={a['batch']}")
  config.unlock()
  config.model.update(STUDENT)
  config.flux.min_tokens = 128  # every clip gives the teacher its t_tokens (SPEC D.5 item 1)
  config.train.mode = 'distill'
  config.distill = umt_fluxvit_s_from_b.distill(
      teacher=a['teacher'], teacher_model=synthetic_demo.get_config().model.to_dict(),
      teacher_layers=(3, 2), student_layers=(3, 2), t_tokens=128, s_tokens=(128, 96, 64))
  config.optim.update(lr=1e-3, b2=0.98, eps=1e-6, clip_grad=5.0)
  config.eval.every_steps = 0  # the classifier heads are not trained here
  config.lock()
  return config
