"""One grid at several budgets: one decoding pass, each budget as if evaluated alone."""

from typing import NamedTuple

import jax
import numpy as np
import pytest

from flux_jax.configs import debug
from flux_jax import sharding
from flux_jax.data.builders import synthetic_motion
from flux_jax.eval import budgets as budgets_lib
from flux_jax.eval import multiview
from flux_jax.model.fluxvit import init_params, make_model


class _Views(NamedTuple):  # the TokenBatch fields that multi-view aggregation reads
  label: np.ndarray
  video_index: np.ndarray
  view: np.ndarray
  probs: np.ndarray  # [steps, B, C]: what each step returns on this batch


def test_evaluate_each_averages_each_steps_views_like_numpy():
  rng = np.random.default_rng(0)
  videos, views, classes = 5, 3, 7
  labels = rng.integers(0, classes, videos)
  probs = rng.dirichlet(np.ones(classes), (2, videos, views))  # [steps, video, view, C]
  rows = [(v, w) for v in range(videos) for w in range(views)] + [(-1, 0)]  # + padding
  rng.shuffle(rows)
  batches = []
  for i in range(0, len(rows), 4):
    chunk = rows[i:i + 4]
    index = np.array([v for v, _ in chunk])
    batches.append(_Views(
        label=np.where(index >= 0, labels[index], 0), video_index=index,
        view=np.array([w for _, w in chunk]),
        probs=np.stack([[probs[s, v, w] if v >= 0 else np.full(classes, 9.0)
                         for v, w in chunk] for s in range(2)])))
  got = multiview.evaluate_each({'a': lambda b: {'probs': b.probs[0]},
                                 'b': lambda b: {'probs': b.probs[1]}}, batches)
  for s, key in enumerate('ab'):
    mean = probs[s].mean(axis=1)  # [video, C]
    top5 = np.argsort(-mean, axis=1)[:, :5]
    assert got[key] == {'top1': np.mean(mean.argmax(1) == labels),
                        'top5': np.mean((top5 == labels[:, None]).any(1)), 'videos': videos}
  assert multiview.evaluate(lambda b: {'probs': b.probs[1]}, batches) == got['b']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  config = debug.get_config()
  config.model.head_budgets = (256, 128, 64)  # the heads the budgets below name
  config.data.data_dir = str(tmp_path_factory.mktemp('budgets') / 'tfds')
  source = synthetic_motion.build('tiny', config.data.data_dir).as_data_source('validation')
  model = make_model(config.model)
  return model, init_params(model, jax.random.key(3)), source


def test_one_pass_serves_every_budget(tiny, monkeypatch):
  model, params, source = tiny
  mesh = sharding.make_mesh({'data': -1})
  common = dict(frames=8, resolution=56, batch_size=8, sharding=sharding.batch_sharding(mesh),
                num_clips=2)
  passes, views = [], multiview.views

  def counting(*args, **kw):
    passes.append((kw['frames'], kw['resolution']))
    return views(*args, **kw)

  monkeypatch.setattr(budgets_lib, 'views', counting)
  # 8x56^2 is 128 raw tokens. 128 and 200 keep them all with head 1 (one program);
  # 64 and 32 select, with head 2 (trained at 64).
  rows = budgets_lib.accuracy_by_budget(model, params, source, budgets=(128, 64, 32, 200),
                                        **common)
  assert passes == [(8, 56)]
  assert [(r['budget'], r['tokens'], r['raw_tokens'], r['head']) for r in rows] == [
      (128, 128, 128, 1), (64, 64, 128, 2), (32, 32, 128, 2), (200, 128, 128, 1)]
  for r in rows:  # each budget on its own pass (the compiled programs are cached)
    keep = None if r['budget'] >= 128 else r['budget']
    alone = multiview.evaluate_dataset(budgets_lib._eval_step(model, keep, r['head']), params,
                                       source, model=model, **common)
    assert {k: r[k] for k in ('top1', 'top5', 'videos', 'unreadable')} == alone
    assert r['videos'] == 12
