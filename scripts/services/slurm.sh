# Slurm 22.05, one node that is both controller and worker, with munge for authentication
# (sourced by scripts/services-up.sh and scripts/services-down.sh).
#
# Without systemd and cgroups: processes are tracked by parentage (proctrack/linuxproc),
# tasks are not confined (task/none), and there is no accounting database, so sacct does
# not work; squeue --states=all shows a finished job for MinJobAge (300 s) after its end.
#
# The node declares SLURM_TEST_CPUS (8) CPUs whatever the machine has: the tests' jobs
# mostly wait (sleep, small files), and 8 slots let several of them run at once on a
# 2-core test machine. Memory and /tmp are declared as the machine has them, so that
# --mem and --tmp requests are checked against real figures.
ALL_SERVICES+=(slurm)

SLURM_CONF=/etc/slurm/slurm.conf
SLURM_PARTITION=runwatch
SLURM_TEST_CPUS=8
SLURM_MARKER="# written by runwatch scripts/services/slurm.sh"
SLURMCTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
MUNGED_PIDFILE=/run/munge/munged.pid

install_slurm() { apt_install munge slurm-wlm; }

# The pid in a pid file (services-up.sh has no pid_in of its own).
slurm_pid_in() { as_root cat "$1" 2>/dev/null || true; }

slurm_running() { local pid; pid=$(slurm_pid_in "$1"); [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null; }

# Our slurm.conf, unless the machine has one of its own (then it is used as it is).
slurm_write_conf() {
  if [ -e "$SLURM_CONF" ] && ! grep -qxF "$SLURM_MARKER" "$SLURM_CONF"; then
    log "slurm: keeping the machine's own $SLURM_CONF"
    return 0
  fi
  local host memory_mb tmp_mb
  host=$(hostname -s)
  memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  tmp_mb=$(df -Pm /tmp | awk 'NR == 2 {print int($4 * 0.9)}')
  as_root install -d /etc/slurm
  as_root tee "$SLURM_CONF" >/dev/null <<EOF
$SLURM_MARKER
ClusterName=runwatch
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets this much per CPU, not the whole node.
DefMemPerCPU=256
# The declared CPUs, not the machine's (see the top of scripts/services/slurm.sh).
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
TmpFS=/tmp
NodeName=$host NodeAddr=127.0.0.1 CPUs=$SLURM_TEST_CPUS RealMemory=$memory_mb TmpDisk=$tmp_mb State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
  if ! slurm_running "$MUNGED_PIDFILE"; then
    as_root test -s /etc/munge/munge.key || as_root mungekey --create
    as_root install -d -o munge -g munge -m 0755 /run/munge
    as_root runuser -u munge -- /usr/sbin/munged
    wait_for 30 as_root munge -n || die "munged did not start; see /var/log/munge/"
    log "slurm: started munged"
  fi
  if as_root scontrol ping 2>/dev/null | grep -q "is UP"; then
    log "slurm: already running"
    # A test interrupted while it had the node DOWN leaves it so: put it back in service.
    if ! slurm_node_ready; then
      as_root scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
      wait_for 60 slurm_node_ready || die "Slurm's node is not in service; see sinfo -R"
    fi
  else
    slurm_write_conf
    as_root install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
    as_root install -d /var/lib/slurm/slurmd
    slurm_running "$SLURMCTLD_PIDFILE" || as_root slurmctld
    slurm_running "$SLURMD_PIDFILE" || as_root slurmd
    wait_for 60 slurm_node_ready || die "Slurm's node did not become idle; see /var/log/slurm/"
    log "slurm: started $(sinfo -V)"
  fi
}

slurm_node_ready() { sinfo -h -o %T | grep -Eqx "idle|mixed|allocated"; }

# Run by services-down.sh, which defines stop_pid and pid_in.
stop_slurm() {
  stop_pid "$(pid_in "$SLURMD_PIDFILE")"
  stop_pid "$(pid_in "$SLURMCTLD_PIDFILE")"
  stop_pid "$(pid_in "$MUNGED_PIDFILE")"
  log "slurm: stopped"
}

# The default partition (ours, or the machine's own configuration's).
env_slurm() {
  local partition
  partition=$(sinfo -h -o %P 2>/dev/null | sed -n 's/\*$//p' | head -n 1)
  echo "RUNWATCH_TEST_SLURM_PARTITION=${partition:-$SLURM_PARTITION}"
}
