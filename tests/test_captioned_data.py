"""Captioned videos (captioned_video builder) and the synthetic captioned task."""

import fractions
import json
import sys

import av

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flux_jax.data import captions
from flux_jax.data import decode
from flux_jax.data import synthetic
from flux_jax.data.builders import captioned_video
from flux_jax.data.builders import synthetic_captions
from flux_jax.data.builders import synthetic_motion


def by_id(source):
  return {r['id'].decode(): r for r in (source[i] for i in range(len(source)))}


def write_clip(path, seed, t=6, h=48, w=64):
  rng = np.random.default_rng(seed)
  frames = np.repeat(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), t, 0)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = decode.encode_mp4(frames)
  path.write_bytes(data)
  return data


# ---------------------------------------------------------------- captioned_video


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """Real mp4s, a png (odd sides) and a jpg image, a missing and a corrupt file."""
  tmp = tmp_path_factory.mktemp('captioned')
  root = tmp / 'media'
  good = write_clip(root / 'a.mp4', 0, t=7)
  write_clip(root / 'sub dir' / 'b.mp4', 1, t=5)
  full = write_clip(root / 'c.mp4', 2)
  (root / 'truncated.mp4').write_bytes(full[:len(full) // 2])
  (root / 'text.mp4').write_text('not a video\n' * 20)
  image = np.random.default_rng(3).integers(0, 256, (37, 51, 3), dtype=np.uint8)
  (root / 'pic.png').write_bytes(decode.encode_png(image))
  (root / 'pic.jpg').write_bytes(_jpeg(image[:36, :50]))
  train = [
      {'video': 'a.mp4', 'caption': 'a dog runs', 'label': 2},
      {'video': 'sub dir/b.mp4', 'caption': ['a cat sleeps', 'a cat on a sofa', 'ünïcödé']},
      {'image': 'pic.png', 'caption': 'a noisy picture'},
      {'video': 'missing.mp4', 'caption': 'never seen'},
      {'video': 'text.mp4', 'caption': ['text']},
      {'video': 'truncated.mp4', 'caption': 'cut short'},
      {'video': 'a.mp4', 'caption': ['a dog runs again'], 'label': 2, 'extra': 1},
  ]
  validation = [{'image': 'pic.jpg', 'caption': ['a jpeg'], 'label': 0},
                {'video': str(root / 'c.mp4'), 'caption': 'absolute path'}]
  (tmp / 'train.json').write_text(json.dumps(train))
  (tmp / 'val.json').write_text(json.dumps(validation))
  config = captioned_video.CaptionedVideoConfig(
      name='mine', root=str(root), class_names=('zero', 'one', 'two'),
      splits={'train': str(tmp / 'train.json'), 'validation': str(tmp / 'val.json')})
  builder = captioned_video.build(config, str(tmp / 'data'), num_workers=2)
  return builder, root, good


def _jpeg(frame):
  """A JPEG file of uint8 [H, W, 3] (even sides), by FFmpeg's mjpeg encoder."""
  codec = av.CodecContext.create('mjpeg', 'w')
  codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], 'yuvj420p'
  codec.time_base = fractions.Fraction(1, 25)
  video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24').reformat(format='yuvj420p')
  return b''.join(bytes(p) for p in [*codec.encode(video_frame), *codec.encode(None)])


def test_captioned_video_reads_back(built):
  builder, _, good = built
  assert 'tensorflow' not in sys.modules  # built and read without TensorFlow
  train = by_id(builder.as_data_source('train'))
  assert sorted(train) == ['a.mp4', 'pic.png', 'sub dir/b.mp4']
  a, b, pic = train['a.mp4'], train['sub dir/b.mp4'], train['pic.png']
  # captions: a list of UTF-8 bytes; a video listed twice is one example, its captions
  # in order
  assert isinstance(a['captions'], list)
  assert a['captions'] == [b'a dog runs', b'a dog runs again']
  assert [c.decode() for c in b['captions']] == ['a cat sleeps', 'a cat on a sofa', 'ünïcödé']
  assert pic['captions'] == [b'a noisy picture']
  assert (a['label'], b['label'], pic['label']) == (2, -1, -1)
  assert a['video'] == good  # original bytes kept without short_side
  assert (a['num_frames'], b['num_frames']) == (7, 5)
  # the image: a 1-frame H.264 mp4, sides rounded down to even
  assert (pic['num_frames'], pic['height'], pic['width']) == (1, 36, 50)
  assert decode.probe(pic['video'], 'pic') == decode.VideoInfo(1, 36, 50, 25.0)
  assert pic['video'][4:8] == b'ftyp'
  validation = by_id(builder.as_data_source('validation'))
  assert len(validation) == 2
  jpg = validation['pic.jpg']
  assert (jpg['num_frames'], jpg['height'], jpg['width'], jpg['label']) == (1, 36, 50, 0)
  assert captioned_video.class_names(builder) == ['zero', 'one', 'two']


def test_bad_files_are_skipped_and_listed(built):
  builder, root, _ = built
  manifest = json.loads((builder.data_path / captioned_video.MANIFEST).read_text())
  assert manifest['num_examples'] == {'train': 3, 'validation': 2}
  assert manifest['short_side'] is None and manifest['config'] == 'mine'
  skipped = {s['id']: s for s in manifest['skipped']}
  assert sorted(skipped) == ['missing.mp4', 'text.mp4', 'truncated.mp4']
  assert {s['split'] for s in skipped.values()} == {'train'}
  assert skipped['missing.mp4']['reason'].startswith('missing')
  assert skipped['text.mp4']['reason'].startswith('undecodable: ')
  assert skipped['text.mp4']['file'] == str(root / 'text.mp4')
  assert skipped['truncated.mp4']['reason'].startswith('undecodable')


def test_read_back_from_the_directory_alone(built):
  builder, _, _ = built
  restored = tfds.builder_from_directory(builder.data_dir)
  assert captioned_video.class_names(restored) == ['zero', 'one', 'two']
  assert by_id(restored.as_data_source('train'))['a.mp4']['captions'] == [
      b'a dog runs', b'a dog runs again']
  feature = restored.info.features
  assert isinstance(feature['captions'], tfds.features.Sequence)
  assert feature['label'].np_dtype == np.int32


def test_short_side_reencodes_videos_and_images(tmp_path):
  write_clip(tmp_path / 'v.mp4', 0, t=3, h=48, w=64)
  (tmp_path / 'i.png').write_bytes(decode.encode_png(np.zeros((40, 80, 3), np.uint8)))
  (tmp_path / 'a.json').write_text(json.dumps([{'video': 'v.mp4', 'caption': 'v'},
                                               {'image': 'i.png', 'caption': 'i'}]))
  config = captioned_video.CaptionedVideoConfig(
      name='short', short_side=32, splits={'test': str(tmp_path / 'a.json')})
  builder = captioned_video.build(config, str(tmp_path / 'data'), num_workers=1)
  records = by_id(builder.as_data_source('test'))
  assert {k: (r['num_frames'], r['height'], r['width']) for k, r in records.items()} == {
      'v.mp4': (3, 32, 42), 'i.png': (1, 32, 64)}
  assert captioned_video.class_names(builder) is None


@pytest.mark.parametrize('entries, problem', [
    ({'video': 'a.mp4', 'caption': 'x'}, 'expected a JSON list'),
    ([{'video': 'a.mp4', 'caption': 'x'}, {'caption': 'y'}],
     r'entry 1: needs exactly one of "video" and "image", has neither'),
    ([{'video': 'a.mp4', 'image': 'b.png', 'caption': 'y'}], r'entry 0: needs exactly one'),
    ([{'video': 'a.mp4', 'caption': 'x'}, {'video': 'b.mp4'}], r'entry 1: no "caption"'),
    ([{'video': 'a.mp4', 'caption': []}], r'entry 0: "caption" must be a string or a '
                                          r'non-empty list'),
    ([{'video': 'a.mp4', 'caption': ['ok', '  ']}], r'entry 0: caption \'  \' is not'),
    ([{'video': 'a.mp4', 'caption': ['ok', 3]}], r'entry 0: caption 3 is not'),
    ([{'video': '', 'caption': 'x'}], r'entry 0: "video" must be a non-empty path'),
    (['a.mp4'], r'entry 0: expected an object'),
    ([{'video': 'a.mp4', 'caption': 'x', 'label': 'dog'}], r'entry 0: "label" must be an int'),
    ([{'video': 'a.mp4', 'caption': 'x', 'label': -2}], r'entry 0: "label" must be an int'),
    ([{'video': 'a.mp4', 'caption': 'x', 'label': 3}],
     r'entry 0: label 3 is not below the 3 class names'),
    ([{'video': 'a.mp4', 'caption': 'x', 'label': 1},
      {'video': 'a.mp4', 'caption': 'y', 'label': 2}], r'entry 1: label 2 of .a\.mp4. '
                                                       r'differs from 1 at .*entry 0'),
])
def test_a_malformed_annotation_names_file_and_entry(tmp_path, entries, problem):
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(entries))
  with pytest.raises(ValueError, match=rf'bad\.json: {problem}'):
    captioned_video.read_annotations(str(path), num_classes=3)


