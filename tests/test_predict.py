"""flux_jax.predict on real mp4 files: the eval view through the model, grids, errors."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import flux_jax
from flux_jax.checkpoint import read_config, save_params
from flux_jax.data import decode
from flux_jax.data import synthetic
from flux_jax.data import transforms
from flux_jax.eval.predict import DEFAULT_GRID, choose_grid
from flux_jax.model.fluxvit import init_params, make_model, model_config
from flux_jax.tokens.plan import FluxPlan
from flux_jax.tokens.token_batch import patchify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(synthetic.CLASS_NAMES)
EVAL = dict(frames=4, resolution=56, num_clips=1, num_crops=1)  # 4 x 4 x 4 = 64 tokens


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict')
  model = make_model(dict(variant='tiny', num_classes=len(NAMES), embed_dim=32,
                          clip_embed_dim=32))  # head budgets (48, 32, 16)
  params = init_params(model, jax.random.key(0))
  save_params(root / 'named', params, model_config(model),
              metadata=dict(class_names=NAMES, eval=EVAL, step=1))
  save_params(root / 'bare', params, model_config(model))
  frames, _ = synthetic.make_clip(3)
  (root / 'clip.mp4').write_bytes(decode.encode_mp4(frames[:12]))
  (root / 'short.mp4').write_bytes(decode.encode_mp4(frames[:3]))
  (root / 'noise.mp4').write_bytes(np.random.default_rng(0).bytes(4096))
  return types.SimpleNamespace(model=model, params=params, root=root,
                               named=root / 'named', bare=root / 'bare',
                               video=root / 'clip.mp4')


def _by_hand(f, frames, resolution, budget, clips=1, crops=1):
  """Class probabilities of the eval views (SPEC C.7), computed without predict."""
  data = f.video.read_bytes()
  length = decode.probe(data, 'clip').num_frames
  views = []
  for clip in range(clips):
    chosen = decode.decode_frames(
        data, decode.eval_frame_indices(length, frames, clip, clips), 'clip')
    views += transforms.spatial_crops(chosen, resolution, crops)
  tokens = patchify(np.stack(views), patch_size=14)  # [V, N, P]
  head = f.model.nearest_head(budget, tokens.n_max)
  logits, _ = jax.jit(f.model.apply, static_argnames=('budget', 'head'))(
      {'params': f.params}, tokens, budget=budget, head=head)
  return np.mean(jax.nn.softmax(logits), axis=0)  # [C]


def _as_probs(top):
  """[(label, p)] of every class -> p in class order."""
  named = dict(top)
  return np.array([named[n] for n in NAMES])


def test_predict_returns_sorted_probabilities(files):
  top = flux_jax.predict(files.video, files.named, budget=32, top_k=3)
  labels, probs = zip(*top)
  assert len(set(labels)) == 3 and set(labels) <= set(NAMES)
  assert list(probs) == sorted(probs, reverse=True)
  assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
  every = flux_jax.predict(files.video, files.named, budget=32, top_k=10)
  assert len(every) == len(NAMES) and every[:3] == top
  assert abs(sum(p for _, p in every) - 1) < 1e-5


@pytest.mark.parametrize('budget,clips,crops', [(32, 1, 1), (10_000, 2, 3)])
def test_predict_is_the_eval_view_through_the_model(files, budget, clips, crops):
  # 10_000 > the 64 raw tokens: every token is kept, head 0 (nearest to 64).
  got = flux_jax.predict(files.video, files.named, budget=budget, top_k=len(NAMES),
                         num_clips=clips, num_crops=crops)
  want = _by_hand(files, EVAL['frames'], EVAL['resolution'], budget, clips, crops)
  np.testing.assert_allclose(_as_probs(got), want, atol=1e-6)
  assert [label for label, _ in got] == [NAMES[i] for i in np.argsort(-want, kind='stable')]


def test_grid_choice_grid_then_to_table_then_checkpoint_then_default(files, tmp_path):
  table = tmp_path / 'to.json'
  table.write_text(json.dumps({'checkpoint': str(files.named), 'rows': [
      dict(budget=32, frames=4, resolution=56, best=False),
      dict(budget=32, frames=2, resolution=70, best=True),
      dict(budget=16, frames=4, resolution=42, best=True)]}))
  meta = read_config(files.named)['metadata']
  assert choose_grid(32, grid=(6, 28), to_table=table, metadata=meta) == FluxPlan(6, 28)
  assert choose_grid(32, to_table=table, metadata=meta) == FluxPlan(2, 70)
  assert choose_grid(24, to_table=table, metadata=meta) == FluxPlan(4, 56)  # no row
  assert choose_grid(32, metadata={}) == DEFAULT_GRID == FluxPlan(8, 224)

  via_table = flux_jax.predict(files.video, files.named, budget=32, top_k=6,
                               to_table=table)
  np.testing.assert_allclose(_as_probs(via_table), _by_hand(files, 2, 70, 32), atol=1e-6)
  default = flux_jax.predict(files.video, files.named, budget=32, top_k=6)
  assert np.abs(_as_probs(via_table) - _as_probs(default)).max() > 1e-4


def test_labels_without_class_names(files):
  top = flux_jax.predict(files.video, files.bare, budget=32, top_k=6, grid=(4, 56))
  assert sorted(label for label, _ in top) == [str(i) for i in range(len(NAMES))]
  named = flux_jax.predict(files.video, files.bare, budget=32, top_k=6, grid=(4, 56),
                           class_names=NAMES)
  assert named == [(NAMES[int(i)], p) for i, p in top]
  with pytest.raises(ValueError, match='2 class names for the 6 classes'):
    flux_jax.predict(files.video, files.bare, budget=32, class_names=NAMES[:2])


@pytest.mark.parametrize('video,kwargs,message', [
    ('noise.mp4', {}, r'noise\.mp4: not a readable video'),
    ('missing.mp4', {}, r'missing\.mp4: cannot read the file'),
    ('short.mp4', {}, r'short\.mp4: 3 decodable frames, fewer than the 4'),
    ('clip.mp4', dict(budget=0), 'budget=0'),
    ('clip.mp4', dict(budget=2.5), 'budget=2.5'),
    ('clip.mp4', dict(grid=(4, 50)), 'a resolution a multiple of the patch size'),
    ('clip.mp4', dict(top_k=0), 'top_k=0'),
])
def test_errors_name_the_file_or_value(files, video, kwargs, message):
  kwargs = dict(dict(budget=32), **kwargs)
  with pytest.raises(ValueError, match=message):
    flux_jax.predict(files.root / video, files.named, **kwargs)


def test_command_line(files):
  run = subprocess.run(
      [sys.executable, '-m', 'flux_jax.cli.predict', str(files.video), '--checkpoint',
       str(files.named), '--budget', '32', '--top_k', '2'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  want = flux_jax.predict(files.video, files.named, budget=32, top_k=2)
  assert run.stdout.splitlines() == [f'{p:.4f}  {label}' for label, p in want]
