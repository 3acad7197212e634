"""Video decoding and encoding with PyAV, from bytes, one FFmpeg thread per call.

The pipeline decodes in many grain worker processes at once, so every codec context and
every swscale conversion here runs on a single thread (`thread_count=1`, `threads=1`):
parallelism comes from the workers, not from FFmpeg.

Frame indices count frames in presentation order, as the decoder outputs them; the
frame count of a video is the number of frames its decoder outputs (`probe`), which is
what the stored `num_frames` and the samplers (SPEC C.2, C.7) refer to. `decode_frames`
finds frame i by its timestamp, so it can leave undecoded what the wanted frames do not
depend on (whole groups of pictures, non-reference frames): on Kinetics-like H.264 that
is 30-45% of the decoding (docs/data.md); where timestamps cannot tell, it decodes every
frame and counts, with the same result.

The frame size of a video is the size of its first frame: a stream whose resolution
changes midway (a spliced file, an adaptive-bitrate recording) is decoded with every
frame resized (bicubic) to that size, as `reencode` does, so one clip has one shape.

Every failure while decoding a video (the container, the codec, a frame's conversion to
RGB, re-encoding, even memory) is raised as a `DecodeError` naming the source, so the
callers' guards (training replaces the clip, the builders skip the file) see them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import io
import itertools
import math
from collections.abc import Container, Iterator, Sequence

import av
import numpy as np

# Containers whose packets carry presentation timestamps, which `_skip_plan` needs. AVI
# stores none: its demuxer numbers H.264 packets in decode order, B-frames or not.
_TIMESTAMPED = frozenset({'mov', 'mp4', 'matroska', 'webm', 'mpegts'})

# Any failure of PyAV or FFmpeg on bad input: FFmpeg errors, a bad text field in the
# metadata, a pixel format swscale refuses, memory. Each becomes a DecodeError.
_FAILURES = (Exception,)


class DecodeError(ValueError):
  """A video that cannot be decoded; the message is '<source>: <problem>'."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` finds: frames the decoder outputs, frame size, frame rate."""
  num_frames: int
  height: int
  width: int
  fps: float


def train_frame_indices(length: int, t: int, rng: np.random.Generator) -> np.ndarray:
  """TSN training frame indices (SPEC C.2, official `_get_seq_frames`, clip_idx=-1).

  seg = (length - 1) / t; frame i is a random integer in [round(seg * i),
  round(seg * (i + 1))] (both ends included), capped at length - 1. `round` is the
  official `np.round`, i.e. round half to even, the same as Python's `round`. When
  length < t, indices repeat.

  Args:
    length: frames in the video (>= 1).
    t: frames to sample (>= 1).
    rng: the caller's generator (grain's per-record rng in the pipeline).

  Returns:
    int64 `[t]`, non-decreasing.
  """
  _check_lengths(length, t)
  seg = max(0.0, (length - 1) / t)
  i = np.arange(t)
  start = np.round(seg * i).astype(np.int64)  # [t]
  end = np.round(seg * (i + 1)).astype(np.int64)  # [t]
  return np.minimum(rng.integers(start, end + 1), length - 1)


def eval_frame_indices(length: int, t: int, clip: int, num_clips: int) -> np.ndarray:
  """Evaluation frame indices of temporal clip `clip` of `num_clips` (SPEC C.7).

  seg = (length - 1) / t, dur = seg / (num_clips + 1); frame i is
  min(round(seg * i) + int(dur * (clip + 1)), length - 1), with `round` half to even
  (official `np.round`) and `int` truncation, as in the official `_get_seq_frames`.

  Returns:
    int64 `[t]`, non-decreasing.
  """
  _check_lengths(length, t)
  if not 0 <= clip < num_clips:
    raise ValueError(f'clip must be in [0, num_clips={num_clips}), got {clip}')
  seg = max(0.0, (length - 1) / t)
  offset = int(seg / (num_clips + 1) * (clip + 1))
  start = np.round(seg * np.arange(t)).astype(np.int64)  # [t]
  return np.minimum(start + offset, length - 1)


