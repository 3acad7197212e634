"""The grain Flux pipeline on real mp4 files made by the tests."""

import functools

from absl import flags
import grain
import jax
import numpy as np
import pytest

from flux_jax.data import decode
from flux_jax.data import pipeline
from flux_jax.data import transforms
from flux_jax.data.to_device import global_batches
from flux_jax.model import init_params, make_model
from flux_jax.tokens import patchify
from flux_jax.tokens.plan import PlanSampler
from flux_jax.xla import CompileCounter

# Plans between 2x2x2 and 6x4x4 tokens: frames {2, 4, 6}, resolutions {28, 42, 56}.
SAMPLER = PlanSampler(frames=(2, 4, 6), resolutions=(28, 42, 56), min_tokens=8,
                      max_tokens=96, seed=0)
N_MAX = 96


def _video(seed, t=12, h=64, w=80):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
  frames = [np.roll(base, 3 * i, axis=1) for i in range(t)]
  return np.stack(frames).astype(np.uint8)


def _record(i, frames, label=None):
  return {'video': decode.encode_mp4(frames), 'label': i % 3 if label is None else label,
          'id': f'clip{i:03d}', 'num_frames': len(frames)}


@pytest.fixture(scope='module')
def source():
  return [_record(i, _video(i, t=10 + i % 4)) for i in range(10)]


def _train(source, **kw):
  args = dict(sampler=SAMPLER, global_batch_size=4, n_max=N_MAX, seed=1)
  args.update(kw)
  return pipeline.train_dataset(source, **args)


def test_batches_have_one_shape_across_plans(source):
  it = iter(_train(source))
  grids = set()
  for _ in range(8):
    b = next(it)
    assert b['patches'].shape == (4, N_MAX, 588) and b['patches'].dtype == np.uint8
    assert b['coords'].shape == (4, N_MAX, 3) and b['coords'].dtype == np.int32
    assert b['valid'].shape == (4, N_MAX) and b['label'].dtype == np.int32
    assert len({tuple(g) for g in b['grid']}) == 1  # one plan per batch
    n = int(np.prod(b['grid'][0]))
    assert (b['valid'].sum(1) == n).all()
    grids.add(tuple(b['grid'][0]))
  assert len(grids) >= 3


