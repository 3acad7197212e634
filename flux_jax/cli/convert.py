r"""Converts official PyTorch FluxViT checkpoints to flux_jax orbax checkpoints and back.

  python -m flux_jax.cli.convert --checkpoint fluxvit_s.pth --variant small \
      --num_classes 400 --num_frames 24 --out /ckpt/fluxvit_s_k400
  python -m flux_jax.cli.convert --reverse --checkpoint /ckpt/fluxvit_s_k400 \
      --out fluxvit_s_k400.pth
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
import jax

from flux_jax.checkpoint import load_params, save_params
from flux_jax.convert.official import (load_official_checkpoint, save_official_checkpoint,
                                       to_official_state_dict)
from flux_jax.model.fluxvit import VARIANTS, model_config

FLAGS = flags.FLAGS
def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('checkpoint', None, 'Official .pth/.pt/.bin/.npz file; with --reverse, '
                      'a flux_jax checkpoint directory.')
  flags.DEFINE_string('out', None, 'flux_jax checkpoint directory; with --reverse, a .pth file.')
  flags.DEFINE_bool('reverse', False, 'Convert a flux_jax checkpoint back to a PyTorch state '
                    'dict (official names and layouts).')
  flags.DEFINE_enum('variant', None, sorted(VARIANTS), 'Model size of the official checkpoint.')
  flags.DEFINE_integer('num_classes', None, 'Classifier size of the official checkpoint.')
  flags.DEFINE_integer('num_frames', None, 'Frames of its stored pos_embed (24 for the '
                       'released S, 32 for B).')
  flags.DEFINE_enum('mlp_activation', 'gelu_tanh', ['gelu_tanh', 'gelu'],
                    "'gelu_tanh' for the released (flash-attn) weights, 'gelu' for the plain path.")
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
  flags.DEFINE_bool('trust_pickle', False, 'Unpickle the checkpoint fully, running any code '
                    'it holds: only for files you trust. Without it, tensors and the '
                    'containers official checkpoints use load, anything else is refused.')
  flags.mark_flags_as_required(['checkpoint', 'out'])

_FROM_OFFICIAL_FLAGS = ('variant', 'num_classes', 'num_frames')


def _num_params(params) -> str:
  return f'{sum(x.size for x in jax.tree.leaves(params)):,}'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not FLAGS.reverse:
    missing = [f'--{n}' for n in _FROM_OFFICIAL_FLAGS if FLAGS[n].value is None]
    if missing:
      raise app.UsageError(f'converting an official checkpoint needs {missing}')
  try:
    if FLAGS.reverse:
      if os.path.exists(FLAGS.out) and not FLAGS.overwrite:
        raise ValueError(f'{FLAGS.out}: exists; pass --overwrite to replace it')
      model, params = load_params(FLAGS.checkpoint)
      save_official_checkpoint(FLAGS.out, to_official_state_dict(model, params))
    else:
      model, params = load_official_checkpoint(
          FLAGS.checkpoint, variant=FLAGS.variant, num_classes=FLAGS.num_classes,
          num_frames=FLAGS.num_frames, mlp_activation=FLAGS.mlp_activation,
          trust_pickle=FLAGS.trust_pickle)
      save_params(FLAGS.out, params, model_config(model), overwrite=FLAGS.overwrite,
                  metadata=dict(source=os.path.abspath(FLAGS.checkpoint),
                                variant=FLAGS.variant))
  except ValueError as e:  # CheckpointError too; the messages name the file.
    raise SystemExit(f'flux_jax.cli.convert: {e}') from e
  logging.info('Wrote %s parameters (depth %d, width %d) to %s', _num_params(params),
               model.depth, model.embed_dim, FLAGS.out)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