def _check_lengths(length: int, t: int) -> None:
  if length < 1 or t < 1:
    raise ValueError(f'need length >= 1 and t >= 1, got length={length}, t={t}')


def probe(data: bytes, source: str) -> VideoInfo:
  """Counts the frames of an encoded video by decoding all of them.

  The container's frame count (`stream.frames`) is 0 for some formats and wrong for
  others, so it is not trusted: every frame is decoded, which also proves the file is
  usable before it goes into a dataset.

  Returns:
    The frame count, the first frame's size (every frame decodes to it) and the rate.

  Raises:
    DecodeError: empty, undecodable or truncated data, or no video stream.
  """
  with _open(data, source) as (container, stream):
    num_frames = 0
    height = width = 0
    for frame in _frames(container, stream, source, check_complete=True):
      if not num_frames:
        height, width = frame.height, frame.width
      num_frames += 1
    fps = stream.average_rate or stream.guessed_rate or 0
  if num_frames == 0:
    raise DecodeError(f'{source}: no decodable video frame')
  return VideoInfo(num_frames=num_frames, height=height, width=width, fps=float(fps))


def decode_frames(data: bytes, indices: Sequence[int] | np.ndarray, source: str,
                  num_frames: int | None = None, skip: bool = True) -> np.ndarray:
  """Decodes the frames at `indices` (any order, repeats allowed) to RGB.

  Only what the wanted frames need is decoded (`_skip_plan`): nothing after the last of
  them, no group of pictures that holds none of them, and no non-reference frame that
  is not wanted (FFmpeg's `skip_frame`). That needs the frames' presentation timestamps:
  where they cannot say which packet holds frame i (a container without them such as
  AVI, missing or repeated timestamps, edit lists, a packet count other than
  `num_frames`, frames coming out of timestamp order), or a wanted frame comes out of
  another size or marked corrupt, every frame up to the last wanted one is decoded from
  the start and counted as the decoder outputs it (`_decode_sequential`), with the same
  result.

  Args:
    data: the encoded video.
    indices: frame indices in presentation order.
    source: names the video in errors.
    num_frames: the frame count `probe` found (a dataset record's). Skipping needs it,
      and is used only when the stream holds exactly that many packets: a packet that
      gives no frame, or two, would shift every index after it.
    skip: False decodes every frame up to the last wanted one, as the reference
      (`python -m flux_jax.bench pipeline` times both).

  Returns:
    uint8 `[len(indices), H, W, 3]`, frames in the order of `indices`, at the size of
    the video's first frame (module docstring).

  Raises:
    DecodeError: the video has fewer frames than needed, or cannot be decoded.
  """
  indices = np.asarray(indices, dtype=np.int64)
  if indices.ndim != 1 or indices.size == 0:
    raise ValueError(f'{source}: indices must be a non-empty 1-D array, got shape '
                     f'{indices.shape}')
  if indices.min() < 0:
    raise ValueError(f'{source}: negative frame index {indices.min()}')
  frames = None
  if skip and num_frames is not None:
    frames = _decode_skipping(data, indices, source, num_frames)
  if frames is None:
    frames = _decode_sequential(data, indices, source)
  return _stack(frames, indices.tolist(), source)


def _stack(frames: dict[int, np.ndarray], indices: list[int], source: str) -> np.ndarray:
  try:
    return np.stack([frames[i] for i in indices])  # [T, H, W, 3]
  except MemoryError as e:
    raise DecodeError(f'{source}: no memory for {len(indices)} frames of '
                      f'{next(iter(frames.values())).shape}') from e


