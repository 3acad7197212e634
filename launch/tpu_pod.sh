#!/usr/bin/env bash
# Runs one flux_jax command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --name my-tpu --zone us-east5-b --type v5litepod-64 \
#       [--version tpu-ubuntu2204-base] [--project P] [--dry-run] \
#       -- -m flux_jax.main --config configs/fluxvit_s_k400_multi.py --workdir gs://b/run
#
# Creates the slice if it does not exist, copies this checkout to every worker, builds
# the venv there (make .venv/.base) and starts the same command on all workers with
# --multihost, so jax.distributed.initialize() finds its peers.
set -euo pipefail
cd "$(dirname "$0")/.."
name='' zone='' type='' version='tpu-ubuntu2204-base' project='' dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" || -z "$type" || $# -eq 0 ]]; then
  echo "usage: launch/tpu_pod.sh --name N --zone Z --type T [--version V] [--project P] [--dry-run] -- ARGS..." >&2
  exit 2
fi
gcloud=(gcloud compute tpus tpu-vm)
extra=(--zone="$zone")
[[ -n "$project" ]] && extra+=(--project="$project")
remote="cd ~/flux_jax && make .venv/.base && .venv/bin/python $(printf '%q ' "$@")--multihost"
run() {
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [[ $dry_run == 1 ]] || ! "${gcloud[@]}" describe "$name" "${extra[@]}" >/dev/null 2>&1; then
  run "${gcloud[@]}" create "$name" "${extra[@]}" --accelerator-type="$type" --version="$version"
fi
run "${gcloud[@]}" scp --recurse . "$name":~/flux_jax "${extra[@]}" --worker=all
run "${gcloud[@]}" ssh "$name" "${extra[@]}" --worker=all --command="$remote"
