"""Sweeps: exact commands, overrides checked before anything runs, stable workdirs."""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from flux_jax.cli import sweep

ROOT = pathlib.Path(__file__).parents[1]
DEMO = 'configs/synthetic_demo.py:steps=7'
# Stands in for the interpreter under --launch=local: makes the point's workdir and
# fails when that workdir's name holds 'fail'.
FAKE_PYTHON = shlex.join([sys.executable, '-c', (
    'import pathlib, sys; w = sys.argv[sys.argv.index("--workdir") + 1]; '
    'pathlib.Path(w).mkdir(parents=True); sys.exit("fail" in w)')])


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
  monkeypatch.chdir(ROOT)  # config paths in sweep files are relative to the repo root


def write_sweep(tmp_path, points, config=DEMO):
  path = tmp_path / 'sweep.py'
  path.write_text('from flux_jax.cli import sweep\n\n\ndef get_sweep(arg=None):\n'
                  f'  return sweep.Sweep({config!r}, {points!r})\n')
  return str(path)


def run_main(capsys, *argv):
  sweep.main([str(a) for a in argv])
  return capsys.readouterr().out.splitlines()


def test_product_varies_the_first_key_slowest():
  assert sweep.product({'a': [1, 2], 'b': ['x', 'y']}) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]


def test_commands_are_printed_exactly_and_quoted_for_the_shell(tmp_path, capsys):
  path = write_sweep(tmp_path, [
      {'optim.lr': 0.003, 'train.budgets': (256, 128), 'mixup.enabled': True},
      {'data.data_dir': "/data/my tfds's", 'flux.frames': [4, 8, 2], 'train.steps': 3}])
  lines = run_main(capsys, path, '--workdir', '/runs/s')
  assert lines == [
      '.venv/bin/python -m flux_jax.cli.train --config configs/synthetic_demo.py:steps=7 '
      '--workdir /runs/s/0_lr=0.003,budgets=256-128,enabled=true --config.optim.lr=0.003 '
      "'--config.train.budgets=(256,128)' --config.mixup.enabled=true",
      '.venv/bin/python -m flux_jax.cli.train --config configs/synthetic_demo.py:steps=7 '
      '--workdir /runs/s/1_data_dir=data-my-tfds-s,frames=4-8-2,steps=3 '
      "'--config.data.data_dir=/data/my tfds'\"'\"'s' '--config.flux.frames=(4,8,2)' "
      '--config.train.steps=3']
  # The shell hands flux_jax.cli.train arguments that build exactly the intended config.
  argv = shlex.split(lines[1])
  config = sweep.parse_config(argv[argv.index('--config') + 1], argv[7:])
  assert config.data.data_dir == "/data/my tfds's" and config.flux.frames == (4, 8, 2)
  assert config.train.steps == 3 and config.optim.lr == 2e-3  # the base config's lr


def test_a_one_element_tuple_stays_a_tuple(tmp_path, capsys):
  lines = run_main(capsys, write_sweep(tmp_path, [{'train.budgets': (256,)}]), '--workdir', 'b')
  assert lines[0].endswith("'--config.train.budgets=(256,)'")
  argv = shlex.split(lines[0])
  assert sweep.parse_config(DEMO, argv[7:]).train.budgets == (256,)


@pytest.mark.parametrize('point, message', [
    ({'optim.lrr': 0.1}, r'point 1: --config\.optim\.lrr: no such key'),
    ({'optimizer.lr': 0.1}, r'point 1: --config\.optimizer\.lr: no such key'),
    ({'optim.lr': 'fast'}, r"point 1: --config\.optim\.lr: 'fast' \(str\) does not fit"),
    ({'train.mode': 3}, r'point 1: --config\.train\.mode: 3 \(int\) does not fit'),
    ({'train.steps': 2.5}, r'point 1: --config\.train\.steps: 2\.5 \(float\)'),
    ({'mixup.enabled': 1}, r'point 1: --config\.mixup\.enabled: 1 \(int\)'),
    ({'train.budgets': (256, 'x')}, r'point 1: --config\.train\.budgets'),
    ({'optim.clip_grad': 'big'}, r"point 1: --config\.optim\.clip_grad: 'big' \(str\)"),
    ({'eval.head': 1.5}, r'point 1: --config\.eval\.head: 1\.5 \(float\) does not fit'),
    ({'optim': 1}, r'point 1: --config\.optim: is a block'),
])
def test_bad_override_is_refused_before_any_point_runs(tmp_path, capsys, point, message):
  path = write_sweep(tmp_path, [{'optim.lr': 0.1}, point])
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([path, '--workdir', str(tmp_path / 'runs'), '--launch', 'local',
                '--prefix', FAKE_PYTHON])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert f'sweep file {path}' in err
  assert re.search(message, err), err
  assert not (tmp_path / 'runs').exists()  # point 0 did not run


