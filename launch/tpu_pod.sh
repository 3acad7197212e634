#!/usr/bin/env bash
# Runs one flux_jax command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --name my-tpu --zone us-east5-b --type v5litepod-64 \
#       [--version tpu-ubuntu2204-base] [--project P] [--dry-run] \
#       -- -m flux_jax.cli.train --config configs/fluxvit_k400.py:variant=small,mode=multi \
#       --workdir gs://bucket/run
#
# Creates the slice if it does not exist; copies the checkout's tracked files (git
# ls-files: no .venv, no workdir) to ~/flux_jax on every worker, keeping a worker's
# .venv; builds the venv there with the TPU jax (make .venv/.base ACCEL=tpu); starts the
# same command on all workers with --multihost (jax.distributed.initialize() finds its
# peers) and --accelerator=tpu (a worker without TPU jax stops instead of using its CPU).
# Data and workdirs live in gs:// buckets that every worker reads and writes.
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
archive="${TMPDIR:-/tmp}/flux_jax_${name}.tar.gz"
unpack="mkdir -p ~/flux_jax && find ~/flux_jax -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + && tar -xzf ~/flux_jax.tar.gz -C ~/flux_jax"
remote="$unpack && cd ~/flux_jax && make -s .venv/.base ACCEL=tpu && .venv/bin/python $(printf '%q ' "$@")--multihost --accelerator=tpu"
run() {
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [[ $dry_run == 1 ]] || ! "${gcloud[@]}" describe "$name" "${extra[@]}" >/dev/null 2>&1; then
  run "${gcloud[@]}" create "$name" "${extra[@]}" --accelerator-type="$type" --version="$version"
fi
if [[ $dry_run == 1 ]]; then
  echo "git ls-files -z | tar --null -T - -czf $(printf '%q' "$archive")"
else
  git ls-files -z | tar --null -T - -czf "$archive"
fi
run "${gcloud[@]}" scp "$archive" "$name":~/flux_jax.tar.gz "${extra[@]}" --worker=all
run "${gcloud[@]}" ssh "$name" "${extra[@]}" --worker=all --command="$remote"
