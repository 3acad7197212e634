"""jax.export artifacts per budget: serialized, loaded back, equal to the model's logits."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from flux_jax.checkpoint import save_params
from flux_jax.eval import export
from flux_jax.model.fluxvit import abstract_params, make_model, model_config
from flux_jax.tokens.token_batch import patchify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_MAX = 64  # 4 x 56^2 = 64 tokens, 2 x 70^2 = 50
NAMES = ['a', 'b', 'c']


@pytest.fixture(scope='module')
def tiny():
  model = make_model(dict(variant='tiny', num_classes=3, embed_dim=32, clip_embed_dim=32))
  # Random values everywhere (no compile of init): zeros would hide a wrong leaf.
  rng = np.random.default_rng(0)
  return model, jax.tree.map(
      lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
      abstract_params(model))


def _tokens(seed, t, side, batch):
  video = np.random.default_rng(seed).integers(0, 256, (batch, t, side, side, 3), np.uint8)
  return patchify(video, patch_size=14, n_max=N_MAX)


def _logits(model, params, tokens, budget, head):
  apply = jax.jit(model.apply, static_argnames=('budget', 'head'))
  return np.asarray(apply({'params': params}, tokens, budget=budget, head=head)[0])


def test_saved_artifact_reproduces_logits_on_two_grids(tiny, tmp_path):
  model, params = tiny
  artifact = export.export_budget(model, params, budget=24, n_max=N_MAX, class_names=NAMES)
  assert artifact.contract['head'] == model.nearest_head(24, N_MAX) == 1
  export.save(artifact, tmp_path / 'b24')
  loaded = export.load(tmp_path / 'b24')
  a, b = _tokens(0, 4, 56, 2), _tokens(1, 2, 70, 3)  # two grids, two batch sizes
  both = jax.tree.map(lambda x, y: np.concatenate([x, y]), a, b)
  want = _logits(model, params, both, budget=24, head=1)  # [5, 3], rows independent
  assert np.isfinite(want).all() and np.ptp(want) > 1e-2
  mixed = jax.tree.map(lambda x: x[np.array([0, 2])], both)  # one row of each grid
  for tokens, rows in ((a, [0, 1]), (b, [2, 3, 4]), (mixed, [0, 2])):
    np.testing.assert_allclose(np.asarray(loaded(tokens)), want[rows], atol=1e-5, rtol=0)
  arrays = {k: getattr(b, k) for k in export.INPUTS}
  np.testing.assert_array_equal(np.asarray(loaded(arrays)), np.asarray(loaded(b)))
  with pytest.raises(ValueError, match=r"'patches': expected uint8 \['b', 64, 588\]"):
    loaded(patchify(np.zeros((1, 2, 56, 56, 3), np.uint8), n_max=32))


def test_contract_json_describes_inputs(tiny, tmp_path):
  model, params = tiny
  export.save(export.export_budget(model, params, budget=100, n_max=N_MAX, head=2),
              tmp_path)
  contract = json.loads((tmp_path / export.CONTRACT).read_text())
  assert [(i['name'], i['dtype'], i['shape']) for i in contract['inputs']] == [
      ('patches', 'uint8', ['b', 64, 588]), ('coords', 'int32', ['b', 64, 3]),
      ('grid', 'int32', ['b', 3]), ('valid', 'bool', ['b', 64])]
  assert contract['output'] == dict(name='logits', dtype='float32', shape=['b', 3])
  assert {k: contract[k] for k in ('n_max', 'patch_size', 'tubelet_size', 'budget',
                                   'tokens_kept', 'head', 'class_names', 'format')} == dict(
      n_max=64, patch_size=14, tubelet_size=1, budget=100, tokens_kept=64, head=2,
      class_names=None, format=export.FORMAT)
  tokens = _tokens(2, 4, 56, 1)  # budget 100 >= 64: every token, the head asked for
  np.testing.assert_allclose(np.asarray(export.load(tmp_path)(tokens)),
                             _logits(model, params, tokens, budget=None, head=2), atol=1e-5)
  with pytest.raises(ValueError, match='exists; pass overwrite=True'):
    export.save(export.load(tmp_path), tmp_path)


def test_bad_requests_are_refused(tiny, tmp_path):
  model, params = tiny
  with pytest.raises(ValueError, match='budget=0'):
    export.export_budget(model, params, budget=0, n_max=N_MAX)
  with pytest.raises(ValueError, match='head=3 out of range'):
    export.export_budget(model, params, budget=8, n_max=N_MAX, head=3)
  with pytest.raises(ValueError, match='not a flux_jax export artifact'):
    export.load(tmp_path)


def test_command_line_writes_one_artifact_per_budget(tiny, tmp_path):
  model, params = tiny
  save_params(tmp_path / 'ckpt', params, model_config(model),
              metadata=dict(class_names=NAMES))
  run = subprocess.run(
      [sys.executable, '-m', 'flux_jax.cli.export', '--checkpoint', str(tmp_path / 'ckpt'),
       '--budget', '40,16', '--n_max', str(N_MAX), '--out', str(tmp_path / 'out')],
      cwd=REPO, capture_output=True, text=True, timeout=180)
  assert run.returncode == 0, run.stderr
  assert sorted(os.listdir(tmp_path / 'out')) == ['budget_16', 'budget_40']
  for budget, head in ((40, 0), (16, 2)):
    loaded = export.load(tmp_path / 'out' / f'budget_{budget}')
    assert (loaded.contract['budget'], loaded.contract['head']) == (budget, head)
    assert loaded.contract['class_names'] == NAMES
  tokens = _tokens(3, 2, 70, 2)  # the last artifact, budget 16 on head 2
  np.testing.assert_allclose(np.asarray(loaded(tokens)),
                             _logits(model, params, tokens, 16, 2), atol=1e-5)
