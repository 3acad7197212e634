"""Video-text retrieval and zero-shot metrics on the host, in numpy (SPEC G.5).

Evaluation sets reach ~10k x 10k: every function here works on the whole similarity
matrix in float32 (400 MB at 10k x 10k, as InternVideo2's `.float()`) and keeps its
temporaries to a few rows or one extra matrix. Callers drop padding before: the
embeddings' padding rows are removed, and `text_video` indexes the remaining videos.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# InternVideo2 `dataset/text_prompt.py::kinetics_templates_action_clip` (ActionCLIP's 16),
# the templates its zero-shot action recognition uses (`ret_dataset.py` imports them as
# `kinetics_templates`). IV2 also lower-cases and strips punctuation (`pre_text`): that is
# the tokenizer side's job (SPEC G.3).
KINETICS_TEMPLATES = (
    'a photo of action {}',
    'a picture of action {}',
    'Human action of {}',
    '{}, an action',
    '{} this is an action',
    '{}, a video of action',
    'Playing action of {}',
    '{}',
    'Playing a kind of action, {}',
    'Doing a kind of action, {}',
    'Look, the human is {}',
    'Can you recognize the action of {}?',
    'Video classification of {}',
    'A video of {}',
    'The man is {}',
    'The woman is {}',
)

_RECALL_AT = (1, 5, 10)


def dual_softmax(sim: np.ndarray) -> np.ndarray:
  """Dual Softmax `sim * softmax(sim, axis=0)` in float32, for ranking each row (SPEC G.5).

  Rows are the queries: the softmax runs over the queries of each candidate, so a
  candidate that every query likes is damped. IV2's `i2t_dsl` is `dual_softmax(S)`,
  its `t2i_dsl` is `dual_softmax(S.T)`.
  """
  sim = np.asarray(sim, np.float32)
  p = sim - sim.max(axis=0, keepdims=True)  # [Nq, Nc]; stable, and a copy to work in
  np.exp(p, out=p)
  p /= p.sum(axis=0, keepdims=True)
  p *= sim
  return p


def _positive_pairs(positives, nq: int, nc: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) of the distinct ground-truth pairs, from a mask or per-query lists."""
  if isinstance(positives, np.ndarray) and positives.dtype == bool:
    if positives.shape != (nq, nc):
      raise ValueError(f'positives mask {positives.shape} must match scores {(nq, nc)}')
    return np.nonzero(positives)
  if len(positives) != nq:
    raise ValueError(f'positives has {len(positives)} entries for {nq} queries')
  lists = [np.atleast_1d(np.asarray(p, np.int64)) for p in positives]
  rows = np.repeat(np.arange(nq), [len(p) for p in lists])
  cols = np.concatenate(lists) if lists else np.zeros(0, np.int64)
  if cols.size and (cols.min() < 0 or cols.max() >= nc):
    raise ValueError(f'positives index candidates outside [0, {nc})')
  flat = np.unique(rows * nc + cols)  # a ground truth listed twice counts once
  return flat // nc, flat % nc


def ranks(scores: np.ndarray, positives, *, chunk: int = 1024) -> np.ndarray:
  """1-based rank `[Nq]` of each query's best-ranked ground truth; higher score is better.

  Ties are pessimistic: a ground truth's rank is 1 + the number of candidates that are
  not ground truths of this query and score >= it, so a constant score never gets R@1
  (with G ground truths among Nc it ranks Nc - G + 1). InternVideo2's `itm_eval` instead
  takes the position in `np.argsort(score)[::-1]`, which breaks ties by the sort's
  internal order; the two agree whenever no non-ground-truth ties a best ground truth.

  Args:
    scores: `[Nq, Nc]` similarity of each query to each candidate.
    positives: bool mask `[Nq, Nc]`, or per query an int or a list of candidate indices.
    chunk: query rows compared at once, bounding the temporaries to `chunk x Nc`.
  """
  scores = np.asarray(scores)
  if not np.issubdtype(scores.dtype, np.floating):
    scores = scores.astype(np.float64)  # -inf starts the running max below
  if scores.ndim != 2:
    raise ValueError(f'scores must be [Nq, Nc], got shape {scores.shape}')
  nq, nc = scores.shape
  rows, cols = _positive_pairs(positives, nq, nc)
  empty = np.flatnonzero(np.bincount(rows, minlength=nq) == 0)
  if empty.size:
    raise ValueError(f'{empty.size} queries have no ground truth, first query {empty[0]}')
  gt = scores[rows, cols]  # [G]
  best = np.full(nq, -np.inf, scores.dtype)
  np.maximum.at(best, rows, gt)  # [Nq]
  at_or_above = np.empty(nq, np.int64)
  for lo in range(0, nq, chunk):
    block = scores[lo:lo + chunk]  # [chunk, Nc]
    if np.isnan(block).any():
      raise ValueError(f'scores has NaN in query rows {lo}..{lo + len(block) - 1}')
    at_or_above[lo:lo + chunk] = np.sum(block >= best[lo:lo + chunk, None], axis=1)
  gt_at_or_above = np.bincount(rows, weights=gt >= best[rows], minlength=nq)  # [Nq]
  return (at_or_above - gt_at_or_above.astype(np.int64) + 1).astype(np.int64)


