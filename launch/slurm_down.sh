#!/usr/bin/env bash
# Stops the one-node cluster started by launch/slurm_up.sh (slurmd, slurmctld; munged with --munge).
set -uo pipefail
STATE="${1:-${SLURM_STATE_DIR:-/tmp/rnn_jax_slurm}}"
for name in slurmd slurmctld; do
  pidfile="$STATE/$name.pid"
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
done
if [ "${2:-}" = "--munge" ]; then pkill -x munged || true; fi
echo "slurm down ($STATE)" >&2