def test_a_malformed_annotation_stops_the_build(tmp_path):
  write_clip(tmp_path / 'a.mp4', 0)
  (tmp_path / 'good.json').write_text(json.dumps([{'video': 'a.mp4', 'caption': 'x'}]))
  (tmp_path / 'bad.json').write_text(json.dumps([{'video': 'a.mp4', 'caption': 'x'},
                                                 {'video': 'a.mp4', 'caption': []}]))
  config = captioned_video.CaptionedVideoConfig(
      name='bad', splits={'train': str(tmp_path / 'good.json'),
                          'validation': str(tmp_path / 'bad.json')})
  with pytest.raises(ValueError, match=r'bad\.json: entry 1: "caption"'):
    captioned_video.build(config, str(tmp_path / 'data'), num_workers=1)


# ---------------------------------------------------------------- synthetic captions


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return synthetic_captions.build('tiny', str(tmp_path_factory.mktemp('synth')),
                                  num_workers=1)


def test_tiny_synthetic_captions_read_back(tiny):
  assert tiny.builder_config.name == 'synthetic_captions_tiny'
  assert captioned_video.class_names(tiny) == list(synthetic.CLASS_NAMES)
  for split, n in (('train', 24), ('validation', 12)):
    records = by_id(tiny.as_data_source(split))
    assert sorted(records) == [synthetic_captions.video_path(split, i) for i in range(n)]
    for i in range(n):
      r = records[synthetic_captions.video_path(split, i)]
      assert r['label'] == i % synthetic.NUM_CLASSES and r['num_frames'] == 8
      assert 3 <= len(r['captions']) <= 5


