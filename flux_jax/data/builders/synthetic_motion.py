"""TFDS builder `synthetic_motion`: the embedded default dataset, made locally.

Clips come from `flux_jax.data.synthetic.make_clip` (6 motion classes, see there),
encoded as H.264 mp4 and stored in array_record; nothing is downloaded.

  builder = build('tiny', data_dir)            # 24 train / 12 validation clips
  builder = build('demo', data_dir)            # 2004 / 396
  builder = build('demo_hard', data_dir)       # 2004 / 396, difficulty 'hard'
  builder = build('panning', data_dir)         # 2004 / 396, difficulty 'panning' (the demo)
  builder = build('n600_120_s3_panning', data_dir)  # 'panning' drawn from seed 3
  builder = build(sized(600, 120), data_dir)   # any size: config 'n600_120'
  source = builder.as_data_source('train')     # feeds grain.MapDataset.source

Example i of split s is make_clip(seed(s, i), label=i % 6, difficulty): labels are
balanced, and
every example depends only on (config seed, split, i), never on the worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import tensorflow_datasets as tfds

from flux_jax.data import decode
from flux_jax.data import synthetic
from flux_jax.data.builders import common

_SPLIT_CODES = {'train': 0, 'validation': 1}


@dataclasses.dataclass(eq=False)
class SyntheticMotionConfig(tfds.core.BuilderConfig):
  """Size and encoding of a synthetic_motion build."""
  num_train: int = 24
  num_validation: int = 12
  seed: int = 0
  difficulty: str = 'easy'  # a key of synthetic.DIFFICULTIES
  fps: int = 25
  crf: int = 23  # x264 quality; 23 keeps even the 'hard' 10 px disc sharp, ~20 KB a clip


def sized(num_train: int, num_validation: int, seed: int = 0, difficulty: str = 'easy'
          ) -> SyntheticMotionConfig:
  """A config of any size, named after it (its own dataset directory)."""
  if difficulty not in synthetic.DIFFICULTIES:
    raise ValueError(f'difficulty {difficulty!r} is not one of {sorted(synthetic.DIFFICULTIES)}')
  return SyntheticMotionConfig(
      name=(f'n{num_train}_{num_validation}' + (f'_s{seed}' if seed else '')
            + ('' if difficulty == 'easy' else f'_{difficulty}')),
      num_train=num_train, num_validation=num_validation, seed=seed, difficulty=difficulty,
      description=f'{num_train} train / {num_validation} validation clips, seed {seed}, '
                  f'{difficulty}')


class SyntheticMotion(common.LocalBuilder):
  """Small discs moving left/right/up/down or growing/shrinking; see `synthetic`."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First version.',
      '1.1.0': "Difficulty 'easy' (the default: bigger discs, still squares, a faint "
               "texture); 'hard' is 1.0.0.",
  }
  BUILDER_CONFIGS = [
      SyntheticMotionConfig(name='tiny', num_train=24, num_validation=12,
                            description='For tests: 24 train / 12 validation clips.'),
      SyntheticMotionConfig(name='demo', num_train=2004, num_validation=396,
                            description='For demos: 2004 train / 396 validation clips.'),
      SyntheticMotionConfig(name='demo_hard', num_train=2004, num_validation=396,
                            difficulty='hard',
                            description="2004 train / 396 validation clips, 'hard'."),
      SyntheticMotionConfig(name='panning', num_train=2004, num_validation=396,
                            difficulty='panning',
                            description="2004 train / 396 validation clips, 'panning'."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=synthetic.__doc__,
        features=common.video_features(synthetic.CLASS_NAMES),
        supervised_keys=('video', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {
        'train': self._generate_examples('train', config.num_train),
        'validation': self._generate_examples('validation', config.num_validation),
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    jobs = ((split, i, config.seed, config.difficulty, config.fps, config.crf)
            for i in range(num_examples))
    yield from common.ordered_map(_example, jobs, self._num_workers)


def example_seed(seed: int, split: str, index: int) -> int:
  """The make_clip seed of example `index` of `split`."""
  entropy = [seed, _SPLIT_CODES[split], index]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _example(job: tuple[str, int, int, str, int, int]) -> tuple[str, dict]:
  """(key, record) of one example; runs in a worker process."""
  split, index, seed, difficulty, fps, crf = job
  key = f'{split}_{index:06d}'
  frames, label = synthetic.make_clip(example_seed(seed, split, index),
                                      label=index % synthetic.NUM_CLASSES,
                                      difficulty=difficulty)
  video = decode.encode_mp4(frames, fps=fps, crf=crf)
  info = decode.probe(video, key)  # the frame count the decoder will see
  return key, common.record(video, label, key, info)


def parse(name: str) -> str | SyntheticMotionConfig:
  """A config name (`data.config`): a registered one as is, else the name `sized` gives
  a config, 'n<train>_<validation>[_s<seed>][_<difficulty>]' (e.g. 'n600_120_s3_panning':
  a variant of the 'panning' task drawn from seed 3), as that config."""
  if name in {c.name for c in SyntheticMotion.BUILDER_CONFIGS}:
    return name
  match = re.fullmatch(r'n(\d+)_(\d+)(?:_s(\d+))?(?:_([a-z]+))?', name)
  if match is None:
    registered = ', '.join(repr(c.name) for c in SyntheticMotion.BUILDER_CONFIGS)
    raise ValueError(f'synthetic_motion config {name!r} is not one of {registered} or '
                     "'n<train>_<validation>[_s<seed>][_<difficulty>]'")
  train, validation, seed, difficulty = match.groups()
  config = sized(int(train), int(validation), int(seed or 0), difficulty or 'easy')
  if config.name != name:  # e.g. 'n6_3_s0': seed 0 and 'easy' are not spelled out
    raise ValueError(f'synthetic_motion config {name!r}: write it {config.name!r}')
  return config


def build(name_or_config: str | SyntheticMotionConfig, data_dir: str,
          num_workers: int | None = None) -> SyntheticMotion:
  """Builds (or reuses) synthetic_motion in `data_dir` and returns its builder.

  Args:
    name_or_config: 'tiny', 'demo', 'demo_hard', 'panning', a `sized` name such as
      'n600_120_s3_panning' (`parse`), or a config such as `sized(600, 120)`.
    data_dir: the TFDS data directory; the dataset lands in
      data_dir/synthetic_motion/<config>/<version>.
    num_workers: encoding processes; default, one per CPU. Above 1 they are spawned,
      so a calling script needs an `if __name__ == '__main__':` guard.
  """
  workers = common.default_workers() if num_workers is None else num_workers
  config = parse(name_or_config) if isinstance(name_or_config, str) else name_or_config
  return common.prepare(functools.partial(SyntheticMotion, data_dir=data_dir,
                                          config=config, num_workers=workers))
