"""Named datasets -> random-access sources for the pipeline."""

from __future__ import annotations

import os
from typing import Any, Mapping

import tensorflow_datasets as tfds


def open_dataset(config: Mapping[str, Any]):
  """(train source, eval source, class names) from the `config.data` block.

  Keys: `name` ('synthetic_motion' or 'video_csv'), `config` (the builder config name;
  synthetic_motion builds it on first use), `data_dir`, `train_split`, `eval_split`.
  A video_csv dataset must have been built with `flux_jax.data.builders.video_csv.build`.
  """
  name, data_dir = config['name'], os.path.expanduser(config['data_dir'])
  if name == 'synthetic_motion':
    from flux_jax.data.builders import synthetic_motion  # pylint: disable=g-import-not-at-top
    builder = synthetic_motion.build(config['config'], data_dir)
  elif name == 'video_csv':
    path = os.path.join(data_dir, 'video_csv', config['config'])
    versions = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if not versions:
      raise ValueError(f'data.config={config["config"]!r}: no built video_csv dataset in '
                       f'{path}; build it with flux_jax.data.builders.video_csv.build')
    builder = tfds.builder_from_directory(os.path.join(path, versions[-1]))
  else:
    raise ValueError(f"data.name={name!r} is not 'synthetic_motion' or 'video_csv'")
  names = builder.info.features['label'].names
  return (builder.as_data_source(config['train_split']),
          builder.as_data_source(config['eval_split']), names)
