"""Video-text contrastive losses of FluxViT-CLIP, float32 throughout (SPEC G.4, DESIGN 8).

Pure functions of the global batch: the step gathers the embeddings across the data axes
before calling them, so one device and a pod compute the same loss. The self-distillation
term of the smaller budgets is `losses.smooth_l1`, shared with Flux-Multi.

Positives are given by ids, not by position: pair (i, j) is positive iff
`video_ids[i] == text_ids[j]`, so several captions of one video, and a video repeated in
the batch, are all positives of each other. Padding rows (`*_valid` False) take part
neither as queries nor as candidates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Fills the logits of padding candidates: finite, unlike -inf, so that a row with no valid
# candidate stays NaN-free in the backward pass (it is then dropped by the row mask).
_MASKED_LOGIT = -1e9


def _valid(valid: jax.Array | None, n: int) -> jax.Array:
  return jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)


def _pairs(video, text, video_ids, text_ids, video_valid, text_valid):
  """float32 embeddings, the positive mask `[Bv, Bt]` and the two validity vectors."""
  video_ids, text_ids = jnp.asarray(video_ids), jnp.asarray(text_ids)
  if video.ndim != 2 or text.ndim != 2 or video.shape[1] != text.shape[1]:
    raise ValueError(f'video [Bv, D] and text [Bt, D] need one width D, got {video.shape} '
                     f'and {text.shape}')
  if video_ids.shape != video.shape[:1] or text_ids.shape != text.shape[:1]:
    raise ValueError(f'video_ids {video_ids.shape} and text_ids {text_ids.shape} must be '
                     f'[Bv]={video.shape[:1]} and [Bt]={text.shape[:1]}')
  vv = _valid(video_valid, video.shape[0])  # [Bv]
  tv = _valid(text_valid, text.shape[0])  # [Bt]
  pos = (video_ids[:, None] == text_ids[None, :]) & vv[:, None] & tv[None, :]  # [Bv, Bt]
  return video.astype(jnp.float32), text.astype(jnp.float32), pos, vv, tv


def _similarity(video: jax.Array, text: jax.Array, logit_scale) -> jax.Array:
  # The loss is float32 (SPEC F.12); HIGHEST stops TPUs and GPUs multiplying in bf16 / TF32.
  sim = jnp.einsum('vd,td->vt', video, text, precision=jax.lax.Precision.HIGHEST)
  return jnp.asarray(logit_scale, jnp.float32) * sim  # [Bv, Bt]


def _multi_positive_ce(logits: jax.Array, pos: jax.Array, cand_valid: jax.Array):
  """Row-wise CE against the row-normalised positive mask; (loss, accuracy, no-positive)."""
  logits = jnp.where(cand_valid[None, :], logits, _MASKED_LOGIT)  # [Q, C]
  logp = jax.nn.log_softmax(logits, axis=-1)  # [Q, C]
  n_pos = jnp.sum(pos, axis=-1)  # [Q]
  target = pos / jnp.maximum(n_pos, 1)[:, None]  # [Q, C]
  row_loss = -jnp.sum(logp * target, axis=-1)  # [Q]
  has_pos = n_pos > 0  # [Q]; False for padding queries too
  count = jnp.maximum(jnp.sum(has_pos), 1)
  loss = jnp.sum(jnp.where(has_pos, row_loss, 0.0)) / count
  hit = jnp.take_along_axis(pos, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0]  # [Q]
  acc = jnp.sum(hit & has_pos) / count
  return loss, acc, has_pos


def vtc_loss(video: jax.Array, text: jax.Array, video_ids: jax.Array, text_ids: jax.Array,
             logit_scale, *, video_valid: jax.Array | None = None,
             text_valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InternVideo2's multi-positive VTC loss (SPEC G.4), with padding.

  sim = logit_scale * video @ text^T (logit_scale = 1 / IV2's temp). Each valid video's
  target is its positive captions, uniformly; each valid caption's target is every copy of
  its video. loss = (v2t + t2v) / 2, each the mean over its valid queries of the CE.

  A valid query with no positive among the valid candidates (a caption whose video is
  padding, a video whose captions all are) has no target: it is left out of its
  direction's mean and accuracy but stays a negative for the other queries; the metrics
  `nopos_*` count such rows so that a data bug cannot hide. The embeddings are expected
  L2-normalised already (the same vectors feed retrieval); nothing is normalised here.

  Args:
    video: `[Bv, D]` video embeddings.
    text: `[Bt, D]` caption embeddings.
    video_ids: `[Bv]` int, the id of each video.
    text_ids: `[Bt]` int, the id of the video each caption describes.
    logit_scale: scalar multiplier of the cosine similarity.
    video_valid, text_valid: `[Bv]`, `[Bt]` bool; False marks padding. None: all valid.

  Returns:
    (loss, metrics) with metrics `loss_v2t`, `loss_t2v`, `acc_v2t`, `acc_t2v` (argmax is a
    positive), `nopos_v2t`, `nopos_t2v` (valid queries without a positive) and `total`.
  """
  video, text, pos, vv, tv = _pairs(video, text, video_ids, text_ids, video_valid, text_valid)
  sim = _similarity(video, text, logit_scale)  # [Bv, Bt]
  loss_v2t, acc_v2t, pos_v = _multi_positive_ce(sim, pos, tv)
  loss_t2v, acc_t2v, pos_t = _multi_positive_ce(sim.T, pos.T, vv)
  total = (loss_v2t + loss_t2v) / 2
  metrics = {
      'loss_v2t': loss_v2t, 'loss_t2v': loss_t2v, 'acc_v2t': acc_v2t, 'acc_t2v': acc_t2v,
      'nopos_v2t': jnp.sum(vv & ~pos_v), 'nopos_t2v': jnp.sum(tv & ~pos_t), 'total': total,
  }
  return total, metrics


