#!/usr/bin/env bash
# A single-node Slurm cluster with accounting on this machine, to try the slurm profile without a
# real cluster (Debian / Ubuntu, as root):
#
#   workflow/profiles/slurm/local-cluster.sh up       # install what is missing, configure, start
#   workflow/profiles/slurm/local-cluster.sh status   # exit 0 when sbatch and sacct work
#   workflow/profiles/slurm/local-cluster.sh down     # stop what `up` started
#
# `up` installs slurm-wlm, slurmdbd, mariadb-server and munge (apt) when missing; writes a munge key
# if there is none, a `slurm_acct_db` database and user in MariaDB, slurmdbd.conf (accounting in
# MariaDB: snakemake-executor-plugin-slurm reads job states with sacct, so accounting is required) and
# slurm.conf (one node with every CPU of this machine and 90% of its memory, one default partition);
# registers the cluster, an account and the user with sacctmgr; starts munged, mariadbd, slurmdbd,
# slurmctld and slurmd (with systemctl where systemd runs, else directly: containers) and waits until
# the node is idle. Running it again changes nothing. It never overwrites a slurm.conf or
# slurmdbd.conf it did not write (a real cluster's). `down` stops only the daemons `up` started and
# keeps packages, configuration and the accounting database, so a later `up` takes seconds.
set -euo pipefail

CLUSTER="${PETLPRUNE_SLURM_CLUSTER:-petlprune}"   # Slurm ClusterName
ACCOUNT="${PETLPRUNE_SLURM_ACCOUNT:-petlprune}"   # the sacctmgr account the user submits under
PARTITION="${PETLPRUNE_SLURM_PARTITION:-local}"
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)
ETC=/etc/slurm
STATE=/var/lib/petlprune-local-cluster            # which daemons `up` started (for `down`)
MARK="# written by petlprune workflow/profiles/slurm/local-cluster.sh"
DAEMONS=(munge mariadb slurmdbd slurmctld slurmd) # start order; `down` stops in reverse

say() { printf 'local-cluster: %s\n' "$*"; }
die() { printf 'local-cluster: %s\n' "$*" >&2; exit 1; }
have_systemd() { [ -d /run/systemd/system ]; }

pidfile() {
    case "$1" in
        munge) echo /run/munge/munged.pid ;;
        mariadb) echo /run/mysqld/mysqld.pid ;;
        *) echo "/run/$1.pid" ;;
    esac
}

