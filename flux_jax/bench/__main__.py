"""python -m flux_jax.bench {forward|step|distill|pipeline|aot} [flags]

  forward:  FluxViT forward ms and tokens/s per budget (--variant --batch --repeats --dtype
            --attention --scan_layers)
  step:     train step ms, kept tokens/s, temp/peak memory and peak RSS per budget set
            (--variant --batch --repeats --dtype --budgets --remat --attention --scan_layers)
  distill:  Flux-UMT step ms and memory with the teacher, without it (targets given) and the
            teacher alone (--config configs/umt_synthetic.py --batch --repeats --frames
            --resolution)
  pipeline: steady-state videos/s and clips/s of the grain pipeline with 0, 1, 2 workers
            against decoding alone, CPU ms per clip by stage (--source --batch
            --seconds --workers --threads --videos)
  aot:      a config's train step compiled for a TPU topology on this host: bytes per chip,
            fits HBM, FLOPs, collectives (--config --topology --batch_per_chip --json)
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('variant', 'small', 'FluxViT variant.')
  flags.DEFINE_integer('batch', 2, 'Videos (forward) or clips (pipeline, default 16) per '
                       'batch.')
  flags.DEFINE_integer('repeats', 3, 'forward, step: timed runs per point (median reported).')
  flags.DEFINE_string('dtype', 'float32', 'forward, step: compute dtype.')
  flags.DEFINE_multi_string('budgets', None, 'step: one budget set per flag, largest first, '
                            'e.g. --budgets=3072,2048,1024 --budgets=2048 (default: the '
                            "variant's sets in flux_jax.bench.step.SETUPS).")
  flags.DEFINE_string('remat', 'none', "step: the model's remat policy: none, full (as "
                      'configs/fluxvit_k400.py), dots_saveable, dots_with_no_batch_dims_saveable.')
  flags.DEFINE_string('attention', 'auto', "forward, step: the model's attention: auto, xla, "
                      'chunked, splash, cudnn.')
  flags.DEFINE_bool('scan_layers', False, 'forward, step: run the blocks as one scan (the '
                    "recipes' layout, model.scan_layers) instead of unrolled.")
  config_flags.DEFINE_config_file('config', None, 'distill: a Flux-UMT config; aot: any training '
                                  'config.', lock_config=True)
  flags.DEFINE_integer('frames', None, 'distill: clip frames (default: the config\'s eval grid).')
  flags.DEFINE_integer('resolution', None, 'distill: clip resolution (default: the eval grid).')
  flags.DEFINE_string('source', 'kinetics_like', 'pipeline: synthetic_motion, kinetics_like, '
                      "kinetics_like_short_gop, or a glob of your video files ('clips/*.mp4').")
  flags.DEFINE_float('seconds', 20.0, 'pipeline: seconds timed per row, after the warm-up.')
  flags.DEFINE_list('workers', ['0', '1', '2'], 'pipeline: grain worker counts, one row each.')
  flags.DEFINE_integer('threads', 0, 'pipeline: background threads per process '
                       '(data.threads).')
  flags.DEFINE_integer('videos', None, 'pipeline: videos in the source (default: 24 '
                       'synthetic_motion, 8 Kinetics-like, every file of a glob).')
  flags.DEFINE_string('topology', None, "aot: TPU topology, e.g. 'v5e:2x4' (v5e-8), 'v5p:2x2x1'.")
  flags.DEFINE_integer('batch_per_chip', None, 'aot: clips per chip (default: the config\'s '
                       'global batch over the chips).')
  flags.DEFINE_bool('json', False, 'aot: print the report as one JSON object on the last line.')
FLAGS = flags.FLAGS

BENCHES = ('forward', 'step', 'distill', 'pipeline', 'aot')


def _budget_set(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(b) for b in text.split(','))
  except ValueError:
    raise app.UsageError(f'--budgets={text!r} is not comma-separated ints') from None


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f'usage: python -m flux_jax.bench {{{"|".join(BENCHES)}}} [flags]')
  logging.set_verbosity(logging.WARNING)
  if argv[1] == 'aot':  # before anything initializes a jax backend
    _aot()
    return
  device = jax.devices()[0]
  where = f'{device.platform} ({device.device_kind}), jax {jax.__version__}'
  if argv[1] == 'forward':
    from flux_jax.bench import forward  # pylint: disable=g-import-not-at-top
    title = (f'FluxViT-{FLAGS.variant[0].upper()} forward, batch {FLAGS.batch}, '
             f'{FLAGS.dtype}, attention {FLAGS.attention}, {_blocks()} blocks, {where}')
    print(forward.format_table(forward.run(FLAGS.variant, FLAGS.batch, FLAGS.repeats,
                                           FLAGS.dtype, attention=FLAGS.attention,
                                           scan_layers=FLAGS.scan_layers), title))
  elif argv[1] == 'step':
    from flux_jax.bench import step  # pylint: disable=g-import-not-at-top
    s = step.setup(FLAGS.variant)
    budget_sets = None if FLAGS.budgets is None else [
        _budget_set(text) for text in FLAGS.budgets]
    title = (f'FluxViT-{FLAGS.variant[0].upper()} train step (AdamW, mixup, drop path 0.1, '
             f'donated state, remat {FLAGS.remat}, attention {FLAGS.attention}, '
             f'{_blocks()} blocks), batch {FLAGS.batch}, {s.frames}x{s.resolution}^2 padded '
             f'to {s.n_max} tokens, {FLAGS.dtype}, {where}')
    print(step.format_table(step.run(FLAGS.variant, FLAGS.batch, FLAGS.repeats, FLAGS.dtype,
                                     budget_sets, FLAGS.remat, FLAGS.attention,
                                     FLAGS.scan_layers), title))
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
    _pipeline()


def _blocks() -> str:
  return 'scanned' if FLAGS.scan_layers else 'unrolled'


def _pipeline():
  from flux_jax.bench import pipeline  # pylint: disable=g-import-not-at-top
  batch = FLAGS.batch if FLAGS['batch'].present else 16
  try:
    workers = [int(w) for w in FLAGS.workers]
    s, rows = pipeline.run(FLAGS.source, batch, workers, FLAGS.seconds, FLAGS.threads,
                           FLAGS.videos)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  title = (f'Flux pipeline, {s.describe()}; {batch} clips per batch, threads '
           f'{FLAGS.threads}, {FLAGS.seconds:g} s per row after warm-up, '
           f'{os.cpu_count()} CPU cores')
  print(pipeline.format_table(rows, title))


def _aot():
  from flux_jax.bench import aot  # pylint: disable=g-import-not-at-top
  if FLAGS.config is None or FLAGS.topology is None:
    raise app.UsageError('bench aot needs --config and --topology, e.g. --config '
                         'configs/fluxvit_k400.py:variant=small,mode=multi --topology v5e:2x4')
  try:
    report = aot.run(FLAGS.config, FLAGS.topology, FLAGS.batch_per_chip)
  except aot.AotError as e:
    print(f'bench aot: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'{FLAGS["config"].config_filename}:')
  print(aot.format_report(report))
  if FLAGS.json:
    print(json.dumps(report))


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
