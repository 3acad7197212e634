"""python -m flux_jax.bench {forward|pipeline} [flags]

  forward:  FluxViT forward ms and tokens/s per budget (--variant --batch --repeats --dtype)
  pipeline: grain Flux pipeline clips/s against raw PyAV, stall share (--batch --steps)
"""

from absl import app
from absl import flags
from absl import logging
import jax

flags.DEFINE_string('variant', 'small', 'FluxViT variant.')
flags.DEFINE_integer('batch', 2, 'Videos (forward) or clips (pipeline) per batch.')
flags.DEFINE_integer('repeats', 3, 'forward: timed runs per point (median reported).')
flags.DEFINE_string('dtype', 'float32', 'forward: compute dtype.')
flags.DEFINE_integer('steps', 12, 'pipeline: batches timed per setting.')
FLAGS = flags.FLAGS

BENCHES = ('forward', 'pipeline')


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
  else:
    from flux_jax.bench import pipeline  # pylint: disable=g-import-not-at-top
    title = (f'Flux pipeline on synthetic_motion clips, batch {FLAGS.batch}, '
             f'{FLAGS.steps} steps, FluxViT-{FLAGS.variant[0].upper()} forward at 512 '
             f'tokens, {where}')
    print(pipeline.format_table(pipeline.run(FLAGS.batch, FLAGS.steps, variant=FLAGS.variant),
                                title))


if __name__ == '__main__':
  app.run(main)
