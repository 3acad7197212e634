"""Token Optimization on tiny synthetic_motion: which grids run, the best per budget, files."""

import csv
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from flux_jax.configs import debug
from flux_jax import checkpoint
from flux_jax.data.builders import synthetic_motion
from flux_jax.eval import token_optimization as to_lib
from flux_jax.eval.flops import gflops
from flux_jax.model.fluxvit import init_params, make_model, model_config
from flux_jax.xla import CompileCounter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Raw tokens at patch 14: 2x28^2 = 8, 4x28^2 = 16, 2x56^2 = 32, 4x56^2 = 64.
FRAMES, RESOLUTIONS = (2, 4), (28, 56)
PLAIN_RESOLUTION = 28  # 4 tokens per frame: plain grids 16 x 28^2 (64), 4 x 28^2 (16)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny trained-run-like params checkpoint with its config, and a converted-like one
  without."""
  root = tmp_path_factory.mktemp('to')
  data_dir = str(root / 'tfds')
  names = synthetic_motion.build('tiny', data_dir).info.features['label'].names
  config = debug.get_config()
  config.data.data_dir = data_dir
  model = make_model(config.model)
  params = init_params(model, jax.random.key(0))
  ckpt, converted = str(root / 'params'), str(root / 'converted')
  checkpoint.save_params(ckpt, params, model_config(model), metadata=dict(
      step=4, class_names=list(names),
      eval=dict(frames=4, resolution=PLAIN_RESOLUTION, num_clips=1, num_crops=1),
      config=json.loads(config.to_json_best_effort())))
  checkpoint.save_params(converted, params, model_config(model))
  return dict(root=root, data_dir=data_dir, ckpt=ckpt, converted=converted, model=model)


def test_candidate_and_plain_grids():
  grids = to_lib.candidate_grids(16, frames=FRAMES, resolutions=RESOLUTIONS, patch_size=14)
  assert grids == [(4, 28), (2, 56), (4, 56)]  # fewest raw tokens first; 2x28^2 is 8
  assert to_lib.candidate_grids(65, frames=FRAMES, resolutions=RESOLUTIONS,
                                patch_size=14) == []
  assert to_lib.candidate_grids(16, frames=(4,), resolutions=(28,), patch_size=14,
                                tubelet_size=2) == []  # 2 tubelets x 4 = 8 < 16
  # SPEC E.1's plain grids: 2/4/8/12 frames at 224^2.
  assert [to_lib.plain_grid(b, resolution=224, patch_size=14)
          for b in (512, 1024, 2048, 3072)] == [(2, 224), (4, 224), (8, 224), (12, 224)]
  assert to_lib.plain_grid(700, resolution=224, patch_size=14) == (2, 224)  # whole frames
  with pytest.raises(ValueError, match='plain_resolution 224'):
    to_lib.plain_grid(200, resolution=224, patch_size=14)


def _row(budget, raw, top1, gflops_):
  return dict(budget=budget, raw_tokens=raw, top1=top1, gflops=gflops_)


def test_best_is_top1_among_fitting_grids_ties_to_fewer_gflops():
  rows = to_lib.mark_best([
      _row(20, 16, 0.9, 1.0),  # plain grid below the budget: never best
      _row(20, 20, 0.5, 2.0), _row(20, 32, 0.7, 3.0), _row(20, 64, 0.7, 2.5),
      _row(10, 16, float('nan'), 1.0), _row(10, 32, 0.1, 2.0)])
  assert [r['best'] for r in rows] == [False, False, False, True, False, True]
  with pytest.raises(ValueError, match='budget 30'):
    to_lib.mark_best([_row(30, 16, 0.5, 1.0)])


def test_one_standard_error_rule_keeps_the_reference_unless_beaten_by_more():
  """With margin_se the reference grid stays best unless the top row beats it by more than
  margin_se binomial SEs of the top row's top-1 (here sqrt(.8 * .2 / 100) = 4 points)."""
  def rows(ref_top1, other_top1, ref_raw=64):
    return [dict(budget=32, frames=2, resolution=56, raw_tokens=32, top1=0.5, videos=100,
                 gflops=1.0),
            dict(budget=32, frames=4, resolution=56, raw_tokens=ref_raw, top1=ref_top1,
                 videos=100, gflops=2.0),
            dict(budget=32, frames=8, resolution=56, raw_tokens=128, top1=other_top1,
                 videos=100, gflops=4.0)]

  def best(rs, **kw):
    return [(r['frames'], r['resolution']) for r in to_lib.mark_best(rs, **kw) if r['best']]

  ref = dict(reference=(4, 56), margin_se=1.0)
  assert best(rows(0.77, 0.80)) == [(8, 56)]  # the plain argmax
  assert best(rows(0.77, 0.80), **ref) == [(4, 56)]  # 3 points < 1 SE: noise
  assert best(rows(0.75, 0.80), **ref) == [(8, 56)]  # 5 points > 1 SE
  assert best(rows(0.75, 0.80), reference=(4, 56), margin_se=1.5) == [(4, 56)]  # < 6
  assert best(rows(0.77, 0.80, ref_raw=16), **ref) == [(8, 56)]  # reference does not fit
  assert best(rows(float('nan'), 0.80), **ref) == [(8, 56)]  # reference has no top-1
  # No reference given: the budget's first row (search's plain grid) is the reference.
  assert best(rows(0.52, 0.53), margin_se=1.0) == [(2, 56)]  # 0.5 against 0.53
  assert best(rows(0.77, 0.80), margin_se=1.0) == [(8, 56)]
  # The SE of another key is counted over its own videos: 10 videos, SE 12.6 points.
  sel = rows(0.72, 0.80)
  assert best(sel, **ref) == [(8, 56)]  # 8 points > 4 on 100 videos
  for r in sel:
    r.update(select_top1=r['top1'], select_videos=10)
  assert best(sel, key='select_top1', videos_key='select_videos', **ref) == [(4, 56)]