running() {  # the daemon's pid file names a live process
    local pf; pf="$(pidfile "$1")"
    [ -s "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds="$1" what="$2"; shift 2
    local i
    for ((i = 0; i < seconds * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not come up within ${seconds}s (logs: /var/log/slurm/, /var/log/munge/, /var/log/mysql/)"
}

check_host() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"
    command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu)"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # no package lists yet (a fresh container): fetch them first
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# Refuse to touch a configuration someone else wrote (a real cluster's).
ours_or_absent() { [ ! -e "$1" ] || grep -qF "$MARK" "$1"; }

write_if_changed() {  # write_if_changed PATH MODE OWNER < content
    local path="$1" mode="$2" owner="$3" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [ -e "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return 0; fi
    install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$path"
    rm -f "$tmp"
    CHANGED=1
    say "wrote $path"
}

db_password() {  # one random password, kept with the state so that slurmdbd.conf stays the same
    local f="$STATE/db-password"
    [ -s "$f" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
    cat "$f"
}

configure() {
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    # below the machine's memory, or slurmd drains the node ("Low RealMemory")
    mem_mb="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    ours_or_absent "$ETC/slurm.conf" || die "$ETC/slurm.conf exists and was not written by this script; not touching it"
    ours_or_absent "$ETC/slurmdbd.conf" || die "$ETC/slurmdbd.conf exists and was not written by this script; not touching it"
    mkdir -p "$ETC" /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
    chown slurm:slurm /var/log/slurm /var/lib/slurm/slurmctld

    write_if_changed "$ETC/slurmdbd.conf" 600 slurm <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$(pidfile slurmdbd)
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF

    write_if_changed "$ETC/slurm.conf" 644 root <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups needed (containers): track processes through /proc, no task confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# CPUs and memory are consumable: a job's --cpus-per-task and --mem decide what shares the node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# sacct shows each job's --comment: the plugin writes the rule and wildcards there
AccountingStoreFlags=job_comment
# finished jobs stay visible to squeue/scontrol for a day (sacct keeps them for good)
MinJobAge=86400
# a job runs at the nice value of the sbatch that submitted it: a niced snakemake stays nice
PropagatePrioProcess=1
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {  # start DAEMON: with systemd where it runs, else the daemon itself
    local d="$1"
    if have_systemd; then
        systemctl is-active --quiet "$d" && return 0
        systemctl start "$d"
    else
        running "$d" && return 0
        case "$d" in
            munge)
                mkdir -p /run/munge /var/log/munge /var/lib/munge
                chown munge:munge /run/munge /var/log/munge /var/lib/munge
                runuser -u munge -- /usr/sbin/munged ;;
            mariadb)
                mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
                setsid /usr/bin/mysqld_safe --pid-file="$(pidfile mariadb)" >/dev/null 2>&1 < /dev/null & ;;
            *) "/usr/sbin/$d" ;;  # slurmdbd, slurmctld, slurmd daemonize and write their pid file
        esac
    fi
    mkdir -p "$STATE" && touch "$STATE/started-$d"
    say "started $d"
}

stop() {
    local d="$1" pf pid i
    [ -e "$STATE/started-$d" ] || return 0
    if have_systemd; then
        systemctl stop "$d" || true
    elif running "$d"; then
        pf="$(pidfile "$d")"; pid="$(cat "$pf")"
        kill "$pid"
        for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && die "$d (pid $pid) did not stop"
    fi
    rm -f "$STATE/started-$d"
    say "stopped $d"
}

sacctmgr_add() {  # idempotent: `sacctmgr add` of an existing entity exits non-zero, so ask first
    local kind="$1" name="$2"; shift 2
    if [ -z "$(sacctmgr -n -P show "$kind" "$name" format="$kind" 2>/dev/null)" ]; then
        sacctmgr -i add "$kind" "$name" "$@" >/dev/null
        say "sacctmgr: added $kind $name"
    fi
}

node_ready() { sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)$'; }

up() {
    local d
    check_host
    install_packages
    mkdir -p "$STATE"
    CHANGED=0
    configure
    if [ "$CHANGED" -eq 1 ]; then  # running slurm daemons read the new configuration on a restart
        for d in slurmd slurmctld slurmdbd; do
            if running "$d" || { have_systemd && systemctl is-active --quiet "$d"; }; then
                [ -e "$STATE/started-$d" ] || die "$d runs but was not started by this script; not restarting it"
                stop "$d"
            fi
        done
    fi
    start munge
    wait_for 20 munged munge -n
    start mariadb
    wait_for 60 mariadbd mariadb -e 'select 1'
    mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(db_password)';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(db_password)';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    start slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster
    sacctmgr_add cluster "$CLUSTER"
    sacctmgr_add account "$ACCOUNT" Cluster="$CLUSTER" Description=petlprune Organization=petlprune
    local u
    for u in root ${SUDO_USER:-}; do
        sacctmgr_add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT"
    done
    start slurmctld
    wait_for 60 slurmctld scontrol ping
    start slurmd
    # a node left DOWN by an earlier stop comes back (ReturnToService=2 covers most cases)
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 60 "the node (sinfo)" node_ready
    say "up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
}

down() {
    check_host
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[$i]}"; done
    say "down"
}

status() {
    local d ok=0
    for d in "${DAEMONS[@]}"; do
        if { have_systemd && systemctl is-active --quiet "$d"; } || running "$d"; then
            say "$d: running"
        else
            say "$d: not running"
        fi
    done
    command -v sinfo >/dev/null || { say "no Slurm client commands (sinfo, sbatch)"; return 1; }
    node_ready || { say "no usable node (sinfo)"; ok=1; }
    sacct -n -X -S now >/dev/null 2>&1 || { say "sacct does not answer (slurmdbd)"; ok=1; }
    [ "$ok" -eq 0 ] && say "usable: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
    return "$ok"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
