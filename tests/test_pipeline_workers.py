"""The pipeline at pod rate (issue 31): the same batches for any number of grain workers,
no shared memory left behind, each pixel copied once into its token slot, the flip in the
resize's pass, and `bench pipeline`'s table on Kinetics-like video."""

import contextlib
import io
import os
import subprocess
import sys

import av
from absl import flags
import jax.numpy as jnp
import numpy as np
import pytest

from flux_jax.bench import pipeline as bench_pipeline
from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.data import transforms
from flux_jax.tokens.plan import PlanSampler
from flux_jax.tokens.token_batch import pack, patchify
from test_hardening_runs import assert_no_growth, resources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def source():
  return bench_pipeline.make_source(6)


def _dataset(source, **kw):
  sampler = PlanSampler.from_config(bench_pipeline.SAMPLER)
  return pipeline.train_dataset(source, sampler=sampler, global_batch_size=4,
                                n_max=sampler.max_plan_tokens, num_sample=2, seed=3, **kw)


def _take(ds, count, **kw):
  with contextlib.closing(iter(pipeline.host_batches(ds, **kw))) as it:
    # Copies: a batch from a worker lives in shared memory until the array is freed.
    return [{k: np.array(v) for k, v in next(it).items()} for _ in range(count)]


def test_batches_from_0_and_2_workers_are_equal_element_for_element(source):
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  before = resources()
  ds = _dataset(source)
  want = _take(ds, 6)
  assert len({tuple(b['grid'][0]) for b in want}) > 1  # several plans
  for kw in (dict(workers=2), dict(workers=2, threads=1), dict(threads=2)):
    got = _take(ds, 6, **kw)
    for g, w in zip(got, want):
      assert g.keys() == w.keys()
      for k in w:
        np.testing.assert_array_equal(g[k], w[k], err_msg=f'{kw} {k}')
  assert_no_growth(before)  # workers stopped, their shared memory unlinked


def test_host_batches_refuses_negative_settings(source):
  with pytest.raises(ValueError, match='workers=-1'):
    pipeline.host_batches(_dataset(source), workers=-1)


def test_pack_writes_what_patchify_gives_and_pads_the_rows():
  rng = np.random.default_rng(0)
  stacks = [rng.integers(0, 256, (s, 4, 28, 42, 3), dtype=np.uint8) for s in (2, 1)]
  got = pack(stacks, patch_size=14, tubelet_size=2, n_max=20, size=5)
  want = patchify(np.concatenate(stacks), patch_size=14, tubelet_size=2, n_max=20)
  for k in ('patches', 'coords', 'grid', 'valid'):
    np.testing.assert_array_equal(getattr(got, k)[:3], getattr(want, k), err_msg=k)
  assert not got.valid[3:].any() and not got.patches[3:].any()
  # numpy's patchify is pack itself: check both against jax's path and a loop over tokens.
  on_device = patchify(jnp.asarray(np.concatenate(stacks)), patch_size=14, tubelet_size=2,
                       n_max=20)
  np.testing.assert_array_equal(got.patches[:3], np.asarray(on_device.patches))
  clip = stacks[0][1]  # [4, 28, 42, 3]: 2 x 2 x 3 tokens of 2 x 14 x 14 x 3
  tokens = [clip[2 * t:2 * t + 2, 14 * h:14 * h + 14, 14 * w:14 * w + 14].reshape(-1)
            for t in range(2) for h in range(2) for w in range(3)]
  np.testing.assert_array_equal(got.patches[1, :12], np.stack(tokens))
  np.testing.assert_array_equal(got.coords[1, :12], [(t, h, w) for t in range(2)
                                                     for h in range(2) for w in range(3)])
  with pytest.raises(ValueError, match='one shape'):
    pack([stacks[0], stacks[1][:, :2]], patch_size=14, tubelet_size=2, n_max=20)
  with pytest.raises(ValueError, match='more than n_max=11'):
    pack(stacks, patch_size=14, tubelet_size=2, n_max=11)


