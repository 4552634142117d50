#!/usr/bin/env bash
# Launch any `rad` command under torchrun, on one node or as one node of many.
#
#   launch/run.sh [--dry-run] COMMAND [CONFIG.yaml] [ARGS...]
#
# A second argument ending in .yaml/.yml becomes `--config CONFIG` (distill, pipeline and the other config-driven
# commands); everything else goes to `rad COMMAND` unchanged (`a.b=c` overrides, or the flags of verify, probe, ...).
# --dry-run prints the command line instead of running it. docs/launch.md has worked examples.
#
# Environment (single-node defaults):
#   NNODES          nodes in the job (1)
#   NPROC_PER_NODE  ranks on this node (the GPUs SLURM gave it or nvidia-smi sees; 1 without GPUs)
#   MASTER_ADDR     rendezvous host: node 0's address (127.0.0.1)
#   MASTER_PORT     rendezvous port (29500; 0 on one node = any free port)
#   NODE_RANK       this node's index; used by the static rendezvous only (0)
#   RDZV_BACKEND    c10d (torchrun numbers the nodes itself) | static (node i = NODE_RANK) (c10d)
#   RDZV_ID         rendezvous id, the same on every node (SLURM_JOB_ID, else rad)
#   RDZV_TIMEOUT_S  how long a node waits for the others to join before failing (300)
#   LOG_DIR         per-rank stdout/stderr under LOG_DIR/<run>/attempt_<n>/<local rank>/, also tee'd to the
#                   console with a [rankN] prefix (unset: ranks write to the console directly)
#   TORCHRUN        launcher executable (default: python -m rad_megatron.torchrun with the checkout's .venv python if
#                   present, else python3: torchrun whose exit status is the failing rank's `rad` status, 2 for bad
#                   input and 3 for a run stopped by a fault, instead of torchrun's 1 and its traceback)
# RAD_DIST_TIMEOUT_S (collective timeout, read by rad_megatron.distributed.init) passes through unchanged.
set -euo pipefail
# shellcheck disable=SC2034  # read by die() in lib.sh
RAD_LAUNCHER=run.sh
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
[ $# -ge 1 ] || die "usage: launch/run.sh [--dry-run] COMMAND [CONFIG.yaml] [ARGS...]"
command=$1; shift
[[ "$command" =~ ^[a-z][a-z0-9_-]*$ ]] || die "COMMAND '$command' is not a rad command name (e.g. distill, probe)"
rad_args=("$command")
if [ $# -ge 1 ] && [[ "$1" =~ \.ya?ml$ ]] && [[ "$1" != -* ]]; then
  rad_args+=(--config "$1"); shift
fi
rad_args+=("$@")

NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(default_nproc)}
NODE_RANK=${NODE_RANK:-0}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-rad}}
RDZV_TIMEOUT_S=${RDZV_TIMEOUT_S:-300}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
if [ "$NNODES" = 1 ]; then MASTER_PORT=${MASTER_PORT:-0}; else MASTER_PORT=${MASTER_PORT:-29500}; fi
if [ -n "${TORCHRUN:-}" ]; then launcher=("$TORCHRUN"); else launcher=("$(default_python)" -m rad_megatron.torchrun); fi

need_uint NNODES "$NNODES" 1
need_uint NPROC_PER_NODE "$NPROC_PER_NODE" 1
need_uint NODE_RANK "$NODE_RANK" 0
need_uint MASTER_PORT "$MASTER_PORT" 0
need_uint RDZV_TIMEOUT_S "$RDZV_TIMEOUT_S" 1
[ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES; set it to this node's index"
[ "$MASTER_PORT" -gt 0 ] || [ "$NNODES" = 1 ] || die "MASTER_PORT=0 works on one node only; give every node the same port"
[ -n "$MASTER_ADDR" ] || die "MASTER_ADDR is empty; set it to node 0's address"

cmd=()
if [ -n "${LOG_DIR:-}" ]; then
  # tee'd lines carry the global rank, so one job log shows which rank said what
  cmd+=(env 'TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE=[rank${rank}]: ')
fi
cmd+=("${launcher[@]}" "--nnodes=$NNODES" "--nproc-per-node=$NPROC_PER_NODE")
case "$RDZV_BACKEND" in
  c10d)
    cmd+=(--rdzv-backend=c10d "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT" "--rdzv-id=$RDZV_ID"
          "--rdzv-conf=join_timeout=$RDZV_TIMEOUT_S") ;;
  static)
    cmd+=(--rdzv-backend=static "--rdzv-id=$RDZV_ID" "--node-rank=$NODE_RANK" "--master-addr=$MASTER_ADDR" "--master-port=$MASTER_PORT"
          "--rdzv-conf=timeout=$RDZV_TIMEOUT_S") ;;
  *) die "RDZV_BACKEND=$RDZV_BACKEND must be c10d or static" ;;
esac
# no elastic restarts: a failed rank fails the job (SLURM requeues it and the run resumes from its checkpoint)
cmd+=(--max-restarts=0)
if [ -n "${LOG_DIR:-}" ]; then
  cmd+=("--log-dir=$LOG_DIR" --tee=3)
fi
cmd+=(-m rad_megatron "${rad_args[@]}")

if [ $dry_run = 1 ]; then
  print_cmd "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
