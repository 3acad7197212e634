"""python -m flux_jax.bench forward [--variant=small --batch=2 --repeats=3 --dtype=float32]"""

from absl import app
from absl import flags
import jax

from flux_jax.bench import forward

flags.DEFINE_string('variant', 'small', 'FluxViT variant.')
flags.DEFINE_integer('batch', 2, 'Videos per forward.')
flags.DEFINE_integer('repeats', 3, 'Timed runs per point (median reported).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
FLAGS = flags.FLAGS

BENCHES = ('forward',)


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f'usage: python -m flux_jax.bench {{{"|".join(BENCHES)}}} [flags]')
  device = jax.devices()[0]
  title = (f'FluxViT-{FLAGS.variant[0].upper()} forward, batch {FLAGS.batch}, {FLAGS.dtype}, '
           f'{device.platform} ({device.device_kind}), jax {jax.__version__}')
  rows = forward.run(FLAGS.variant, FLAGS.batch, FLAGS.repeats, FLAGS.dtype)
  print(forward.format_table(rows, title))


if __name__ == '__main__':
  app.run(main)