def test_summary_names_the_plain_fixed_and_best_grid_of_each_budget():
  def row(budget, t, r, raw, top1, best=False):
    return dict(budget=budget, frames=t, resolution=r, raw_tokens=raw,
                tokens=min(budget, raw), top1=top1, gflops=raw / 100, best=best)
  rows = [row(32, 2, 56, 32, 0.5), row(32, 4, 56, 64, 0.6), row(32, 8, 56, 128, 0.8, True),
          row(16, 1, 56, 16, 0.2), row(16, 4, 56, 64, 0.7, True), row(16, 8, 56, 128, 0.6)]
  summary = to_lib.summarize(rows, fixed=(4, 56))
  assert [s['budget'] for s in summary] == [32, 16]
  assert [(s['plain'], s['fixed'], s['best']) for s in summary] == [
      (rows[0], rows[1], rows[2]), (rows[3], rows[4], rows[4])]
  assert 'fixed' not in to_lib.summarize(rows)[0]
  with pytest.raises(ValueError, match='budget 32: the fixed grid 1 x 56'):
    to_lib.summarize(rows, fixed=(1, 56))
  lines = to_lib.summary_table(summary).splitlines()
  assert lines[0] == '| budget | plain grid (no TO) | fixed grid | best grid (TO) |'
  assert lines[2] == ('| 32 | 2 x 56^2, 32 -> 32: 50.0% (0.32) | 4 x 56^2, 64 -> 32: 60.0% '
                      '(0.64) | 8 x 56^2, 128 -> 32: 80.0% (1.28) |')
  assert len(lines) == 4
  rows[1]['videos'] = 100  # with the evaluation's size, its binomial standard error
  assert '4 x 56^2, 64 -> 32: 60.0 ± 4.9% (0.64)' in to_lib.summary_table(
      to_lib.summarize(rows, fixed=(4, 56)))


