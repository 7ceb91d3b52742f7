#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying and testing `tools/sweep.py --executor slurm`.
#
#   bash tools/slurm_local.sh start    # munged, slurmctld and slurmd; waits until the node is idle
#   bash tools/slurm_local.sh status   # daemons, node state, queue
#   bash tools/slurm_local.sh stop
#
# Everything (slurm.conf, munge key and socket, spool, logs, pid files) lives in one folder owned
# by this script: $SLURM_LOCAL_DIR (default: /tmp/slurm_local). The system's /etc/slurm and
# /etc/munge are neither read nor changed, so the client commands need the printed
#   export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
# The node has this machine's CPUs and no GPUs (submit with --gpus-per-job 0). Ports:
# $SLURM_LOCAL_PORT (slurmctld, default 6817) and the next one (slurmd). Needs the Debian packages
# slurm-wlm and munge; start/stop are idempotent. Exit codes: 0 ok, 2 usage, 3 packages missing,
# 4 a daemon did not come up (its log is printed).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm_local}
PORT=${SLURM_LOCAL_PORT:-6817}
CONF="$DIR/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
export SLURM_CONF="$CONF"

die() {  # MESSAGE [EXIT_CODE, default 2]
    echo "Error: $1" >&2
    exit "${2:-2}"
}

pid_alive() {  # pid file of a daemon started here -> true while that process runs
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

require_packages() {
    local missing=()
    for tool in munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol srun; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "Slurm or MUNGE is not installed (missing: ${missing[*]}). Install them with:
  apt-get update && apt-get install -y slurm-wlm munge" 3
}

write_config() {
    local host cpus memory user
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    user=$(id -un)
    mkdir -p "$DIR"/{munge,ctld,spool,log,run}
    chmod 700 "$DIR/munge"
    # No cgroups, accounting or GPUs: a node that runs plain processes and shares its CPUs.
    cat > "$CONF.tmp" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

show_log_and_die() {  # NAME LOG
    echo "Error: $1 did not start. Last lines of $2:" >&2
    tail -n 20 "$2" >&2 2>/dev/null || echo "(no log written)" >&2
    exit 4
}

start_munged() {
    pid_alive "$DIR/run/munged.pid" && return
    [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
    chmod 600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" >/dev/null 2>&1 || show_log_and_die munged "$DIR/log/munged.log"
}

wait_for() {  # SECONDS COMMAND... -> true once COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

node_idle() {
    local state
    state=$(sinfo --noheader --format=%T)
    # A node left drained or down by an earlier unclean stop is put back into service.
    case "$state" in
        *down* | *drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 ;;
    esac
    [ "$state" = idle ]
}

start() {
    require_packages
    if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && scontrol ping >/dev/null 2>&1; then
        echo "The local Slurm is already running ($CONF)."
    else
        write_config
        start_munged
        pid_alive "$DIR/run/slurmctld.pid" ||
            slurmctld -f "$CONF" >/dev/null 2>&1 || show_log_and_die slurmctld "$DIR/log/slurmctld.log"
        wait_for 30 scontrol ping || show_log_and_die slurmctld "$DIR/log/slurmctld.log"
        pid_alive "$DIR/run/slurmd.pid" ||
            slurmd -f "$CONF" >/dev/null 2>&1 || show_log_and_die slurmd "$DIR/log/slurmd.log"
        wait_for 60 node_idle || show_log_and_die "slurmd (node not idle after 60 s)" "$DIR/log/slurmd.log"
        echo "The local Slurm is up: partition 'debug', one node with $(nproc) CPUs, no GPUs."
    fi
    echo "Use it with: export SLURM_CONF=$CONF"
}

stop() {
    local stopped=0
    for daemon in slurmd slurmctld munged; do
        local pidfile="$DIR/run/$daemon.pid" pid
        if pid_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            wait_for 20 bash -c "! kill -0 $pid 2>/dev/null" ||
                echo "Warning: $daemon (pid $pid) is still running." >&2
            stopped=1
        fi
        rm -f "$pidfile"
    done
    [ $stopped = 1 ] && echo "The local Slurm is stopped." || echo "The local Slurm was not running."
}

status() {
    local up=1
    for daemon in munged slurmctld slurmd; do
        if pid_alive "$DIR/run/$daemon.pid"; then
            echo "$daemon: running (pid $(cat "$DIR/run/$daemon.pid"))"
        else
            echo "$daemon: not running"
            up=0
        fi
    done
    if [ $up = 1 ]; then
        echo "SLURM_CONF=$CONF"
        sinfo
        squeue
    else
        echo "Start it with: bash tools/slurm_local.sh start"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: bash tools/slurm_local.sh start|stop|status (state folder: \$SLURM_LOCAL_DIR, default /tmp/slurm_local)" ;;
esac
