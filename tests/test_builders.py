"""TFDS builders (synthetic_motion, video_csv) and the synthetic clip generator."""

import json
import logging
import os
import socket
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from flux_jax.data import decode
from flux_jax.data import synthetic
from flux_jax.data.builders import common
from flux_jax.data.builders import synthetic_motion
from flux_jax.data.builders import video_csv


def by_id(source):
  return {r['id'].decode(): r for r in (source[i] for i in range(len(source)))}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """synthetic_motion 'tiny', built in process with the network switched off."""
  def no_network(*args, **kwargs):
    raise AssertionError(f'the build tried to reach the network: {args}')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, 'connect', no_network)
    mp.setattr(socket, 'create_connection', no_network)
    data_dir = str(tmp_path_factory.mktemp('a'))
    return synthetic_motion.build('tiny', data_dir, num_workers=1)


def test_tiny_reads_back(tiny):
  assert 'tensorflow' not in sys.modules  # built and read without TensorFlow
  assert tiny.info.features['label'].names == list(synthetic.CLASS_NAMES)
  for split, n in (('train', 24), ('validation', 12)):
    records = by_id(tiny.as_data_source(split))
    assert sorted(records) == [f'{split}_{i:06d}' for i in range(n)]
    labels = [int(records[f'{split}_{i:06d}']['label']) for i in range(n)]
    assert labels == [i % 6 for i in range(n)]  # balanced
    for key, r in records.items():
      info = decode.probe(r['video'], key)
      assert (info.num_frames, info.height, info.width) == (
          r['num_frames'], r['height'], r['width'])
      assert 32 <= r['num_frames'] <= 64 and 112 <= min(r['height'], r['width'])
  r = grain.MapDataset.source(tiny.as_data_source('validation'))[3]  # feeds grain
  last = decode.decode_frames(r['video'], [r['num_frames'] - 1], r['id'].decode())
  assert last.shape == (1, r['height'], r['width'], 3)


def test_stored_clip_is_the_generated_clip(tiny):
  r = by_id(tiny.as_data_source('train'))['train_000005']
  frames, label = synthetic.make_clip(synthetic_motion.example_seed(0, 'train', 5), 5)
  assert int(r['label']) == label and r['num_frames'] == len(frames)
  decoded = decode.decode_frames(r['video'], np.arange(len(frames)), 'train_000005')
  assert np.abs(decoded.astype(int) - frames).mean() < 8


def test_build_is_deterministic(tiny, tmp_path):
  """Same bytes from a second build in another directory, on 2 worker processes."""
  other = synthetic_motion.build('tiny', str(tmp_path), num_workers=2)
  for split in ('train', 'validation'):
    a, b = by_id(tiny.as_data_source(split)), by_id(other.as_data_source(split))
    assert sorted(a) == sorted(b)
    for key in a:
      assert a[key]['video'] == b[key]['video'] and a[key]['label'] == b[key]['label']


def test_sized_config(tmp_path):
  builder = synthetic_motion.build(synthetic_motion.sized(7, 6), str(tmp_path), 1)
  assert builder.builder_config.name == 'n7_6'
  assert len(builder.as_data_source('train')) == 7
  assert len(builder.as_data_source('validation')) == 6


def test_a_sized_name_is_its_config():
  config = synthetic_motion.parse('n7_6_s2_panning')
  assert (config.name, config.num_train, config.num_validation, config.seed,
          config.difficulty) == ('n7_6_s2_panning', 7, 6, 2, 'panning')
  assert synthetic_motion.parse('n7_6').difficulty == 'easy'
  assert synthetic_motion.parse('panning') == 'panning'  # registered: TFDS's own
  with pytest.raises(ValueError, match="'n7_6_s0': write it 'n7_6'"):
    synthetic_motion.parse('n7_6_s0')
  with pytest.raises(ValueError, match="difficulty 'wobbly'"):
    synthetic_motion.parse('n7_6_wobbly')
  with pytest.raises(ValueError, match="config 'huge' is not one of 'tiny'"):
    synthetic_motion.parse('huge')


