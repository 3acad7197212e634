"""TFDS builder `video_csv`: the user's own videos, from list files or class folders.

Each split comes from a list file or from a folder with one sub-folder per class:

  config = VideoCsvConfig(name='k400_320', short_side=320, root='/data/k400/videos',
                          splits={'train': 'train.txt', 'validation': 'val.csv'})
  builder = build(config, data_dir)  # -> data_dir/video_csv/k400_320/1.0.0

List formats (decided per file from its first data line; blank and '#' lines skipped):
  * `path label`, space separated (Kinetics/SSv2 style); the label is the last field, so
    paths may contain spaces;
  * `path,label` (csv);
  * `source,path,total_time,start,end,label` (the K-Mash csv).
    When start and end are numbers with end > start, only frames with
    start <= index / fps < end are kept (re-encoded); otherwise the whole video.

Header row: only the first data line of a file can be one, and it is one exactly when
its label field is not an int and its path field or its label field is a column name
(`HEADER_PATHS`: path, video, video_path, video_id, youtube_id, file, filename, name, id,
source; `HEADER_LABELS`: label, labels, class, class_id, class_name, category, target;
any case). It is skipped and logged; every other line is data.

Labels are ints (ASCII digits) or class names. If every label of every split is an int,
the ints are the class ids (names '0'..'max', so '10' comes after '9'); if every label
is a name, the sorted names give the ids. Folder trees use the sorted sub-folder names.
Malformed lines are errors naming `file:line`, never skipped, so that one bad line never
changes the map: a line without a label (one field; an empty field; a last field that is
a video file name, as when a path with spaces has no label), a negative label, and a mix
of ints and names (the lines of the rarer kind are named; on a tie, the names). The map
is made from every data line, whether or not its video decodes: a file skipped later
never shifts an id. It is stored as the ClassLabel names and as `label_map.json` in the
dataset directory.

Files that are missing or that do not decode (any failure while reading, re-encoding or
probing one file) are skipped, never fatal: each is logged and listed with its reason in
`manifest.json` in the dataset directory.

Stored per video: the encoded bytes (the original file, or an H.264 re-encode when
`short_side` is set or a segment is cut), label, id (the path as listed, or
`class/file` for folders) and num_frames/height/width from `decode.probe`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence

from absl import logging
import tensorflow_datasets as tfds

from flux_jax.data import decode
from flux_jax.data.builders import common

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg')
# Column names that make the first data line a header (module docstring).
HEADER_PATHS = ('path', 'video', 'video_path', 'video_id', 'youtube_id', 'file', 'filename',
                'name', 'id', 'source')
HEADER_LABELS = ('label', 'labels', 'class', 'class_id', 'class_name', 'category', 'target')
MANIFEST = common.MANIFEST
LABEL_MAP = 'label_map.json'


@dataclasses.dataclass(eq=False)
class VideoCsvConfig(tfds.core.BuilderConfig):
  """Where the videos are and how to store them. `name` names the dataset directory."""
  splits: Mapping[str, str] = dataclasses.field(default_factory=dict)  # split -> source
  root: str | None = None  # prefix of relative list paths; default: the list's folder
  short_side: int | None = None  # re-encode with this short side; None: original bytes
  extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # files taken from class folders


@dataclasses.dataclass(frozen=True)
class Entry:
  """One listed video."""
  id: str  # the path as listed (folders: class/file)
  file: str  # the path to read
  label: str  # as written: an int or a class name
  segment: tuple[float, float] | None = None  # seconds [start, end) to keep
  where: str = ''  # file:line of a list entry, the folder of a folder entry


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """Class names in id order, and whether the labels were ints used as ids."""
  names: tuple[str, ...]
  from_ints: bool

  @classmethod
  def from_labels(cls, labels: Iterable[str]) -> LabelMap:
    """The map of `labels`: all ints, or all names (else ValueError)."""
    return cls.from_entries(Entry(id=x, file=x, label=x, where='<labels>') for x in labels)

  @classmethod
  def from_entries(cls, entries: Iterable[Entry]) -> LabelMap:
    """The map of the entries' labels: ints as ids, or sorted names. A mix of ints and
    names is refused, naming the lines of the rarer kind (on a tie, the names)."""
    entries = list(entries)
    ints = [e for e in entries if _is_int(e.label)]
    names = [e for e in entries if not _is_int(e.label)]
    if ints and names:
      odd, kind, other = ((ints, 'an int', 'names') if len(ints) < len(names) else
                          (names, 'not an int', 'ints'))
      also = '; '.join(f'{e.where}: {e.label!r}' for e in odd[1:5])
      also = f' (also {also}{" and more" if len(odd) > 5 else ""})' if also else ''
      raise ValueError(
          f'{odd[0].where}: label {odd[0].label!r} is {kind}, but {len(entries) - len(odd)} '
          f'of the {len(entries)} labels are {other}{also}. Make every label an int (the '
          'class id) or every label a class name; a header row must name its columns '
          '(e.g. path,label)')
    if ints:
      return cls(tuple(str(i) for i in range(max(int(e.label) for e in ints) + 1)), True)
    return cls(tuple(sorted({e.label for e in names})), False)

  @functools.cached_property
  def _ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.names)}

  def id(self, label: str) -> int:
    return int(label) if self.from_ints else self._ids[label]


def read_split(source: str, root: str | None,
               extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Entry]:
  """The entries of a split: a class-folder tree if `source` is a folder, else a list."""
  if os.path.isdir(source):
    return scan_class_folders(source, extensions)
  return read_list(source, root)


def scan_class_folders(root: str, extensions: Sequence[str] = VIDEO_EXTENSIONS
                       ) -> list[Entry]:
  """root/<class>/<file> for every file with a video extension, sorted."""
  entries = []
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder) or name.startswith('.'):
      continue
    for dirpath, dirnames, filenames in os.walk(folder):
      dirnames.sort()
      for filename in sorted(filenames):
        if filename.lower().endswith(tuple(extensions)):
          file = os.path.join(dirpath, filename)
          entries.append(Entry(id=os.path.relpath(file, root), file=file, label=name,
                               where=folder))
  if not entries:
    raise ValueError(f'{root}: no class sub-folder holds a file ending in {extensions}')
  return entries


def read_list(list_file: str, root: str | None = None) -> list[Entry]:
  """Parses a list file in one of the three formats (module docstring); a malformed line
  is a ValueError naming `list_file:line`."""
  root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
  with open(list_file, newline='') as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1)]
  lines = [(n, line) for n, line in lines if line and not line.startswith('#')]
  if not lines:
    raise ValueError(f'{list_file}: no entries')
  is_csv = ',' in lines[0][1]
  entries = []
  for n, line in lines:
    where = f'{list_file}:{n}'
    if is_csv:
      fields = [x.strip() for x in next(csv.reader([line]))]
      if len(fields) == 2:
        path, label, segment = fields[0], fields[1], None
      elif len(fields) == 6:
        path, label, segment = fields[1], fields[5], _segment(fields[3], fields[4])
      else:
        raise ValueError(f'{where}: expected 2 (path,label) or 6 (source,path,'
                         f'total_time,start,end,label) csv fields, got {len(fields)}')
    else:
      fields = line.rsplit(maxsplit=1)
      if len(fields) != 2:
        raise ValueError(f'{where}: expected "path label", got {line!r} (no label?)')
      (path, label), segment = fields, None
    if n == lines[0][0] and _is_header(path, label):
      logging.info('%s: header row %r skipped', where, line)
      continue
    if not path or not label:
      raise ValueError(f'{where}: empty path or label in {line!r}')
    if label.startswith('-') and _is_int(label[1:]):
      raise ValueError(f'{where}: negative label {label}')
    if label.lower().endswith(VIDEO_EXTENSIONS):
      raise ValueError(f'{where}: no label: the last field {label!r} is a video file name '
                       f'(a path with spaces and no label?) in {line!r}')
    entries.append(Entry(id=path, file=os.path.join(root, path), label=label,
                         segment=segment, where=where))
  if not entries:
    raise ValueError(f'{list_file}: no entries after its header row')
  return entries


def _is_int(label: str) -> bool:
  return label.isascii() and label.isdigit()


def _is_header(path: str, label: str) -> bool:
  """Whether a first data line is a header row (module docstring)."""
  return not _is_int(label) and (path.lower() in HEADER_PATHS
                                 or label.lower() in HEADER_LABELS)


def _segment(start: str, end: str) -> tuple[float, float] | None:
  try:
    segment = float(start), float(end)
  except ValueError:
    return None
  return segment if segment[1] > segment[0] else None


class VideoCsv(common.FileListBuilder):
  """Videos listed by the user; configure with a `VideoCsvConfig`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  @functools.cached_property
  def _entries(self) -> dict[str, list[Entry]]:
    """The listed videos of every split; the list files are read once per builder."""
    config = self.builder_config
    if not config.splits:
      raise ValueError(f'video_csv config {config.name!r}: no splits given')
    return {split: read_split(source, config.root, config.extensions)
            for split, source in config.splits.items()}

  @functools.cached_property
  def _labels(self) -> LabelMap:
    # Every listed line, decodable or not: a skipped file never shifts an id.
    return LabelMap.from_entries(e for split in self._entries.values() for e in split)

  def _info(self) -> tfds.core.DatasetInfo:
    # A prepared dataset restores its names from disk: the sources may be gone.
    prepared = (self.data_path / 'dataset_info.json').exists()
    names = None if prepared else self._labels.names
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.video_features(names),
        supervised_keys=('video', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # local files only
    return {split: self._generate_examples(split, split_entries, self._labels)
            for split, split_entries in self._entries.items()}

  def _generate_examples(self, split: str, entries: list[Entry], labels: LabelMap):
    config = self.builder_config
    jobs = ((i, e, labels.id(e.label), config.short_side) for i, e in enumerate(entries))
    yield from self._readable(split, entries, jobs, _load)

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    labels = self._labels
    (self.data_path / LABEL_MAP).write_text(json.dumps(
        {'names': list(labels.names), 'from_ints': labels.from_ints}, indent=1))


def _load(job: tuple[int, Entry, int, int | None]) -> tuple[int, dict | None, str]:
  """(index, record, '') or (index, None, why it is skipped); runs in a worker."""
  index, entry, label, short_side = job
  try:
    with open(entry.file, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    return index, None, 'missing: no such file'
  except (OSError, MemoryError) as e:
    return index, None, f'unreadable: {entry.file}: {type(e).__name__}: {e}'
  try:
    if short_side is not None or entry.segment is not None:
      data = decode.reencode(data, short_side, entry.file, segment=entry.segment)
    info = decode.probe(data, entry.file)
    return index, common.record(data, label, entry.id, info), ''
  except decode.DecodeError as e:
    return index, None, f'undecodable: {e}'
  except Exception as e:  # pylint: disable=broad-except
    # Anything else (MemoryError, a bug on one odd file) skips this file, listed; the
    # build goes on.
    return index, None, f'failed: {entry.file}: {type(e).__name__}: {e}'


def build(config: VideoCsvConfig, data_dir: str,
          num_workers: int | None = None) -> VideoCsv:
  """Builds (or reuses) the dataset of `config` in `data_dir`; returns its builder.

  Read it back with `builder.as_data_source(split)`, or later, without the sources,
  with `tfds.builder_from_directory(builder.data_dir)`. `num_workers`: processes reading
  and checking the videos (`common.build_local`).
  """
  return common.build_local(VideoCsv, config, data_dir, num_workers)
