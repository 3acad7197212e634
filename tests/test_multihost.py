"""A real multi-host job on this machine: 2 processes x 2 CPU devices over gloo
(launch/local_multihost.sh) against 1 process x 4 devices, configs/debug.py (Flux-Single).

From a fresh data dir the dataset is built once (process 0; process 1 waits, then reuses
it), the two topologies compute the same loss at every step, and a checkpoint written by
one topology resumes in the other with the loss of the uninterrupted run.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).parents[1]


def _train(processes: int, workdir, data_dir, *flags):
  # Flux-Single and no evaluation keep the four runs short; the step and the input are the
  # loop's. The runs of one topology share compiled programs (jax's persistent cache).
  args = ['flux_jax.cli.train', '--config', 'configs/debug.py', '--workdir', str(workdir),
          f'--config.data.data_dir={data_dir}', '--config.eval.every_steps=-1',
          '--config.train.mode=single', *flags]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(data_dir).parent / 'xla_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  t0 = time.monotonic()
  if processes == 1:
    cmd = [sys.executable, '-m', *args]
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  else:
    cmd = [str(ROOT / 'launch/local_multihost.sh'), '--devices', '4', str(processes), *args]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                       check=False)
  log = out.stdout + out.stderr
  assert out.returncode == 0, f'{processes} process(es) failed:\n{log[-6000:]}'
  print(f'{processes} process(es), {workdir.name}: {time.monotonic() - t0:.0f} s')
  return log


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def _assert_close(got: dict, want: dict, steps):
  for s in steps:
    np.testing.assert_allclose(got[s], want[s], rtol=1e-5, err_msg=f'step {s}')


def test_two_processes_train_like_one_and_resume_across_topologies(tmp_path):
  data = tmp_path / 'tfds'
  # 2 x 2 devices, steps 1-2, from a fresh data dir.
  log = _train(2, tmp_path / 'a', data, '--stop_at=2')
  assert not (tmp_path / 'a' / 'params').exists()  # only a finished run exports
  # Process 0 alone judges the shared build (builds it here); process 1 opens it.
  built = re.findall(r'process (\d) (built|reused|opens) \S*synthetic_motion/tiny', log)
  assert sorted(built) == [('0', 'built'), ('1', 'opens')], built
  assert re.search(r'step 2/4 loss [\d.]+ +[\d.]+ steps/s +input wait \d+% +ETA', log)  # progress lines
  assert not re.search(r'\[process 1\].*step \d/4 loss', log)  # process 0 reports
  # 1 x 4 devices, steps 1-4 uninterrupted (checkpoints at 2 and 4).
  _train(1, tmp_path / 'b', data)
  b = _losses(tmp_path / 'b')
  assert sorted(b) == [1, 2, 3, 4]
  _assert_close(_losses(tmp_path / 'a'), b, [1, 2])

  # The 2-process checkpoint of step 2 resumes in 1 process...
  _train(1, tmp_path / 'a', data)
  _assert_close(_losses(tmp_path / 'a'), b, [3, 4])
  assert (tmp_path / 'a' / 'params').is_dir()  # the finished run exported its params
  # ...and the 1-process checkpoint of step 2 in 2 processes.
  resumed = tmp_path / 'c'
  shutil.copytree(tmp_path / 'b', resumed)
  for name in ('checkpoints/4', 'params', 'metrics.jsonl', 'tb'):
    shutil.rmtree(resumed / name) if (resumed / name).is_dir() else (resumed / name).unlink()
  _train(2, resumed, data)
  c = _losses(resumed)
  assert sorted(c) == [3, 4]
  _assert_close(c, b, [3, 4])


def test_a_failing_process_stops_the_whole_local_job():
  """tests/hosts_probe.py: process 1 exits with 3 at once, process 0 would sleep 10
  minutes; the launcher stops process 0 and exits with 3."""
  t0 = time.monotonic()
  out = subprocess.run([str(ROOT / 'launch/local_multihost.sh'), '2', 'tests.hosts_probe'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 3, out.stdout + out.stderr
  assert time.monotonic() - t0 < 120
  assert '[process 1] process 1 fails' in out.stdout
  assert 'a process exited with status 3; stopping the others' in out.stderr
  alive = subprocess.run(['pgrep', '-f', 'tests.hosts_probe'], capture_output=True, text=True)
  assert alive.stdout == '', 'process 0 outlived the job'
