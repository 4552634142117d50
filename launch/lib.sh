# Shell helpers shared by launch/run.sh and the SLURM templates (sourced, never run).
# Errors are one line naming the variable and the fix, exit status 2 (the `rad` CLI's convention for bad input).

die() {
  echo "${RAD_LAUNCHER:-launch}: error: $*" >&2
  exit 2
}

# need_uint NAME VALUE MIN: VALUE is an integer >= MIN, else a one-line error naming NAME.
need_uint() {
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || die "$1=$2 must be an integer >= $3"
}

# Where the checkout is (the folder holding launch/).
rad_home() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# The checkout's venv if it has one (a `make install` checkout), else whatever is on PATH (the Docker image).
default_python() {
  local home; home=$(rad_home)
  if [ -x "$home/.venv/bin/python" ]; then echo "$home/.venv/bin/python"; else echo python3; fi
}

# Ranks per node: the GPUs SLURM gave this node, else the GPUs nvidia-smi sees, else 1 (CPU).
default_nproc() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE}" -gt 0 ] 2>/dev/null; then
    echo "$SLURM_GPUS_ON_NODE"
    return
  fi
  local n=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  if [ "${n:-0}" -gt 0 ]; then echo "$n"; else echo 1; fi
}

# Print one argument so that bash reads it back unchanged (plain words stay bare, the rest is single-quoted).
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command line as one printable line.
print_cmd() {
  local first=1 a
  for a in "$@"; do
    [ $first -eq 1 ] || printf ' '
    shell_quote "$a"
    first=0
  done
  printf '\n'
}