def _decode_sequential(data: bytes, indices: np.ndarray, source: str
                       ) -> dict[int, np.ndarray]:
  """{index: RGB frame}: every frame decoded from the start, up to the largest index."""
  wanted = set(indices.tolist())
  last = int(indices.max())
  decoded = {}
  count = 0
  size = None  # (height, width) of frame 0: every frame is converted to it
  with _open(data, source) as (container, stream):
    for frame in _frames(container, stream, source, check_complete=False):
      size = size or (frame.height, frame.width)
      if count in wanted:
        decoded[count] = _rgb(frame, size, f'{source}: frame {count}')  # [H, W, 3]
      count += 1
      if count > last:
        break
  if count <= last:
    raise DecodeError(f'{source}: needs frame {last} but the video has {count} frames')
  return decoded


def _decode_skipping(data: bytes, indices: np.ndarray, source: str,
                     num_frames: int) -> dict[int, np.ndarray] | None:
  """{index: RGB frame} by decoding only the packets `_skip_plan` names; None where the
  stream does not allow it (then `_decode_sequential` decides, errors included)."""
  try:
    with _open(data, source) as (container, stream):
      if not _TIMESTAMPED & set(container.format.name.split(',')):
        return None
      packets = [p for p in container.demux(stream) if p.size]
      plan = _skip_plan(packets, indices, num_frames)
      if plan is None:
        return None
      order, runs = plan
      wanted = {order[i]: i for i in set(indices.tolist())}  # pts -> index
      codec = stream.codec_context
      size = (codec.height, codec.width)
      decoded = {}
      for start, stop in runs:
        shown = -math.inf  # the pts of the last frame output in this run
        for frame in _run_frames(codec, packets[start:stop], wanted):
          # Out of pts order (they are not presentation times), another size, a reference
          # the decoder missed: decoded sequentially instead.
          if frame.pts is None or frame.pts <= shown:
            return None
          shown = frame.pts
          if frame.pts in wanted:
            if (frame.height, frame.width) != size or frame.is_corrupt:
              return None
            i = wanted[frame.pts]
            decoded[i] = _rgb(frame, size, f'{source}: frame {i}')
  except _FAILURES:  # DecodeError included
    return None
  return decoded if len(decoded) == len(wanted) else None


def _run_frames(codec: av.codec.context.CodecContext, packets: Sequence[av.Packet],
                wanted: Container[int]) -> Iterator[av.VideoFrame]:
  """The frames the decoder outputs for one run of `packets` (from a keyframe), the
  non-reference frames among the unwanted skipped; the decoder is drained and reset
  after it, so the next run starts afresh at its keyframe."""
  for packet in packets:
    codec.skip_frame = 'DEFAULT' if packet.pts in wanted else 'NONREF'
    yield from codec.decode(packet)
  codec.skip_frame = 'DEFAULT'
  yield from codec.decode(None)  # drain
  codec.flush_buffers()


def _skip_plan(packets: Sequence[av.Packet], indices: np.ndarray, num_frames: int
               ) -> tuple[list[int], list[tuple[int, int]]] | None:
  """The presentation timestamps of the frames in order, and the runs [start, stop) of
  packets (in decode order) that decoding `indices` needs; None when timestamps cannot
  tell (`decode_frames`).

  A run starts at a keyframe (a random-access point: the decoder is drained and reset
  before it) and ends at the last packet of a wanted frame in its group of pictures, as
  a frame depends only on packets before it in decode order. A stream with open groups
  of pictures (frames after a keyframe in decode order but shown before it, which may
  refer to the previous group) or that does not start at a keyframe is one run from
  its first packet.
  """
  pts = [p.pts for p in packets]
  if (not pts or any(t is None for t in pts) or len(set(pts)) != len(pts)
      or any(p.is_discard for p in packets) or len(pts) != num_frames
      or int(indices.max()) >= len(pts)):
    return None
  order = sorted(pts)
  wanted = {order[i] for i in indices.tolist()}
  keys = [i for i, p in enumerate(packets) if p.is_keyframe]
  last = max(i for i, t in enumerate(pts) if t in wanted)
  bounds = list(zip(keys, keys[1:] + [len(packets)]))
  if (not keys or keys[0] != 0
      or any(min(pts[a:b]) < pts[a] for a, b in bounds[1:])):  # open GOPs
    return order, [(0, last + 1)]
  runs = []
  for a, b in bounds:
    needed = [i for i in range(a, min(b, last + 1)) if pts[i] in wanted]
    if needed:
      runs.append((a, needed[-1] + 1))
  return order, runs


