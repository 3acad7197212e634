"""Launch scripts: dry runs print the set-up and the command they would run; every config
path written in launch/, README.md and notebooks/ exists and builds; a run that asked for
an accelerator refuses the CPU."""

import importlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from flux_jax import hosts

ROOT = pathlib.Path(__file__).parents[1]


def _run(*args, env=None, check=True):
  return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check,
                        env=env, cwd=ROOT)


def test_local_dry_run_builds_the_cpu_venv_and_prints_the_command():
  setup, cmd = _run(ROOT / 'launch/local.sh', '--dry-run', 'flux_jax.bench', 'forward',
                    '--batch=2').stdout.strip().splitlines()
  assert setup.strip() == 'make -s .venv/.base ACCEL=cpu'
  assert cmd.strip() == '.venv/bin/python -m flux_jax.bench forward --batch=2'


def test_local_with_an_accelerator_asks_for_it():
  env = dict(os.environ, ACCEL='cuda12')
  setup, cmd = _run(ROOT / 'launch/local.sh', '--dry-run', 'flux_jax.cli.train', '--config',
                    'configs/debug.py', env=env).stdout.strip().splitlines()
  assert setup.strip() == 'make -s .venv/.base ACCEL=cuda12'
  assert shlex.split(cmd)[-1] == '--accelerator=gpu'
  out = _run(ROOT / 'launch/local.sh', '--dry-run', 'x', env=dict(os.environ, ACCEL='rocm'),
             check=False)
  assert out.returncode == 2 and 'ACCEL=rocm' in out.stderr


def test_local_without_module_is_a_usage_error():
  out = _run(ROOT / 'launch/local.sh', check=False)
  assert out.returncode == 2 and 'usage' in out.stderr


def test_tpu_pod_dry_run_copies_tracked_files_and_installs_tpu_jax_on_all_workers():
  out = _run(ROOT / 'launch/tpu_pod.sh', '--name', 'flux', '--zone', 'us-east5-b', '--type',
             'v5litepod-16', '--dry-run', '--', '-m', 'flux_jax.cli.train', '--config',
             'configs/debug.py', env=dict(os.environ, TMPDIR='/tmp'))
  create, archive, scp, ssh = [shlex.split(line) for line in out.stdout.strip().splitlines()]
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'flux']
  assert '--accelerator-type=v5litepod-16' in create and '--zone=us-east5-b' in create
  # Only the tracked files travel: not .venv, not workdirs.
  assert archive == ['git', 'ls-files', '-z', '|', 'tar', '--null', '-T', '-', '-czf',
                     '/tmp/flux_jax_flux.tar.gz']
  assert scp[4:7] == ['scp', '/tmp/flux_jax_flux.tar.gz', 'flux:~/flux_jax.tar.gz']
  assert '--recurse' not in scp and scp[-1] == '--worker=all'
  assert ssh[4:6] == ['ssh', 'flux'] and '--worker=all' in ssh
  remote = ssh[-1].removeprefix('--command=')
  assert 'tar -xzf ~/flux_jax.tar.gz -C ~/flux_jax' in remote
  assert '! -name .venv' in remote  # a worker's venv survives a relaunch
  assert 'make -s .venv/.base ACCEL=tpu && ' in remote
  assert remote.endswith('.venv/bin/python -m flux_jax.cli.train --config configs/debug.py '
                         '--multihost --accelerator=tpu')