def test_a_half_built_dataset_is_rebuilt_never_opened(tmp_path, caplog):
  """A killed build's leftovers: a shard file gone, dataset_info.json gone, an
  incomplete.* directory. Each is detected and rebuilt; a finished build is reused."""
  config = synthetic_motion.sized(5, 4)
  builder = synthetic_motion.build(config, str(tmp_path), 1)
  path = builder.data_path
  want = by_id(builder.as_data_source('train'))
  assert common.incomplete_reason(path) is None
  stamp = os.stat(path / 'dataset_info.json').st_mtime_ns
  synthetic_motion.build(config, str(tmp_path), 1)  # reused, not rebuilt
  assert os.stat(path / 'dataset_info.json').st_mtime_ns == stamp
  shard = next(path.glob('synthetic_motion-train.array_record-*'))
  shard.unlink()
  assert common.incomplete_reason(path) == "split 'train' lacks 1 of 1 shard files"
  (path.parent / f'incomplete.XYZ_{path.name}').mkdir()
  with caplog.at_level(logging.WARNING):
    rebuilt = synthetic_motion.build(config, str(tmp_path), 1)
  assert 'is half-built (split \'train\' lacks 1 of 1 shard files)' in caplog.text
  assert by_id(rebuilt.as_data_source('train')).keys() == want.keys()
  assert not list(path.parent.glob('incomplete.*'))
  (path / 'dataset_info.json').unlink()
  assert common.incomplete_reason(path) == 'no dataset_info.json'
  rebuilt = synthetic_motion.build(config, str(tmp_path), 1)
  assert common.incomplete_reason(path) is None
  assert len(rebuilt.as_data_source('validation')) == 4


def test_build_dataset_cli_builds_video_csv(tmp_path):
  root = tmp_path / 'videos'
  write_clip(root / 'a.mp4', 0)
  write_clip(root / 'b.mp4', 1)
  (root / 'bad.mp4').write_text('not a video')
  (tmp_path / 'train.txt').write_text('a.mp4 0\nb.mp4 1\nbad.mp4 1\n')
  out = subprocess.run([sys.executable, '-m', 'flux_jax.cli.build_dataset', 'video_csv', '--name',
                        'mine', '--data_dir', str(tmp_path / 'data'), '--split',
                        f'train={tmp_path / "train.txt"}', '--root', str(root),
                        '--workers', '1'], capture_output=True, text=True, check=True)
  lines = out.stdout.strip().splitlines()
  lines = lines[lines.index(f"ready: {tmp_path / 'data' / 'video_csv' / 'mine' / '1.0.0'}"):]
  assert lines[1].strip() == 'train: 2 videos'
  assert lines[2].strip().startswith('skipped 1 files (reasons in ')
  bad = subprocess.run([sys.executable, '-m', 'flux_jax.cli.build_dataset', 'video_csv', '--name',
                        'x', '--split', 'train'], capture_output=True, text=True)
  assert bad.returncode != 0 and "--split='train': expected SPLIT=" in bad.stderr


# ---------------------------------------------------------------- synthetic semantics


@pytest.mark.parametrize('difficulty', sorted(synthetic.DIFFICULTIES))
@pytest.mark.parametrize('seed', range(6))
def test_disc_moves_in_the_labeled_direction(seed, difficulty):
  level = synthetic.DIFFICULTIES[difficulty]
  for label, name in enumerate(synthetic.CLASS_NAMES):
    scene = synthetic.make_scene(seed, label, difficulty)
    h, w = scene.size
    (y0, x0), (y1, x1) = scene.disc_center[0], scene.disc_center[-1]
    r0, r1 = scene.disc_radius[0], scene.disc_radius[-1]
    expected = {
        'move_left': x1 - x0 < -0.25 * w and abs(y1 - y0) < 0.1 * w and r0 == r1,
        'move_right': x1 - x0 > 0.25 * w and abs(y1 - y0) < 0.1 * w and r0 == r1,
        'move_up': y1 - y0 < -0.25 * h and abs(x1 - x0) < 0.1 * h and r0 == r1,
        'move_down': y1 - y0 > 0.25 * h and abs(x1 - x0) < 0.1 * h and r0 == r1,
        'grow': r1 > 1.5 * r0,
        'shrink': r0 > 1.5 * r1,
    }[name]
    assert expected, (seed, name, scene.disc_center[[0, -1]], r0, r1)
    lo = min(level.move_radius[0], level.scale_radius[0][0])
    hi = max(level.move_radius[1], level.scale_radius[1][1])
    assert lo <= scene.disc_radius.min() and scene.disc_radius.max() <= hi
    # the whole disc stays inside the frame (up to the 0.3 px jitter)
    r = scene.disc_radius[:, None] - 1.5
    assert np.all(scene.disc_center >= r) and np.all(scene.disc_center <= np.array([h, w]) - r)
    for center, half, _ in scene.squares:
      moved = np.abs(np.diff(center, axis=0)).max() + np.abs(np.diff(half)).max()
      assert (moved > 0) == level.squares_move