def _rgb(frame: av.VideoFrame, size: tuple[int, int], where: str) -> np.ndarray:
  """uint8 `[H, W, 3]` RGB of `frame` at `size` (resized, bicubic, if it differs)."""
  try:
    if (frame.height, frame.width) == size:
      return frame.to_ndarray(format='rgb24', threads=1)
    return frame.to_ndarray(width=size[1], height=size[0], format='rgb24',
                            interpolation='BICUBIC', threads=1)
  except _FAILURES as e:
    raise DecodeError(f'{where} ({frame.width}x{frame.height} {frame.format.name}) cannot '
                      f'be converted to RGB at {size[1]}x{size[0]} ({type(e).__name__}: '
                      f'{e})') from e


def encode_mp4(frames: np.ndarray, fps: int | fractions.Fraction = 25,
               crf: int = 23, gop: int | None = None) -> bytes:
  """Encodes RGB frames as H.264 (libx264, yuv420p) in an in-memory mp4.

  yuv420p subsamples chroma by 2 in both directions, so H and W must be even; frames
  are not padded, so that decoding gives back exactly the shape that was encoded. The
  bytes are a function of the frames alone (see `_encode`).

  Args:
    frames: uint8 `[T, H, W, 3]`, T >= 1, H and W even.
    fps: frame rate (an int, or a Fraction such as 30000/1001 from a source video).
    crf: x264 constant rate factor (0 lossless, 23 default, 51 worst).
    gop: the most frames from one keyframe to the next (x264's `keyint`; None: its
      default, 250).

  Returns:
    The mp4 file as bytes.
  """
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be uint8 [T, H, W, 3], got {frames.dtype} '
                     f'{frames.shape}')
  t, h, w, _ = frames.shape
  if t == 0 or h % 2 or w % 2:
    raise ValueError(f'encode_mp4 needs T >= 1 and even H, W, got shape {frames.shape}')
  if gop is not None and gop < 1:
    raise ValueError(f'gop={gop} must be a positive number of frames')
  return _encode(frames[0], iter(frames[1:]), fps, crf, gop)


def encode_png(image: np.ndarray) -> bytes:
  """A PNG file of uint8 `[H, W, 3]` RGB, by FFmpeg's png encoder (for figures)."""
  codec = av.CodecContext.create('png', 'w')
  codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], 'rgb24'
  return b''.join(bytes(p) for p in codec.encode(
      av.VideoFrame.from_ndarray(image, format='rgb24')))


