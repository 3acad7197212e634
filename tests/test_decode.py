"""flux_jax.data.decode: SPEC C.2/C.7 frame indices, and PyAV on real mp4 files."""

import io

import av
import numpy as np
import pytest

from flux_jax.data import decode


def smooth_clip(t=40, h=96, w=128):
  """Gradients that drift by 3 px a frame: uint8 [T, H, W, 3]."""
  y, x = np.mgrid[:h, :w]
  return np.stack([np.stack([(x + 3 * i) % 256, (2 * y) % 256, np.full_like(x, 128)], -1)
                   for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope='module')
def clip():
  return smooth_clip()


@pytest.fixture(scope='module')
def mp4(clip):
  return decode.encode_mp4(clip)


def faststart_mp4(path, frames):
  """An mp4 with its index (moov) first, as downloaded videos often are."""
  with av.open(str(path), 'w', format='mp4', options={'movflags': '+faststart'}) as c:
    stream = c.add_stream('libx264', rate=25)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = 'yuv420p'
    for rgb in frames:
      c.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    c.mux(stream.encode(None))
  return path.read_bytes()


# The official `_get_seq_frames`, transcribed with Python's round (= np.round, half to
# even) and random.randint (both ends included).
def official_train_bounds(length, t):
  seg = max(0.0, (length - 1) / t)
  return [(round(seg * i), round(seg * (i + 1))) for i in range(t)]


def official_eval(length, t, clip, num_clips):
  seg = max(0.0, (length - 1) / t)
  dur = seg / (num_clips + 1)
  return [min(round(seg * i) + int(dur * (clip + 1)), length - 1) for i in range(t)]


@pytest.mark.parametrize('length, t, bounds', [
    # seg = 4.875: 19.5 rounds to 20 (half to even), 24.375 to 24.
    (40, 8, [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24), (24, 29), (29, 34),
             (34, 39)]),
    # seg = 1.25: 2.5 rounds down to 2 (half to even), not up to 3.
    (6, 4, [(0, 1), (1, 2), (2, 4), (4, 5)]),
    # length < t: seg = 0.25, indices repeat.
    (3, 8, [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 2)]),
    (10, 1, [(0, 9)]),  # t = 1: anywhere in the video
    (1, 4, [(0, 0)] * 4),  # one frame
])
def test_train_indices_hand_computed(length, t, bounds):
  assert official_train_bounds(length, t) == bounds
  rng = np.random.default_rng(0)
  draws = np.stack([decode.train_frame_indices(length, t, rng) for _ in range(400)])
  assert draws.shape == (400, t) and draws.dtype == np.int64
  # Both ends of every segment are reached: the interval is inclusive.
  np.testing.assert_array_equal(draws.min(0), [lo for lo, _ in bounds])
  np.testing.assert_array_equal(draws.max(0), [hi for _, hi in bounds])


def test_train_indices_match_official_bounds_everywhere():
  rng = np.random.default_rng(1)
  for length in range(1, 70):
    for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
      idx = decode.train_frame_indices(length, t, rng)
      bounds = np.array(official_train_bounds(length, t))
      assert np.all((idx >= bounds[:, 0]) & (idx <= np.minimum(bounds[:, 1], length - 1)))


@pytest.mark.parametrize('length, t, clip, num_clips, expected', [
    # seg = 4.875, dur = 0.975: offsets int(0.975 (c + 1)) = 0, 1, 2, 3.
    (40, 8, 0, 4, [0, 5, 10, 15, 20, 24, 29, 34]),
    (40, 8, 3, 4, [3, 8, 13, 18, 23, 27, 32, 37]),
    (6, 4, 0, 1, [0, 1, 2, 4]),  # half to even at 2.5
    (3, 8, 0, 1, [0, 0, 0, 1, 1, 1, 2, 2]),  # length < t
    (10, 1, 0, 2, [3]),  # t = 1: seg 9, dur 3
    (10, 1, 1, 2, [6]),
    (1, 3, 0, 4, [0, 0, 0]),
])
def test_eval_indices_hand_computed(length, t, clip, num_clips, expected):
  assert official_eval(length, t, clip, num_clips) == expected
  np.testing.assert_array_equal(decode.eval_frame_indices(length, t, clip, num_clips),
                                expected)


def test_eval_indices_match_official_everywhere():
  for length in range(1, 70):
    for t in (1, 2, 3, 4, 8, 12, 16):
      for num_clips in (1, 2, 4):
        for clip in range(num_clips):
          np.testing.assert_array_equal(
              decode.eval_frame_indices(length, t, clip, num_clips),
              official_eval(length, t, clip, num_clips))


def test_indices_reject_bad_arguments():
  with pytest.raises(ValueError, match='length'):
    decode.train_frame_indices(0, 8, np.random.default_rng(0))
  with pytest.raises(ValueError, match='clip'):
    decode.eval_frame_indices(10, 8, 4, 4)