def test_plan_per_step_matches_sampler(source):
  for step, b in zip(range(5), _train(source)):
    plan = SAMPLER(step)
    assert tuple(b['grid'][0]) == (plan.frames, plan.resolution // 14, plan.resolution // 14)


def test_patches_are_patchify_of_the_decoded_frames():
  """Square videos and a whole-frame crop: a clip is the resized TSN-sampled frames."""
  src = [_record(i, _video(i, t=9, h=56, w=56)) for i in range(4)]
  ds = _train(src, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False).to_iter_dataset()
  b = next(iter(ds))
  t, hp = b['grid'][0][:2]
  # The element's RNG is keyed on (seed, global position); frame indices come first.
  idx = decode.train_frame_indices(9, int(t), np.random.default_rng([1, 0]))
  video = int(b['video_index'][0])
  decoded = decode.decode_frames(src[video]['video'], idx, 'clip')
  want = patchify(transforms.resize_bilinear(decoded, hp * 14, hp * 14), n_max=N_MAX)
  np.testing.assert_array_equal(b['patches'][0], want.patches[0])
  np.testing.assert_array_equal(b['coords'][0], want.coords[0])


def test_same_seed_same_batches_other_seed_differs(source):
  a = [b['patches'] for _, b in zip(range(3), _train(source))]
  b = [b['patches'] for _, b in zip(range(3), _train(source))]
  c = [b['patches'] for _, b in zip(range(3), _train(source, seed=2))]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(x.shape != z.shape or not np.array_equal(x, z) for x, z in zip(a, c))


def test_restored_iterator_state_gives_the_same_next_batches(source):
  it = iter(_train(source).to_iter_dataset())
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  again = iter(_train(source).to_iter_dataset())
  again.set_state(state)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_repeated_augmentation_and_process_sharding(source):
  b = next(iter(_train(source, num_sample=2)))
  assert b['video_index'][0] == b['video_index'][1] and list(b['view'][:2]) == [0, 1]
  hosts = [next(iter(_train(source, process_index=i, process_count=2, global_batch_size=4)))
           for i in range(2)]
  assert all(len(h['label']) == 2 for h in hosts)
  assert set(hosts[0]['video_index']).isdisjoint(hosts[1]['video_index'])
  assert (hosts[0]['grid'][0] == hosts[1]['grid'][0]).all()  # same plan on every host


def test_global_batches_do_not_depend_on_the_number_of_hosts(source):
  """1, 2 or 4 hosts: the host batches of step s, concatenated in block order, are the
  1-host batch of step s, clip for clip and pixel for pixel, with repeated augmentation."""
  def steps(count, start_step=0):
    hosts = [iter(_train(source, num_sample=2, global_batch_size=8, process_index=i,
                         process_count=count, start_step=start_step)) for i in range(count)]
    joined = []
    for _ in range(3):  # the hosts' rows of a step, in block order
      rows = [next(h) for h in hosts]
      joined.append({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
    return joined
  want = steps(1)
  assert len({tuple(b['grid'][0]) for b in want}) > 1  # several plans
  for count in (2, 4):
    for got, w in zip(steps(count), want):
      assert got.keys() == w.keys()
      for k in w:
        np.testing.assert_array_equal(got[k], w[k], err_msg=f'{count} hosts: {k}')
  # A run resumed at step 1 sees what an uninterrupted one saw from step 1, on any count.
  for k in want[0]:
    np.testing.assert_array_equal(steps(2, start_step=1)[0][k], want[1][k])


def test_every_host_gets_the_same_number_of_eval_batches_and_each_view_once(source):
  """7 videos x 2 clips on 3 hosts: 14 elements, 5 per host with one padding element."""
  hosts = [list(pipeline.eval_dataset(source[:7], frames=2, resolution=28, batch_size=4,
                                      num_clips=2, num_crops=2, process_index=i,
                                      process_count=3)) for i in range(3)]
  assert [len(h) for h in hosts] == [3, 3, 3]
  views = [(int(v), int(w)) for h in hosts for b in h
           for v, w in zip(b['video_index'], b['view']) if v >= 0]
  assert sorted(views) == [(v, w) for v in range(7) for w in range(4)]


def test_bad_videos_are_replaced_and_counted(source):
  bad = dict(source[0], video=source[0]['video'][:len(source[0]['video']) // 3], id='cut')
  junk = dict(source[1], video=b'not a video at all', id='junk')
  src = [bad, junk] + source[2:4]
  seen, replaced = set(), 0
  for _, b in zip(range(6), _train(src, global_batch_size=2)):
    seen.update(b['video_index'].tolist())
    replaced += int(b['replaced'].sum())
  assert replaced >= 2 and seen <= {2, 3}


def test_bad_configs_fail_before_running(source):
  with pytest.raises(ValueError, match='n_max'):
    _train(source, n_max=50)
  with pytest.raises(ValueError, match='global_batch_size'):
    _train(source, global_batch_size=3, num_sample=2)
  with pytest.raises(ValueError, match='multiple of the patch'):
    pipeline.eval_dataset(source, frames=4, resolution=50, batch_size=3)


def test_eval_views_cover_every_video_once_per_view(source):
  ds = pipeline.eval_dataset(source[:5], frames=4, resolution=42, batch_size=6, num_clips=2,
                             num_crops=3)
  rows = [(v, w) for b in ds for v, w in zip(b['video_index'], b['view'])]
  real = [r for r in rows if r[0] >= 0]
  assert sorted(real) == sorted((v, w) for v in range(5) for w in range(6))
  assert len(rows) % 6 == 0 and all(w == 0 for v, w in rows if v < 0)


def test_eval_patches_follow_the_clip_formula(source):
  ds = pipeline.eval_dataset(source[:1], frames=4, resolution=42, batch_size=3, num_clips=2,
                             num_crops=3)
  b = ds[1]  # clip 1, crops 0..2
  rec = source[0]
  frames = decode.decode_frames(rec['video'], decode.eval_frame_indices(
      rec['num_frames'], 4, 1, 2), 'clip000')
  crops = transforms.spatial_crops(frames, 42, 3)
  for k in range(3):
    np.testing.assert_array_equal(b['patches'][k], patchify(crops[k]).patches[0])
  assert list(b['view']) == [3, 4, 5]


def test_pipeline_feeds_one_compiled_forward(source):
  model = make_model(dict(variant='tiny', num_classes=3))
  params = init_params(model, jax.random.key(0))
  forward = jax.jit(functools.partial(model.apply, budget=16, head=1))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batches = list(zip(range(10), global_batches(_train(source), sharding)))
  grids = {tuple(np.asarray(b.grid[0])) for _, b in batches}
  assert len(grids) >= 5
  with CompileCounter() as counter:
    for _, tokens in batches:
      logits, _ = forward({'params': params}, tokens)
      assert np.isfinite(np.asarray(logits)).all()
  assert counter.count == 1


def test_multiprocess_prefetch_gives_the_same_batches(source):
  flags.FLAGS.mark_as_parsed()
  ds = _train(source).to_iter_dataset()
  want = [b['patches'] for _, b in zip(range(3), ds)]
  mp = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
  got = [b['patches'] for _, b in zip(range(3), mp)]
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w, g)


def test_tfds_synthetic_motion_feeds_the_pipeline(tmp_path):
  from flux_jax.data.builders import synthetic_motion  # pylint: disable=g-import-not-at-top
  builder = synthetic_motion.build('tiny', str(tmp_path))
  train = builder.as_data_source('train')
  sampler = PlanSampler(frames=(4, 8), resolutions=(56, 84), min_tokens=64, max_tokens=288)
  ds = pipeline.train_dataset(train, sampler=sampler, global_batch_size=4, n_max=288, seed=0)
  labels = set()
  for _, b in zip(range(6), ds):
    assert b['patches'].shape == (4, 288, 588) and int(b['replaced'].sum()) == 0
    labels.update(b['label'].tolist())
    for i, v in zip(b['label'], b['video_index']):
      assert int(train[int(v)]['label']) == int(i)
  assert len(labels) >= 3
  val = pipeline.eval_dataset(builder.as_data_source('validation'), frames=4, resolution=56,
                              batch_size=6, num_clips=2, num_crops=3)
  assert sum(int((b['video_index'] >= 0).sum()) for b in val) == 12 * 6
