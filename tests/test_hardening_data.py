"""No silent wrong labels, and no decode failure outside DecodeError (issue 30, items 2
and 3): video_csv label maps and header rows, decode.py on a spliced stream, the
builder on files that fail in other ways."""

import fractions
import io
import json

import av
import numpy as np
import pytest

from flux_jax.data import decode
from flux_jax.data.builders import video_csv


def _write(path, text):
  path.write_text(text)
  return str(path)


def _ids(entries):
  labels = video_csv.LabelMap.from_labels(e.label for e in entries)
  return labels, {e.id: labels.id(e.label) for e in entries}


# ---------------------------------------------------------------- label maps


@pytest.mark.parametrize('header', ['video,class', 'path,label', 'youtube_id,category',
                                    'Filename,Label'])
def test_a_csv_header_row_is_recognised_and_ints_stay_ids(tmp_path, header):
  listed = _write(tmp_path / 'train.csv', f'{header}\na.mp4,2\nb.mp4,10\nc.mp4,0\n')
  entries = video_csv.read_list(listed)
  assert [e.id for e in entries] == ['a.mp4', 'b.mp4', 'c.mp4']
  labels, ids = _ids(entries)
  assert labels.from_ints and labels.names == tuple(str(i) for i in range(11))
  assert ids == {'a.mp4': 2, 'b.mp4': 10, 'c.mp4': 0}


def test_a_space_separated_header_and_the_kmash_header_are_recognised(tmp_path):
  spaced = video_csv.read_list(_write(tmp_path / 'a.txt', 'path label\nx.mp4 3\n'))
  assert [(e.id, e.label, e.where) for e in spaced] == [('x.mp4', '3', f'{tmp_path}/a.txt:2')]
  kmash = video_csv.read_list(_write(tmp_path / 'k.csv', 'source,path,total_time,start,end,'
                                     'label\nk400,x.mp4,1.0,,,4\n'))
  assert [(e.id, e.label) for e in kmash] == [('x.mp4', '4')]
  # Only the first data line, and only a column name: a class named 'cat' is data.
  names = video_csv.read_list(_write(tmp_path / 'n.csv', 'x.mp4,cat\nvideo,class\n'))
  assert [(e.id, e.label) for e in names] == [('x.mp4', 'cat'), ('video', 'class')]
  with pytest.raises(ValueError, match=r'h\.csv: no entries after its header row'):
    video_csv.read_list(_write(tmp_path / 'h.csv', 'path,label\n'))


def test_labels_above_9_sort_as_numbers(tmp_path):
  lines = 'video class_index\n' + ''.join(f'v{i}.mp4 {i}\n' for i in (11, 2, 10, 0, 9, 1))
  entries = video_csv.read_list(_write(tmp_path / 'l.txt', lines))
  labels = video_csv.LabelMap.from_labels(e.label for e in entries)
  assert labels.names == tuple(str(i) for i in range(12))  # '10' after '9', not after '1'
  assert {e.id: labels.id(e.label) for e in entries} == {
      f'v{i}.mp4': i for i in (11, 2, 10, 0, 9, 1)}


def test_a_missing_label_is_an_error_naming_file_and_line(tmp_path):
  spaced = _write(tmp_path / 'train.txt', 'a.mp4 1\nvideos/my clip.mp4\nb.mp4 2\n')
  with pytest.raises(ValueError, match=r'train\.txt:2: no label: the last field '
                     r"'clip\.mp4' is a video file name"):
    video_csv.read_list(spaced)
  alone = _write(tmp_path / 'alone.txt', 'a.mp4 1\n\nb.mp4\n')
  with pytest.raises(ValueError, match=r'alone\.txt:3: expected "path label"'):
    video_csv.read_list(alone)
  empty = _write(tmp_path / 'empty.csv', 'a.mp4,1\nb.mp4,\n')
  with pytest.raises(ValueError, match=r'empty\.csv:2: empty path or label'):
    video_csv.read_list(empty)


