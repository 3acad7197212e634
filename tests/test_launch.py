"""Launch scripts: dry runs print the command they would run."""

import pathlib
import shlex
import subprocess

ROOT = pathlib.Path(__file__).parents[1]


def test_local_dry_run_prints_the_command():
  out = subprocess.run([str(ROOT / 'launch/local.sh'), '--dry-run', 'flux_jax.bench',
                        'forward', '--batch=2'], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '.venv/bin/python -m flux_jax.bench forward --batch=2'


def test_local_without_module_is_a_usage_error():
  out = subprocess.run([str(ROOT / 'launch/local.sh')], capture_output=True, text=True)
  assert out.returncode == 2 and 'usage' in out.stderr


def test_tpu_pod_dry_run_creates_copies_and_runs_on_all_workers():
  out = subprocess.run(
      [str(ROOT / 'launch/tpu_pod.sh'), '--name', 'flux', '--zone', 'us-east5-b', '--type',
       'v5litepod-16', '--dry-run', '--', '-m', 'flux_jax.main', '--config',
       'configs/debug.py'], capture_output=True, text=True, check=True)
  create, scp, ssh = [shlex.split(line) for line in out.stdout.strip().splitlines()]
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'flux']
  assert '--accelerator-type=v5litepod-16' in create and '--zone=us-east5-b' in create
  assert scp[4:8] == ['scp', '--recurse', '.', 'flux:~/flux_jax'] and scp[-1] == '--worker=all'
  assert ssh[4:6] == ['ssh', 'flux'] and '--worker=all' in ssh
  assert ssh[-1] == ('--command=cd ~/flux_jax && make .venv/.base && .venv/bin/python -m '
                     'flux_jax.main --config configs/debug.py --multihost')


def test_slurm_dry_run_prints_srun():
  out = subprocess.run(['bash', str(ROOT / 'launch/slurm_gpu.sbatch'), '-m', 'flux_jax.main',
                        '--workdir', '/tmp/w'], capture_output=True, text=True, check=True,
                       env={'DRY_RUN': '1', 'PATH': '/usr/bin:/bin'})
  assert out.stdout.strip() == ('srun --ntasks-per-node=1 .venv/bin/python -m flux_jax.main '
                                '--workdir /tmp/w --multihost')