def sigmoid_loss(video: jax.Array, text: jax.Array, video_ids: jax.Array,
                 text_ids: jax.Array, logit_scale, logit_bias, *,
                 video_valid: jax.Array | None = None, text_valid: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP's pairwise sigmoid loss (Zhai et al. 2023; big_vision `siglip.py`), with ids.

  loss = -sum_{i,j valid} log_sigmoid(z_ij * (logit_scale * v_i.t_j + logit_bias)) / Nv,
  z_ij = +1 for positive pairs and -1 otherwise, Nv the number of valid videos (big_vision
  divides by its batch size, which is Nv when Bv = Bt and nothing is padding).
  `logit_scale` is the multiplier itself (big_vision's exp(t)).

  Returns:
    (loss, metrics) with `pos_logit`, `neg_logit` (mean logits of valid positive and
    negative pairs, the quantities SigLIP's bias trades off) and `total`.
  """
  video, text, pos, vv, tv = _pairs(video, text, video_ids, text_ids, video_valid, text_valid)
  logits = _similarity(video, text, logit_scale) + jnp.asarray(logit_bias, jnp.float32)
  pair_valid = vv[:, None] & tv[None, :]  # [Bv, Bt]
  loglik = jax.nn.log_sigmoid(jnp.where(pos, logits, -logits))  # [Bv, Bt]
  total = -jnp.sum(jnp.where(pair_valid, loglik, 0.0)) / jnp.maximum(jnp.sum(vv), 1)
  neg = pair_valid & ~pos  # [Bv, Bt]
  metrics = {
      'pos_logit': jnp.sum(jnp.where(pos, logits, 0.0)) / jnp.maximum(jnp.sum(pos), 1),
      'neg_logit': jnp.sum(jnp.where(neg, logits, 0.0)) / jnp.maximum(jnp.sum(neg), 1),
      'total': total,
  }
  return total, metrics
