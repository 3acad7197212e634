"""Launch scripts: dry runs print the command they would run."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).parents[1]


def test_local_dry_run_prints_the_command():
  out = subprocess.run([str(ROOT / 'launch/local.sh'), '--dry-run', 'flux_jax.bench',
                        'forward', '--batch=2'], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '.venv/bin/python -m flux_jax.bench forward --batch=2'


def test_local_without_module_is_a_usage_error():
  out = subprocess.run([str(ROOT / 'launch/local.sh')], capture_output=True, text=True)
  assert out.returncode == 2 and 'usage' in out.stderr