def test_mixed_int_and_name_labels_are_refused_naming_the_odd_lines(tmp_path):
  """Refused before anything is decoded (the videos need not exist)."""
  def build(name, text):
    config = video_csv.VideoCsvConfig(name=name, splits={
        'train': _write(tmp_path / f'{name}.txt', text)})
    video_csv.build(config, str(tmp_path / 'data'), num_workers=1)

  with pytest.raises(ValueError, match=r"ints\.txt:3: label 'cat' is not an int, but 3 "
                     r'of the 4 labels are ints'):
    build('ints', 'a.mp4 1\nb.mp4 2\nc.mp4 cat\nd.mp4 12\n')
  with pytest.raises(ValueError, match=r"names\.txt:3: label '7' is an int, but 2 of the "
                     '3 labels are names'):
    build('names', 'a.mp4 cat\nb.mp4 dog\nc.mp4 7\n')


def write_clip(path, seed, t=6, h=48, w=64):
  rng = np.random.default_rng(seed)
  frames = np.repeat(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), t, 0)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(decode.encode_mp4(frames))


def test_builder_keeps_numeric_ids_past_a_header_and_a_skipped_file(tmp_path):
  """A header whose last field is not 'label' and a missing file whose label is the
  largest: ids are still the listed ints, names '0'..'11'."""
  root = tmp_path / 'videos'
  write_clip(root / 'a.mp4', 0)
  write_clip(root / 'b.mp4', 1)
  listed = _write(tmp_path / 'train.csv', 'video,class\na.mp4,2\nb.mp4,10\ngone.mp4,11\n')
  config = video_csv.VideoCsvConfig(name='ints', root=str(root), splits={'train': listed})
  builder = video_csv.build(config, str(tmp_path / 'data'), num_workers=1)
  assert builder.info.features['label'].names == [str(i) for i in range(12)]
  source = builder.as_data_source('train')
  got = {source[i]['id'].decode(): int(source[i]['label']) for i in range(len(source))}
  assert got == {'a.mp4': 2, 'b.mp4': 10}
  mixed = _write(tmp_path / 'val.txt', 'a.mp4 cat\n')
  config = video_csv.VideoCsvConfig(name='mixed', root=str(root),
                                    splits={'train': listed, 'validation': mixed})
  with pytest.raises(ValueError, match=r"val\.txt:1: label 'cat' is not an int"):
    video_csv.build(config, str(tmp_path / 'data'), num_workers=1)


# ---------------------------------------------------------------- decoding


def _spliced_mp4(sizes=((48, 64), (32, 32)), n=5):
  """One H.264 stream in one mp4 whose resolution changes after `n` frames: packets of
  two encoders (in-band SPS), muxed as one stream. Frame i is flat grey 40 * i."""
  packets = []
  for s, (h, w) in enumerate(sizes):
    codec = av.CodecContext.create('libx264', 'w')
    codec.width, codec.height, codec.pix_fmt = w, h, 'yuv420p'
    codec.time_base, codec.framerate = fractions.Fraction(1, 25), 25
    codec.options = {'bframes': '0'}
    for i in range(n):
      rgb = np.full((h, w, 3), 40 * (s * n + i) % 256, np.uint8)
      frame = av.VideoFrame.from_ndarray(rgb, format='rgb24').reformat(format='yuv420p')
      frame.pts = i
      packets += codec.encode(frame)
    packets += codec.encode(None)
  buffer = io.BytesIO()
  with av.open(buffer, 'w', format='mp4') as out:
    stream = out.add_stream('libx264', rate=25)
    stream.width, stream.height, stream.pix_fmt = sizes[0][1], sizes[0][0], 'yuv420p'
    for k, packet in enumerate(packets):
      packet.stream, packet.pts, packet.dts = stream, k, k
      packet.time_base = fractions.Fraction(1, 25)
      out.mux(packet)
  return buffer.getvalue()


