"""python -m flux_jax.bench {forward|step|distill|pipeline} [flags]

  forward:  FluxViT forward ms and tokens/s per budget (--variant --batch --repeats --dtype)
  step:     train step ms, kept tokens/s and temp memory per budget set (--variant --batch
            --repeats --dtype --budgets --remat)
  distill:  Flux-UMT step ms and memory with the teacher, without it (targets given) and the
            teacher alone (--config configs/umt_synthetic.py --batch --repeats --frames
            --resolution)
  pipeline: grain Flux pipeline clips/s against raw PyAV, stall share (--batch --steps)
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

flags.DEFINE_string('variant', 'small', 'FluxViT variant.')
flags.DEFINE_integer('batch', 2, 'Videos (forward) or clips (pipeline) per batch.')
flags.DEFINE_integer('repeats', 3, 'forward, step: timed runs per point (median reported).')
flags.DEFINE_string('dtype', 'float32', 'forward, step: compute dtype.')
flags.DEFINE_multi_string('budgets', None, 'step: one budget set per flag, largest first, '
                          'e.g. --budgets=3072,2048,1024 --budgets=2048 (default: the '
                          "variant's sets in flux_jax.bench.step.SETUPS).")
flags.DEFINE_bool('remat', False, 'step: rematerialize the blocks in the backward pass (as '
                  'configs/fluxvit_k400.py does; bounds the memory of large budgets).')
config_flags.DEFINE_config_file('config', None, 'distill: a Flux-UMT config.', lock_config=True)
flags.DEFINE_integer('frames', None, 'distill: clip frames (default: the config\'s eval grid).')
flags.DEFINE_integer('resolution', None, 'distill: clip resolution (default: the eval grid).')
flags.DEFINE_integer('steps', 12, 'pipeline: batches timed per setting.')
FLAGS = flags.FLAGS

BENCHES = ('forward', 'step', 'distill', 'pipeline')


def _budget_set(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(b) for b in text.split(','))
  except ValueError:
    raise app.UsageError(f'--budgets={text!r} is not comma-separated ints') from None


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f'usage: python -m flux_jax.bench {{{"|".join(BENCHES)}}} [flags]')
  logging.set_verbosity(logging.WARNING)
  device = jax.devices()[0]
  where = f'{device.platform} ({device.device_kind}), jax {jax.__version__}'
  if argv[1] == 'forward':
    from flux_jax.bench import forward  # pylint: disable=g-import-not-at-top
    title = (f'FluxViT-{FLAGS.variant[0].upper()} forward, batch {FLAGS.batch}, '
             f'{FLAGS.dtype}, {where}')
    print(forward.format_table(
        forward.run(FLAGS.variant, FLAGS.batch, FLAGS.repeats, FLAGS.dtype), title))
  elif argv[1] == 'step':
    from flux_jax.bench import step  # pylint: disable=g-import-not-at-top
    s = step.setup(FLAGS.variant)
    budget_sets = None if FLAGS.budgets is None else [
        _budget_set(text) for text in FLAGS.budgets]
    title = (f'FluxViT-{FLAGS.variant[0].upper()} train step (AdamW, mixup, drop path 0.1, '
             f'donated state{", remat" if FLAGS.remat else ""}), batch {FLAGS.batch}, '
             f'{s.frames}x{s.resolution}^2 padded to {s.n_max} tokens, {FLAGS.dtype}, {where}')
    print(step.format_table(step.run(FLAGS.variant, FLAGS.batch, FLAGS.repeats, FLAGS.dtype,
                                     budget_sets, FLAGS.remat), title))
  elif argv[1] == 'distill':
    from flux_jax.bench import distill  # pylint: disable=g-import-not-at-top
    if FLAGS.config is None:
      raise app.UsageError('bench distill needs --config, e.g. configs/umt_synthetic.py:teacher=')
    rows, teacher = distill.run(FLAGS.config, FLAGS.batch, FLAGS.repeats, FLAGS.frames,
                                FLAGS.resolution)
    title = (f'Flux-UMT step of {FLAGS["config"].config_filename}, batch {FLAGS.batch}, teacher '
             f'{teacher}, random weights, {where}')
    print(distill.format_table(rows, title))
  else:
    from flux_jax.bench import pipeline  # pylint: disable=g-import-not-at-top
    title = (f'Flux pipeline on synthetic_motion clips, batch {FLAGS.batch}, '
             f'{FLAGS.steps} steps, FluxViT-{FLAGS.variant[0].upper()} forward at 512 '
             f'tokens, {where}')
    print(pipeline.format_table(pipeline.run(FLAGS.batch, FLAGS.steps, variant=FLAGS.variant),
                                title))


if __name__ == '__main__':
  app.run(main)
