"""bench aot: the tiny recipe compiled for a TPU topology by libtpu on this CPU host.

The compile runs as the user runs it, `python -m flux_jax.bench aot ... --json`, in a
subprocess (libtpu must be found before jax starts a backend). Skipped, with the reason,
only where libtpu is not installed (`make .venv/.aot` installs it; `make test` tries).
"""

import json
import os
import subprocess
import sys

import pytest

from flux_jax.bench import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _libtpu_or_skip():
  try:
    return aot.find_libtpu()
  except aot.AotError as e:
    pytest.skip(f'libtpu is not installed here, TPU AOT is not checked: {e}')


def _bench(*args, check=True):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # no fake CPU devices
  proc = subprocess.run([sys.executable, '-m', 'flux_jax.bench', 'aot', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  if check and proc.returncode:
    raise AssertionError(f'bench aot {args} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}')
  return proc


@pytest.mark.parametrize('scan_layers', [True, False])
def test_tiny_recipe_compiles_for_v5e_with_the_splash_kernel(scan_layers):
  _libtpu_or_skip()
  proc = _bench('--config', 'configs/debug.py', '--topology', 'v5e:2x2', '--batch_per_chip',
                '2', f'--config.model.scan_layers={scan_layers}', '--json')
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (report['device_kind'], report['chips'], report['devices']) == ('TPU v5 lite', 4, 4)
  assert report['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 1}
  assert (report['global_batch'], report['batch_per_chip']) == (8, 2)
  # 'auto' ran the Pallas kernel on TPU: one forward and two backward kernels per budget
  # and block (3 budgets x 2 blocks), none of the [K, K] scores in XLA; scanned blocks
  # hold them once per budget, in the scan's forward and backward bodies.
  assert (report['attention'], report['attention_runs']) == ('auto', 'splash')
  kernels = 3 * 3 if scan_layers else 3 * 2 * 3
  assert report['ops']['pallas_kernels'] == kernels
  # Data parallelism: the gradients are summed over the 4 chips.
  assert report['ops']['all-reduce'] >= 1
  # Memory per chip: libtpu compiled it, the donated state is aliased, the peak holds more
  # than the arguments and is far below a v5e chip's 16 GiB.
  assert report['hbm_bytes_per_chip'] == 16 * 2**30 and report['fits'] is True
  assert 0 < report['alias_bytes_per_chip'] <= report['output_bytes_per_chip']
  assert report['total_bytes_per_chip'] == (
      report['argument_bytes_per_chip'] + report['output_bytes_per_chip']
      - report['alias_bytes_per_chip'] + report['temp_bytes_per_chip'])
  assert report['argument_bytes_per_chip'] < report['peak_bytes_per_chip'] < 2**30
  # The model's FLOPs exceed XLA's count of the compiled program, which has no FLOPs for
  # the Pallas kernels; per chip is a quarter of the step.
  assert report['flops_per_chip'] == pytest.approx(report['flops_per_step'] / 4)
  assert report['flops_per_chip'] > report['xla_flops_per_chip'] > 0
  assert f'fused attention kernels | {kernels} |' in proc.stdout


def test_bad_topologies_and_configs_are_refused_with_the_reason():
  with pytest.raises(aot.AotError, match="'v5litepod-8': expected GENERATION:AxB"):
    aot.topology_devices('v5litepod-8')
  _libtpu_or_skip()
  proc = _bench('--config', 'configs/debug.py', '--topology', 'v5e:2x2',
                '--config.train.global_batch_size=6', check=False)
  assert proc.returncode == 2
  assert 'global_batch_size=6 does not divide over the 4 chips of v5e:2x2' in proc.stderr
  proc = _bench('--config', 'configs/debug.py', '--topology', 'v5e:2x2',
                '--config.mesh.tensor=3', check=False)
  assert proc.returncode == 2 and 'mesh.tensor=3' in proc.stderr
  proc = _bench('--config', 'configs/debug.py', '--topology', 'v9:2x2', check=False)
  assert proc.returncode == 2 and 'expected GENERATION' in proc.stderr


@pytest.mark.slow  # one more TPU compile; make test-slow
def test_a_step_that_exceeds_hbm_is_reported_as_not_fitting():
  """libtpu refuses a program larger than the chip: the report says so, with the
  temporaries it would need, instead of failing."""
  _libtpu_or_skip()
  proc = _bench('--config', 'configs/debug.py', '--topology', 'v5e:2x2', '--batch_per_chip',
                '4096', '--json')
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['fits'] is False and 'exceeds available HBM' in report['error']
  assert report['temp_bytes_per_chip'] > report['usable_hbm_bytes_per_chip']
  assert report['usable_hbm_bytes_per_chip'] <= report['hbm_bytes_per_chip']
  assert report['peak_bytes_per_chip'] > report['hbm_bytes_per_chip']
  assert '| fits | NO |' in proc.stdout


def test_the_clip_recipe_compiles_for_v5e():
  """FluxViT-CLIP's step (two towers, a loss per budget over the gathered batch) lowers
  and compiles for a TPU topology as the classification step does."""
  _libtpu_or_skip()
  proc = _bench('--config', 'configs/fluxvit_clip.py:runlocal=true', '--topology', 'v5e:2x2',
                '--batch_per_chip', '1', '--json')
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['mode'] == 'clip' and report['global_batch'] == 4
  assert report['fits'] is True and report['ops']['all-reduce'] >= 1
  assert report['ops']['all-gather'] >= 1  # the embeddings of the global batch
