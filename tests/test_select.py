"""Token selectors against a numpy version of SPEC B.2 (tests/reference_numpy.py)."""

import functools

import jax
import numpy as np
import pytest

from flux_jax.tokens import TokenBatch, grid_coords, select_tokens
import reference_numpy


def _tokens(t, hp, wp, n_max, b=2):
  n = t * hp * wp
  coords = np.zeros((b, n_max, 3), np.int32)
  coords[:, :n] = grid_coords(t, hp, wp)
  valid = np.zeros((b, n_max), bool)
  valid[:, :n] = True
  grid = np.tile(np.array([[t, hp, wp]], np.int32), (b, 1))
  return TokenBatch(patches=np.zeros((b, n_max, 3), np.uint8), coords=coords, grid=grid,
                    valid=valid)


def _embed(t, l, n_max, d=6, b=2, seed=0):
  """Continuous random embeddings (no ties); padding rows hold large garbage."""
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(b, t, l, d)).astype(np.float32)
  x = rng.normal(size=(b, n_max, d)).astype(np.float32) * 100
  x[:, :t * l] = e.reshape(b, t * l, d)
  return e, x


@functools.partial(jax.jit, static_argnames=('k', 'method'))
def _select(x, tokens, k, method='group_dynamic', rng=None):
  return select_tokens(x, tokens, k, method, rng)


# (T, Hp, Wp, K): K / G per group equals the official int((1 - r) T'L) on these grids.
# T = 8 and T = 2 have two frames per group, whose scores tie pairwise; an even quota
# keeps whole pairs, so the boundary has no tie.
CASES = [(6, 4, 4, 48), (12, 3, 3, 60), (16, 2, 3, 40), (10, 4, 5, 100), (8, 3, 3, 32),
         (2, 5, 4, 20), (24, 6, 6, 512)]


@pytest.mark.parametrize('t,hp,wp,k', CASES)
def test_group_dynamic_matches_numpy(t, hp, wp, k):
  l = hp * wp
  g = reference_numpy.num_groups_np(t)
  assert reference_numpy.keep_per_group_np(t, l, budget=k) == k // g  # not vacuous
  n_max = t * l + 7
  e, x = _embed(t, l, n_max, seed=t)
  index, keep = _select(x, _tokens(t, hp, wp, n_max), k=k)
  want = reference_numpy.select_group_dynamic_np(e, budget=k)
  np.testing.assert_array_equal(index, want)
  assert np.all(keep)


def test_exact_count_where_official_truncates():
  """T=24, R=196, budget 3072: official keeps 767 per group (3068); we keep 768 each."""
  t, hp = 24, 14
  l = hp * hp
  assert reference_numpy.keep_per_group_np(t, l, budget=3072) == 767
  e, x = _embed(t, l, t * l, d=2, b=1)
  index, keep = _select(x, _tokens(t, hp, hp, t * l, b=1), k=3072)
  assert keep.all() and len(np.unique(index)) == 3072
  per_group = np.bincount(np.asarray(index[0]) // (6 * l), minlength=4)
  np.testing.assert_array_equal(per_group, [768] * 4)
  # The official 767 best of each group are among ours.
  want = reference_numpy.select_group_dynamic_np(e, budget=3072)
  assert set(want[0].tolist()) <= set(np.asarray(index[0]).tolist())


def test_remainder_goes_to_earliest_groups():
  t, hp, wp = 12, 3, 3
  _, x = _embed(t, 9, 108, b=1)
  index, _ = _select(x, _tokens(t, hp, wp, 108, b=1), k=50)  # 50 = 4 * 12 + 2
  per_group = np.bincount(np.asarray(index[0]) // 27, minlength=4)
  np.testing.assert_array_equal(per_group, [13, 13, 12, 12])


def test_nested_across_budgets():
  t, hp, wp = 12, 4, 4
  _, x = _embed(t, 16, 192, seed=3)
  tokens = _tokens(t, hp, wp, 192)
  sets = [set(np.asarray(_select(x, tokens, k=k)[0][0]).tolist()) for k in (32, 64, 128)]
  assert sets[0] < sets[1] < sets[2]


def test_ties_break_to_the_earlier_token():
  t, hp, wp = 6, 2, 2
  x = np.ones((1, 24, 4), np.float32)  # every score is 0
  index, _ = _select(x, _tokens(t, hp, wp, 24, b=1), k=6)
  # Two groups of 3 frames (12 tokens): the first 3 tokens of each.
  np.testing.assert_array_equal(index[0], [0, 1, 2, 12, 13, 14])


@pytest.mark.parametrize('t', [1, 3, 4, 5, 7])
def test_any_frame_count_keeps_exactly_k(t):
  hp = wp = 3
  n = t * 9
  k = n // 2 + 1
  _, x = _embed(t, 9, n + 5, seed=t)
  index, keep = _select(x, _tokens(t, hp, wp, n + 5), k=k)
  assert keep.all()
  for row in np.asarray(index):
    assert len(set(row.tolist())) == k and row.max() < n
    assert np.all(np.diff(row) > 0)


def test_fewer_valid_than_k_keeps_all_valid_then_padding():
  t, hp, wp = 4, 2, 2
  _, x = _embed(t, 4, 40)
  index, keep = _select(x, _tokens(t, hp, wp, 40), k=20)
  np.testing.assert_array_equal(keep, np.arange(20)[None].repeat(2, 0) < 16)
  np.testing.assert_array_equal(index[:, :16], np.arange(16)[None].repeat(2, 0))


def test_dynamic_is_ungrouped_top_k():
  t, hp, wp = 8, 3, 3
  e, x = _embed(t, 9, 72, b=1, seed=5)
  d = np.linalg.norm(e[0, 1:] - e[0, :-1], axis=-1)  # [T-1, L]
  score = np.concatenate([d[:1], d]).reshape(-1)  # frame 0 copies frame 1
  index, _ = _select(x, _tokens(t, hp, wp, 72, b=1), k=20, method='dynamic')
  np.testing.assert_array_equal(index[0], np.sort(np.argsort(-score, kind='stable')[:20]))


def test_random_and_uniform_selectors():
  t, hp, wp = 4, 4, 4
  _, x = _embed(t, 16, 70)
  tokens = _tokens(t, hp, wp, 70)
  a, keep = _select(x, tokens, k=32, method='random', rng=jax.random.key(0))
  b, _ = _select(x, tokens, k=32, method='random', rng=jax.random.key(1))
  assert keep.all() and np.asarray(a).max() < 64 and not np.array_equal(a, b)
  u, keep = _select(x, tokens, k=32, method='uniform')
  assert keep.all()
  spatial = np.asarray(u[0]) % 16
  frames = np.asarray(u[0]) // 16
  # Whole tubes: 8 spatial positions, each kept in all 4 frames.
  for f in range(4):
    np.testing.assert_array_equal(spatial[frames == f], spatial[frames == 0])
  assert len(np.unique(spatial)) == 8


def test_rejects_bad_budget_and_method():
  _, x = _embed(2, 4, 8)
  with pytest.raises(ValueError, match='budget'):
    select_tokens(x, _tokens(2, 2, 2, 8), 9)
  with pytest.raises(ValueError, match='selector'):
    select_tokens(x, _tokens(2, 2, 2, 8), 4, 'topk')
