#!/usr/bin/env bash
# Stop the cluster tools/slurm_up.sh BASE started: cancel its jobs, then stop its daemons by their PID files
# (never by name, so nothing else on the host is touched). Safe to run twice or after a failed start.
set -uo pipefail
BASE=${1:?usage: tools/slurm_down.sh BASE}
export SLURM_CONF="$BASE/etc/slurm.conf"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# SIGTERM every live PID file's process at once, wait up to 10 s, then SIGKILL what is left
stop() {
  local f p pids=()
  for f in "$@"; do alive "$f" && pids+=("$(cat "$f")"); done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null
  for _ in $(seq 1 100); do
    local left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

# jobs first, so their slurmstepd and task processes end while slurmd is still there to reap them
if alive "$BASE/run/slurmctld.pid"; then
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 150); do
    [ -z "$(squeue -h -t running,completing,pending -o '%i' 2>/dev/null)" ] && break
    sleep 0.1
  done
fi
stop "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid"
stop "$BASE/munge/run/munged.pid"
sockdir=$(cat "$BASE/munge/socket_dir" 2>/dev/null || true)
case "$sockdir" in /tmp/rad-munge-*) rm -rf "$sockdir" ;; esac
echo "slurm down ($BASE)"