def test_hard_is_version_1_0_0():
  """'hard' keeps the 1.0.0 draws: values printed by the 1.0.0 code (commit 80306aa)."""
  scene = synthetic.make_scene(3, 1, 'hard')
  assert scene.size == (126, 130) and scene.num_frames == 34
  np.testing.assert_allclose(scene.disc_center[0], [55.43438682, 45.92570332], rtol=1e-8)
  np.testing.assert_allclose(scene.disc_radius[0], 8.36702511536087, rtol=1e-12)
  easy = synthetic.make_scene(3, 1, 'easy')
  assert easy.size == scene.size and easy.num_frames == scene.num_frames
  np.testing.assert_array_equal(easy.offsets, scene.offsets)  # same background draws


def test_unknown_difficulty_is_refused():
  with pytest.raises(ValueError, match='difficulty'):
    synthetic.make_scene(0, 0, 'medium')


@pytest.mark.parametrize('seed', range(4))
def test_rendered_disc_is_where_the_scene_says(seed):
  scene = synthetic.make_scene(seed)
  frames = synthetic.render(scene)
  y, x = np.rint(scene.disc_center).astype(int).T  # [T] each
  seen = frames[np.arange(len(frames)), y, x].astype(float)  # [T, 3]
  want = np.clip(scene.disc_color * scene.gain[:, None], 0, 255)
  assert np.abs(seen - want).max() <= 1.0


@pytest.mark.parametrize('seed', range(4))
def test_reversal_swaps_the_class_pairs(seed):
  for label, reverse in enumerate(synthetic.REVERSED_LABEL):
    a, b = synthetic.make_scene(seed, label), synthetic.make_scene(seed, reverse)
    np.testing.assert_array_equal(a.disc_center[::-1], b.disc_center)
    np.testing.assert_array_equal(a.disc_radius[::-1], b.disc_radius)


def test_make_clip_is_a_function_of_seed():
  frames, label = synthetic.make_clip(11)
  again, label_again = synthetic.make_clip(11, label)
  assert label == label_again
  np.testing.assert_array_equal(frames, again)
  sizes = {synthetic.make_clip(s)[0].shape for s in range(12)}
  for t, h, w, c in sizes:
    assert 32 <= t <= 64 and 112 <= h <= 192 and 112 <= w <= 192 and h % 2 == w % 2 == 0
  assert len({s[2] / s[1] for s in sizes}) > 6  # varied aspect ratios


# ---------------------------------------------------------------- video_csv


def write_clip(path, seed, t=8):
  rng = np.random.default_rng(seed)
  frames = np.repeat(rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8), t, 0)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = decode.encode_mp4(frames)
  path.write_bytes(data)
  return data


def test_video_csv_from_class_folders(tmp_path):
  for i, name in enumerate(['dog', 'cat', 'bird']):
    for j in range(2):
      write_clip(tmp_path / 'videos' / name / f'{j}.mp4', 10 * i + j, t=6 + j)
  (tmp_path / 'videos' / 'cat' / 'notes.txt').write_text('not a video, ignored')
  config = video_csv.VideoCsvConfig(name='folders',
                                    splits={'train': str(tmp_path / 'videos')})
  builder = video_csv.build(config, str(tmp_path / 'data'), num_workers=1)
  names = builder.info.features['label'].names
  assert names == ['bird', 'cat', 'dog']
  records = by_id(builder.as_data_source('train'))
  assert sorted(records) == sorted(f'{n}/{j}.mp4' for n in names for j in range(2))
  for key, r in records.items():
    assert names[r['label']] == key.split('/')[0]
    assert (r['num_frames'], r['height'], r['width']) == (6 + int(key[-5]), 48, 64)
  manifest = json.loads((builder.data_path / video_csv.MANIFEST).read_text())
  assert manifest['skipped'] == [] and manifest['num_examples'] == {'train': 6}


