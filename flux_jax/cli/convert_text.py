r"""Converts an open_clip or Apple MobileCLIP checkpoint's text tower to flux_jax params
(flags only; the work is flux_jax.convert.open_clip.load_text_tower).

  python -m flux_jax.cli.convert_text --checkpoint open_clip_model.bin --out /ckpt/mbclip_text
  python -m flux_jax.cli.convert_text --checkpoint mobileclip_blt.pt --out /ckpt/mbclip_text

The output is a params checkpoint (checkpoint.save_params, kind 'text') that a CLIP
config's `text_init` names. Files that would run code when unpickled are refused unless
--trust_pickle.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
import jax

from flux_jax.checkpoint import save_params
from flux_jax.convert.open_clip import load_text_tower
from flux_jax.model.text import TEXT_VARIANTS, text_model_config

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('checkpoint', None, 'open_clip or MobileCLIP .pt/.pth/.bin/.npz file.')
  flags.DEFINE_string('out', None, 'flux_jax params checkpoint directory to write.')
  flags.DEFINE_enum('variant', 'mobileclip_b', sorted(TEXT_VARIANTS), 'Text tower variant '
                    '(its heads; the other sizes are read off the tensors).')
  flags.DEFINE_string('prefix', None, "The text keys' prefix (e.g. 'text.'); found from "
                      'the token embedding by default.')
  flags.DEFINE_bool('trust_pickle', False, 'Unpickle the checkpoint fully, running any code '
                    'it holds: only for files you trust.')
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
  flags.mark_flags_as_required(['checkpoint', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    model, params = load_text_tower(FLAGS.checkpoint, FLAGS.variant, prefix=FLAGS.prefix,
                                    trust_pickle=FLAGS.trust_pickle)
    save_params(FLAGS.out, params, text_model_config(model), kind='text',
                overwrite=FLAGS.overwrite,
                metadata=dict(source=os.path.abspath(FLAGS.checkpoint), kind='text'))
  except ValueError as e:  # CheckpointError too: the messages name the file and key
    raise SystemExit(f'flux_jax.cli.convert_text: {e}') from e
  logging.info('wrote %s text-tower parameters (width %d, %d layers) to %s',
               f'{sum(x.size for x in jax.tree.leaves(params)):,}', model.width,
               model.layers, FLAGS.out)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