def test_slurm_dry_run_installs_cuda_jax_and_prints_srun():
  env = {'DRY_RUN': '1', 'PATH': '/usr/bin:/bin'}
  setup, srun = _run('bash', ROOT / 'launch/slurm_gpu.sbatch', '-m', 'flux_jax.cli.train',
                     '--workdir', '/tmp/w', env=env).stdout.strip().splitlines()
  assert setup.strip() == 'make -s .venv/.base ACCEL=cuda12'
  assert srun.strip() == ('srun --ntasks-per-node=1 .venv/bin/python -m flux_jax.cli.train '
                          '--workdir /tmp/w --multihost --accelerator=gpu')
  setup = _run('bash', ROOT / 'launch/slurm_gpu.sbatch', '-m', 'x',
               env=dict(env, ACCEL='cuda13')).stdout.splitlines()[0]
  assert setup.strip() == 'make -s .venv/.base ACCEL=cuda13'
  out = _run('bash', ROOT / 'launch/slurm_gpu.sbatch', '-m', 'x', env=dict(env, ACCEL='tpu'),
             check=False)
  assert out.returncode == 2 and 'cuda12 or cuda13' in out.stderr


def test_make_installs_the_pinned_jax_with_the_accelerator_plugin():
  out = _run('make', '-n', '-B', '.venv/.base-tpu', 'ACCEL=tpu').stdout
  pin = re.search(r'^jax==(\S+)', (ROOT / 'requirements.txt').read_text(), re.M).group(1)
  assert f'pip install -q -r requirements.txt "jax[tpu]=={pin}"' in out
  out = _run('make', '-n', '-B', '.venv/.base-cpu').stdout
  assert re.search(r'pip install -q -r requirements\.txt\s*$', out, re.M)
  out = _run('make', '-n', 'test', 'ACCEL=rocm', check=False)
  assert out.returncode != 0 and 'ACCEL=rocm is not one of cpu tpu cuda12 cuda13' in out.stderr


def _config_paths() -> list[str]:
  """Every `configs/<name>.py[:args]` written in the launchers, README and notebooks."""
  texts = [p.read_text() for p in (ROOT / 'launch').iterdir()]
  texts.append((ROOT / 'README.md').read_text())
  for nb in (ROOT / 'notebooks').glob('*.ipynb'):
    texts += [''.join(c['source']) for c in json.loads(nb.read_text())['cells']]
  found = set()
  for text in texts:
    found.update(re.findall(r'configs/[\w/]+\.py(?::[\w=.,/~-]+)?', text))
  return sorted(found)


def test_every_config_path_in_launchers_readme_and_notebooks_exists_and_builds():
  paths = _config_paths()
  assert 'configs/fluxvit_k400.py:variant=small,mode=multi' in paths
  assert len(paths) >= 5
  sys.path.insert(0, str(ROOT))
  for path in paths:
    file, _, arg = path.partition(':')
    assert (ROOT / file).is_file(), f'{path}: no such config'
    if file == 'configs/common.py':  # the configs' shared pieces, named in the docs
      continue
    module = importlib.import_module(file.removesuffix('.py').replace('/', '.'))
    if hasattr(module, 'get_config'):
      module.get_config(arg or None)
    else:  # a sweep file
      module.get_sweep(arg or None)


def test_an_accelerator_run_refuses_the_cpu_and_names_the_jax_extra():
  with pytest.raises(RuntimeError, match=r'--accelerator=tpu but jax runs on cpu.*'
                     r'ACCEL=tpu \(pip install "jax\[tpu\]=='):
    hosts.start(False, 'tpu')
  with pytest.raises(RuntimeError, match=r'jax\[cuda12\].*ACCEL=cuda13'):
    hosts.start(False, 'gpu')
  assert hosts.start(False, '') == 'cpu'
  with pytest.raises(ValueError, match="--accelerator='npu'"):
    hosts.start(False, 'npu')


def test_main_refuses_before_building_anything(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'flux_jax.cli.train', '--config', 'configs/debug.py',
                        '--workdir', str(tmp_path / 'w'), '--accelerator=gpu',
                        f'--config.data.data_dir={tmp_path / "data"}'], cwd=ROOT,
                       capture_output=True, text=True, check=False, timeout=300)
  assert out.returncode != 0
  assert '--accelerator=gpu but jax runs on cpu' in out.stderr
  assert not (tmp_path / 'data').exists() and not (tmp_path / 'w').exists()