def _rank_metrics(r: np.ndarray, direction: str, suffix: str) -> dict[str, float]:
  out = {f'{direction}_r{k}{suffix}': 100.0 * float(np.mean(r <= k)) for k in _RECALL_AT}
  out[f'{direction}_medr{suffix}'] = float(np.median(r))
  out[f'{direction}_meanr{suffix}'] = float(np.mean(r))
  return out


def retrieval_metrics(sim: np.ndarray, text_video: np.ndarray) -> dict[str, float]:
  """Text-to-video and video-to-text recalls of plain (`_sim`) and Dual Softmax (`_dsl`)
  scores (SPEC G.5), unrounded.

  Keys `{t2v,v2t}_{r1,r5,r10,medr,meanr}_{sim,dsl}` and `r_mean_{sim,dsl}`; recalls in
  percent, r_mean the mean of the six recalls as IV2's itm_eval. A video with several
  captions counts its best-ranked one (v2t); each caption has its one video (t2v). Ties
  follow `ranks`' pessimistic rule. Padding is dropped by the caller.

  Args:
    sim: `[Nv, Nt]` cosine similarity of every video to every caption.
    text_video: `[Nt]` int, the index of each caption's video; every video needs one.
  """
  sim = np.asarray(sim, np.float32)
  text_video = np.asarray(text_video, np.int64)
  if sim.ndim != 2 or text_video.shape != sim.shape[1:]:
    raise ValueError(f'sim [Nv, Nt] and text_video [Nt] disagree: {sim.shape}, '
                     f'{text_video.shape}')
  nv = sim.shape[0]
  if text_video.size and (text_video.min() < 0 or text_video.max() >= nv):
    raise ValueError(f'text_video indexes videos outside [0, {nv})')
  counts = np.bincount(text_video, minlength=nv)  # [Nv] captions per video
  if np.any(counts == 0):
    raise ValueError(f'video {np.flatnonzero(counts == 0)[0]} has no caption in text_video')
  order = np.argsort(text_video, kind='stable')
  video_texts = np.split(order, np.cumsum(counts)[:-1])  # captions of each video
  out = {}
  for suffix, v2t, t2v in (('_sim', sim, sim.T), ('_dsl', dual_softmax(sim), dual_softmax(sim.T))):
    m = {**_rank_metrics(ranks(t2v, text_video), 't2v', suffix),
         **_rank_metrics(ranks(v2t, video_texts), 'v2t', suffix)}
    m[f'r_mean{suffix}'] = float(np.mean(
        [m[f'{d}_r{k}{suffix}'] for d in ('t2v', 'v2t') for k in _RECALL_AT]))
    out.update(m)
  return out


def class_prompts(class_names: Sequence[str],
                  templates: Sequence[str] = KINETICS_TEMPLATES) -> list[str]:
  """Every template filled with every class, class-major: `[C * P]`, class c at c*P..."""
  return [t.format(name) for name in class_names for t in templates]


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zero_shot_classifier(class_text_emb: np.ndarray, mode: str = 'embeddings') -> np.ndarray:
  """Class weights `[C, D]` from the prompt embeddings `[C, P, D]` (class_prompts' order).

  'embeddings': mean of the L2-normalised prompt embeddings, renormalised (CLIP paper,
  big_vision). 'scores': the same mean not renormalised, because a video's cosine score
  averaged over the prompts (IV2's reshape (classes, prompts) and mean) equals its dot
  product with that mean, with no `[N, C, P]` scores built.
  """
  emb = np.asarray(class_text_emb, np.float32)
  if emb.ndim != 3:
    raise ValueError(f'class_text_emb must be [C, P, D], got shape {emb.shape}')
  mean = _l2_normalize(emb).mean(axis=1)  # [C, D]
  if mode == 'embeddings':
    return _l2_normalize(mean)
  if mode == 'scores':
    return mean
  raise ValueError(f"zero-shot mode {mode!r} is not 'embeddings' or 'scores'")


def zero_shot_logits(video_emb: np.ndarray, class_text_emb: np.ndarray,
                     mode: str = 'embeddings') -> np.ndarray:
  """Cosine class scores `[N, C]` of videos `[N, D]`; argmax is the zero-shot prediction."""
  weights = zero_shot_classifier(class_text_emb, mode)  # [C, D]
  video = np.asarray(video_emb, np.float32)
  if video.ndim != 2 or video.shape[1] != weights.shape[1]:
    raise ValueError(f'video_emb must be [N, {weights.shape[1]}], got shape {video.shape}')
  return _l2_normalize(video) @ weights.T  # [N, C]
