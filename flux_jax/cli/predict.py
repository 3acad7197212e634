r"""Classify one video file at a token budget (flags only; the work is flux_jax.predict).

  python -m flux_jax.cli.predict VIDEO --checkpoint DIR --budget 1024 [--top_k 5] \
      [--frames 8 --resolution 224 | --to_table WORKDIR/to.json] [--labels names.txt] \
      [--num_clips 1 --num_crops 1]

How the grid and head are chosen: flux_jax.eval.predict.
"""

from absl import app
from absl import flags

from flux_jax.eval.predict import predict, read_class_names

FLAGS = flags.FLAGS


def main(argv):
  cli = FLAGS
  if len(argv) != 2:
    raise app.UsageError('usage: python -m flux_jax.cli.predict VIDEO --checkpoint DIR '
                         '--budget N [flags]')
  if (cli.frames is None) != (cli.resolution is None):
    raise app.UsageError('give --frames and --resolution together')
  grid = None if cli.frames is None else (cli.frames, cli.resolution)
  try:
    names = None if cli.labels is None else read_class_names(cli.labels)
    top = predict(argv[1], cli.checkpoint, budget=cli.budget, top_k=cli.top_k, grid=grid,
                  to_table=cli.to_table, class_names=names, num_clips=cli.num_clips,
                  num_crops=cli.num_crops)
  except ValueError as e:  # the messages name the file, grid or budget
    raise SystemExit(f'flux_jax.cli.predict: {e}') from e
  for label, prob in top:
    print(f'{prob:.4f}  {label}')


def _define_flags() -> None:
  """The command line's flags: defined only when run as a program, so that importing
  the library adds no global flag (`--checkpoint` is also `flux_jax.cli.export`'s)."""
  flags.DEFINE_string('checkpoint', None, 'Params checkpoint directory (save_params).')
  flags.DEFINE_integer('budget', None, 'Tokens the model keeps.')
  flags.DEFINE_integer('top_k', 5, 'Labels printed.')
  flags.DEFINE_integer('frames', None, 'Frames sampled (with --resolution).')
  flags.DEFINE_integer('resolution', None, 'Square crop side in pixels (with --frames).')
  flags.DEFINE_string('to_table', None, 'to.json of python -m flux_jax.cli.evaluate: its best '
                      'grid for the budget.')
  flags.DEFINE_string('labels', None, 'Class names, one per line (for checkpoints '
                      'without them).')
  flags.DEFINE_integer('num_clips', 1, 'Temporal clips averaged.')
  flags.DEFINE_integer('num_crops', 1, 'Spatial crops averaged.')
  flags.mark_flags_as_required(['checkpoint', 'budget'])


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
