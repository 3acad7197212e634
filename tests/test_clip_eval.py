"""FluxViT-CLIP data and evaluation: captions through the grain pipeline, retrieval and
zero-shot rows per budget with Token Optimization, on the tiny synthetic_captions set."""

import jax
import numpy as np
import pytest

from flux_jax import sharding
from flux_jax.data import pipeline
from flux_jax.data import tokenizer
from flux_jax.data.builders import synthetic_captions
from flux_jax.data.captions import CLASS_PHRASES, PROMPT_TEMPLATES
from flux_jax.data.to_device import to_global_clip
from flux_jax.eval import clip as clip_eval
from flux_jax.eval import retrieval
from flux_jax.model.clip import init_clip_params, make_clip_model
from flux_jax.tokens.plan import PlanSampler


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  builder = synthetic_captions.build('tiny', str(tmp_path_factory.mktemp('tfds')), 1)
  return builder.as_data_source('train'), builder.as_data_source('validation')


@pytest.fixture(scope='module')
def model():
  return make_clip_model(dict(
      vision=dict(variant='tiny', num_classes=6, embed_dim=32, clip_embed_dim=32,
                  head_budgets=(32, 16), num_decoders=1),
      text=dict(variant='tiny', context_length=32), temperature_init=0.1))


def test_train_batches_carry_one_caption_of_each_clips_video(data):
  train, _ = data
  sampler = PlanSampler.from_config(dict(frames=(2, 4, 2), resolutions=(56, 84, 28),
                                         min_tokens=32, max_tokens=128), patch_size=14)
  ds = pipeline.train_dataset(train, sampler=sampler, global_batch_size=4, n_max=128,
                              num_sample=2, seed=3,
                              captioner=pipeline.Captioner(context_length=32))
  host = ds[0]
  assert host['text'].shape == (4, 32) and host['text'].dtype == np.int32
  for row, index in zip(host['text'], host['video_index']):
    want = pipeline.tokenize_captions(
        [c.decode() for c in train[int(index)]['captions']], 32)
    assert any(np.array_equal(row, w) for w in want), tokenizer.get_tokenizer().decode(row)
  again = pipeline.train_dataset(train, sampler=sampler, global_batch_size=4, n_max=128,
                                 num_sample=2, seed=3,
                                 captioner=pipeline.Captioner(context_length=32))[0]
  np.testing.assert_array_equal(again['text'], host['text'])  # keyed on (seed, position)
  batch = to_global_clip(host, sharding.batch_sharding(sharding.make_mesh({'data': -1},
                                                                           jax.devices()[:2])))
  assert batch.text.shape == (4, 32) and batch.tokens.patches.shape[0] == 4


def test_retrieval_scores_drop_unreadable_videos_and_their_captions():
  rng = np.random.default_rng(0)
  texts = rng.normal(size=(7, 5)).astype(np.float32)
  texts /= np.linalg.norm(texts, axis=1, keepdims=True)
  owner = np.array([0, 0, 1, 2, 2, 3, 3])
  videos = np.stack([texts[0], texts[2], texts[3], texts[5]])  # each its first caption
  readable = np.array([True, False, True, True])
  out = clip_eval.retrieval_scores(videos, readable, texts, owner)
  assert (out['videos'], out['captions'], out['unreadable']) == (3, 6, 1)
  assert out['v2t_r1_sim'] == 100.0
  want = retrieval.retrieval_metrics(videos[[0, 2, 3]] @ texts[[0, 1, 3, 4, 5, 6]].T,
                                     np.array([0, 0, 1, 1, 2, 2]))
  assert all(out[k] == want[k] for k in want)


def test_evaluate_reports_plain_and_to_rows_per_budget(data, model):
  _, val = data
  params = init_clip_params(model, jax.random.key(0))
  mesh = sharding.make_mesh({'data': -1}, jax.devices()[:1])
  seen = []
  rows = clip_eval.evaluate(
      model, params, val, budgets=(32, 16), frames=(2, 4), resolutions=(56,),
      plain_resolution=56, batch_size=4, sharding=sharding.batch_sharding(mesh),
      class_names=CLASS_PHRASES, templates=PROMPT_TEMPLATES, progress=seen.append)
  kinds = [(r['budget'], r['kind'], r['frames']) for r in rows]
  # 32 tokens: plain 2 x 56^2 (32 raw), candidate 4 x 56^2; 16: plain 1 frame, then 2, 4.
  assert kinds[:3] == [(32, 'plain', 2), (32, 'candidate', 4), (32, 'to', kinds[2][2])]
  assert [k for k in kinds if k[0] == 16][:3] == [(16, 'plain', 1), (16, 'candidate', 2),
                                                  (16, 'candidate', 4)]
  assert len(seen) == 5  # every evaluated grid reported once
  for r in rows:
    assert r['videos'] == len(val) and r['unreadable'] == 0
    assert 0 <= r['t2v_r1_dsl'] <= 100 and 0 <= r['zero_shot_top1'] <= 1
  to = [r for r in rows if r['kind'] == 'to']
  assert all(r['picked_on'] == 'eval' for r in to)
  for r in to:  # the pick is the best evaluated grid of its budget
    assert r['t2v_r1_dsl'] == max(x['t2v_r1_dsl'] for x in rows
                                  if x['budget'] == r['budget'] and x['kind'] != 'to')
  # By hand: the plain 32-token row from embeddings computed here.
  video, readable = clip_eval.embed_videos(model, params, val, budget=32, frames=2,
                                           resolution=56, batch_size=4,
                                           sharding=sharding.batch_sharding(mesh))
  texts, owner = clip_eval.caption_table(val)
  manual = retrieval.retrieval_metrics(video @ clip_eval.embed_text(model, params, texts).T,
                                       owner)
  assert rows[0]['t2v_r1_dsl'] == manual['t2v_r1_dsl']
  assert '| 32 | 2 x 56^2 |' in clip_eval.table9(rows)