def test_batcher_never_marks_rows_of_unreadable_videos_valid(source):
  good = pipeline.EvalClip(source, 4, 56, 1, 1, 64)(0)
  bad = dict(good, video_index=np.full((1,), -1, np.int32))
  out = pipeline.Batcher(14, 1, 64, size=3)([good, bad])
  assert out['valid'].sum(1).tolist() == [64, 0, 0]
  assert out['video_index'].tolist() == [0, -1, -1]


@pytest.mark.parametrize('shape, size', [((3, 40, 52), 24), ((2, 16, 16), 40)])
def test_the_flip_in_the_resize_pass_is_the_flip_after_it(shape, size):
  frames = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
  plain = transforms.resize_bilinear(frames, size, size)
  np.testing.assert_array_equal(transforms.resize_bilinear(frames, size, size, flip=True),
                                transforms.horizontal_flip(plain))
  out = np.empty_like(plain)
  assert transforms.resize_bilinear(frames, size, size, out=out) is out
  np.testing.assert_array_equal(out, plain)
  # The crop draws its box, then the flip: the same draws as crop-then-flip did.
  a, b = np.random.default_rng(7), np.random.default_rng(7)
  flipped = transforms.random_resized_crop(frames, 16, a, flip_p=1.0)
  top, left, h, w = transforms.random_resized_crop_params(shape[1], shape[2], b)
  assert b.random() < 1.0 and a.random() == b.random()
  np.testing.assert_array_equal(flipped, transforms.horizontal_flip(
      transforms.resize_bilinear(frames[:, top:top + h, left:left + w], 16, 16)))


def test_encode_mp4_gop_sets_the_keyframe_interval():
  frames = bench_pipeline.kinetics_like_frames(0, 25, 64, 96, seconds=2.0)
  assert frames.shape == (50, 64, 96, 3)
  assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1  # content moves

  def keyframes(data):
    with av.open(io.BytesIO(data)) as container:
      return sum(p.is_keyframe for p in container.demux(video=0) if p.size)

  assert keyframes(decode.encode_mp4(frames, fps=25)) == 1  # x264's default: 250
  assert keyframes(decode.encode_mp4(frames, fps=25, gop=10)) >= 5
  with pytest.raises(ValueError, match='gop=0'):
    decode.encode_mp4(frames, gop=0)


def test_bench_pipeline_table_on_kinetics_like_video_leaks_no_shared_memory(tmp_path):
  """The command a user runs, at tiny size: two Kinetics-like videos of 2 s (recipe
  sampling, 2 clips per video), 0 and 2 workers. Before: 'resource_tracker: There
  appear to be 7 leaked shared_memory objects' at exit."""
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  code = ('import sys; from flux_jax.bench import pipeline as p\n'
          'p.KINETICS_LIKE = ((25, 112, 150), (30, 112, 200))\n'
          'orig = p.kinetics_like_source\n'
          'p.kinetics_like_source = lambda n, gop=None: orig(n, gop, seconds=2.0)\n'
          'from flux_jax.bench import __main__ as m; sys.argv[0] = "bench"; m.run()\n')
  out = subprocess.run(
      [sys.executable, '-c', code, 'pipeline', '--source=kinetics_like', '--videos=2',
       '--batch=4', '--seconds=0.5', '--workers=0,2'],
      capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'leaked' not in out.stderr, out.stderr[-3000:]
  lines = [line for line in out.stdout.splitlines() if line.startswith('|')]
  assert lines[0].startswith('| what | videos/s | clips/s | x decode alone | x 1 worker |')
  names = [line.split(' | ')[0] for line in lines[2:]]
  assert names == ['| decode alone, skipping', '| decode alone, every frame to the last '
                   'sampled', '| pipeline, 0 workers', '| pipeline, 2 workers']
  for line in lines[4:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    videos, clips = float(cells[1]), float(cells[2])
    assert videos > 0 and clips == pytest.approx(2 * videos, rel=0.02)
    decode_ms, producer_ms = float(cells[5]), float(cells[10])
    assert 0 < decode_ms < producer_ms  # the stages are part of the producer's CPU