def test_a_mid_stream_resolution_change_decodes_at_the_first_frame_size():
  data = _spliced_mp4()
  with av.open(io.BytesIO(data)) as container:  # the file really changes size
    assert {(f.height, f.width) for f in container.decode(video=0)} == {(48, 64), (32, 32)}
  frames = decode.decode_frames(data, np.arange(10), 'spliced.mp4')  # was: ValueError
  assert frames.shape == (10, 48, 64, 3)
  info = decode.probe(data, 'spliced.mp4')
  assert (info.num_frames, info.height, info.width) == (10, 48, 64)
  np.testing.assert_allclose(frames.reshape(10, -1).mean(1), 40 * np.arange(10) % 256,
                             atol=4)  # flat frames stay flat when resized
  again = decode.decode_frames(data, [8, 1], 'spliced.mp4')
  np.testing.assert_array_equal(again, frames[[8, 1]])
  # With the frame count, as the pipeline calls it: the skipping decoder meets frame 8
  # at 32x32 and falls back to resizing every frame to the first frame's size.
  for indices in ([8, 1], [8], [9, 6]):
    np.testing.assert_array_equal(decode.decode_frames(data, indices, 'spliced.mp4', 10),
                                  frames[indices])
  back = decode.reencode(data, None, 'spliced.mp4')
  assert decode.decode_frames(back, np.arange(10), 'x').shape == (10, 48, 64, 3)


def test_an_encoder_refusal_in_reencode_is_a_decode_error(tmp_path):
  """4 x 1200 px scaled to a short side of 64 is 19200 px wide, past x264's limit."""
  write_clip(tmp_path / 'wide.mp4', 0, t=3, h=4, w=1200)
  with pytest.raises(decode.DecodeError, match=r'wide\.mp4: re-encoding at 19200x64'):
    decode.reencode((tmp_path / 'wide.mp4').read_bytes(), 64, 'wide.mp4')


def test_the_builder_skips_and_lists_files_that_fail_outside_decoding(tmp_path, monkeypatch):
  """A file the encoder refuses (was: the build aborted with av's ExternalError), a
  spliced stream (kept, one size), and any other exception on one file (here a
  MemoryError while probing): the build goes on and lists them."""
  root = tmp_path / 'videos'
  write_clip(root / 'a.mp4', 0)
  write_clip(root / 'wide.mp4', 1, t=3, h=4, w=1200)
  (root / 'spliced.mp4').write_bytes(_spliced_mp4())
  write_clip(root / 'huge.mp4', 2)
  listed = _write(tmp_path / 'train.txt',
                  'a.mp4 0\nwide.mp4 1\nspliced.mp4 1\nhuge.mp4 2\n')
  probe = decode.probe

  def probe_out_of_memory(data, source):
    if source.endswith('huge.mp4'):
      raise MemoryError('no memory for this one')
    return probe(data, source)

  monkeypatch.setattr(decode, 'probe', probe_out_of_memory)  # one worker: in process
  config = video_csv.VideoCsvConfig(name='odd', root=str(root), short_side=64,
                                    splits={'train': listed})
  builder = video_csv.build(config, str(tmp_path / 'data'), num_workers=1)
  source = builder.as_data_source('train')
  kept = {source[i]['id'].decode(): source[i] for i in range(len(source))}
  assert sorted(kept) == ['a.mp4', 'spliced.mp4']
  spliced = kept['spliced.mp4']
  assert (spliced['num_frames'], spliced['height'], spliced['width']) == (10, 64, 86)
  manifest = json.loads((builder.data_path / video_csv.MANIFEST).read_text())
  skipped = {s['id']: s['reason'] for s in manifest['skipped']}
  assert sorted(skipped) == ['huge.mp4', 'wide.mp4']
  assert skipped['wide.mp4'].startswith(f'undecodable: {root / "wide.mp4"}: re-encoding')
  assert skipped['huge.mp4'] == (f'failed: {root / "huge.mp4"}: MemoryError: no memory '
                                 'for this one')