def test_round_trip(clip, mp4):
  info = decode.probe(mp4, 'clip.mp4')
  assert info == decode.VideoInfo(num_frames=40, height=96, width=128, fps=25.0)
  frames = decode.decode_frames(mp4, np.arange(40), 'clip.mp4')
  assert frames.shape == (40, 96, 128, 3) and frames.dtype == np.uint8
  assert np.abs(frames.astype(int) - clip).mean() < 8


def test_decode_any_order_with_repeats(clip, mp4):
  indices = [17, 3, 3, 39, 0, 17]
  frames = decode.decode_frames(mp4, indices, 'clip.mp4')
  assert frames.shape == (6, 96, 128, 3)
  np.testing.assert_array_equal(frames[1], frames[2])
  np.testing.assert_array_equal(frames[0], frames[5])
  assert np.abs(frames.astype(int) - clip[indices]).mean() < 8


def test_decode_past_the_end_names_the_source(mp4):
  with pytest.raises(decode.DecodeError, match=r'clip\.mp4: needs frame 40 .* 40 frames'):
    decode.decode_frames(mp4, [0, 40], 'clip.mp4')


def test_decode_stops_at_the_last_needed_frame(tmp_path):
  """The tail of this file is garbage: frames before it decode, a full probe fails."""
  data = faststart_mp4(tmp_path / 'a.mp4', np.random.default_rng(0).integers(
      0, 256, (60, 64, 64, 3), dtype=np.uint8))
  broken = data[:len(data) * 3 // 4] + bytes(len(data) - len(data) * 3 // 4)
  with pytest.raises(decode.DecodeError, match='broken.mp4'):
    decode.probe(broken, 'broken.mp4')
  with pytest.raises(decode.DecodeError, match='broken.mp4'):
    decode.reencode(broken, 32, 'broken.mp4')
  assert decode.decode_frames(broken, [5, 0, 10], 'broken.mp4').shape == (3, 64, 64, 3)


def encode(frames, fmt, codec, options, max_b_frames=None):
  """`frames` in `fmt` by `codec` with encoder `options` (one thread)."""
  buffer = io.BytesIO()
  with av.open(buffer, 'w', format=fmt) as c:
    stream = c.add_stream(codec, rate=25)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt, stream.options = 'yuv420p', options
    stream.codec_context.thread_count = 1
    if max_b_frames:
      stream.codec_context.max_b_frames, stream.codec_context.gop_size = max_b_frames, 8
    for rgb in frames:
      c.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    c.mux(stream.encode(None))
  return buffer.getvalue()


def drifting_clip(t=40, h=64, w=96):
  """Gradients drifting 5 px right and 3 px down a frame: encoders use B-frames and
  (where allowed) open groups of pictures on it."""
  y, x = np.mgrid[:h, :w]
  return np.stack([np.stack([(x + 5 * i) % 256, (2 * y + 3 * i) % 256,
                             np.full_like(x, 128)], -1) for i in range(t)]).astype(np.uint8)


def every_frame(data):
  """The reference: PyAV decoding every frame, counted in output order."""
  with av.open(io.BytesIO(data)) as c:
    return np.stack([f.to_ndarray(format='rgb24') for f in c.decode(video=0)])


# (name, container, codec, options, B-frames for mpeg4, groups of pictures are closed)
STREAMS = [
    ('h264 closed GOP of 8', 'mp4', 'libx264', {'x264-params': 'keyint=8:mbtree=0'}, None,
     True),
    ('h264 default GOP', 'mp4', 'libx264', {'x264-params': 'mbtree=0'}, None, True),
    ('h264 open GOP', 'mp4', 'libx264', {'x264-params': 'keyint=8:open-gop=1:mbtree=0'},
     None, False),
    ('hevc (CRA, open)', 'mp4', 'libx265', {'x265-params': 'keyint=8:log-level=none'},
     None, False),
    ('vp9 in webm', 'webm', 'libvpx-vp9', {'g': '8'}, None, True),
    ('h264 in matroska', 'matroska', 'libx264', {'x264-params': 'keyint=8'}, None, True),
    ('h264 in mpeg-ts', 'mpegts', 'libx264', {'x264-params': 'keyint=8'}, None, True),
    ('mpeg4 with B-frames', 'mp4', 'mpeg4', {}, 2, False),
]


@pytest.mark.parametrize('name, fmt, codec, options, b_frames, closed', STREAMS,
                         ids=[s[0] for s in STREAMS])
def test_skipping_decode_equals_decoding_every_frame(name, fmt, codec, options, b_frames,
                                                     closed):
  """decode_frames decodes only the groups of pictures, packets and reference frames the
  wanted frames need; the frames are bit-identical to decoding every one, on every codec
  and group structure here (closed groups are skipped, open ones decoded from the start)."""
  data = encode(drifting_clip(), fmt, codec, options, b_frames)
  reference = every_frame(data)
  assert len(reference) == 40
  with av.open(io.BytesIO(data)) as c:
    packets = [p for p in c.demux(video=0) if p.size]
  pts = [p.pts for p in packets]
  if codec != 'libvpx-vp9':  # the stream reorders frames (B-frames): decode order != shown
    assert pts != sorted(pts)
  keys = [i for i, p in enumerate(packets) if p.is_keyframe]
  leading = [min(pts[a:b]) < pts[a] for a, b in zip(keys, keys[1:] + [len(pts)])]
  assert any(leading) == (not closed)  # the stream has the structure its case names
  rng = np.random.default_rng(0)
  sets = [decode.train_frame_indices(40, t, rng) for t in (1, 2, 3, 5, 8, 16, 40)]
  sets += [np.array([39]), np.array([0]), np.array([20, 3, 3, 39, 20])]
  for indices in sets:
    order, runs = decode._skip_plan(packets, indices, 40)
    assert order == sorted(pts)
    assert runs[0][0] == 0 or closed
    assert decode._decode_skipping(data, indices, name, 40) is not None  # not the fallback
    np.testing.assert_array_equal(decode.decode_frames(data, indices, name, 40),
                                  reference[indices], err_msg=f'{name}: {indices}')
  # Frames 3 and 30 only: a closed stream skips whole groups of pictures between them.
  _, runs = decode._skip_plan(packets, np.array([3, 30]), 40)
  if closed and len(keys) > 2:
    assert len(runs) == 2 and sum(b - a for a, b in runs) < 31
    assert all(a in keys for a, _ in runs)
  elif not closed:
    assert runs == [(0, max(i for i, t in enumerate(pts) if t in (order[3], order[30])) + 1)]


def test_a_run_from_a_false_keyframe_falls_back(monkeypatch):
  """A file whose keyframe flags lie (a P- or B-frame marked as one) makes a run start
  where the decoder lacks references: FFmpeg drops or flags what it cannot rebuild, and
  decode_frames falls back instead of returning those frames."""
  data = encode(drifting_clip(), 'mp4', 'libx264', {'x264-params': 'keyint=20:mbtree=0'})
  reference = every_frame(data)
  plan = decode._skip_plan
  for start in (3, 5, 8, 12):  # packets inside the first group of pictures (0-19)
    monkeypatch.setattr(decode, '_skip_plan', lambda packets, indices, n, start=start: (
        plan(packets, indices, n)[0], [(start, plan(packets, indices, n)[1][-1][1])]))
    for indices in ([15], [12, 16], [17]):
      assert decode._decode_skipping(data, np.array(indices), 'lying.mp4', 40) is None
      np.testing.assert_array_equal(decode.decode_frames(data, indices, 'lying.mp4', 40),
                                    reference[indices])


def test_a_stream_copy_cut_is_decoded_sequentially():
  """`ffmpeg -ss 0.2 -c copy` keeps the packets from the keyframe before the cut with
  negative timestamps, and mp4 hides them with an edit list: the demuxer flags them
  discarded, the decoder drops their frames, probe counts 35 of 40 packets. Frame i is
  then the i-th frame shown, which only sequential decoding counts."""
  source = encode(drifting_clip(), 'mp4', 'libx264', {'x264-params': 'keyint=20:mbtree=0'})
  buffer = io.BytesIO()
  with av.open(io.BytesIO(source)) as src, av.open(buffer, 'w', format='mp4') as dst:
    stream = dst.add_stream_from_template(src.streams.video[0])
    for packet in src.demux(video=0):
      if packet.dts is not None:
        packet.pts -= 5 * 512  # 5 frames at 25 fps in the 1/12800 time base
        packet.dts -= 5 * 512
        packet.stream = stream
        dst.mux(packet)
  data = buffer.getvalue()
  with av.open(io.BytesIO(data)) as c:
    assert sum(p.is_discard for p in c.demux(video=0) if p.size) == 5
  reference = every_frame(data)
  assert len(reference) == decode.probe(data, 'cut.mp4').num_frames == 35
  for indices in ([0], [3, 10], [14, 34]):
    assert decode._decode_skipping(data, np.array(indices), 'cut.mp4', 35) is None
    np.testing.assert_array_equal(decode.decode_frames(data, indices, 'cut.mp4', 35),
                                  reference[indices])


def test_avi_is_decoded_sequentially(monkeypatch):
  """AVI carries no presentation times: its demuxer numbers H.264 packets in decode
  order, so the i-th smallest pts is not frame i. Two guards: the container list, and
  frames coming out of pts order (checked here alone by admitting AVI). Without both,
  skipping returned wrong frames for every one of 40 index sets on this stream."""
  data = encode(drifting_clip(), 'avi', 'libx264', {'x264-params': 'keyint=8'})
  reference = every_frame(data)
  with av.open(io.BytesIO(data)) as c:
    pts = [p.pts for p in c.demux(video=0) if p.size]
  assert pts == sorted(pts)  # packets in decode order, numbered: no presentation times
  indices = np.array([1, 2, 9, 30])
  for timestamped in (decode._TIMESTAMPED, decode._TIMESTAMPED | {'avi'}):
    monkeypatch.setattr(decode, '_TIMESTAMPED', timestamped)
    assert decode._decode_skipping(data, indices, 'a.avi', 40) is None
    np.testing.assert_array_equal(decode.decode_frames(data, indices, 'a.avi', 40),
                                  reference[indices])


def test_skipping_falls_back_where_timestamps_cannot_tell(clip, mp4, monkeypatch):
  """A frame count other than the packets' (probe counted the decoder's outputs, e.g.
  edit lists), or none given, means frames are counted as decoded, from the start:
  same frames."""
  indices = np.array([5, 30, 12])
  assert decode._decode_skipping(mp4, indices, 'clip.mp4', 41) is None
  expected = every_frame(mp4)[indices]
  np.testing.assert_array_equal(decode.decode_frames(mp4, indices, 'clip.mp4', 41),
                                expected)
  with pytest.raises(decode.DecodeError, match=r'clip\.mp4: needs frame 40 .* 40 frames'):
    decode.decode_frames(mp4, [40], 'clip.mp4', 40)
  monkeypatch.setattr(decode, '_decode_skipping',
                      lambda *a: pytest.fail('skipping without a frame count'))
  np.testing.assert_array_equal(decode.decode_frames(mp4, indices, 'clip.mp4'), expected)


@pytest.mark.parametrize('make_bad, problem', [
    (lambda d: b'', 'empty'),
    (lambda d: np.random.default_rng(0).bytes(5000), 'not a readable video'),
    (lambda d: d[:len(d) // 2], 'not a readable video'),  # index (moov) cut off
    (lambda d: b'this is a text file\n' * 50, 'not a readable video'),
])
def test_bad_data_raises_decode_error(mp4, make_bad, problem):
  bad = make_bad(mp4)
  with pytest.raises(decode.DecodeError, match=f'bad.mp4: .*{problem}'):
    decode.probe(bad, 'bad.mp4')
  with pytest.raises(decode.DecodeError, match='bad.mp4'):
    decode.decode_frames(bad, [0], 'bad.mp4')


def test_truncated_faststart_raises(tmp_path):
  """Index first, data cut: mid-packet (decoder error) and on a packet boundary."""
  data = faststart_mp4(tmp_path / 'a.mp4', smooth_clip(t=30))
  with av.open(str(tmp_path / 'a.mp4')) as c:
    positions = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
  on_boundary = data[:positions[20]]
  with pytest.raises(decode.DecodeError, match='cut.mp4: truncated: .* 30 frames .* 20'):
    decode.probe(on_boundary, 'cut.mp4')
  with pytest.raises(decode.DecodeError, match='cut.mp4'):
    decode.probe(data[:positions[20] + 7], 'cut.mp4')


def test_encode_requires_even_sides():
  with pytest.raises(ValueError, match='even'):
    decode.encode_mp4(np.zeros((2, 33, 64, 3), np.uint8))


def test_reencode_short_side(clip, mp4):
  small = decode.reencode(mp4, 64, 'clip.mp4')
  info = decode.probe(small, 'small')
  assert (info.num_frames, info.height, info.width, info.fps) == (40, 64, 86, 25.0)
  wide = decode.probe(decode.reencode(mp4, 200, 'clip.mp4'), 'wide')  # scales up too
  assert (wide.height, wide.width) == (200, 266)  # 128 * 200 / 96 = 266.7 -> even 266
  same = decode.reencode(mp4, None, 'clip.mp4')
  frames = decode.decode_frames(same, np.arange(40), 'same')
  assert frames.shape == clip.shape and np.abs(frames.astype(int) - clip).mean() < 8


def test_reencode_segment(mp4):
  cut = decode.reencode(mp4, None, 'clip.mp4', segment=(0.4, 1.0))  # frames 10..24
  assert decode.probe(cut, 'cut').num_frames == 15
  with pytest.raises(decode.DecodeError, match='clip.mp4: .*segment'):
    decode.reencode(mp4, None, 'clip.mp4', segment=(5.0, 6.0))


def test_official_round_is_half_to_even():
  """The note in train_frame_indices: np.round and Python round agree (half to even)."""
  values = [0.5, 1.5, 2.5, 19.5, 4.875 * 4]
  assert [round(v) for v in values] == list(np.round(values).astype(int)) == [
      0, 2, 2, 20, 20]
