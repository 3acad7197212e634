"""Contrastive losses against PyTorch and numpy references (SPEC G.4, SigLIP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flux_jax.train.contrastive import sigmoid_loss, vtc_loss

D, SCALE, BIAS = 8, 7.0, -2.5

# 4 videos, video 1 twice; 7 captions: video 0 has two, video 1 one (positive of both
# copies), video 2 three, video 3 one.
VIDEO_IDS = np.array([0, 1, 2, 1, 3])
TEXT_IDS = np.array([2, 0, 1, 2, 0, 3, 2])


def _unit(rng, n):
  x = rng.normal(size=(n, D)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _embeddings(seed=0, bv=len(VIDEO_IDS), bt=len(TEXT_IDS)):
  rng = np.random.default_rng(seed)
  return _unit(rng, bv), _unit(rng, bt)


def _torch_vtc(video, text, video_ids, text_ids, scale, video_valid=None, text_valid=None):
  """SPEC G.4 in torch on the batch without its padding rows: loss and input gradients.

  Queries without a positive are left out of their direction's mean.
  """
  v = torch.tensor(video, requires_grad=True)
  t = torch.tensor(text, requires_grad=True)
  kv = torch.tensor(np.ones(len(video), bool) if video_valid is None else video_valid)
  kt = torch.tensor(np.ones(len(text), bool) if text_valid is None else text_valid)
  sim = scale * v[kv] @ t[kt].T
  mask = (torch.tensor(video_ids)[kv][:, None] == torch.tensor(text_ids)[kt][None, :]).float()

  def ce(s, m):
    rows = m.sum(1) > 0
    target = m[rows] / m[rows].sum(1, keepdim=True)
    return -(F.log_softmax(s, dim=1)[rows] * target).sum(1).mean()

  loss = (ce(sim, mask) + ce(sim.T, mask.T)) / 2
  loss.backward()
  return loss.item(), v.grad.numpy(), t.grad.numpy()


def _jax_vtc(video, text, video_ids, text_ids, scale, **valid):
  fn = lambda v, t: vtc_loss(v, t, video_ids, text_ids, scale, **valid)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(
      video, text)
  return loss, metrics, grads


def test_vtc_several_captions_and_repeated_video_match_torch():
  video, text = _embeddings()
  loss, metrics, (gv, gt) = _jax_vtc(video, text, VIDEO_IDS, TEXT_IDS, SCALE)
  want, want_gv, want_gt = _torch_vtc(video, text, VIDEO_IDS, TEXT_IDS, SCALE)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(gv, want_gv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gt, want_gt, rtol=1e-5, atol=1e-6)
  assert loss.dtype == jnp.float32 and metrics['total'] == loss
  np.testing.assert_allclose((metrics['loss_v2t'] + metrics['loss_t2v']) / 2, loss, rtol=1e-6)
  assert metrics['nopos_v2t'] == 0 and metrics['nopos_t2v'] == 0


def test_vtc_equals_internvideo2_square_batch():
  """IV2's own form: one idx per (video, text) sample, one normalised mask both ways."""
  idx = np.array([0, 1, 2, 1, 3, 0])
  video, text = _embeddings(1, len(idx), len(idx))
  v, t = torch.tensor(video), torch.tensor(text)
  sim = v @ t.T * SCALE
  mask = (torch.tensor(idx)[:, None] == torch.tensor(idx)[None, :]).float()
  mask = mask / mask.sum(1, keepdim=True)
  want = (-(F.log_softmax(sim, 1) * mask).sum(1).mean()
          - (F.log_softmax(sim.T, 1) * mask).sum(1).mean()) / 2
  loss, _ = vtc_loss(video, text, idx, idx, SCALE)
  np.testing.assert_allclose(loss, want.item(), rtol=1e-6)


def test_vtc_padding_rows_are_neither_queries_nor_candidates():
  video, text = _embeddings(2)
  # Padding rows carry ids that would match real rows: only the masks may exclude them.
  video_valid = np.array([True, True, True, False, True])
  text_valid = np.array([True, False, True, True, True, True, False])
  valid = dict(video_valid=video_valid, text_valid=text_valid)
  loss, metrics, (gv, gt) = _jax_vtc(video, text, VIDEO_IDS, TEXT_IDS, SCALE, **valid)
  want, want_gv, want_gt = _torch_vtc(video, text, VIDEO_IDS, TEXT_IDS, SCALE, **valid)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(gv[video_valid], want_gv[video_valid], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gt[text_valid], want_gt[text_valid], rtol=1e-5, atol=1e-6)
  assert not np.any(gv[~video_valid]) and not np.any(gt[~text_valid])
  # Garbage in the padding rows changes nothing.
  video2, text2 = video.copy(), text.copy()
  video2[~video_valid], text2[~text_valid] = 1e3, -1e3
  np.testing.assert_allclose(vtc_loss(video2, text2, VIDEO_IDS, TEXT_IDS, SCALE, **valid)[0],
                             loss, rtol=1e-6)


