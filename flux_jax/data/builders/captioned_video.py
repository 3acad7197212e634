"""TFDS builder `captioned_video`: videos and images with captions, for video-text work.

Each split comes from an annotation file in the VINDLU / InternVideo2 format (SPEC G.5),
a JSON list of entries

  {"video": "clips/a.mp4", "caption": "a dog runs"}
  {"video": "clips/b.mp4", "caption": ["a cat sleeps", "a cat on a sofa"], "label": 3}
  {"image": "images/c.jpg", "caption": "a red car"}

  config = CaptionedVideoConfig(name='msrvtt_224', root='/data/msrvtt/videos',
                                short_side=224, splits={'test': 'msrvtt_1k_test.json'})
  builder = build(config, data_dir)  # -> data_dir/captioned_video/msrvtt_224/1.0.0

Relative paths are joined to `root` (default: the annotation file's folder). `caption`
is a string or a non-empty list of strings; entries naming the same path (as written,
the same kind) within a split are one video with all their captions, in order (MSRVTT's
training file lists each video once per caption). `label`, optional, is an int >= 0
(e.g. a class id for zero-shot classification), kept as is; -1 when absent; entries of
one video must agree on it. Other keys are ignored. A malformed annotation (not a list,
an entry that is not an object, has neither or both of video/image, no caption, an
empty or non-string caption, an empty caption list, a bad label, a label outside
`class_names`) is an error naming the file and the entry's index.

An image is a 1-frame video: it is decoded by FFmpeg (jpg, png, ...) and stored
re-encoded as a 1-frame H.264 mp4 (both sides rounded down to even), so the pipeline
reads it like any clip. Videos are stored as they are, or re-encoded when `short_side`
is set, exactly as `video_csv` does (its loader reads, re-encodes and probes each file).

Files that are missing or do not decode are skipped, never fatal: each is logged and
listed with its reason in `manifest.json` in the dataset directory, in video_csv's
format ({config, sources, short_side, num_examples, skipped: [{split, id, file,
reason}]}).

Stored per video (read back with `builder.as_data_source(split)`, no TensorFlow):
`video` (bytes: the encoded file), `id` (bytes: the path as written), `label` (int,
-1 for none), `num_frames`, `height`, `width` (ints, from `decode.probe`; 1 frame for
an image) and `captions`, a Python list of UTF-8 `bytes`, one per caption, as written.
`class_names` (optional) are stored in `builder.info.metadata['class_names']`
(`class_names(builder)`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from flux_jax.data.builders import common
from flux_jax.data.builders import video_csv

KINDS = ('video', 'image')
NO_LABEL = -1
MANIFEST = common.MANIFEST
# Re-encoding keeps the frames in [start, end) s: all of them, so that an image
# goes through video_csv's loader as a re-encoded 1-frame clip even without short_side.
_WHOLE = (0.0, math.inf)


@dataclasses.dataclass(eq=False)
class CaptionedVideoConfig(tfds.core.BuilderConfig):
  """Where the annotations and videos are. `name` names the dataset directory."""
  splits: Mapping[str, str] = dataclasses.field(default_factory=dict)  # split -> json
  root: str | None = None  # prefix of relative paths; default: the json's folder
  short_side: int | None = None  # re-encode videos with this short side; None: as is
  class_names: Sequence[str] | None = None  # names of the labels, if the labels are classes


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One video (or image) and its captions."""
  id: str  # the path as written
  file: str  # the path to read
  image: bool
  captions: tuple[str, ...]
  label: int  # NO_LABEL when the annotation has none
  where: str  # '<json>: entry <index>' of its first entry


def read_annotations(path: str, root: str | None = None,
                     num_classes: int | None = None) -> list[Annotation]:
  """The videos of an annotation file, in order of first appearance (module docstring).

  Raises:
    ValueError: a malformed annotation, naming `path` and the entry's index.
  """
  root = os.path.dirname(os.path.abspath(path)) if root is None else root
  try:
    with open(path, encoding='utf-8') as f:
      entries = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(entries, list):
    raise ValueError(f'{path}: expected a JSON list of {{"video" or "image": path, '
                     f'"caption": str or [str]}} entries, got a {type(entries).__name__}')
  if not entries:
    raise ValueError(f'{path}: no entries')
  videos = {}  # (kind, path) -> Annotation, in order of first appearance
  for index, entry in enumerate(entries):
    where = f'{path}: entry {index}'
    kind, name, captions, label = _parse_entry(entry, where, num_classes)
    seen = videos.get((kind, name))
    if seen is None:
      videos[kind, name] = Annotation(id=name, file=os.path.join(root, name),
                                      image=kind == 'image', captions=captions,
                                      label=label, where=where)
    elif seen.label != label:
      raise ValueError(f'{where}: label {label} of {name!r} differs from {seen.label} '
                       f'at {seen.where}')
    else:
      videos[kind, name] = dataclasses.replace(seen, captions=seen.captions + captions)
  return list(videos.values())