def test_fields_that_default_to_none_are_typed_and_can_be_swept(tmp_path, capsys):
  # configs.common.optional: None in the base config, a float or int once overridden.
  base = sweep.parse_config(DEMO)
  assert base.optim.clip_grad is None and base.optim.layer_decay is None
  assert base.eval.head is None
  point = {'optim.clip_grad': 1, 'optim.layer_decay': 0.75, 'eval.head': 2}
  lines = run_main(capsys, write_sweep(tmp_path, [point]), '--workdir', 'b')
  parsed = sweep.parse_config(DEMO, shlex.split(lines[0])[7:])
  assert (parsed.optim.clip_grad, parsed.optim.layer_decay, parsed.eval.head) == (1.0, 0.75, 2)
  assert type(parsed.optim.clip_grad) is float and type(parsed.eval.head) is int


def test_an_untyped_none_field_is_refused_by_name(tmp_path, capsys):
  config = tmp_path / 'config.py'
  config.write_text('import ml_collections\n\n\ndef get_config():\n'
                    '  return ml_collections.ConfigDict(dict(clip=None, lr=0.1))\n')
  path = write_sweep(tmp_path, [{'clip': 1.0}], config=str(config))
  with pytest.raises(SystemExit):
    sweep.main([path, '--workdir', 'b'])
  assert ('point 0: --config.clip: the config holds an untyped None'
          in capsys.readouterr().err)


def test_missing_base_config_names_the_sweep_file(tmp_path, capsys):
  path = write_sweep(tmp_path, [{'optim.lr': 0.1}], config='configs/nope.py')
  with pytest.raises(SystemExit):
    sweep.main([path, '--workdir', 'b'])
  assert f'sweep file {path}: base config' in capsys.readouterr().err


def test_workdir_names_are_deterministic_and_unambiguous():
  points = [{'train.budgets': (256, 128), 'eval.budgets': (64,), 'optim.lr': 1e-5},
            {'init': '/ckpt/' + 'x' * 200}]
  runs = [sweep.commands(sweep.Sweep(DEMO, points), 'gs://b/run/') for _ in range(2)]
  assert runs[0] == runs[1]
  workdirs = [argv[argv.index('--workdir') + 1] for _, argv in runs[0]]
  assert workdirs[0] == 'gs://b/run/0_train.budgets=256-128,eval.budgets=64,lr=1e-05'
  name = workdirs[1].rsplit('/', 1)[1]
  assert len(name) == 100 and name.startswith('1_init=ckpt-xxx')
  other = sweep.commands(sweep.Sweep(DEMO, [points[0], {'init': '/ckpt/' + 'x' * 201}]), 'b')
  assert other[1][1][6].rsplit('/', 1)[1] != name  # the hash tells long names apart


def test_only_selects_points_and_keeps_their_indices(tmp_path, capsys):
  path = write_sweep(tmp_path, sweep.product({'optim.lr': [0.1, 0.2], 'train.steps': [1, 2]}))
  lines = run_main(capsys, path, '--workdir', 'b', '--only', '3,1')
  assert [shlex.split(line)[6] for line in lines] == ['b/3_lr=0.2,steps=2', 'b/1_lr=0.1,steps=2']
  with pytest.raises(SystemExit):
    sweep.main([path, '--workdir', 'b', '--only', '4'])
  assert '--only 4: the sweep has points 0..3' in capsys.readouterr().err


def test_local_launch_runs_points_in_turn_and_stops_at_a_failure(tmp_path, capsys):
  path = write_sweep(tmp_path, [{'init': 'a'}, {'init': 'fail'}, {'init': 'c'}])
  with pytest.raises(SystemExit, match='sweep point 1 exited with 1'):
    sweep.main([path, '--workdir', str(tmp_path), '--launch', 'local', '--prefix',
                FAKE_PYTHON])
  assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ['0_init=a', '1_init=fail']
  assert len(capsys.readouterr().out.splitlines()) == 2  # each command echoed as it starts


def test_example_sweep_from_the_command_line():
  out = subprocess.run([sys.executable, '-m', 'flux_jax.cli.sweep',
                        'configs/sweeps/synthetic_demo_lr.py:steps=50', '--workdir', 'w'],
                       cwd=ROOT, capture_output=True, text=True, check=True)
  lines = out.stdout.splitlines()
  assert len(lines) == 6
  assert lines[5] == ('.venv/bin/python -m flux_jax.cli.train --config '
                      'configs/synthetic_demo.py:steps=50 --workdir w/5_lr=0.003,mode=single '
                      '--config.optim.lr=0.003 --config.train.mode=single')