def reencode(data: bytes, short_side: int | None, source: str,
             segment: tuple[float, float] | None = None) -> bytes:
  """Decodes every frame, resizes the short side to `short_side`, encodes as H.264.

  The aspect ratio is kept and both sides are rounded to even numbers (yuv420p); the
  resize is bicubic, like FFmpeg's `scale` filter that pre-resized copies of Kinetics
  usually come from, and it scales up as well as down. `short_side=None` keeps the
  size (rounded down to even) and only transcodes. The frame rate is the source's.
  Frames stream from decoder to encoder: a long high-resolution source never sits in
  memory whole.

  Args:
    data: the encoded source video.
    short_side: the new short side in pixels, or None.
    source: names the video in errors.
    segment: (start, end) in seconds: keep only frames with start <= index / fps < end.

  Raises:
    DecodeError: the source cannot be decoded, is truncated, the segment is empty, or
      the encoder refuses the result (e.g. a side above x264's 16384).
  """
  with _open(data, source) as (container, stream):
    fps = stream.average_rate or stream.guessed_rate or 25
    frames = _frames(container, stream, source, check_complete=True)
    if segment is not None:
      frames = (f for i, f in enumerate(frames)
                if segment[0] <= i / float(fps) < segment[1])
    first = next(frames, None)
    if first is None:
      where = '' if segment is None else f' in the segment [{segment[0]}, {segment[1]}) s'
      raise DecodeError(f'{source}: no decodable video frame{where}')
    height, width = _resized(first.height, first.width, short_side)
    rgb = (f.to_ndarray(width=width, height=height, format='rgb24',
                        interpolation='BICUBIC', threads=1)  # [H', W', 3]
           for f in itertools.chain([first], frames))
    try:
      return _encode(next(rgb), rgb, fps, crf=23)
    except DecodeError:
      raise
    except _FAILURES as e:  # a conversion, or an encoder refusing this size or rate
      raise DecodeError(f'{source}: re-encoding at {width}x{height}, {fps} fps failed '
                        f'({type(e).__name__}: {e})') from e


def _encode(first: np.ndarray, rest: Iterator[np.ndarray],
            fps: int | fractions.Fraction, crf: int, gop: int | None = None) -> bytes:
  """H.264 mp4 of the RGB frames `first` and then `rest`, all of first's shape."""
  height, width, _ = first.shape
  buffer = io.BytesIO()
  with av.open(buffer, mode='w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    stream.codec_context.thread_count = 1
    # x264's macroblock-tree rate control, with SIMD on, reads memory that depends on
    # what the process encoded before: the same frames could give other bytes. Without
    # it the output is a function of the frames alone (+16% time, +30% size at crf 23).
    params = 'mbtree=0' if gop is None else f'mbtree=0:keyint={gop}'
    stream.options = {'crf': str(crf), 'x264-params': params}
    for rgb in itertools.chain([first], rest):
      frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
      container.mux(stream.encode(frame.reformat(format='yuv420p', threads=1)))
    container.mux(stream.encode(None))  # flush the delayed frames
  return buffer.getvalue()


def _resized(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(height, width) with the short side scaled to `short_side`, both even."""
  if short_side is None:
    return max(2, height - height % 2), max(2, width - width % 2)
  scale = short_side / min(height, width)
  return (max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2)))


@contextlib.contextmanager
def _open(data: bytes, source: str
          ) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
  """The container and its first video stream, decoding on one thread."""
  if not data:
    raise DecodeError(f'{source}: empty data (0 bytes)')
  try:
    container = av.open(io.BytesIO(data), mode='r', metadata_errors='ignore')
  except _FAILURES as e:
    raise DecodeError(f'{source}: not a readable video container ({e})') from e
  with container:
    if not container.streams.video:
      raise DecodeError(f'{source}: no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'SLICE'
    stream.codec_context.thread_count = 1
    yield container, stream


def _frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
            source: str, check_complete: bool) -> Iterator[av.VideoFrame]:
  """Decoded frames of `stream`, in presentation order.

  With `check_complete`, a video whose demuxer returns fewer packets than its index
  lists is truncated (a file cut on a packet boundary decodes without an error); a
  decoder that drops frames of a complete file (e.g. edit lists) is not an error.
  """
  expected = stream.frames
  packets = 0
  try:
    for packet in container.demux(stream):
      packets += packet.size > 0
      yield from packet.decode()
  except _FAILURES as e:
    raise DecodeError(f'{source}: decoding failed after {packets} packets, truncated or '
                      f'corrupt ({type(e).__name__}: {e})') from e
  if check_complete and expected and packets < expected:
    raise DecodeError(f'{source}: truncated: the container lists {expected} frames but '
                      f'holds only {packets}')
