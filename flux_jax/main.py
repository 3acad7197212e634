r"""Entry point: flags only; the work is flux_jax.train.loop.train_and_evaluate.

  python -m flux_jax.main --config configs/synthetic_demo.py --workdir /tmp/flux_demo \
      [--config.train.steps=600] [--multihost] [--accelerator=tpu]
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flux_jax import hosts
from flux_jax.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints and metrics; resumes from it.')
_STOP_AT = flags.DEFINE_integer('stop_at', None, 'Stop after this step (resume later).')
hosts.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietOrbax(logging.logging.Filter):
  """Orbax logs every save step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  hosts.start_from_flags()
  _, result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, _STOP_AT.value)
  logging.info('final: %s', result)


if __name__ == '__main__':
  app.run(main)
