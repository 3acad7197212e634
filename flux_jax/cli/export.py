r"""Exports a checkpoint as one `jax.export` artifact per token budget (flags only).

  python -m flux_jax.cli.export --checkpoint WORKDIR/params --budget 2048,1024 \
      --n_max 3136 --out /tmp/fluxvit_export [--platforms cpu,cuda] [--labels names.txt]

writes OUT/budget_<B>/{model.jaxexport, contract.json} per budget; the input contract is
in `flux_jax.eval.export` and in each contract.json. `flux_jax.eval.export.load(DIR)`
gives a callable on TokenBatches.
"""

import os

from absl import app
from absl import flags
from absl import logging

from flux_jax import checkpoint
from flux_jax.eval import export
from flux_jax.eval.predict import read_class_names

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('checkpoint', None, 'Params checkpoint directory '
                      '(save_params).')
  flags.DEFINE_list('budget', None, 'Token budgets, one artifact each.')
  flags.DEFINE_integer('n_max', None, 'Token slots per sample: the largest grid '
                       'the artifacts accept (e.g. 8 x 224^2 = 2048).')
  flags.DEFINE_string('out', None, 'Output directory; budget_<B>/ per budget.')
  flags.DEFINE_integer('head', None, 'Head for every budget; default: nearest '
                       'training budget.')
  flags.DEFINE_list('platforms', None, 'cpu, cuda, rocm, tpu; default: the '
                    'current backend.')
  flags.DEFINE_string('labels', None, 'Class names, one per line; default: the '
                      "checkpoint's.")
  flags.DEFINE_bool('overwrite', False, 'Replace existing artifacts.')
  flags.mark_flags_as_required(['checkpoint', 'budget', 'n_max', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    budgets = [int(b) for b in FLAGS.budget]
  except ValueError as e:
    raise app.UsageError(f'--budget takes integers, got {FLAGS.budget}') from e
  try:
    model, params = checkpoint.load_params(FLAGS.checkpoint)
    names = (read_class_names(FLAGS.labels) if FLAGS.labels else
             checkpoint.read_config(FLAGS.checkpoint)['metadata'].get('class_names'))
    for budget in budgets:
      artifact = export.export_budget(model, params, budget=budget, n_max=FLAGS.n_max,
                                      head=FLAGS.head, class_names=names,
                                      platforms=FLAGS.platforms)
      out = os.path.join(FLAGS.out, f'budget_{budget}')
      export.save(artifact, out, overwrite=FLAGS.overwrite)
      logging.info('budget %d (head %d, N_max %d) -> %s', budget,
                   artifact.contract['head'], FLAGS.n_max, out)
  except ValueError as e:  # the messages name the file, budget or head
    raise SystemExit(f'flux_jax.cli.export: {e}') from e


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
