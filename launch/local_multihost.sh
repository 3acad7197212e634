#!/usr/bin/env bash
# A multi-host JAX job on this machine: N processes over CPU collectives (gloo), each
# with its share of fake CPU devices, joined through an explicit coordinator.
#
#   launch/local_multihost.sh [--devices TOTAL] [--port P] [--dry-run] N MODULE [ARGS...]
#   launch/local_multihost.sh --devices 4 2 flux_jax.cli.train --config configs/debug.py \
#       --workdir /tmp/flux_2x2
#
# Process i runs `.venv/bin/python -m MODULE ARGS --multihost --coordinator_address=
# 127.0.0.1:P --num_processes=N --process_id=i` with TOTAL/N devices (default one each);
# its output is prefixed with [process i]. When one process fails the others are
# stopped and the launcher exits with that process's status.
set -euo pipefail
cd "$(dirname "$0")/.."
devices='' port='' dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local_multihost.sh [--devices TOTAL] [--port P] [--dry-run] N MODULE [ARGS...]" >&2
  exit 2
fi
n="$1"; shift
devices="${devices:-$n}"
if (( devices % n )); then
  echo "--devices $devices does not divide over $n processes" >&2
  exit 2
fi
per=$((devices / n))
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
command_of() {
  printf '%q ' env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$per" \
    .venv/bin/python -m "${@:2}" --multihost "--coordinator_address=127.0.0.1:$port" \
    "--num_processes=$n" "--process_id=$1"
}
if [[ $dry_run == 1 ]]; then
  for ((i = 0; i < n; i++)); do command_of "$i" "$@"; echo; done
  exit 0
fi
[[ -x .venv/bin/python ]] || make -s .venv/.base
pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; }
trap 'stop; exit 130' INT TERM
for ((i = 0; i < n; i++)); do
  # Its own process group, so that stopping it stops the python behind the pipe too.
  setsid bash -c "set -o pipefail; $(command_of "$i" "$@") 2>&1 | sed -u 's/^/[process $i] /'" &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  if wait -n; then continue; else status=$?; fi
  echo "local_multihost: a process exited with status $status; stopping the others" >&2
  stop
  break
done
wait || true
exit "$status"