def test_search_evaluates_only_fitting_grids_and_writes_results(run, monkeypatch):
  passes, accuracy_by_budget = [], to_lib.accuracy_by_budget

  def counting(*args, **kw):
    passes.append(((kw['frames'], kw['resolution']), tuple(kw['budgets'])))
    return accuracy_by_budget(*args, **kw)

  monkeypatch.setattr(to_lib, 'accuracy_by_budget', counting)
  out = str(run['root'] / 'out')
  with CompileCounter() as compiles:
    rows, paths = to_lib.evaluate_checkpoint(run['ckpt'], out, budgets=[64, 16],
                                             frames=FRAMES, resolutions=RESOLUTIONS)
  # Budget 64: plain 16x28^2 (not a candidate), then 4x56^2. Budget 16: plain 4x28^2 is a
  # candidate too, then 2x56^2 (32), 4x56^2 (64). 2x28^2 (8 tokens) never fits. Each grid
  # is decoded in one pass, which serves every budget it fits.
  assert passes == [((16, 28), (64,)), ((4, 56), (64, 16)), ((4, 28), (16,)),
                    ((2, 56), (16,))]
  evaluated = [(64, 16, 28), (64, 4, 56), (16, 4, 28), (16, 2, 56), (16, 4, 56)]
  # 16x28^2 and 4x56^2 both keep all 64 tokens: one program serves both.
  assert compiles.count <= 4
  model = run['model']
  for r, (budget, t, res) in zip(rows, evaluated):
    assert list(r) == list(to_lib.FIELDS)
    raw = t * (res // 14) ** 2
    assert (r['budget'], r['frames'], r['resolution'], r['raw_tokens']) == (budget, t, res, raw)
    assert r['tokens'] == min(budget, raw) and r['to'] == (raw > budget)
    assert r['gflops'] == gflops(model, r['tokens'], raw)
    assert r['head'] == model.nearest_head(budget, raw)
    assert r['videos'] == 12 and 0 <= r['top1'] <= r['top5'] <= 1
  for budget in (64, 16):
    mine = [r for r in rows if r['budget'] == budget]
    (best,) = [r for r in mine if r['best']]
    assert best['top1'] == max(r['top1'] for r in mine)
  # Same budget, more raw tokens: only the patch embedding costs more.
  assert rows[0]['gflops'] == rows[1]['gflops'] and rows[2]['gflops'] < rows[4]['gflops']
  assert [r['to'] for r in rows] == [False, False, False, True, True]

  assert sorted(os.listdir(out)) == ['to.csv', 'to.json', 'to.png']
  with open(paths['json']) as f:
    saved = json.load(f)
  assert set(saved) == {'checkpoint', 'rows'}
  assert saved['checkpoint'] == os.path.abspath(run['ckpt']) and saved['rows'] == rows
  with open(paths['csv']) as f:
    table = list(csv.DictReader(f))
  assert [int(r['raw_tokens']) for r in table] == [r['raw_tokens'] for r in rows]
  assert [r['best'] for r in table] == [str(r['best']) for r in rows]
  with open(paths['png'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  text = to_lib.markdown_table(rows)
  assert text.count('**best**') == 2 and text.count('\n') == len(rows) + 1
  # The plot can draw a fixed grid reduced to every budget, when that grid was evaluated.
  fixed = (rows[-1]['frames'], rows[-1]['resolution'])
  to_lib.save_plot(rows, os.path.join(out, 'fixed.png'), fixed=fixed)
  assert os.path.getsize(os.path.join(out, 'fixed.png')) > 0
  with pytest.raises(ValueError, match='the fixed grid 3 x 14'):
    to_lib.save_plot(rows, os.path.join(out, 'bad.png'), fixed=(3, 14))


def test_a_run_is_named_by_its_directory():
  assert to_lib.run_name('/runs/demo/train/params') == 'train'
  assert to_lib.run_name('/runs/demo/train/params/') == 'train'
  assert to_lib.run_name('/ckpt/fluxvit_s_k400') == 'fluxvit_s_k400'


def test_bad_arguments_name_what_is_wrong(run, tmp_path):
  out = str(tmp_path / 'out')
  grid = dict(frames=FRAMES, resolutions=RESOLUTIONS)
  with pytest.raises(ValueError, match='missing_dir: no such checkpoint'):
    to_lib.evaluate_checkpoint(str(tmp_path / 'missing_dir'), out, **grid)
  with pytest.raises(ValueError, match='budgets must be a non-empty list'):
    to_lib.evaluate_checkpoint(run['ckpt'], out, budgets=[], **grid)
  with pytest.raises(ValueError, match=r'no grid .* fits budget 65 \(the largest has 64'):
    to_lib.evaluate_checkpoint(run['ckpt'], out, budgets=[16, 65], **grid)
  with pytest.raises(ValueError, match='resolution 30 is not a multiple'):
    to_lib.evaluate_checkpoint(run['ckpt'], out, budgets=[16], frames=FRAMES,
                               resolutions=[28, 30])
  with pytest.raises(ValueError, match='converted.*no training config'):
    to_lib.evaluate_checkpoint(run['converted'], out, **grid)
  assert not os.path.exists(out)


def test_cli_with_config_for_a_converted_checkpoint(run, tmp_path):
  out = str(tmp_path / 'cli')
  args = [sys.executable, '-m', 'flux_jax.cli.evaluate', f'--checkpoint={run["converted"]}',
          '--config=configs/debug.py', f'--config.data.data_dir={run["data_dir"]}',
          '--budgets=16', '--frames=4', '--resolutions=28,56',
          f'--plain_resolution={PLAIN_RESOLUTION}', '--num_crops=2', '--batch_size=8',
          f'--out={out}']
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '| 16 | 4 x 28^2 | 16 -> 16 |' in done.stdout
  assert '| 16 | 4 x 56^2 | 64 -> 16 |' in done.stdout
  assert 'to.json' in done.stdout
  with open(os.path.join(out, 'to.json')) as f:
    rows = json.load(f)['rows']
  assert [(r['frames'], r['resolution']) for r in rows] == [(4, 28), (4, 56)]
  assert sum(r['best'] for r in rows) == 1 and all(r['videos'] == 12 for r in rows)
  assert not math.isnan(rows[0]['top1'])

  bad = subprocess.run(args[:-1] + ['--budgets=16,x', f'--out={out}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and '--budgets=16,x: not a list of integers' in bad.stderr


def test_a_held_out_split_picks_the_best_grid_and_validation_reports_it(run, tmp_path):
  """Unbiased TO: a run trained on train[:18] picks each budget's grid on train[18:] (6
  clips) and reports top-1 on validation; a split shared with training or evaluation is
  refused."""
  meta = checkpoint.read_config(run['ckpt'])['metadata']
  held_out = str(tmp_path / 'held_out')
  meta['config']['data']['train_split'] = 'train[:18]'
  _, params = checkpoint.load_params(run['ckpt'])
  checkpoint.save_params(held_out, params, model_config(run['model']), metadata=meta)
  grid = dict(budgets=[64, 16], frames=FRAMES, resolutions=RESOLUTIONS)
  plain, _ = to_lib.evaluate_checkpoint(held_out, str(tmp_path / 'plain'), **grid)
  rows, paths = to_lib.evaluate_checkpoint(held_out, str(tmp_path / 'picked'),
                                           select_split='train[18:]', **grid)
  assert [r['top1'] for r in rows] == [r['top1'] for r in plain]  # reported on validation
  assert all(r['select_top1'] is None for r in plain)
  for r in rows:
    assert r['select_top1'] * 6 == pytest.approx(round(r['select_top1'] * 6))  # 6 clips
  assert all(r['select_videos'] == 6 for r in rows)
  argmax, _ = to_lib.evaluate_checkpoint(held_out, str(tmp_path / 'argmax'),
                                         select_split='train[18:]', select_margin_se=0,
                                         **grid)
  for budget in (64, 16):
    fitting = [r for r in rows if r['budget'] == budget and r['raw_tokens'] >= budget]
    ref = next(r for r in rows if r['budget'] == budget)  # the plain grid: the reference
    top = max(r['select_top1'] for r in fitting)
    (best,) = [r for r in rows if r['budget'] == budget and r['best']]
    (best_argmax,) = [r for r in argmax if r['budget'] == budget and r['best']]
    assert best_argmax['select_top1'] == top
    margin = to_lib.standard_error(top, 6)
    assert best is (ref if top - ref['select_top1'] <= margin else
                    next(r for r in rows if r['budget'] == budget
                         and r['frames'] == best_argmax['frames']
                         and r['resolution'] == best_argmax['resolution']))
  with open(paths['json']) as f:
    assert [r['best'] for r in json.load(f)['rows']] == [r['best'] for r in rows]
  assert to_lib.markdown_table(rows).splitlines()[0].endswith(
      '| selection top-1 | unreadable | best |')
  assert 'selection' not in to_lib.markdown_table(plain)

  out = str(tmp_path / 'refused')
  with pytest.raises(ValueError, match=r"'train\[16:\]' shares 2 examples with the training "
                                       r"split 'train\[:18\]'"):
    to_lib.evaluate_checkpoint(held_out, out, select_split='train[16:]', **grid)
  with pytest.raises(ValueError, match=r"shares 3 examples with the evaluation split "
                                       r"'validation'"):
    to_lib.evaluate_checkpoint(held_out, out, select_split='validation[:3]', **grid)
  with pytest.raises(ValueError, match="shares 6 examples with the training split 'train'"):
    to_lib.evaluate_checkpoint(run['ckpt'], out, select_split='train[18:]', **grid)
  with pytest.raises(ValueError, match='select_margin_se must be >= 0, got -1'):
    to_lib.evaluate_checkpoint(held_out, out, select_split='train[18:]',
                               select_margin_se=-1, **grid)
  assert not os.path.exists(out)
