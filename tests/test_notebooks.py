"""The notebooks run top to bottom with tiny parameters, as Colab runs them (nbclient).

The tiny values go in a cell inserted right after the cell tagged 'parameters'
(papermill's convention), so the notebooks themselves stay as committed.
"""

import ast
import os

import nbformat
from nbclient import NotebookClient
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')


def _parameters_cell(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', ())]
  assert len(tagged) == 1, f'want exactly one cell tagged parameters, found {len(tagged)}'
  return tagged[0]


def _run(name: str, monkeypatch, **params):
  """Executes notebooks/NAME with `params` injected; returns the executed notebook."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  index = _parameters_cell(nb)
  defined = {t.id for node in ast.parse(nb.cells[index].source).body
             for t in getattr(node, 'targets', ())}
  unknown = sorted(set(params) - defined)
  assert not unknown, f'{name}: no parameters {unknown} in its parameters cell'
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
      '\n'.join(f'{k} = {v!r}' for k, v in params.items()),
      metadata={'tags': ['injected-parameters']}))
  # One CPU device, as on Colab: not the 8 fake devices that conftest gives this process.
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  return nb


def _text(nb) -> str:
  return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.outputs if o.output_type == 'stream')


def _images(nb) -> int:
  return sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
             for o in c.outputs)


@pytest.mark.parametrize('name', ['quickstart.ipynb', 'token_selection.ipynb'])
def test_committed_without_outputs(name):
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{name}: clear the outputs before committing')
  _parameters_cell(nb)


def test_quickstart(tmp_path, monkeypatch):
  workdir = tmp_path / 'quickstart'
  nb = _run('quickstart.ipynb', monkeypatch, SIZE='tiny', STEPS=2, BATCH=4,
            WORKDIR=str(workdir), BUDGETS=(64,), FRAMES=(4,), RESOLUTIONS=(56,))
  text = _text(nb)
  assert (workdir / 'train' / 'params').is_dir()
  assert 'trained 2 steps' in text
  for name in ('to.csv', 'to.json', 'to.png'):
    assert (workdir / 'to' / name).is_file(), name
  assert '| 64 | 4 x 56^2 | 64 -> 64 |' in '\n'.join(
      o['data'].get('text/markdown', '') for c in nb.cells if c.cell_type == 'code'
      for o in c.outputs if 'data' in o)
  assert (workdir / 'clip.mp4').is_file()
  predicted = [line for line in text.splitlines() if line.startswith('budget 64: ')]
  assert len(predicted) == 1 and predicted[0].count(',') == 2, text  # top 3
  assert _images(nb) == 2  # the classes, the TO plot


def test_token_selection(tmp_path, monkeypatch):
  nb = _run('token_selection.ipynb', monkeypatch, FRAMES=4, RESOLUTION=56,
            FRACTIONS=(1, 4), OUT_DIR=str(tmp_path))
  text = _text(nb)
  assert '64 raw tokens = 4 x 4 x 4' in text
  for selector in ('group_dynamic', 'random'):
    assert (tmp_path / f'{selector}.png').is_file()
    assert f'| {selector} | 16 | 0.25 |' in text  # K = 64 // 4 kept
    assert f'| {selector} | 64 | 1.00 | 1.00 |' in text  # the full budget keeps all
  assert _images(nb) == 2
