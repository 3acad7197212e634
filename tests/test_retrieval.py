"""Retrieval ranks, recalls, Dual Softmax and zero-shot against numpy references (SPEC G.5)."""

import numpy as np
import pytest

from flux_jax.eval.retrieval import (KINETICS_TEMPLATES, class_prompts, dual_softmax, ranks,
                                     retrieval_metrics, zero_shot_classifier, zero_shot_logits)

KEYS = {f'{d}_{m}{s}' for d in ('t2v', 'v2t') for m in ('r1', 'r5', 'r10', 'medr', 'meanr')
        for s in ('_sim', '_dsl')} | {'r_mean_sim', 'r_mean_dsl'}


def _numpy_dual_softmax(s):
  """InternVideo2: S * softmax(S, dim=0), in float64."""
  s = s.astype(np.float64)
  e = np.exp(s - s.max(axis=0))
  return s * e / e.sum(axis=0)


def _pessimistic_ranks(scores, gts):
  """The tie rule spelled out: min over ground truths g of 1 + #{c not a gt: s_c >= s_g}."""
  out = []
  for s, g in zip(scores, gts):
    other = np.ones(len(s), bool)
    other[list(g)] = False
    out.append(min(1 + np.sum(other & (s >= s[j])) for j in g))
  return np.array(out)


def _itm_eval(v2t, t2v, text_video, video_texts):
  """InternVideo2's itm_eval (argsort positions, best ground truth), 1-based, plus medr."""
  def rank(scores, gts):
    r = np.array([min(np.where(np.argsort(s)[::-1] == g)[0][0] for g in gt)
                  for s, gt in zip(scores, gts)]) + 1
    return {'r1': 100 * np.mean(r < 2), 'r5': 100 * np.mean(r < 6),
            'r10': 100 * np.mean(r < 11), 'medr': np.median(r), 'meanr': np.mean(r)}
  return {'t2v': rank(t2v, [[v] for v in text_video]), 'v2t': rank(v2t, video_texts)}


def test_dual_softmax_matches_numpy_and_is_stable():
  rng = np.random.default_rng(0)
  s = rng.uniform(-1, 1, size=(7, 5)).astype(np.float32)
  before = s.copy()
  got = dual_softmax(s)
  assert got.dtype == np.float32 and got.shape == (7, 5)
  np.testing.assert_allclose(got, _numpy_dual_softmax(s), rtol=1e-6, atol=1e-7)
  big = s * 1e3  # exp would overflow without the max shift
  np.testing.assert_allclose(dual_softmax(big), _numpy_dual_softmax(big), rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(s, before)  # the input is left alone


def test_dual_softmax_normalises_over_the_queries():
  """A candidate every query likes (column 0) is damped: ranking rows changes."""
  s = np.array([[0.9, 0.8], [0.9, 0.1]], np.float32)
  np.testing.assert_allclose(dual_softmax(s)[:, 0], 0.45, rtol=1e-6)
  assert np.argmax(dual_softmax(s)[0]) == 1 and np.argmax(s[0]) == 0


def test_ranks_hand_made_with_ties():
  scores = np.array([[0.9, 0.5, 0.1, 0.0],
                     [0.2, 0.2, 0.2, 0.2],   # constant: never R@1
                     [0.3, 0.7, 0.7, 0.1],   # gt 2 tied with non-gt 1: pessimistic rank 2
                     [0.1, 0.8, 0.8, 0.5],   # two gts tied with each other: rank 1
                     [0.6, 0.6, 0.6, 0.6]])  # constant with 2 gts: Nc - 2 + 1
  gts = [0, [1], [2], [1, 2], [0, 3]]
  want = np.array([1, 4, 2, 1, 3])
  np.testing.assert_array_equal(ranks(scores, gts), want)
  np.testing.assert_array_equal(want, _pessimistic_ranks(scores, [np.atleast_1d(g) for g in gts]))
  mask = np.zeros(scores.shape, bool)
  for q, g in enumerate(gts):
    mask[q, g] = True
  np.testing.assert_array_equal(ranks(scores, mask), want)
  np.testing.assert_array_equal(ranks(scores, [[0, 0], 1, 2, [2, 1], [3, 0]]), want)


def test_ranks_match_the_rule_on_many_ties_and_itm_eval_without_ties():
  rng = np.random.default_rng(1)
  tied = rng.integers(0, 4, size=(30, 12)).astype(np.float32)  # mostly ties
  gts = [rng.choice(12, size=rng.integers(1, 4), replace=False) for _ in range(30)]
  got = ranks(tied, gts, chunk=7)
  np.testing.assert_array_equal(got, _pessimistic_ranks(tied, gts))
  np.testing.assert_array_equal(got, ranks(tied, gts))
  distinct = rng.normal(size=(30, 12))
  argsort_rank = [min(np.where(np.argsort(s)[::-1] == j)[0][0] for j in g) + 1
                  for s, g in zip(distinct, gts)]
  np.testing.assert_array_equal(ranks(distinct, gts), argsort_rank)


def test_ranks_reject_bad_input():
  s = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match='first query 1'):
    ranks(s, [[0], []])
  with pytest.raises(ValueError, match='outside'):
    ranks(s, [0, 3])
  with pytest.raises(ValueError, match='NaN'):
    ranks(np.array([[0.0, np.nan, 1.0], [0, 0, 0]]), [0, 1])
  with pytest.raises(ValueError, match='mask'):
    ranks(s, np.zeros((3, 2), bool))


