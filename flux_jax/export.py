r"""Exports a checkpoint as one `jax.export` artifact per token budget (flags only).

  python -m flux_jax.export --checkpoint WORKDIR/params --budget 2048,1024 \
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

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Params checkpoint directory '
                                  '(save_params).')
_BUDGETS = flags.DEFINE_list('budget', None, 'Token budgets, one artifact each.')
_N_MAX = flags.DEFINE_integer('n_max', None, 'Token slots per sample: the largest grid '
                              'the artifacts accept (e.g. 8 x 224^2 = 2048).')
_OUT = flags.DEFINE_string('out', None, 'Output directory; budget_<B>/ per budget.')
_HEAD = flags.DEFINE_integer('head', None, 'Head for every budget; default: nearest '
                             'training budget.')
_PLATFORMS = flags.DEFINE_list('platforms', None, 'cpu, cuda, rocm, tpu; default: the '
                               'current backend.')
_LABELS = flags.DEFINE_string('labels', None, 'Class names, one per line; default: the '
                              "checkpoint's.")
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing artifacts.')
flags.mark_flags_as_required(['checkpoint', 'budget', 'n_max', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    budgets = [int(b) for b in _BUDGETS.value]
  except ValueError as e:
    raise app.UsageError(f'--budget takes integers, got {_BUDGETS.value}') from e
  try:
    model, params = checkpoint.load_params(_CHECKPOINT.value)
    names = (read_class_names(_LABELS.value) if _LABELS.value else
             checkpoint.read_config(_CHECKPOINT.value)['metadata'].get('class_names'))
    for budget in budgets:
      artifact = export.export_budget(model, params, budget=budget, n_max=_N_MAX.value,
                                      head=_HEAD.value, class_names=names,
                                      platforms=_PLATFORMS.value)
      out = os.path.join(_OUT.value, f'budget_{budget}')
      export.save(artifact, out, overwrite=_OVERWRITE.value)
      logging.info('budget %d (head %d, N_max %d) -> %s', budget,
                   artifact.contract['head'], _N_MAX.value, out)
  except ValueError as e:  # the messages name the file, budget or head
    raise SystemExit(f'flux_jax.export: {e}') from e


if __name__ == '__main__':
  app.run(main)
