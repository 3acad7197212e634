"""Zero-shot retrieval and classification of FluxViT-CLIP at every budget (SPEC G.5, G.6).

Videos are embedded per budget through the head nearest to it, the views of a video
(clips x crops) averaged and renormalised; captions once. Retrieval reports every metric
of `retrieval.retrieval_metrics` with plain similarity (`_sim`) and dual softmax (`_dsl`,
what Table 9 reports); zero-shot classification uses class-name prompts.

Token Optimization (Table 9's second number per budget): the plain grid holds the budget
in whole frames at the plain resolution; TO tries every candidate grid with at least the
budget's raw tokens, reduced by the selector, and keeps the best by t2v R@1 (dual softmax)
on `select_source` when given (unbiased), else on the evaluation split itself (flagged
`picked_on: 'eval'`, an optimistic number).

Unreadable videos (and their captions) leave the metrics; their count is in every row.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from flux_jax import checkpoint
from flux_jax import sharding as sharding_lib
from flux_jax.data import pipeline
from flux_jax.data.builders import captioned_video
from flux_jax.data.sources import open_builder
from flux_jax.eval import retrieval
from flux_jax.eval.flops import gflops
from flux_jax.eval.multiview import to_host, views
from flux_jax.eval.token_optimization import candidate_grids, plain_grid
from flux_jax.model.clip import FluxCLIP
from flux_jax.tokens.plan import FluxPlan
from flux_jax.tokens.token_batch import TokenBatch

SELECT_METRIC = 't2v_r1_dsl'


def caption_table(source) -> tuple[list[str], np.ndarray]:
  """(every caption of `source`, the index of its video `[Nt]`), in source order."""
  texts, owner = [], []
  for i in range(len(source)):
    for caption in source[i]['captions']:
      texts.append(caption.decode() if isinstance(caption, bytes) else str(caption))
      owner.append(i)
  return texts, np.asarray(owner, np.int64)


@functools.lru_cache(maxsize=8)
def _text_fn(model: FluxCLIP):
  return jax.jit(lambda p, ids: model.apply({'params': p}, ids, method=FluxCLIP.encode_text))


def embed_text(model: FluxCLIP, params, texts: Sequence[str], *, batch_size: int = 256,
               clean: bool = True) -> np.ndarray:
  """float32 `[N, A]` unit caption embeddings; one compiled program (batches padded)."""
  ids = pipeline.tokenize_captions(texts, model.text.context_length, clean)  # [N, L]
  out = []
  for start in range(0, len(ids), batch_size):
    chunk = ids[start:start + batch_size]
    padded = np.zeros((batch_size, ids.shape[1]), np.int32)
    padded[:len(chunk)] = chunk
    out.append(np.asarray(_text_fn(model)(params, padded))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, model.align_dim), np.float32)


@functools.lru_cache(maxsize=32)
def _video_fn(model: FluxCLIP, budget: int | None, head: int):
  def embed(params, tokens: TokenBatch):
    video, _ = model.apply({'params': params}, tokens, budget=budget, head=head,
                           method=FluxCLIP.encode_video)
    return video
  return jax.jit(embed)


def embed_videos(model: FluxCLIP, params, source, *, budget: int | None, frames: int,
                 resolution: int, batch_size: int, sharding: jax.sharding.Sharding,
                 num_clips: int = 1, num_crops: int = 1,
                 head: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(float32 `[V, A]` unit embeddings, bool `[V]` readable) of every video of `source`:
  views averaged, renormalised; unreadable videos' rows are zero."""
  n = (frames // model.vision.tubelet_size) * (resolution // model.vision.patch_size) ** 2
  head = model.vision.nearest_head(budget, n) if head is None else head
  step = _video_fn(model, budget, head)
  total = np.zeros((len(source), model.align_dim), np.float64)
  count = np.zeros((len(source),), np.int64)
  for tokens in views(source, model=model.vision, frames=frames, resolution=resolution,
                      batch_size=batch_size, sharding=sharding, num_clips=num_clips,
                      num_crops=num_crops):
    emb, index = to_host(step(params, tokens)), to_host(tokens.video_index)
    keep = index >= 0
    np.add.at(total, index[keep], emb[keep])
    np.add.at(count, index[keep], 1)
  readable = count > 0
  norms = np.linalg.norm(total, axis=-1, keepdims=True)
  return (np.where(readable[:, None], total / np.maximum(norms, 1e-12), 0.0)
          .astype(np.float32), readable)


def retrieval_scores(videos: np.ndarray, readable: np.ndarray, texts: np.ndarray,
                     owner: np.ndarray) -> dict[str, float]:
  """`retrieval_metrics` over the readable videos and their captions, `unreadable` beside."""
  keep = readable[owner]
  new_index = np.cumsum(readable) - 1  # video i -> its row among the readable ones
  sim = videos[readable] @ texts[keep].T  # [V', Nt']
  out = retrieval.retrieval_metrics(sim, new_index[owner[keep]])
  out.update(videos=int(readable.sum()), captions=int(keep.sum()),
             unreadable=int((~readable).sum()))
  return out


def zero_shot(videos: np.ndarray, readable: np.ndarray, labels: np.ndarray,
              class_embeddings: np.ndarray, mode: str = 'embeddings') -> dict[str, float]:
  """Top-1/top-5 of zero-shot classification from `[C, P, A]` prompt embeddings."""
  keep = readable & (labels >= 0)
  logits = retrieval.zero_shot_logits(videos[keep], class_embeddings, mode)
  order = np.argsort(-logits, axis=1)
  y = labels[keep]
  return dict(top1=float(np.mean(order[:, 0] == y)) if len(y) else float('nan'),
              top5=float(np.mean((order[:, :5] == y[:, None]).any(1))) if len(y) else
              float('nan'), videos=int(keep.sum()), unreadable=int((~readable).sum()))


def class_embeddings(model: FluxCLIP, params, class_names: Sequence[str],
                     templates: Sequence[str] = retrieval.KINETICS_TEMPLATES) -> np.ndarray:
  """`[C, P, A]` unit embeddings of every class name in every prompt template."""
  prompts = retrieval.class_prompts(class_names, templates)
  emb = embed_text(model, params, prompts)
  return emb.reshape(len(class_names), len(templates), -1)


def evaluate_plain(model: FluxCLIP, params, source, *, budgets: Sequence[int], frames: int,
                   resolution: int, batch_size: int, sharding: jax.sharding.Sharding,
                   num_clips: int = 1, num_crops: int = 1) -> dict[str, float]:
  """Retrieval on one grid at every budget, for the training loop's evaluation: keys
  `{metric}@{budget}` for the R@1s (plain and dual softmax) and `unreadable`."""
  texts, owner = caption_table(source)
  text_emb = embed_text(model, params, texts)
  out = {}
  for budget in budgets:
    video, readable = embed_videos(model, params, source, budget=budget, frames=frames,
                                   resolution=resolution, batch_size=batch_size,
                                   sharding=sharding, num_clips=num_clips,
                                   num_crops=num_crops)
    scores = retrieval_scores(video, readable, text_emb, owner)
    out.update({f'{k}@{budget}': scores[k] for k in (
        't2v_r1_dsl', 'v2t_r1_dsl', 't2v_r1_sim', 'v2t_r1_sim')})
    out['unreadable'] = scores['unreadable']
  return out


def evaluate(model: FluxCLIP, params, source, *, budgets: Sequence[int],
             frames: Sequence[int], resolutions: Sequence[int], plain_resolution: int,
             batch_size: int, sharding: jax.sharding.Sharding, select_source=None,
             class_names: Sequence[str] | None = None,
             templates: Sequence[str] = retrieval.KINETICS_TEMPLATES,
             zero_shot_mode: str = 'embeddings',
             progress: Callable[[dict], Any] | None = None) -> list[dict[str, Any]]:
  """Table 9's rows on `source`: per budget, the plain grid and the TO pick.

  Returns one row per (budget, grid evaluated) with the retrieval metrics, GFLOPs, the
  zero-shot accuracy when `class_names` are given, and `kind` 'plain', 'to' (the pick) or
  'candidate'; `picked_on` says where the TO pick was chosen ('select' or 'eval').
  """
  p, kt = model.vision.patch_size, model.vision.tubelet_size
  texts, owner = caption_table(source)
  text_emb = embed_text(model, params, texts)
  labels = np.asarray([int(source[i]['label']) for i in range(len(source))])
  classes = None if class_names is None else class_embeddings(model, params, class_names,
                                                                templates)
  if select_source is not None:
    select_texts, select_owner = caption_table(select_source)
    select_text_emb = embed_text(model, params, select_texts)
  rows = []
  for budget in budgets:
    plain = plain_grid(budget, resolution=plain_resolution, patch_size=p, tubelet_size=kt)
    grids = [plain] + [g for g in candidate_grids(budget, frames=frames,
                                                  resolutions=resolutions, patch_size=p,
                                                  tubelet_size=kt) if g != plain]
    budget_rows = []
    for grid in grids:
      common = dict(budget=budget, frames=grid[0], resolution=grid[1], batch_size=batch_size,
                    sharding=sharding)
      video, readable = embed_videos(model, params, source, **common)
      row = dict(budget=budget, frames=grid[0], resolution=grid[1],
                 raw_tokens=FluxPlan(*grid).num_tokens(p, kt),
                 gflops=gflops(model.vision, min(budget, FluxPlan(*grid).num_tokens(p, kt)),
                               FluxPlan(*grid).num_tokens(p, kt)),
                 **retrieval_scores(video, readable, text_emb, owner))
      if classes is not None:
        row.update({f'zero_shot_{k}': v for k, v in zero_shot(
            video, readable, labels, classes, zero_shot_mode).items()})
      if select_source is not None:
        sv, sr = embed_videos(model, params, select_source, **common)
        row['select_' + SELECT_METRIC] = retrieval_scores(sv, sr, select_text_emb,
                                                          select_owner)[SELECT_METRIC]
      row['kind'] = 'plain' if grid == plain else 'candidate'
      budget_rows.append(row)
      if progress is not None:
        progress(row)
    key = ('select_' + SELECT_METRIC) if select_source is not None else SELECT_METRIC
    best = max(range(len(budget_rows)), key=lambda i: (budget_rows[i][key], -i))
    to_row = dict(budget_rows[best], kind='to',
                  picked_on='select' if select_source is not None else 'eval')
    rows += budget_rows + [to_row]
  return rows


def table9(rows: Sequence[dict[str, Any]], metric: str = 't2v_r1_dsl') -> str:
  """A markdown table: per budget, `metric` on the plain grid and with TO (the grid)."""
  out = [f'| budget | plain grid | {metric} plain | TO grid | {metric} TO | GFLOPs (TO) |',
         '|---|---|---|---|---|---|']
  for budget in dict.fromkeys(r['budget'] for r in rows):
    plain = next(r for r in rows if r['budget'] == budget and r['kind'] == 'plain')
    to = next(r for r in rows if r['budget'] == budget and r['kind'] == 'to')
    out.append(f"| {budget} | {plain['frames']} x {plain['resolution']}^2 | "
               f"{plain[metric]:.1f} | {to['frames']} x {to['resolution']}^2 | "
               f"{to[metric]:.1f} | {to['gflops']:.2f} |")
  return '\n'.join(out)


FIELDS = ('budget', 'kind', 'picked_on', 'frames', 'resolution', 'raw_tokens', 'gflops',
          't2v_r1_dsl', 't2v_r5_dsl', 't2v_r10_dsl', 'v2t_r1_dsl', 'v2t_r5_dsl',
          'v2t_r10_dsl', 't2v_r1_sim', 't2v_r5_sim', 't2v_r10_sim', 'v2t_r1_sim',
          'v2t_r5_sim', 'v2t_r10_sim', 't2v_medr_dsl', 't2v_meanr_dsl', 'r_mean_dsl',
          'r_mean_sim', 'zero_shot_top1', 'zero_shot_top5', 'videos', 'captions',
          'unreadable')


def evaluate_checkpoint(directory: str, out_dir: str | None, *, frames: Sequence[int],
                        resolutions: Sequence[int], budgets: Sequence[int] | None = None,
                        config=None, plain_resolution: int | None = None,
                        batch_size: int | None = None, select_split: str | None = None,
                        class_names: Sequence[str] | None = None,
                        templates: Sequence[str] = retrieval.KINETICS_TEMPLATES,
                        zero_shot_mode: str = 'embeddings',
                        progress: Callable[[dict], Any] | None = None
                        ) -> tuple[list[dict], dict[str, str]]:
  """`evaluate` of a FluxViT-CLIP params checkpoint on its data (or `config`'s `data`).

  budgets None: the model's head budgets; plain_resolution None: the checkpoint's
  evaluation resolution; class_names None: the dataset's (zero-shot is skipped without
  any). Writes OUT/retrieval.{json,csv} and OUT/table9.md (process 0) unless out_dir is
  None. Returns (rows, paths).
  """
  meta = checkpoint.read_config(directory).get('metadata', {})
  config = meta.get('config') if config is None else config
  if not config or 'data' not in config:
    raise ValueError(f'{directory}: no training config in the metadata; pass a config '
                     'with a data block')
  model, params = checkpoint.load_params(directory)
  if not isinstance(model, FluxCLIP):
    raise ValueError(f'{directory}: a {type(model).__name__} checkpoint; retrieval needs '
                     "FluxViT-CLIP (a train.mode='clip' run's params)")
  budgets = tuple(model.head_budgets if budgets is None else budgets)
  plain_resolution = plain_resolution or (meta.get('eval') or {}).get('resolution')
  if plain_resolution is None:
    raise ValueError(f'{directory}: no evaluation resolution in the metadata; give '
                     'plain_resolution')
  mesh = sharding_lib.make_mesh({'data': -1})
  rows_per_batch = mesh.shape['data']
  batch_size = batch_size or rows_per_batch * -(-16 // rows_per_batch)
  if batch_size % rows_per_batch:
    raise ValueError(f'batch_size {batch_size} must divide by the {rows_per_batch} devices')
  builder = open_builder(config['data'])
  source = builder.as_data_source(config['data']['eval_split'])
  select = builder.as_data_source(select_split) if select_split else None
  if class_names is None:
    class_names = captioned_video.class_names(builder)
  params = jax.device_put(params, sharding_lib.replicated(mesh))
  rows = evaluate(model, params, source, budgets=budgets, frames=frames,
                  resolutions=resolutions, plain_resolution=plain_resolution,
                  batch_size=batch_size, sharding=sharding_lib.batch_sharding(mesh),
                  select_source=select, class_names=class_names, templates=templates,
                  zero_shot_mode=zero_shot_mode, progress=progress)
  paths = {}
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (
        ('json', 'retrieval.json'), ('csv', 'retrieval.csv'), ('md', 'table9.md'))}
    with open(paths['json'], 'w') as f:
      json.dump({'checkpoint': os.fspath(directory), 'rows': rows}, f, indent=1)
    with open(paths['csv'], 'w', newline='') as f:
      writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
      writer.writeheader()
      writer.writerows(rows)
    with open(paths['md'], 'w') as f:
      f.write(table9(rows) + '\n')
  return rows, paths