def test_retrieval_metrics_several_captions_per_video():
  # 3 videos; video 0 has captions 0 and 3, video 1 caption 1, video 2 captions 2 and 4.
  text_video = np.array([0, 1, 2, 0, 2])
  sim = np.array([[0.2, 0.1, 0.3, 0.9, 0.0],    # v0: its caption 3 is first -> v2t rank 1
                  [0.5, 0.4, 0.6, 0.1, 0.7],    # v1: caption 1 behind 4, 2, 0 -> rank 4
                  [0.1, 0.3, 0.2, 0.0, 0.15]],  # v2: caption 2 second -> rank 2
                 np.float32)
  m = retrieval_metrics(sim, text_video)
  assert set(m) == KEYS
  assert (m['v2t_r1_sim'], m['v2t_r5_sim'], m['v2t_medr_sim']) == pytest.approx((100 / 3, 100, 2))
  np.testing.assert_allclose(m['v2t_meanr_sim'], 7 / 3)
  # t2v, column-wise: caption 0 behind v1 (rank 2), 1 first (1), 2 behind v1 and v0 (3),
  # 3 first (1), 4 behind v1 (2).
  assert (m['t2v_r1_sim'], m['t2v_r5_sim'], m['t2v_medr_sim']) == (40.0, 100.0, 2.0)
  np.testing.assert_allclose(m['r_mean_sim'], (100 / 3 + 100 + 100 + 40 + 100 + 100) / 6)


def test_retrieval_metrics_match_itm_eval_for_sim_and_dsl():
  rng = np.random.default_rng(2)
  text_video = np.concatenate([np.arange(40), rng.integers(0, 40, size=25)])
  video = rng.normal(size=(40, 16))
  text = video[text_video] + 1.5 * rng.normal(size=(65, 16))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = (unit(video) @ unit(text).T).astype(np.float32)
  video_texts = [np.flatnonzero(text_video == v) for v in range(40)]
  got = retrieval_metrics(sim, text_video)
  for suffix, v2t, t2v in (('_sim', sim, sim.T),
                           ('_dsl', _numpy_dual_softmax(sim), _numpy_dual_softmax(sim.T))):
    want = _itm_eval(v2t, t2v, text_video, video_texts)
    for d in ('t2v', 'v2t'):
      for k, v in want[d].items():
        np.testing.assert_allclose(got[f'{d}_{k}{suffix}'], v, err_msg=f'{d}_{k}{suffix}')
  assert 0 < got['t2v_r1_sim'] < 100 and got['v2t_r1_dsl'] != got['v2t_r1_sim']  # not vacuous


def test_perfect_and_random_similarity():
  text_video = np.array([0, 0, 1, 2, 2, 2, 3])
  perfect = (np.arange(4)[:, None] == text_video[None, :]).astype(np.float32)
  m = retrieval_metrics(perfect, text_video)
  assert all(m[k] == 100 for k in KEYS if '_r' in k)
  assert all(m[k] == 1 for k in KEYS if 'medr' in k or 'meanr' in k)
  n = 500
  m = retrieval_metrics(np.random.default_rng(3).normal(size=(n, n)), np.arange(n))
  for s in ('_sim', '_dsl'):
    for d in ('t2v', 'v2t'):
      assert m[f'{d}_r1{s}'] < 2 and m[f'{d}_r10{s}'] < 10  # chance: 0.2 and 2
      assert abs(m[f'{d}_meanr{s}'] - (n + 1) / 2) < 30  # std of the mean ~6.5
  assert retrieval_metrics(np.zeros((3, 3)), np.arange(3))['t2v_r10_sim'] == 100
  assert retrieval_metrics(np.zeros((3, 3)), np.arange(3))['t2v_r1_sim'] == 0


def test_retrieval_metrics_reject_a_video_without_caption():
  with pytest.raises(ValueError, match='video 1 has no caption'):
    retrieval_metrics(np.zeros((3, 2)), np.array([0, 2]))


def test_class_prompts_are_class_major():
  assert class_prompts(['run', 'jump'], ('a {}', '{}!')) == ['a run', 'run!', 'a jump', 'jump!']
  prompts = class_prompts(['archery', 'bowling'])
  assert len(KINETICS_TEMPLATES) == 16 and len(prompts) == 32
  assert prompts[0] == 'a photo of action archery' and prompts[16] == 'a photo of action bowling'
  assert prompts[15] == 'The woman is archery'


@pytest.mark.parametrize('mode', ['embeddings', 'scores'])
def test_zero_shot_matches_numpy(mode):
  rng = np.random.default_rng(4)
  c, p, d, n = 5, 3, 8, 9
  prompts = rng.normal(size=(c * p, d)) * rng.uniform(0.5, 3, size=(c * p, 1))  # class-major
  video = rng.normal(size=(n, d)) * 4
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  if mode == 'embeddings':  # CLIP / big_vision: average the normalised prompts, renormalise
    want = unit(video) @ unit(unit(prompts).reshape(c, p, d).mean(1)).T
  else:  # InternVideo2: per-prompt scores reshaped (classes, prompts) and averaged
    want = (unit(video) @ unit(prompts).T).reshape(n, c, p).mean(-1)
  got = zero_shot_logits(video, prompts.reshape(c, p, d), mode)
  assert got.shape == (n, c) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert zero_shot_classifier(prompts.reshape(c, p, d), mode).shape == (c, d)


def test_zero_shot_rejects_unknown_mode_and_shapes():
  with pytest.raises(ValueError, match='mode'):
    zero_shot_classifier(np.ones((2, 3, 4)), 'mean')
  with pytest.raises(ValueError, match=r'\[C, P, D\]'):
    zero_shot_classifier(np.ones((2, 4)))
  with pytest.raises(ValueError, match='video_emb'):
    zero_shot_logits(np.ones((2, 5)), np.ones((2, 3, 4)))
