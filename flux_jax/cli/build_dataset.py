r"""Entry point: builds a TFDS dataset before a run; flags only, the work is in
flux_jax.data.builders.

  python -m flux_jax.cli.build_dataset video_csv --name k400_320 --data_dir /data/tfds \
      --split train=/data/k400/train.txt --split validation=/data/k400/val.txt \
      --root /data/k400/videos --short_side 320 [--workers 16]
  python -m flux_jax.cli.build_dataset synthetic_motion --name demo --data_dir /data/tfds
  python -m flux_jax.cli.build_dataset captioned_video --name msrvtt_1k --data_dir /data/tfds \
      --split test=/data/anno/msrvtt_test1k.json --root /data/msrvtt/videos
  python -m flux_jax.cli.build_dataset synthetic_captions --name small --data_dir /data/tfds

A finished build is reused; a half-built one (a killed run) is removed and built again.
Prints `ready: DIR`, the split sizes and, for video_csv and captioned_video, how many
files were skipped (each listed with its reason in the directory's manifest.json). A
training run then names it: `--config.data.name=video_csv --config.data.config=k400_320`.
captioned_video reads VINDLU / InternVideo2 annotation JSON (a list of {"video" or
"image": path, "caption": str or [str]}); --split names one JSON file per split.
"""

import json
import os

from absl import app
from absl import flags

from flux_jax.data.builders import captioned_video
from flux_jax.data.builders import synthetic_captions
from flux_jax.data.builders import synthetic_motion
from flux_jax.data.builders import video_csv

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('name', None, 'Dataset config name: the directory under '
                      'DATA_DIR/<builder>/ (synthetic_motion: tiny, demo, demo_hard).')
  flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'TFDS data directory.')
  flags.DEFINE_multi_string('split', [], 'video_csv: SPLIT=LIST_FILE_OR_CLASS_FOLDER '
                            '(e.g. train=/data/train.txt); captioned_video: '
                            'SPLIT=ANNOTATION_JSON; once per split.')
  flags.DEFINE_string('root', None, 'video_csv, captioned_video: prefix of relative paths.')
  flags.DEFINE_integer('short_side', None, 'video_csv, captioned_video: re-encode with this '
                       'short side (default: keep the original files).')
  flags.DEFINE_integer('workers', None, 'Processes reading or making the videos '
                       '(default: one per CPU).')
  flags.mark_flag_as_required('name')


BUILDERS = ('video_csv', 'synthetic_motion', 'captioned_video', 'synthetic_captions')


def main(argv):
  if len(argv) != 2 or argv[1] not in BUILDERS:
    raise app.UsageError('usage: python -m flux_jax.cli.build_dataset '
                         f'{{{"|".join(BUILDERS)}}} --name NAME [flags]')
  data_dir = os.path.expanduser(FLAGS.data_dir)
  if argv[1] == 'synthetic_motion':
    builder = synthetic_motion.build(FLAGS.name, data_dir, FLAGS.workers)
  elif argv[1] == 'synthetic_captions':
    builder = synthetic_captions.build(FLAGS.name, data_dir, FLAGS.workers)
  else:
    splits = {}
    for item in FLAGS.split:
      split, sep, source = item.partition('=')
      if not sep or not split or not source:
        raise app.UsageError(f'--split={item!r}: expected SPLIT=LIST_FILE_OR_FOLDER')
      splits[split] = source
    if not splits:
      raise app.UsageError(f'{argv[1]} needs --split SPLIT=SOURCE, e.g. --split train=train.txt')
    if argv[1] == 'captioned_video':
      config = captioned_video.CaptionedVideoConfig(
          name=FLAGS.name, splits=splits, root=FLAGS.root, short_side=FLAGS.short_side)
      builder = captioned_video.build(config, data_dir, FLAGS.workers)
    else:
      config = video_csv.VideoCsvConfig(name=FLAGS.name, splits=splits, root=FLAGS.root,
                                        short_side=FLAGS.short_side)
      builder = video_csv.build(config, data_dir, FLAGS.workers)
  print(f'ready: {builder.data_dir}')
  for split, info in builder.info.splits.items():
    print(f'  {split}: {info.num_examples} videos')
  manifest = os.path.join(builder.data_dir, video_csv.MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      skipped = json.load(f).get('skipped', [])
    print(f'  skipped {len(skipped)} files (reasons in {manifest})')


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
