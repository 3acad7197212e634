r"""Flux-UMT with the paper's teacher: FluxViT-S distilled from InternVideo2-1B (SPEC D.2,
D.4, D.5): the teacher sees 2048 tokens of each flexibly sampled clip, the student passes
2048/1536/1024 of them, the student's blocks 6..11 aligned to the teacher's 23, 26, 29,
33, 36, 39 and its projector. The rest of the recipe is configs/umt_fluxvit_s_from_b.py
(InternVideo2's S14 distillation numbers).

Convert the released 1B vision encoder once (no torch needed), then train on a pod:

  python -m flux_jax.cli.convert_iv2 --checkpoint 1B_pt.pth --out gs://bucket/iv2_1b
  launch/tpu_pod.sh --name umt --zone us-east5-b --type v5litepod-64 -- \
      -m flux_jax.cli.train --config configs/umt_fluxvit_s_from_iv2_1b.py:teacher=gs://bucket/iv2_1b \
      --workdir gs://bucket/umt_s_iv2

Without `teacher=` the teacher is a random IV2-1B (shape and memory checks only):

  python -m flux_jax.bench aot --config configs/umt_fluxvit_s_from_iv2_1b.py \
      --topology v5p:2x2x1 --batch_per_chip 16
"""

from flux_jax.configs import umt_fluxvit_s_from_b


def get_config(arg: str | None = None):
  return umt_fluxvit_s_from_b.get_config(','.join(filter(None, ['teacher_model=iv2_1b', arg])))
