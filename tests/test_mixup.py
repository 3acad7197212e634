"""Mixup and token-level CutMix on TokenBatch fields (SPEC C.2, DESIGN.md 4)."""

import functools

import jax
import numpy as np
import pytest

from flux_jax.tokens import grid_coords
from flux_jax.train.losses import one_hot_smoothed
from flux_jax.train.mixup import mix

K = 7  # classes
P = 5  # toy patch vector
PAD = -99.0
MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5, smoothing=0.0)
CUTMIX = dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, smoothing=0.0)
SPEC_C2 = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, smoothing=0.1)


def _batch(grids, n_max, seed=0):
  """Random float patches; padding holds PAD; labels 0..B-1 (distinct from their flips)."""
  b = len(grids)
  rng = np.random.default_rng(seed)
  patches = np.full((b, n_max, P), PAD, np.float32)
  coords = np.zeros((b, n_max, 3), np.int32)
  valid = np.zeros((b, n_max), bool)
  for i, (t, hp, wp) in enumerate(grids):
    n = t * hp * wp
    patches[i, :n] = rng.normal(size=(n, P))
    coords[i, :n] = grid_coords(t, hp, wp)
    valid[i, :n] = True
  return patches, coords, np.asarray(grids, np.int32), valid, np.arange(b, dtype=np.int32)


@functools.partial(jax.jit, static_argnames=('mixup_alpha', 'cutmix_alpha', 'prob',
                                             'switch_prob', 'smoothing'))
def _mix(rng, patches, coords, grid, valid, labels, **kw):
  return mix(rng, patches, coords, grid, valid, labels, K, **kw)


def _lam(targets, labels):
  """lambda per sample from smoothing-0 targets (a label differs from its flip's)."""
  return np.asarray(targets)[np.arange(len(labels)), labels]


def test_no_mixing_gives_smoothed_one_hots():
  batch = _batch([(2, 3, 4)] * 4, 30)
  out, targets = _mix(jax.random.key(0), *batch, **{**SPEC_C2, 'prob': 0.0})
  np.testing.assert_array_equal(out, batch[0])
  np.testing.assert_allclose(targets, one_hot_smoothed(batch[4], K, 0.1), rtol=1e-6)


def test_targets_are_distributions_and_deterministic():
  batch = _batch([(2, 3, 4)] * 4, 30)
  for seed in range(4):
    out, targets = _mix(jax.random.key(seed), *batch, **SPEC_C2)
    np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(targets) >= 0.1 / K - 1e-7)
    again = _mix(jax.random.key(seed), *batch, **SPEC_C2)
    np.testing.assert_array_equal(out, again[0])
    np.testing.assert_array_equal(targets, again[1])


def test_mixup_blends_with_the_flipped_batch():
  patches, coords, grid, valid, labels = batch = _batch([(2, 3, 4)] * 4, 30)
  out, targets = _mix(jax.random.key(1), *batch, **MIXUP)
  lam = _lam(targets, labels)
  assert np.allclose(lam, lam[0]) and 0 < lam[0] < 1
  want = lam[0] * patches + (1 - lam[0]) * patches[::-1]
  np.testing.assert_allclose(np.asarray(out)[valid], want[valid], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out)[~valid], PAD)
  np.testing.assert_allclose(targets[:, labels[::-1]].diagonal(), 1 - lam, rtol=1e-5)


def _check_cutmix(patches, coords, grid, valid, labels, out, targets):
  """Replaced tokens form one (h, w) rectangle, the same in every frame of the sample."""
  out = np.asarray(out)
  lam = _lam(targets, labels)
  boxes = []
  for b, (t, hp, wp) in enumerate(grid):
    n = t * hp * wp
    changed = np.any(out[b] != patches[b], axis=-1)  # [N]
    assert not changed[n:].any()  # padding untouched
    replaced = changed[:n].reshape(t, hp, wp)
    assert (replaced == replaced[:1]).all()  # every frame alike
    rows, cols = np.nonzero(replaced[0].any(1))[0], np.nonzero(replaced[0].any(0))[0]
    if rows.size:
      box = np.zeros((hp, wp), bool)
      box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
      np.testing.assert_array_equal(replaced[0], box)
    np.testing.assert_allclose(replaced.mean(), 1 - lam[b], rtol=1e-6, atol=1e-7)
    boxes.append(replaced[0].sum())
  return out, boxes


def test_cutmix_replaces_a_token_box_in_every_frame():
  patches, coords, grid, valid, labels = batch = _batch([(3, 6, 7)] * 4, 3 * 6 * 7 + 5)
  sizes = set()
  for seed in range(6):
    out, targets = _mix(jax.random.key(seed), *batch, **CUTMIX)
    out, boxes = _check_cutmix(*batch, out, targets)
    sizes.update(boxes)
    changed = np.any(out != patches, axis=-1)  # same grid: the partner's token, same slot
    np.testing.assert_array_equal(out[changed], patches[::-1][changed])
  assert len(sizes - {0, 42}) >= 2  # several partial boxes were drawn


def test_cutmix_with_mixed_grids_matches_positions():
  """Sample 0 (2, 4, 4) pairs with sample 1 (2, 3, 5): only shared positions move."""
  grids = [(2, 4, 4), (2, 3, 5)]
  patches, coords, grid, valid, labels = batch = _batch(grids, 40, seed=3)
  seen = 0
  for seed in range(8):
    out, targets = _mix(jax.random.key(seed), *batch, **CUTMIX)
    out = np.asarray(out)
    lam = _lam(targets, labels)
    for b, partner in ((0, 1), (1, 0)):
      at = {tuple(c): i for i, c in enumerate(coords[partner][valid[partner]])}
      changed = np.nonzero(np.any(out[b] != patches[b], axis=-1))[0]
      assert all(valid[b, i] for i in changed)
      for i in changed:
        np.testing.assert_array_equal(out[b, i], patches[partner, at[tuple(coords[b, i])]])
      np.testing.assert_allclose(len(changed) / valid[b].sum(), 1 - lam[b], rtol=1e-6,
                                 atol=1e-7)
      seen += len(changed)
  assert seen > 0


def test_spec_config_switches_between_modes():
  patches, coords, grid, valid, labels = batch = _batch([(2, 4, 4)] * 2, 32)
  modes = set()
  for seed in range(12):
    out, _ = _mix(jax.random.key(seed), *batch, **SPEC_C2)
    changed = np.any(np.asarray(out) != patches, axis=-1)
    modes.add('mixup' if changed.all() else 'cutmix')
  assert modes == {'mixup', 'cutmix'}


def test_bad_config_names_the_key():
  batch = _batch([(2, 3, 4)] * 2, 24)
  with pytest.raises(ValueError, match='switch_prob'):
    mix(jax.random.key(0), *batch, K, **{**SPEC_C2, 'switch_prob': 2.0})
  with pytest.raises(ValueError, match='cutmix_alpha'):
    mix(jax.random.key(0), *batch, K, **{**SPEC_C2, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0})
