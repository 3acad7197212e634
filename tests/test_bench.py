"""Benchmarks run end to end at tiny shapes; their tables are asserted, never their timings."""

import pytest

from flux_jax.configs import synthetic_demo
from flux_jax.configs import umt_fluxvit_s_from_b
from flux_jax.bench import distill
from flux_jax.bench import forward
from flux_jax.bench import step


@pytest.mark.slow  # a train-step compile per budget set; make test-slow
def test_step_bench_tiny_gives_one_sane_row_per_budget_set():
  rows = step.run('tiny', batch=2, repeats=1, budget_sets=((32, 16), (16,)))
  assert [r['recipe'] for r in rows] == ['Flux-Multi', 'Flux-Single']
  assert [r['budgets'] for r in rows] == ['32/16', '16']
  assert [r['heads'] for r in rows] == ['0/1', '2']  # 16 tokens: the tiny model's last head
  assert [r['kept'] for r in rows] == [48, 16]
  for r in rows:
    assert (r['raw'], r['n_max']) == (64, 96)  # 4x56^2 at p = 14, padded
    assert r['compile_s'] > 0 and r['ms'] > 0 and r['temp_mib'] > 0
    assert r['tokens_per_s'] == pytest.approx(2 * r['kept'] / (r['ms'] / 1e3))
  lines = step.format_table(rows, 'title').splitlines()
  assert lines[0] == 'title' and len(lines) == 3 + len(rows)
  assert lines[1] == ('| recipe | budgets | heads | raw / N_max | compile s | step ms | '
                      'kept tokens/s | temp MiB | peak MiB | process peak RSS MiB |')
  assert all(line.count('|') == 11 for line in lines[1:])
  for r in rows:
    assert 0 < r['peak_mib'] < r['rss_mib']  # the process holds more than one program
  assert lines[3].startswith('| Flux-Multi | 32/16 | 0/1 | 64 / 96 | ')


@pytest.mark.slow  # two more compiles; make test-slow
def test_step_and_forward_benches_run_scanned_blocks():
  """--scan_layers: the recipes' layout (model.scan_layers) in bench step and forward."""
  rows = step.run('tiny', batch=2, repeats=1, budget_sets=((32, 16),), scan_layers=True)
  assert [(r['recipe'], r['kept'], r['raw'], r['n_max']) for r in rows] == [
      ('Flux-Multi', 48, 64, 96)]
  assert rows[0]['ms'] > 0 and rows[0]['temp_mib'] > 0
  rows = forward.run('tiny', batch=1, repeats=1, grids=((4, 56),), budgets=(None, 16),
                     scan_layers=True)
  assert [(r['raw'], r['budget']) for r in rows] == [(64, 64), (64, 16)]
  assert all(r['front_share'] > 0 and r['compile_s'] > 0 for r in rows)


def test_step_bench_refuses_an_unknown_variant():
  with pytest.raises(ValueError, match="'large'"):
    step.setup('large')


def test_forward_table_format_is_unchanged():
  row = dict(grid='8x224^2', raw=2048, budget=1024, compile_s=3.14, ms=123.4,
             tokens_per_s=16600.2, front_share=0.0712)
  assert forward.format_table([row], 'T') == (
      'T\n| grid | raw tokens | kept K | compile s | forward ms | tokens/s | '
      'embed+select+GLPE share |\n|---|---|---|---|---|---|---|\n'
      '| 8x224^2 | 2048 | 1024 | 3.1 | 123 | 16600 | 7.1% |')


@pytest.mark.slow  # three distillation programs compile; make test-slow
def test_distill_bench_times_the_step_with_and_without_the_teacher():
  config = umt_fluxvit_s_from_b.get_config('runlocal=true')  # tiny teacher and student
  rows, teacher = distill.run(config, batch=2, repeats=1, frames=4, resolution=56)
  assert teacher == 'D64 x 2 (distill.teacher_model)'  # the tiny variant's size
  assert [r['program'] for r in rows] == [
      'teacher targets', 'student update (targets given)', 'distill step (with teacher)']
  for r in rows:
    assert (r['raw'], r['n_max'], r['t_tokens'], r['s_tokens']) == (64, 96, 48, '48/32/16')
    assert r['compile_s'] > 0 and r['ms'] > 0
    assert 0 < r['temp_mib'] < r['peak_mib']
  # Both hold the clip and the teacher's params; the step holds the student's Adam state
  # (three copies of its params) where the targets program holds its params once.
  assert rows[2]['args_mib'] > rows[0]['args_mib']
  lines = distill.format_table(rows, 'T').splitlines()
  assert lines[1] == ('| program | raw / N_max | teacher / student tokens | compile s | ms | '
                      'args MiB | temp MiB | peak MiB |')
  assert lines[3].startswith('| teacher targets | 64 / 96 | 48 / 48/32/16 | ')


def test_distill_bench_refuses_a_config_that_does_not_distil():
  with pytest.raises(ValueError, match="train.mode='distill'.*'multi'"):
    distill.run(synthetic_demo.get_config())