def test_video_csv_list_skips_bad_files(tmp_path):
  root = tmp_path / 'videos'
  good = write_clip(root / 'a b' / 'good 1.mp4', 0)  # spaces in the path
  write_clip(root / 'good2.mp4', 1, t=5)
  full = write_clip(root / 'x.mp4', 2)
  (root / 'truncated.mp4').write_bytes(full[:len(full) // 2])
  (root / 'text.mp4').write_text('hello, I am not a video\n' * 20)
  (tmp_path / 'train.txt').write_text(
      '# path label\n'
      'a b/good 1.mp4 cat\n'
      'good2.mp4 dog\n'
      '\n'
      'truncated.mp4 dog\n'
      'text.mp4 cat\n'
      'missing.mp4 dog\n')
  config = video_csv.VideoCsvConfig(name='list', root=str(root),
                                    splits={'train': str(tmp_path / 'train.txt')})
  builder = video_csv.build(config, str(tmp_path / 'data'), num_workers=2)
  assert builder.info.features['label'].names == ['cat', 'dog']
  records = by_id(builder.as_data_source('train'))
  assert sorted(records) == ['a b/good 1.mp4', 'good2.mp4']
  assert records['a b/good 1.mp4']['video'] == good  # original bytes kept
  assert records['a b/good 1.mp4']['label'] == 0 and records['good2.mp4']['label'] == 1
  assert records['good2.mp4']['num_frames'] == 5
  manifest = json.loads((builder.data_path / video_csv.MANIFEST).read_text())
  skipped = {s['id']: s['reason'] for s in manifest['skipped']}
  assert sorted(skipped) == ['missing.mp4', 'text.mp4', 'truncated.mp4']
  assert skipped['missing.mp4'].startswith('missing')
  assert skipped['text.mp4'].startswith('undecodable: ')
  assert str(root / 'text.mp4') in skipped['text.mp4']  # names the file
  assert skipped['truncated.mp4'].startswith('undecodable')
  label_map = json.loads((builder.data_path / video_csv.LABEL_MAP).read_text())
  assert label_map == {'names': ['cat', 'dog'], 'from_ints': False}
  # Read back from the directory alone: no list file, no builder code needed.
  os.remove(tmp_path / 'train.txt')
  restored = tfds.builder_from_directory(builder.data_dir)
  assert restored.info.features['label'].names == ['cat', 'dog']
  assert len(restored.as_data_source('train')) == 2


def test_video_csv_int_labels_kmash_segments_and_short_side(tmp_path):
  root = tmp_path / 'videos'
  write_clip(root / 'a.mp4', 0, t=25)  # 1 s at 25 fps
  write_clip(root / 'b.mp4', 1, t=10)
  (tmp_path / 'train.csv').write_text('a.mp4,2\nb.mp4,0\n')
  (tmp_path / 'val.csv').write_text(
      'source,path,total_time,start,end,label\n'
      'k400,a.mp4,1.0,0.2,0.6,2\n'  # frames 5..14
      'k400,b.mp4,0.4,,,0\n')  # whole video
  config = video_csv.VideoCsvConfig(
      name='ints', root=str(root), short_side=32,
      splits={'train': str(tmp_path / 'train.csv'),
              'validation': str(tmp_path / 'val.csv')})
  builder = video_csv.build(config, str(tmp_path / 'data'), num_workers=1)
  assert builder.info.features['label'].names == ['0', '1', '2']  # ints kept as ids
  train = by_id(builder.as_data_source('train'))
  assert {k: int(r['label']) for k, r in train.items()} == {'a.mp4': 2, 'b.mp4': 0}
  assert (train['a.mp4']['height'], train['a.mp4']['width']) == (32, 42)  # 64*32/48
  val = by_id(builder.as_data_source('validation'))
  assert val['a.mp4']['num_frames'] == 10 and val['b.mp4']['num_frames'] == 10


def test_video_csv_bad_list_line_names_the_file(tmp_path):
  (tmp_path / 'bad.csv').write_text('a.mp4,1,2\n')
  with pytest.raises(ValueError, match=r'bad\.csv:1: expected 2'):
    video_csv.read_list(str(tmp_path / 'bad.csv'))
