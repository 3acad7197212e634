r"""Converts an InternVideo2 vision-encoder checkpoint into a flux_jax teacher checkpoint.

  python -m flux_jax.cli.convert_iv2 --checkpoint 1B_pt.pth --out /ckpt/iv2_1b
  python -m flux_jax.cli.convert_iv2 --checkpoint stage2_1B.pt --checkpoint_frames 4 \
      --out /ckpt/iv2_1b_stage2        # stage 2 stores 4 frames; the teacher runs 8

The output is a params checkpoint (checkpoint.save_params) that `config.distill.teacher`
names, e.g. configs/umt_fluxvit_s_from_iv2_1b.py:teacher=/ckpt/iv2_1b; its metadata
records the layers the teacher returns. Flags only: the work is
flux_jax.convert.internvideo2.load_iv2_teacher. `.pth` files are read without torch when
torch is not installed.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax

from flux_jax.checkpoint import save_params
from flux_jax.convert.internvideo2 import load_iv2_teacher
from flux_jax.model.fluxvit import model_config

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('checkpoint', None, 'InternVideo2 .pth/.pt/.bin/.npz file.')
  flags.DEFINE_string('out', None, 'flux_jax params checkpoint directory to write.')
  flags.DEFINE_string('variant', 'iv2_1b', 'FluxViT variant of the teacher shape.')
  flags.DEFINE_integer('num_frames', 8, 'Frames the pos_embed is resized to.')
  flags.DEFINE_integer('checkpoint_frames', None, 'Frames of the stored '
                       'pos_embed (read off the checkpoint by default).')
  flags.DEFINE_list('layers', None, 'Blocks the teacher returns (default: the IV2-1B '
                    "teacher's 23,26,29,33,36,39).")
  flags.DEFINE_string('model_overrides', '{}', 'JSON of other FluxViT fields, e.g. '
                      '\'{"dtype": "bfloat16"}\'.')
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
  flags.DEFINE_bool('trust_pickle', False, 'Unpickle the checkpoint fully, running any code '
                    'it holds: only for files you trust. Without it, tensors and the '
                    'containers official checkpoints use load, anything else is refused.')
  flags.mark_flags_as_required(['checkpoint', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    layers = None if FLAGS.layers is None else [int(i) for i in FLAGS.layers]
    overrides = json.loads(FLAGS.model_overrides)
  except ValueError as e:
    raise app.UsageError(f'--layers or --model_overrides: {e}') from e
  try:
    teacher, params = load_iv2_teacher(
        FLAGS.checkpoint, variant=FLAGS.variant, num_frames=FLAGS.num_frames,
        layers=layers, checkpoint_frames=FLAGS.checkpoint_frames,
        trust_pickle=FLAGS.trust_pickle, **overrides)
    save_params(FLAGS.out, params, model_config(teacher.model), overwrite=FLAGS.overwrite,
                metadata=dict(source=os.path.abspath(FLAGS.checkpoint), kind='iv2_teacher',
                              teacher_layers=list(teacher.layers), teacher_head=teacher.head))
  except ValueError as e:  # CheckpointError too: the messages name the file
    raise SystemExit(f'iv2_teacher: {e}') from e
  logging.info('wrote %s teacher parameters (depth %d, width %d, layers %s) to %s',
               f'{sum(x.size for x in jax.tree.leaves(params)):,}', teacher.model.depth,
               teacher.model.embed_dim, teacher.layers, FLAGS.out)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
