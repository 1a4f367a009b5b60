#!/usr/bin/env bash
# One machine, all its GPUs (or TPU chips, or the CPU): one process, data parallel over the
# local devices (the trainer shards each batch over a `data` mesh axis).
#
#   launch/local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/local.sh configs/xsum/mam.py runs/xsum_mam --config.grad_accum=4
#
# Running it again on the same WORKDIR resumes from the latest checkpoint.
# CUDA_VISIBLE_DEVICES picks GPUs; UNIFIED_PETL=path/to/unified-petl overrides the command.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
mkdir -p "$WORKDIR"
# JAX would otherwise preallocate 75% of GPU memory at import; let it grow instead.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
${UNIFIED_PETL:-unified-petl} train --config "$CONFIG" --workdir "$WORKDIR" "$@" \
  2>&1 | tee -a "$WORKDIR/train.log"
