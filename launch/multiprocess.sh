#!/usr/bin/env bash
# Several processes on ONE machine, one jax.distributed job: process 0 is the coordinator on
# localhost; each process gets --config.distributed=true, the coordinator address, the
# process count and its id, so no cluster manager is needed. What tests/test_multiprocess.py
# runs (CPU devices), and a way to drive the GPUs of one machine with one process per group
# of GPUs (DEVICES_PER_PROCESS).
#
#   launch/multiprocess.sh N train --config CONFIG --workdir WORKDIR [--config.KEY=VALUE ...]
#   launch/multiprocess.sh N eval --workdir WORKDIR [--best] [--split test]
#   DEVICES_PER_PROCESS=4 launch/multiprocess.sh 2 train --config C --workdir W   # 8 GPUs
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 launch/multiprocess.sh 2 train ...
#
# Environment: COORDINATOR_PORT (default: a free port), DEVICES_PER_PROCESS (GPUs: process i
# drives local devices i*K .. i*K+K-1, --config.local_device_ids), UNIFIED_PETL (the
# command, default unified-petl), PYTHON (finds a free port; default python3).
# Output: every line prefixed with [process I] (the prefixing survives the signals that stop
# the processes, so their last lines are not lost).
# Signals: SIGTERM / SIGINT to this script go to every process (JAX's preemption sync point
# makes them save one checkpoint at one step and exit 75). Exit code: 0 when every process
# exits 0; 75 / 130 when preempted / interrupted; otherwise the first failure's code, and the
# other processes are stopped then (they would wait for the failed one in a collective).
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_PROCESSES train|eval|predict ARGS..." >&2
  exit 2
fi
N=$1
shift
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NUM_PROCESSES must be a positive integer, got '$N'" >&2
  exit 2
fi
FREE_PORT='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
PORT=${COORDINATOR_PORT:-$(${PYTHON:-python3} -c "$FREE_PORT")}
EXIT_PREEMPTED=75 EXIT_INTERRUPTED=130

pids=()
for ((i = 0; i < N; i++)); do
  extra=(--config.distributed=true "--config.coordinator_address=localhost:$PORT"
         "--config.num_processes=$N" "--config.process_id=$i")
  if [ -n "${DEVICES_PER_PROCESS:-}" ]; then
    first=$((i * DEVICES_PER_PROCESS))
    ids=$(seq -s, "$first" $((first + DEVICES_PER_PROCESS - 1)))
    extra+=("--config.local_device_ids=($ids,)")
  fi
  # shellcheck disable=SC2086  # UNIFIED_PETL may be "python -m unified_petl.cli"
  ${UNIFIED_PETL:-unified-petl} "$@" "${extra[@]}" \
    > >(trap '' TERM INT; sed -u "s/^/[process $i] /") \
    2> >(trap '' TERM INT; sed -u "s/^/[process $i] /" >&2) &
  pids+=($!)
done

forward() { kill -"$1" "${pids[@]}" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
declare -A done_pids=()
while [ "${#done_pids[@]}" -lt "$N" ]; do
  running=()
  for pid in "${pids[@]}"; do [ -z "${done_pids[$pid]:-}" ] && running+=("$pid"); done
  wait -n "${running[@]}"
  code=$?
  ended=""
  for pid in "${pids[@]}"; do  # the process wait -n reaped no longer exists
    if [ -z "${done_pids[$pid]:-}" ] && ! kill -0 "$pid" 2>/dev/null; then ended=$pid; break; fi
  done
  [ -z "$ended" ] && continue  # a signal (trapped above) interrupted the wait
  done_pids[$ended]=$code
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    if [ "$code" -ne "$EXIT_PREEMPTED" ] && [ "$code" -ne "$EXIT_INTERRUPTED" ]; then
      echo "$0: a process exited with code $code; stopping the others" >&2
      forward TERM
      sleep 5
      forward KILL
    fi
  fi
done
exit "$status"
