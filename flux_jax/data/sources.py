"""Named datasets -> random-access sources for the pipeline."""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
from etils import epath
import tensorflow_datasets as tfds


DATASETS = ('synthetic_motion', 'video_csv', 'synthetic_captions', 'captioned_video')
CAPTIONED = ('synthetic_captions', 'captioned_video')  # records carry `captions`


def open_dataset(config: Mapping[str, Any]):
  """(train source, eval source, class names) from the `config.data` block.

  Keys: `name` (DATASETS), `config` (the builder config name; synthetic_motion and
  synthetic_captions build it on first use), `data_dir`, `train_split`, `eval_split`.
  Splits are TFDS split specs, slices included ('train[:90%]', 'train[-200:]').
  A video_csv or captioned_video dataset must have been built first
  (`python -m flux_jax.cli.build_dataset`). Captioned datasets may have no class names
  (None; their labels are -1).
  """
  builder = open_builder(config)
  if config['name'] in CAPTIONED:
    from flux_jax.data.builders import captioned_video  # pylint: disable=g-import-not-at-top
    names = captioned_video.class_names(builder)
  else:
    names = builder.info.features['label'].names
  return (builder.as_data_source(config['train_split']),
          builder.as_data_source(config['eval_split']), names)


def describe(source) -> dict[str, Any]:
  """What identifies the examples of a data source of `open_dataset`, as JSON: the
  dataset's name, config, version and split spec, its size, and the bytes of the splits
  it reads (a rebuilt dataset of the same size differs there)."""
  out = {'dataset.size': len(source)}
  info = getattr(source, 'dataset_info', None)
  if info is not None:
    instructions = tfds.core.ReadInstruction.from_spec(source.split).to_absolute(info.splits)
    out.update({'dataset.name': info.name, 'dataset.config': info.config_name,
                'dataset.version': str(info.version), 'dataset.split': str(source.split),
                'dataset.bytes': sum(int(info.splits[name].num_bytes) for name in
                                     sorted({i.splitname for i in instructions}))})
  return out


def shared_examples(builder: tfds.core.DatasetBuilder, split_a: str, split_b: str) -> int:
  """How many examples two split specs of a dataset have in common (0: disjoint)."""
  splits = builder.info.splits
  def ranges(spec):
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits)
    return [(i.splitname, i.from_ or 0,  # None: the split's start, its end
             splits[i.splitname].num_examples if i.to is None else i.to)
            for i in instructions]
  return sum(max(0, min(a_to, b_to) - max(a_from, b_from))
             for name_a, a_from, a_to in ranges(split_a)
             for name_b, b_from, b_to in ranges(split_b) if name_a == name_b)


def open_builder(config: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
  """The dataset builder of the `config.data` block (built first where open_dataset
  builds it); `as_data_source(spec)` gives any split spec's source."""
  name, data_dir = config['name'], os.path.expanduser(config['data_dir'])
  if name == 'synthetic_motion':
    from flux_jax.data.builders import synthetic_motion  # pylint: disable=g-import-not-at-top
    builder = synthetic_motion.build(config['config'], data_dir)
  elif name == 'synthetic_captions':
    from flux_jax.data.builders import synthetic_captions  # pylint: disable=g-import-not-at-top
    builder = synthetic_captions.build(config['config'], data_dir)
  elif name in ('video_csv', 'captioned_video'):
    builder = tfds.builder_from_directory(newest_version(
        os.path.join(data_dir, name, config['config']), config['config']))
  else:
    raise ValueError(f'data.name={name!r} is not one of {DATASETS}')
  return builder


def newest_version(path: str, config_name: str) -> str:
  """The newest finished version directory of a built dataset config at `path`.

  Never a build in progress or killed (TFDS's `incomplete.*` directories) or a version
  directory that lacks files: those are skipped and logged.
  """
  from flux_jax.data.builders.common import incomplete_reason  # pylint: disable=g-import-not-at-top
  names = os.listdir(path) if os.path.isdir(path) else []
  versions = sorted((tfds.core.Version(n) for n in names if tfds.core.Version.is_valid(n)),
                    reverse=True)
  for version in versions:
    why = incomplete_reason(epath.Path(path) / str(version))
    if why is None:
      return os.path.join(path, str(version))
    logging.warning('%s/%s is not a finished build (%s): skipped', path, version, why)
  raise ValueError(f'data.config={config_name!r}: no finished build in {path} '
                   f'(found {sorted(names)}); build it with '
                   'python -m flux_jax.cli.build_dataset')