def test_vtc_query_without_positive_is_left_out_and_counted():
  video, text = _embeddings(3)
  text_ids = TEXT_IDS.copy()
  text_ids[6] = 9  # a caption of a video outside the batch
  video_valid = np.array([True, True, True, True, False])  # video 3's only copy is padding
  loss, metrics, (gv, gt) = _jax_vtc(video, text, VIDEO_IDS, text_ids, SCALE,
                                     video_valid=video_valid)
  want, want_gv, want_gt = _torch_vtc(video, text, VIDEO_IDS, text_ids, SCALE, video_valid)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(gv, want_gv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gt, want_gt, rtol=1e-5, atol=1e-6)
  assert metrics['nopos_t2v'] == 2 and metrics['nopos_v2t'] == 0
  assert np.any(gt[6])  # still a negative for the videos


def test_vtc_without_valid_candidates_is_finite():
  video, text = _embeddings(4)
  loss, metrics, (gv, gt) = _jax_vtc(video, text, VIDEO_IDS, TEXT_IDS, SCALE,
                                     text_valid=np.zeros(len(TEXT_IDS), bool))
  assert loss == 0 and np.all(np.isfinite(gv)) and np.all(np.isfinite(gt))
  assert metrics['nopos_v2t'] == len(VIDEO_IDS) and metrics['nopos_t2v'] == 0


@pytest.mark.parametrize('loss_fn', ['vtc', 'sigmoid'])
def test_losses_are_invariant_to_permuting_the_batch(loss_fn):
  video, text = _embeddings(5)
  fn = {'vtc': lambda v, t, vi, ti: vtc_loss(v, t, vi, ti, SCALE)[0],
        'sigmoid': lambda v, t, vi, ti: sigmoid_loss(v, t, vi, ti, SCALE, BIAS)[0]}[loss_fn]
  rng = np.random.default_rng(0)
  pv, pt = rng.permutation(len(VIDEO_IDS)), rng.permutation(len(TEXT_IDS))
  np.testing.assert_allclose(fn(video[pv], text[pt], VIDEO_IDS[pv], TEXT_IDS[pt]),
                             fn(video, text, VIDEO_IDS, TEXT_IDS), rtol=1e-6)


def test_vtc_accuracy_and_bfloat16_inputs():
  video, _ = _embeddings(6)
  video[3] = video[1]  # two copies of video 1
  text = video[[list(VIDEO_IDS).index(i) for i in TEXT_IDS]]  # each caption = its video
  loss, metrics = vtc_loss(jnp.asarray(video, jnp.bfloat16), jnp.asarray(text, jnp.bfloat16),
                           VIDEO_IDS, TEXT_IDS, 100.0)
  assert loss.dtype == jnp.float32
  assert metrics['acc_v2t'] == 1 and metrics['acc_t2v'] == 1
  _, metrics = vtc_loss(video, text[::-1], VIDEO_IDS, TEXT_IDS, 100.0)
  assert metrics['acc_t2v'] < 1


def test_vtc_rejects_mismatched_ids():
  video, text = _embeddings()
  with pytest.raises(ValueError, match='text_ids'):
    vtc_loss(video, text, VIDEO_IDS, TEXT_IDS[:-1], SCALE)


def _numpy_sigmoid(video, text, video_ids, text_ids, scale, bias, video_valid, text_valid):
  """SigLIP (Zhai et al. 2023, Algorithm 1) on the batch without its padding rows."""
  v, t = video[video_valid].astype(np.float64), text[text_valid].astype(np.float64)
  labels = np.where(video_ids[video_valid][:, None] == text_ids[text_valid][None, :], 1, -1)
  logits = scale * v @ t.T + bias
  return np.sum(np.logaddexp(0, -labels * logits)) / len(v)  # -log_sigmoid(x) = log(1+e^-x)


def test_sigmoid_loss_matches_numpy():
  video, text = _embeddings(7)
  video_valid = np.array([True, True, False, True, True])
  text_valid = np.array([True, True, True, True, False, True, True])
  loss, metrics = jax.jit(sigmoid_loss)(video, text, VIDEO_IDS, TEXT_IDS, SCALE, BIAS,
                                        video_valid=video_valid, text_valid=text_valid)
  want = _numpy_sigmoid(video, text, VIDEO_IDS, TEXT_IDS, SCALE, BIAS, video_valid, text_valid)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert loss.dtype == jnp.float32 and metrics['total'] == loss
  assert metrics['pos_logit'] > BIAS - SCALE and metrics['neg_logit'] < BIAS + SCALE


def test_sigmoid_loss_is_big_vision_on_a_plain_batch():
  """Distinct ids, no padding: labels are 2 * eye - 1 and the sum is divided by B."""
  b = 6
  video, text = _embeddings(8, b, b)
  logits = SCALE * video.astype(np.float64) @ text.T + BIAS
  want = -np.sum(-np.logaddexp(0, -(2 * np.eye(b) - 1) * logits)) / b
  loss, _ = sigmoid_loss(video, text, np.arange(b), np.arange(b), SCALE, BIAS)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
