"""The package as a user installs it: layering contracts, and the wheel used from outside
the checkout (every module imports in one process; demo, evaluate, predict, export run)."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_hold():
  """.importlinter: the floors follow the data flow, the library never imports configs."""
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  done = subprocess.run([lint, '--no-cache'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert 'Contracts: 2 kept, 0 broken.' in done.stdout


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """flux_jax built as a wheel and installed alone into a directory, with a run directory
  outside the checkout whose environment finds that copy first."""
  tmp = tmp_path_factory.mktemp('wheel')
  build = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
       '-w', str(tmp / 'dist'), ROOT], capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  wheel, = glob.glob(str(tmp / 'dist' / 'flux_jax-*.whl'))
  site = tmp / 'site'
  install = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(site),
       wheel], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  run_dir = tmp / 'elsewhere'
  run_dir.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(PYTHONPATH=str(site), JAX_PLATFORMS='cpu')

  def run(*args, timeout=600):
    done = subprocess.run([sys.executable, *args], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f'{args}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}'
    return done.stdout
  return site, run_dir, run


def test_every_module_imports_in_one_process(installed):
  site, _, run = installed
  out = run('-c', textwrap.dedent(f'''
      import importlib, json, pkgutil, sys
      import flux_jax
      assert flux_jax.__file__.startswith({str(site)!r}), flux_jax.__file__
      names = []
      def walk(package):  # every module but the shipped configs, imported as we go
        for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):
          if m.name != 'flux_jax.configs':
            names.append(m.name)
            module = importlib.import_module(m.name)
            if m.ispkg:
              walk(module)
      walk(flux_jax)
      from absl import flags
      print(json.dumps(dict(
          modules=len(names), flags=sorted(flags.FLAGS),
          configs=sorted(m for m in sys.modules
                         if m == 'configs' or m.startswith(('configs.', 'flux_jax.configs'))),
          recipe=flux_jax.config.recipe('synthetic_demo.py'))))
      '''))
  report = json.loads(out.splitlines()[-1])
  assert report['modules'] > 60
  # Importing defines no flag of ours: absl's own and the libraries' only.
  assert not {'config', 'workdir', 'checkpoint', 'out', 'budget'} & set(report['flags'])
  assert report['configs'] == []  # the library imported no config
  assert report['recipe'].startswith(str(site))  # the recipes ship inside the wheel


@pytest.mark.parametrize('module', ['train', 'evaluate', 'predict', 'export', 'convert',
                                    'convert_text', 'convert_iv2', 'build_dataset', 'demo'])
def test_console_scripts_are_declared(module):
  """setup.py names a `flux-...` script for every entry point, and each has run()."""
  import importlib  # pylint: disable=g-import-not-at-top
  assert callable(importlib.import_module(f'flux_jax.cli.{module}').run)
  with open(os.path.join(ROOT, 'setup.py')) as f:
    assert f"'{module}'" in f.read()


def test_demo_evaluate_predict_export_from_the_wheel(installed, tmp_path):
  """The user's path from outside the checkout: the demo trains (its shipped recipe) and
  runs Token Optimization; evaluate, predict and export take its params."""
  _, run_dir, run = installed
  workdir = tmp_path / 'demo'
  out = run('-m', 'flux_jax.cli.demo', f'--workdir={workdir}', '--size=tiny', '--steps=2',
            '--frames=8', '--resolutions=56',
            timeout=900)
  assert 'trained 2 Flux-Multi steps' in out
  params = workdir / 'train' / 'params'
  assert (workdir / 'to' / 'to.json').exists()

  out = run('-m', 'flux_jax.cli.evaluate', f'--checkpoint={params}', f'--out={tmp_path}/to',
            '--budgets=16', '--frames=8', '--resolutions=56', '--select_split=')
  assert '| 16 |' in out

  video, = glob.glob(str(workdir / 'tfds' / '**' / '*.mp4'), recursive=True) or [None]
  if video is None:  # the dataset keeps encoded bytes, not files: write one clip
    code = ('from flux_jax.data import decode, synthetic; frames, _ = synthetic.make_clip(1); '
            f'open({str(tmp_path / "clip.mp4")!r}, "wb").write(decode.encode_mp4(frames[:8]))')
    run('-c', code)
    video = str(tmp_path / 'clip.mp4')
  out = run('-m', 'flux_jax.cli.predict', video, f'--checkpoint={params}', '--budget=16',
            '--top_k=2')
  assert len([line for line in out.splitlines() if line.strip()]) == 2

  run('-m', 'flux_jax.cli.export', f'--checkpoint={params}', '--budget=16', '--n_max=64',
      f'--out={tmp_path}/export')
  assert (tmp_path / 'export' / 'budget_16' / 'contract.json').exists()
  assert str(run_dir) != ROOT
