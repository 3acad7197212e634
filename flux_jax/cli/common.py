"""What the entry points share: the job flags, and the shipped config behind `--config`."""

from __future__ import annotations

from absl import flags

from flux_jax import hosts


def define_job_flags() -> None:
  """The job flags of the entry points that run on every host (train, evaluate)."""
  flags.DEFINE_bool('multihost', False, 'Join a multi-host job: jax.distributed.initialize() '
                    'finds the peers (TPU pod, SLURM) or takes --coordinator_address '
                    '(launch/tpu_pod.sh, slurm_gpu.sbatch and local_multihost.sh set it).')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 of a job that '
                      'the environment does not describe (launch/local_multihost.sh).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the job (with '
                       '--coordinator_address).')
  flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
  flags.DEFINE_enum('accelerator', '', ['', 'tpu', 'gpu'], 'Refuse to run unless jax runs '
                    'on this platform (the launchers set it).')


def start_job() -> str:
  """`hosts.start` with the flags of `define_job_flags`; returns the platform."""
  f = flags.FLAGS
  return hosts.start(f.multihost, f.accelerator, coordinator_address=f.coordinator_address,
                     num_processes=f.num_processes, process_id=f.process_id)
