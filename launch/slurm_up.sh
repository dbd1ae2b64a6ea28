#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1 for laptops and CI, without systemd.
#
#   export SLURM_CONF=$(bash launch/slurm_up.sh [STATE_DIR])   # installs slurm-wlm + munge if
#                      # missing, starts munged, slurmctld and slurmd; prints the config's path
#   bash launch/slurm_down.sh [STATE_DIR] [--munge]            # stops them by pid
#
# Choices that matter on a container or VM (measured on Debian 12, slurm-wlm 22.05):
# - cgroup plugins fail here ("freezer not mounted"): ProctrackType=proctrack/linuxproc and
#   TaskPlugin=task/none.
# - munged refuses a key that is not owned by the munge user or is readable by others (0600).
# - The node is named localhost with NodeAddr=127.0.0.1: no hostname lookups.
# - CPUs and memory come from `slurmd -C`; DefMemPerCPU keeps one job from taking the whole node.
# - FirstJobId moves with the clock, so job ids do not restart at 1 after a cold start.
# - AuthInfo=cred_expire=10: a requeued job waits 10 s instead of 120 s.
# - No accounting daemon: sweeps read their state from run directories, never from sacct.
set -euo pipefail
STATE="${1:-${SLURM_STATE_DIR:-/tmp/rnn_jax_slurm}}"
mkdir -p "$STATE"/{spool,state,log}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } >&2
fi

# munge: a key owned by munge, mode 0600, and the daemon's directories
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge && chmod 0600 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi
if [ -s "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
  echo "slurm is already running with $STATE/slurm.conf" >&2
  echo "$STATE/slurm.conf"
  exit 0
fi

# the node's CPUs and memory, as slurmd sees them
read -r CPUS MEM < <(slurmd -C | awk '{for(i=1;i<=NF;i++){split($i,a,"="); v[a[1]]=a[2]}} /NodeName/ {print v["CPUs"], v["RealMemory"]}')
MEM=$(( MEM * 9 / 10 ))
cat > "$STATE/slurm.conf" <<CONF
ClusterName=rnnjax
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM / CPUS ))
FirstJobId=$(( $(date +%s) % 1000000 + 1 ))
MaxArraySize=100001
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm up: SLURM_CONF=$SLURM_CONF ($CPUS CPUs, ${MEM} MB)" >&2
    echo "$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up; see $STATE/log" >&2
exit 1
