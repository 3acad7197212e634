#!/usr/bin/env bash
# Runs a flux_jax entry point on this machine inside the project's .venv.
#   launch/local.sh [--dry-run] MODULE [ARGS...]
#   launch/local.sh flux_jax.bench forward --batch=2
#   ACCEL=cuda12 launch/local.sh flux_jax.cli.train --config configs/debug.py --workdir /tmp/d
# ACCEL (cpu unless told; tpu, cuda12, cuda13) picks the jax the venv is built with; with an
# accelerator the command is given --accelerator so that it refuses to run on the CPU.
# launch/tpu_pod.sh and launch/slurm_gpu.sbatch start the same command on every host.
set -euo pipefail
cd "$(dirname "$0")/.."
accel="${ACCEL:-cpu}"
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 1 ]]; then
  echo "usage: launch/local.sh [--dry-run] MODULE [ARGS...]" >&2
  exit 2
fi
setup=(make -s .venv/.base "ACCEL=$accel")
cmd=(.venv/bin/python -m "$@")
case "$accel" in
  cpu) ;;
  tpu) cmd+=(--accelerator=tpu) ;;
  cuda*) cmd+=(--accelerator=gpu) ;;
  *) echo "ACCEL=$accel is not one of cpu tpu cuda12 cuda13" >&2; exit 2 ;;
esac
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${setup[@]}"; echo
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
"${setup[@]}"
exec "${cmd[@]}"
