#!/usr/bin/env bash
# A throwaway SLURM cluster on this host, for testing launch/slurm/*.sbatch: munged + slurmctld + N slurmd,
# all on 127.0.0.1, all state under BASE (nothing in /etc is read or written). Needs root (Debian packages,
# slurmd runs jobs as root); installs slurmctld/slurmd/slurm-client/munge with apt when they are missing.
#
#   tools/slurm_up.sh BASE [NODES]        then: export SLURM_CONF=BASE/etc/slurm.conf; sbatch --wait ...
#   tools/slurm_down.sh BASE              stops it (by PID file only)
#
# Exit status: 0 up; 3 cannot install (not root, no apt-get, apt failed); 4 the daemons did not come up.
# Ports: RAD_SLURM_CTLD_PORT (16817) and RAD_SLURM_SLURMD_PORT (16818; node i listens on that + i - 1).
# Node names (node1..N) do not resolve: give jobs MASTER_ADDR=127.0.0.1.
set -euo pipefail
BASE=${1:?usage: tools/slurm_up.sh BASE [NODES]}
NODES=${2:-1}
CTLD_PORT=${RAD_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${RAD_SLURM_SLURMD_PORT:-16818}
CPUS=${RAD_SLURM_CPUS:-$(nproc)}
mkdir -p "$BASE"
BASE=$(cd "$BASE" && pwd)

have_slurm() {
  command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged && command -v mungekey
} >/dev/null 2>&1

if ! have_slurm; then
  [ "$(id -u)" = 0 ] || { echo "slurm_up: SLURM is not installed and installing it needs root" >&2; exit 3; }
  command -v apt-get >/dev/null || { echo "slurm_up: SLURM is not installed and there is no apt-get" >&2; exit 3; }
  # without recommends: 8 small packages instead of ~40 (hdf5, rrd, ...); postinst starts no service here
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           slurmctld slurmd slurm-client munge; } >"$BASE/apt.log" 2>&1; then
    echo "slurm_up: apt-get could not install SLURM; see $BASE/apt.log" >&2
    tail -n 5 "$BASE/apt.log" >&2
    exit 3
  fi
fi
[ "$(id -u)" = 0 ] || { echo "slurm_up: slurmd must run as root here (no cgroups, SlurmdUser=root)" >&2; exit 3; }

M="$BASE/munge"
mkdir -p "$BASE"/{etc,state,run,log,spool} "$M"/{etc,run,log,lib}
chmod 700 "$M/etc" "$M/lib" "$M/log"
chmod 755 "$M/run"
# munged wants every folder above its socket searchable by all; BASE may sit in a private folder (pytest's tmp),
# so the socket gets its own folder under /tmp, recorded for slurm_down.sh
SOCKDIR=$(mktemp -d /tmp/rad-munge-XXXXXX)
chmod 755 "$SOCKDIR"
echo "$SOCKDIR" >"$M/socket_dir"
SOCK="$SOCKDIR/munge.socket.2"
# our own key and socket, so a system munged (if any) is neither used nor disturbed
[ -f "$M/etc/munge.key" ] || mungekey --create --keyfile="$M/etc/munge.key"
munged --key-file="$M/etc/munge.key" --socket="$SOCK" --pid-file="$M/run/munged.pid" \
  --log-file="$M/log/munged.log" --seed-file="$M/lib/munged.seed" \
  || { echo "slurm_up: munged did not start; see $M/log/munged.log" >&2; exit 4; }

CONF="$BASE/etc/slurm.conf"
{
  cat <<CONF
ClusterName=radtest
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
# no cgroups, no accounting database: nothing outside BASE is needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# MinJobAge <= 5 keeps 'sbatch --wait' polling every 2 s instead of backing off to 32 s
MinJobAge=5
# a job asking for more nodes than exist fails at submission instead of pending forever
EnforcePartLimits=ALL
KillWait=5
Waittime=0
CONF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i - 1)) CPUs=$CPUS RealMemory=1000 State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} >"$CONF"

slurmctld -f "$CONF" || { echo "slurm_up: slurmctld did not start; see $BASE/log/slurmctld.log" >&2; exit 4; }
for i in $(seq 1 "$NODES"); do
  mkdir -p "$BASE/spool/node$i"
  slurmd -f "$CONF" -N "node$i" || { echo "slurm_up: slurmd node$i did not start; see $BASE/log" >&2; exit 4; }
done

export SLURM_CONF="$CONF"
for _ in $(seq 1 300); do
  idle=$(sinfo -h -t idle -o '%D' 2>/dev/null | head -n1 || true)
  if [ "${idle:-0}" = "$NODES" ]; then
    echo "slurm up: $NODES node(s) idle; export SLURM_CONF=$CONF"
    exit 0
  fi
  sleep 0.1
done
echo "slurm_up: the nodes did not become idle in 30 s; see $BASE/log" >&2
sinfo -N >&2 || true
exit 4