def test_captions_describe_the_stored_scene(tiny):
  """Each caption parses to the clip's label and its disc's colour; the colour is the
  one decoded at the disc's centre (up to compression and flicker), the direction
  words are the disc's actual motion."""
  config = synthetic_captions.CONFIGS['tiny']
  agree = total = 0
  for split in ('train', 'validation'):
    records = by_id(tiny.as_data_source(split))
    for i in range(len(records)):
      r = records[synthetic_captions.video_path(split, i)]
      scene, drawn = synthetic_captions.clip_captions(config, split, i)
      assert [c.text.encode() for c in drawn] == r['captions']
      color = captions.color_name(scene.disc_color)
      for text in r['captions']:
        parsed = captions.parse(text.decode())
        assert (parsed.label, parsed.color) == (r['label'], color), text
      (y0, x0), (y1, x1) = scene.disc_center[0], scene.disc_center[-1]
      moved = {'move_left': x1 < x0, 'move_right': x1 > x0, 'move_up': y1 < y0,
               'move_down': y1 > y0, 'grow': scene.disc_radius[-1] > scene.disc_radius[0],
               'shrink': scene.disc_radius[-1] < scene.disc_radius[0]}
      assert moved[synthetic.CLASS_NAMES[r['label']]]
      middle = r['num_frames'] // 2
      frame = decode.decode_frames(r['video'], [middle], r['id'].decode())[0]
      y, x = np.rint(scene.disc_center[middle]).astype(int)
      seen = frame[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
      agree += captions.color_name(seen) == color
      total += 1
  assert agree >= 0.9 * total, (agree, total)


def test_held_out_templates_only_in_validation(tiny):
  templates = {}
  for split in ('train', 'validation'):
    source = tiny.as_data_source(split)
    per_clip = [{captions.parse(c.decode()).template for c in source[i]['captions']}
                for i in range(len(source))]
    assert all(len(t) == len(source[i]['captions']) for i, t in enumerate(per_clip))
    templates[split] = per_clip
  held_out = set(captions.HELD_OUT_TEMPLATES)
  assert not set().union(*templates['train']) & held_out
  assert all(t & held_out for t in templates['validation'])  # every validation clip
  assert set().union(*templates['validation']) >= held_out


def test_synthetic_captions_are_deterministic(tmp_path):
  config = synthetic_captions.SyntheticCaptionsConfig('d', 4, 3, num_frames=4)
  one = synthetic_captions.write_sources(config, str(tmp_path / 'one'), num_workers=1)
  two = synthetic_captions.write_sources(config, str(tmp_path / 'two'), num_workers=2)
  for split in ('train', 'validation'):
    a, b = (json.loads(open(s[split]).read()) for s in (one, two))
    assert a == b and len(a) == {'train': 4, 'validation': 3}[split]
    for entry in a:
      assert ((tmp_path / 'one' / entry['video']).read_bytes()
              == (tmp_path / 'two' / entry['video']).read_bytes())
  other = synthetic_captions.SyntheticCaptionsConfig('d', 4, 3, seed=1, num_frames=4)
  assert ([c.text for c in synthetic_captions.clip_captions(other, 'train', 0)[1]]
          != [c.text for c in synthetic_captions.clip_captions(config, 'train', 0)[1]])


def test_clips_are_synthetic_motion_examples():
  """Same seed and split: the synthetic_motion clip, at `num_frames` evenly spaced
  frames (subsample renders the same frames)."""
  config = synthetic_captions.SyntheticCaptionsConfig('x', num_frames=5)
  scene, _ = synthetic_captions.clip_captions(config, 'validation', 4)
  full, label = synthetic.make_clip(synthetic_motion.example_seed(0, 'validation', 4), 4)
  indices = synthetic.frame_indices(len(full), 5)
  assert label == scene.label and indices[0] == 0 and indices[-1] == len(full) - 1
  np.testing.assert_array_equal(synthetic.render(scene), full[indices])


def test_color_names():
  named = {(255, 0, 0): 'red', (0, 0, 255): 'blue', (0, 200, 0): 'green',
           (255, 255, 0): 'yellow', (255, 140, 0): 'orange', (128, 0, 128): 'purple',
           (0, 255, 255): 'cyan', (255, 105, 180): 'pink', (139, 69, 19): 'brown',
           (10, 10, 10): 'black', (250, 250, 250): 'white', (128, 128, 128): 'gray'}
  assert {rgb: captions.color_name(rgb) for rgb in named} == named


def test_every_caption_parses_back_to_what_it_says():
  for template in range(len(captions.TEMPLATES)):
    for label in range(synthetic.NUM_CLASSES):
      for wording in range(len(captions.VERBS[label])):
        for shape in captions.SHAPES:
          made = captions.caption(template, 'red', shape, label, wording)
          assert captions.parse(made.text) == made
  assert captions.parse('a red disc dances') is None
  assert len(captions.CLASS_PHRASES) == synthetic.NUM_CLASSES
  prompts = captions.class_prompts()
  assert prompts[0][0] == 'a disc moving left' and len(prompts[4]) == len(
      captions.PROMPT_TEMPLATES)


def test_unknown_config_is_refused(tmp_path):
  with pytest.raises(ValueError, match="config 'huge' is not one of"):
    synthetic_captions.build('huge', str(tmp_path))
