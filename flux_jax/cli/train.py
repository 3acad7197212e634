r"""Entry point: flags only; the work is flux_jax.loop.train_and_evaluate.

  python -m flux_jax.cli.train --config configs/synthetic_demo.py --workdir /tmp/flux_demo \
      [--config.train.steps=600] [--multihost] [--accelerator=tpu]
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flux_jax.cli import common
from flux_jax.loop import train_and_evaluate

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Checkpoints and metrics; resumes from it.')
  flags.DEFINE_integer('stop_at', None, 'Stop after this step (resume later).')
  common.define_job_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


class _QuietOrbax(logging.logging.Filter):
  """Orbax logs every save step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  common.start_job()
  _, result = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.stop_at)
  logging.info('final: %s', result)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
