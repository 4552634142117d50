# Sourced by launch/slurm/*.sbatch after `cd "$RAD_HOME"`: resolve the job's rendezvous and logs from SLURM, then
# start one launch/run.sh (torchrun) per node with srun.
#
# Environment overrides (all optional):
#   NPROC_PER_NODE      ranks per node (the GPUs SLURM gave the node, else nvidia-smi's count, else 1)
#   MASTER_ADDR         node 0's address (the first host of `scontrol show hostnames`; set it where node names
#                       do not resolve)
#   MASTER_PORT         rendezvous port (20000 + job id mod 20000, so jobs sharing a node do not collide)
#   RDZV_BACKEND        c10d | static (each template picks its default)
#   LOG_DIR             per-rank logs, one folder per node (runs/slurm/<job name>-<job id>, beside the job log)
#   RAD_DIST_TIMEOUT_S  collective timeout in seconds: a rank stuck this long fails the job (600)
#   RANK_EXIT_GRACE_S   after one node's torchrun exits, the others get this long before srun kills them (60)

[ -n "${SLURM_JOB_ID:-}" ] || die "SLURM_JOB_ID is not set; submit this script with sbatch"

# HOSTS: the allocation's host names in node order (never a silent localhost: without scontrol, MASTER_ADDR must be set)
slurm_hosts() {
  HOSTS=()
  if command -v scontrol >/dev/null; then
    mapfile -t HOSTS < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-}")
  fi
  if [ ${#HOSTS[@]} = 0 ]; then
    [ -n "${MASTER_ADDR:-}" ] || die "scontrol cannot list the nodes of this job; set MASTER_ADDR to node 0's address"
    HOSTS=("${SLURM_JOB_NODELIST:-?}")
  fi
}

slurm_setup() {
  local default_backend=$1
  slurm_hosts
  export NNODES=${SLURM_NNODES:-${#HOSTS[@]}}
  export NPROC_PER_NODE=${NPROC_PER_NODE:-$(default_nproc)}
  export MASTER_ADDR=${MASTER_ADDR:-${HOSTS[0]}}
  export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  export RDZV_BACKEND=${RDZV_BACKEND:-$default_backend}
  export RDZV_ID=$SLURM_JOB_ID
  export LOG_DIR=${LOG_DIR:-runs/slurm/${SLURM_JOB_NAME:-rad}-$SLURM_JOB_ID}
  export RAD_DIST_TIMEOUT_S=${RAD_DIST_TIMEOUT_S:-600}
  export PYTHONFAULTHANDLER=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  RANK_EXIT_GRACE_S=${RANK_EXIT_GRACE_S:-60}
  need_uint NPROC_PER_NODE "$NPROC_PER_NODE" 1
  need_uint MASTER_PORT "$MASTER_PORT" 1
  need_uint RANK_EXIT_GRACE_S "$RANK_EXIT_GRACE_S" 1
  mkdir -p "$LOG_DIR"
  echo "[$(date '+%F %T')] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $NNODES node(s) x" \
       "$NPROC_PER_NODE rank(s) on ${HOSTS[*]}; $RDZV_BACKEND rendezvous at $MASTER_ADDR:$MASTER_PORT;" \
       "collective timeout ${RAD_DIST_TIMEOUT_S}s; per-rank logs in $LOG_DIR/node<i>/"
}

# srun_nodes COMMAND [ARGS...]: one task per node, each running launch/run.sh as node $SLURM_NODEID. One node
# failing kills the step (--kill-on-bad-exit), so a dead rank ends the job instead of leaving the rest waiting.
srun_nodes() {
  echo "[$(date '+%F %T')] on every node: $(print_cmd launch/run.sh "$@")"
  srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --wait="$RANK_EXIT_GRACE_S" \
    bash -c 'NODE_RANK=$SLURM_NODEID LOG_DIR=$LOG_DIR/node$SLURM_NODEID exec "$@"' run.sh "$RAD_HOME/launch/run.sh" "$@"
}

# out_of ARGS...: the value of --out / --out=... among ARGS (empty if none).
out_of() {
  local prev="" a
  for a in "$@"; do
    [ "$prev" = --out ] && { echo "$a"; return; }
    [[ "$a" == --out=* ]] && { echo "${a#--out=}"; return; }
    prev=$a
  done
}

# finished_earlier ARGS...: true in a requeued job (SLURM_RESTART_COUNT > 0) whose --out file exists. Commands that
# write one file atomically (probe, eval) have then finished in an earlier attempt: a file that was there before
# the first attempt would have made that attempt fail (they refuse to overwrite), and failed jobs are not requeued.
finished_earlier() {
  local out; out=$(out_of "$@")
  [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -n "$out" ] && [ -e "$out" ]
}
