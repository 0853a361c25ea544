#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for trying and testing the `slurm` launcher.
#
#   tools/slurm_local.sh up      install Debian's slurm-wlm and munge if missing, write a
#                                  one-node slurm.conf for this host, start munged, slurmctld and
#                                  slurmd, and wait until `sinfo` shows the node idle
#   tools/slurm_local.sh down    stop slurmctld, slurmd and munged
#   tools/slurm_local.sh status  exit 0 if the node answers and is idle or busy, 1 otherwise
#
# `up` is idempotent: on a cluster already up with the same configuration it only checks it.
# The node has all of this machine's CPUs and memory (as `slurmd -C` measures them) in one
# partition, `debug`; jobs run as the user who submits them. Debian/Ubuntu only; needs root
# (or sudo) to install packages, write /etc/slurm and start the daemons.
set -euo pipefail

PARTITION=debug
CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
READY_TIMEOUT_S=60

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "slurm_local.sh: needs root or sudo" >&2; exit 2; }
    SUDO=(sudo)
fi

say() { echo "slurm_local.sh: $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sinfo >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurm-wlm munge >/dev/null
}

node_line() {
    # `slurmd -C` prints this machine's node definition as slurmd itself will measure it, so
    # the configuration never claims more CPUs or memory than the node reports.
    slurmd -C | head -n 1
}

write_conf() {
    local host node cpus memory
    host=$(hostname -s)
    node=$(node_line)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    local wanted
    wanted=$(cat <<EOF
# Written by tools/slurm_local.sh: a one-node cluster on $host.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus))
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$wanted" ]; then
        return 1  # unchanged
    fi
    "${SUDO[@]}" mkdir -p "$(dirname "$CONF")" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    printf '%s\n' "$wanted" | "${SUDO[@]}" tee "$CONF" >/dev/null
    return 0
}

running() {  # running <pidfile>
    [ -f "$1" ] && "${SUDO[@]}" kill -0 "$(cat "$1")" 2>/dev/null
}

start_munge() {
    if running /run/munge/munged.pid; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        "${SUDO[@]}" mungekey --create --force
    fi
    "${SUDO[@]}" mkdir -p /run/munge /var/log/munge /var/lib/munge
    "${SUDO[@]}" chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    "${SUDO[@]}" chmod 0400 /etc/munge/munge.key
    "${SUDO[@]}" runuser -u munge -- /usr/sbin/munged
}

stop_daemon() {  # stop_daemon <pidfile>
    local pid
    running "$1" || return 0
    pid=$(cat "$1")
    "${SUDO[@]}" kill "$pid"
    for _ in $(seq 100); do
        "${SUDO[@]}" kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    "${SUDO[@]}" kill -9 "$pid" 2>/dev/null || true
}

node_state() {
    sinfo -h -N -p "$PARTITION" -o %t 2>/dev/null | head -n 1
}

node_ready() {
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

up() {
    install_packages
    local changed=0
    write_conf && changed=1
    start_munge
    if [ "$changed" = 1 ]; then
        stop_daemon /run/slurmd.pid
        stop_daemon /run/slurmctld.pid
    fi
    running /run/slurmctld.pid || "${SUDO[@]}" slurmctld
    running /run/slurmd.pid || "${SUDO[@]}" slurmd
    local waited=0 state
    until node_ready; do
        state=$(node_state)
        case "$state" in
            down* | drain* | drng*)
                "${SUDO[@]}" scontrol update nodename="$(hostname -s)" state=resume \
                    >/dev/null 2>&1 || true ;;
        esac
        if [ "$waited" -ge "$READY_TIMEOUT_S" ]; then
            echo "slurm_local.sh: the node is not idle after ${READY_TIMEOUT_S}s" \
                "(state: ${state:-unknown}); see $LOG_DIR/slurmctld.log and slurmd.log:" >&2
            "${SUDO[@]}" tail -n 5 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "up: partition $PARTITION on $(hostname -s), node $(node_state)"
}

down() {
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
    stop_daemon /run/munge/munged.pid
    say "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) command -v sinfo >/dev/null && node_ready ;;
    *)
        echo "usage: tools/slurm_local.sh up|down|status" >&2
        exit 2 ;;
esac
