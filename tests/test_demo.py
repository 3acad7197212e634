"""`make demo`'s program end to end on the tiny dataset: build, train, Token Optimization."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a Flux-Multi compile and a dozen evaluation programs; make test-slow
def test_demo_trains_then_prints_and_saves_the_token_optimization_table(tmp_path):
  workdir = tmp_path / 'demo'
  done = subprocess.run(
      [sys.executable, '-m', 'flux_jax.cli.demo', f'--workdir={workdir}', '--size=tiny',
       '--steps=2', '--frames=4', '--resolutions=56'],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'trained 2 Flux-Multi steps' in done.stdout
  assert 'TO: evaluated 8 x 56^2 (128 raw tokens) at 16 tokens' in done.stdout  # progress
  with open(workdir / 'to' / 'to.json') as f:
    rows = json.load(f)['rows']
  # Budgets 64/32/16 (the model's heads). --frames 4 and --resolutions 56 gain the eval
  # grid's 8 x 56^2: grids 4x56^2 (64 raw), 8x56^2 (128), after each budget's plain grid.
  grids = {b: [(r['frames'], r['resolution']) for r in rows if r['budget'] == b]
           for b in (64, 32, 16)}
  assert grids == {64: [(4, 56), (8, 56)],  # plain 4x56^2 is also the first candidate
                   32: [(2, 56), (4, 56), (8, 56)],
                   16: [(1, 56), (4, 56), (8, 56)]}
  assert all(r['videos'] == 12 for r in rows)
  # The best grids were picked on the 10% of train held out of training (unbiased TO).
  assert all(r['select_top1'] is not None for r in rows)
  assert 'the best grid was picked on train[90%:]' in done.stdout
  assert [sum(r['best'] for r in rows if r['budget'] == b) for b in grids] == [1, 1, 1]
  with open(workdir / 'summary.md') as f:
    summary = f.read().splitlines()
  assert summary[0] == '| budget | plain grid (no TO) | fixed grid | best grid (TO) |'
  assert [line.split(' | ')[0] for line in summary[2:]] == ['| 64', '| 32', '| 16']
  assert '| 32 | 2 x 56^2, 32 -> 32: ' in summary[3]
  assert '8 x 56^2, 128 -> 32: ' in summary[3]  # the fixed grid reduced to the budget
  assert ' ± ' in summary[3]  # top-1 with its standard error
  assert '\n'.join(summary) in done.stdout
  assert sorted(os.listdir(workdir / 'to')) == ['to.csv', 'to.json', 'to.png']