def _parse_entry(entry, where: str, num_classes: int | None
                 ) -> tuple[str, str, tuple[str, ...], int]:
  """(kind, path, captions, label) of one annotation entry, or a ValueError."""
  if not isinstance(entry, dict):
    raise ValueError(f'{where}: expected an object, got {entry!r:.80}')
  kinds = [k for k in KINDS if k in entry]
  if len(kinds) != 1:
    raise ValueError(f'{where}: needs exactly one of "video" and "image", has '
                     f'{kinds or "neither"} (keys {sorted(entry)})')
  kind, name = kinds[0], entry[kinds[0]]
  if not isinstance(name, str) or not name:
    raise ValueError(f'{where}: "{kind}" must be a non-empty path, got {name!r}')
  if 'caption' not in entry:
    raise ValueError(f'{where}: no "caption" (keys {sorted(entry)})')
  captions = entry['caption']
  captions = [captions] if isinstance(captions, str) else captions
  if not isinstance(captions, list) or not captions:
    raise ValueError(f'{where}: "caption" must be a string or a non-empty list of '
                     f'strings, got {entry["caption"]!r:.80}')
  for caption in captions:
    if not isinstance(caption, str) or not caption.strip():
      raise ValueError(f'{where}: caption {caption!r:.80} is not a non-empty string')
  label = entry.get('label')
  if label is None:
    label = NO_LABEL
  elif isinstance(label, bool) or not isinstance(label, int) or label < 0:
    raise ValueError(f'{where}: "label" must be an int >= 0, got {label!r}')
  elif num_classes is not None and label >= num_classes:
    raise ValueError(f'{where}: label {label} is not below the {num_classes} class names')
  return kind, name, tuple(captions), label


def features() -> tfds.features.FeaturesDict:
  """`common.video_features` with an int label (-1: none) and the captions."""
  return tfds.features.FeaturesDict({
      **common.video_features(None),
      'label': tfds.features.Scalar(dtype=np.int32),
      'captions': tfds.features.Sequence(tfds.features.Text()),
  })


def class_names(builder: tfds.core.DatasetBuilder) -> list[str] | None:
  """The names of the labels of a built dataset, None if its config gave none."""
  return (builder.info.metadata or {}).get('class_names')


class CaptionedVideo(common.FileListBuilder):
  """Captioned videos and images; configure with a `CaptionedVideoConfig`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def _info(self) -> tfds.core.DatasetInfo:
    names = self.builder_config.class_names
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features(),
        metadata=tfds.core.MetadataDict(
            class_names=None if names is None else list(names)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # local files only
    config = self.builder_config
    if not config.splits:
      raise ValueError(f'captioned_video config {config.name!r}: no splits given')
    num_classes = None if config.class_names is None else len(config.class_names)
    annotations = {split: read_annotations(path, config.root, num_classes)
                   for split, path in config.splits.items()}  # all checked before any work
    return {split: self._generate_examples(split, entries)
            for split, entries in annotations.items()}

  def _generate_examples(self, split: str, annotations: list[Annotation]):
    config = self.builder_config
    jobs = ((i, a, config.short_side) for i, a in enumerate(annotations))
    yield from self._readable(split, annotations, jobs, _load)


def _load(job: tuple[int, Annotation, int | None]) -> tuple[int, dict | None, str]:
  """(index, record, '') or (index, None, why it is skipped); runs in a worker."""
  index, annotation, short_side = job
  entry = video_csv.Entry(id=annotation.id, file=annotation.file,
                          label=str(annotation.label), where=annotation.where,
                          segment=_WHOLE if annotation.image else None)
  # video_csv's loader: read, re-encode, probe, every failure a reason.
  index, record, reason = video_csv._load(  # pylint: disable=protected-access
      (index, entry, annotation.label, short_side))
  if record is not None:
    record['captions'] = list(annotation.captions)
  return index, record, reason


def build(config: CaptionedVideoConfig, data_dir: str,
          num_workers: int | None = None) -> CaptionedVideo:
  """Builds (or reuses) the dataset of `config` in `data_dir`; returns its builder.

  Read it back with `builder.as_data_source(split)`, or later, without the sources,
  with `tfds.builder_from_directory(builder.data_dir)`. `num_workers`: processes reading
  and checking the files (`common.build_local`).
  """
  return common.build_local(CaptionedVideo, config, data_dir, num_workers)
