#!/usr/bin/env bash
# Runs a flux_jax entry point on this machine inside the project's .venv.
#   launch/local.sh [--dry-run] MODULE [ARGS...]
#   launch/local.sh flux_jax.bench forward --batch=2
# The TPU-pod and SLURM launchers (a later issue) start the same command on every host.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 1 ]]; then
  echo "usage: launch/local.sh [--dry-run] MODULE [ARGS...]" >&2
  exit 2
fi
cmd=(.venv/bin/python -m "$@")
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
[[ -x .venv/bin/python ]] || make .venv/.base
exec "${cmd[@]}"
