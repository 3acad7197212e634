"""synthetic_captions: synthetic_motion's clips with templated captions, made locally.

The video-text task of the demo and the tests. Example i of split s is synthetic_motion's
example i of s for the same seed and difficulty (`synthetic_motion.example_seed`, label
i % 6), optionally cut to `num_frames` evenly spaced frames (the same whole motion),
with 3 to 5 captions from `flux_jax.data.captions` naming the disc's colour, a shape word
and its motion. Train captions use the train templates only; every validation clip also
has a caption from a held-out template. The label (the motion class) is kept, so
zero-shot classification can be scored; the class names are synthetic.CLASS_NAMES.

It is written as a captioned dataset in the annotation format (mp4 files and
`train.json` / `validation.json` in data_dir/synthetic_captions_sources/<config>/) and
built by the `captioned_video` builder from them:

  builder = build('tiny', data_dir)   # 24 / 12 clips of 8 frames
  builder = build('small', data_dir)  # 1200 / 240 clips of 32 frames, 112-192 px
  # -> data_dir/captioned_video/synthetic_captions_<config>/1.0.0
  source = builder.as_data_source('validation')

Everything depends only on the config (seed, sizes), never on the worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from etils import epath
import numpy as np

from flux_jax import hosts
from flux_jax.data import captions
from flux_jax.data import decode
from flux_jax.data import synthetic
from flux_jax.data.builders import captioned_video
from flux_jax.data.builders import common
from flux_jax.data.builders import synthetic_motion

SOURCES = 'synthetic_captions_sources'  # under data_dir: the mp4 and json files
SPLITS = ('train', 'validation')
_CAPTION_STREAM = 0xCA9  # caption draws: a stream apart from the clip's own


@dataclasses.dataclass(frozen=True)
class SyntheticCaptionsConfig:
  """Size, clips and captions of a synthetic_captions build."""
  name: str
  num_train: int = 24
  num_validation: int = 12
  seed: int = 0
  difficulty: str = 'easy'  # a key of synthetic.DIFFICULTIES
  num_frames: int | None = 8  # evenly spaced frames of each clip; None: all (32-64)
  captions_per_clip: tuple[int, int] = (3, 5)  # inclusive range, drawn per clip
  fps: int = 25
  crf: int = 23

  @property
  def dataset_name(self) -> str:
    """The captioned_video config name it is built under."""
    return f'synthetic_captions_{self.name}'


CONFIGS = {c.name: c for c in (
    SyntheticCaptionsConfig('tiny', 24, 12, num_frames=8),
    SyntheticCaptionsConfig('small', 1200, 240, num_frames=32),
    SyntheticCaptionsConfig('small_panning', 1200, 240, difficulty='panning',
                            num_frames=32),
)}


def clip_captions(config: SyntheticCaptionsConfig, split: str, index: int
                  ) -> tuple[synthetic.Scene, list[captions.Caption]]:
  """The scene (at `num_frames` frames) and the captions of example `index` of `split`."""
  seed = synthetic_motion.example_seed(config.seed, split, index)
  scene = synthetic.make_scene(seed, index % synthetic.NUM_CLASSES, config.difficulty)
  if config.num_frames is not None:
    scene = synthetic.subsample(scene, config.num_frames)
  rng = np.random.default_rng([_CAPTION_STREAM, seed])
  count = int(rng.integers(config.captions_per_clip[0], config.captions_per_clip[1] + 1))
  return scene, captions.draw_captions(scene, rng, count, held_out=split != 'train')


def video_path(split: str, index: int) -> str:
  """The annotation's path of an example, relative to the sources folder."""
  return f'{split}/{index:06d}.mp4'


def write_sources(config: SyntheticCaptionsConfig, folder: str,
                  num_workers: int = 1) -> dict[str, str]:
  """Writes the mp4 files and annotation files of `config` into `folder` (unless its
  annotation files are there); returns {split: annotation file}."""
  annotations = {split: os.path.join(folder, f'{split}.json') for split in SPLITS}
  if all(os.path.exists(p) for p in annotations.values()):
    return annotations
  sizes = {'train': config.num_train, 'validation': config.num_validation}
  for split in SPLITS:
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    jobs = ((config, split, i, folder) for i in range(sizes[split]))
    entries = list(common.ordered_map(_write_clip, jobs, num_workers))
    partial = annotations[split] + '.partial'
    with open(partial, 'w', encoding='utf-8') as f:
      json.dump(entries, f, indent=0)
    os.replace(partial, annotations[split])  # written last: its presence means done
  return annotations


def _write_clip(job: tuple[SyntheticCaptionsConfig, str, int, str]) -> dict:
  """Writes one clip; returns its annotation entry. Runs in a worker."""
  config, split, index, folder = job
  scene, drawn = clip_captions(config, split, index)
  path = video_path(split, index)
  with open(os.path.join(folder, path), 'wb') as f:
    f.write(decode.encode_mp4(synthetic.render(scene), fps=config.fps, crf=config.crf))
  return {'video': path, 'caption': [c.text for c in drawn], 'label': scene.label}


def captioned_config(config: SyntheticCaptionsConfig, annotations: dict[str, str]
                     ) -> captioned_video.CaptionedVideoConfig:
  return captioned_video.CaptionedVideoConfig(
      name=config.dataset_name, splits=annotations,
      class_names=synthetic.CLASS_NAMES,
      description=(f'synthetic_captions {config.name}: {config.num_train} train / '
                   f'{config.num_validation} validation clips, seed {config.seed}, '
                   f'{config.difficulty}'))


def build(name_or_config: str | SyntheticCaptionsConfig, data_dir: str,
          num_workers: int | None = None) -> captioned_video.CaptionedVideo:
  """Builds (or reuses) a synthetic_captions dataset in `data_dir`; returns its builder.

  Args:
    name_or_config: a key of `CONFIGS` ('tiny', 'small', 'small_panning') or a config.
    data_dir: the TFDS data directory.
    num_workers: processes making and reading the clips; default, one per CPU. Above 1
      they are spawned, so a calling script needs an `if __name__ == '__main__':` guard.
  """
  if isinstance(name_or_config, str):
    if name_or_config not in CONFIGS:
      raise ValueError(f'synthetic_captions config {name_or_config!r} is not one of '
                       f'{sorted(CONFIGS)}')
    name_or_config = CONFIGS[name_or_config]
  config = name_or_config
  workers = common.default_workers() if num_workers is None else num_workers
  folder = os.path.join(data_dir, SOURCES, config.name)
  annotations = hosts.process_zero_first('synthetic captions', functools.partial(
      _sources, config, folder, data_dir, workers))
  return captioned_video.build(captioned_config(config, annotations), data_dir, workers)


def _sources(config: SyntheticCaptionsConfig, folder: str, data_dir: str,
             num_workers: int) -> dict[str, str]:
  """The annotation files, written first unless the dataset is built (then the
  builder needs only their paths)."""
  built = epath.Path(data_dir) / 'captioned_video' / config.dataset_name / str(
      captioned_video.CaptionedVideo.VERSION)
  if common.incomplete_reason(built) is None:
    return {split: os.path.join(folder, f'{split}.json') for split in SPLITS}
  return write_sources(config, folder, num_workers)
