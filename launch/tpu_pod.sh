#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker (host) at once; each runs one
# process over its local chips, jax.distributed.initialize() (--config.distributed=true)
# finds the others from the TPU metadata, and each host loads its slice of every batch.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/xsum/mam.py /mnt/shared/runs/xsum_mam
#
# Every worker needs the package installed (e.g. `pip install -e .` in REPO on each, via
# gcloud ... --worker=all --command="cd REPO && pip install -e '.[gcs]'"), the same REPO path,
# and a WORKDIR every worker sees: a gs:// URL (gs://BUCKET/runs/x, the `gcs` extra) or a disk
# every worker mounts (Filestore). Running the same command again resumes from the latest
# checkpoint; after a preemption (SIGTERM) every worker saves one checkpoint at one step and
# exits 75. Each worker logs "process I of N on HOST: 4 local tpu device(s) ..." at startup.
# REPO (default: this checkout's path) is where the command runs on the workers.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
EXTRA=""
for arg in "$@"; do EXTRA+=" $(printf '%q' "$arg")"; done
COMMAND="cd $(printf '%q' "$REPO") && ${UNIFIED_PETL:-unified-petl} train"
COMMAND+=" --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
COMMAND+=" --config.distributed=true$EXTRA"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "$COMMAND"
