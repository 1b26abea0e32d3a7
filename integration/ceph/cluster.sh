#!/usr/bin/env bash
# A throwaway one-node Ceph cluster for tests: one mon, one OSD, a pool `rbd`
# of size 1, no mgr, everything on 127.0.0.1 and everything under one directory.
#
#   cluster.sh start DIR [--bluestore] [--port-base N] [--owner-pid PID]
#   cluster.sh stop DIR          stop both daemons (by recorded PID), keep DIR
#   cluster.sh stop-osd DIR      stop the OSD and make sure the mon sees it down
#   cluster.sh start-osd DIR     start it again and wait until the pool takes I/O
#   cluster.sh status DIR        PIDs and `ceph osd stat`; exit 0 if both run
#
# `start` wants DIR empty or missing and writes DIR/env (shell syntax, one
# KEY=value a line) for clients:
#   CEPH_CONF      DIR/ceph.conf (librados, `rbd` and `ceph` read it from the env)
#   CEPH_KEYRING   DIR/keyring (holds client.admin)
#   CEPH_ID        admin (the client id, without "client.")
#   CEPH_POOL      rbd
#   CEPH_MON_HOST  the mon addresses
#   CEPH_PORT_BASE N (mon v2 on N, v1 on N+1, the OSD binds within N+2..N+63)
#   CEPH_STORE     memstore or bluestore
# The OSD keeps data in RAM by default (memstore: lost when the OSD restarts,
# about twice the data written in RSS); --bluestore puts it on a 4 GiB sparse file
# DIR/osd/block.file instead, and survives stop-osd/start-osd.
# Without --port-base a free base is picked (nothing listening on N..N+63).
# With --owner-pid, a watcher (under setsid, PID in DIR/pids/watch.pid) stops the
# cluster when that process is gone, so a test killed by a signal leaves nothing
# running; it gives up watching after OWNER_MAX_LIFE seconds (default 7200) and
# stops the cluster then too.
#
# Daemons run in the foreground under setsid, their PIDs in DIR/pids/, logs in
# DIR/log/. Every wait is bounded; every `ceph` call runs under `timeout`
# (without a mgr some `ceph` commands hang forever).
set -euo pipefail

CEPH_TIMEOUT=20      # seconds for one `ceph`/`rados` call
START_WAIT=90        # seconds for a daemon to come up / the pool to take I/O
STOP_WAIT=20         # seconds for a daemon to exit after SIGTERM
OWNER_MAX_LIFE=${OWNER_MAX_LIFE:-7200}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need() { command -v "$1" >/dev/null || die "$1 not found (apt-get install ceph-mon ceph-osd ceph-common)"; }

# Absolute path, refusing characters that would break ceph.conf or the env file.
abs_dir() {
    local d=$1
    case $d in /*) ;; *) d="$PWD/$d" ;; esac
    [[ $d =~ ^[A-Za-z0-9_./+-]+$ ]] || die "directory path must be [A-Za-z0-9_./+-] only: $d"
    echo "${d%/}"
}

ceph_cmd() { timeout "$CEPH_TIMEOUT" ceph --conf "$DIR/ceph.conf" --connect-timeout 15 "$@"; }
rados_cmd() {
    timeout "$CEPH_TIMEOUT" rados --conf "$DIR/ceph.conf" --rados-osd-op-timeout 5 \
        --rados-mon-op-timeout 5 --client-mount-timeout 10 "$@"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
read_pid() { [[ -f $DIR/pids/$1.pid ]] && cat "$DIR/pids/$1.pid" || true; }

# Stops the daemon whose PID is recorded in DIR/pids/NAME.pid: SIGTERM, a bounded
# wait, then SIGKILL.
stop_daemon() {
    local name=$1 pid i
    pid=$(read_pid "$name")
    if ! pid_alive "$pid"; then
        rm -f "$DIR/pids/$name.pid"
        return 0
    fi
    # The PID file is ours; make sure the PID still is the daemon we started.
    if ! grep -q "ceph-" "/proc/$pid/comm" 2>/dev/null; then
        log "pid $pid of $name is no longer a ceph daemon; not killing it"
        rm -f "$DIR/pids/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_WAIT * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for ${STOP_WAIT}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$DIR/pids/$name.pid"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

pick_port_base() {
    local tries base p ok
    for ((tries = 0; tries < 50; tries++)); do
        base=$((20000 + (RANDOM % 400) * 100))
        ok=1
        for ((p = base; p < base + 64; p++)); do
            if ! port_free "$p"; then ok=0; break; fi
        done
        if ((ok)); then echo "$base"; return 0; fi
    done
    die "no free port range found"
}

write_conf() {
    local store=$1
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = $MON_HOST
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
ms bind port min = $((PORT_BASE + 2))
ms bind port max = $((PORT_BASE + 63))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keyring
run dir = $DIR/run
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false

[mon]
mon data = $DIR/mon
mon data avail warn = 2
mon data avail crit = 1
mon mgr mkfs grace = 31536000
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid

[osd]
osd data = $DIR/osd
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
EOF
    if [[ $store == bluestore ]]; then
        cat >>"$DIR/ceph.conf" <<EOF
osd objectstore = bluestore
bluestore block path = $DIR/osd/block.file
bluestore block create = true
bluestore block size = 4294967296
osd memory target = 1073741824
bluestore cache size = 134217728
EOF
    else
        cat >>"$DIR/ceph.conf" <<EOF
osd objectstore = memstore
memstore device bytes = 4294967296
EOF
    fi
}

start_mon() {
    setsid ceph-mon --conf "$DIR/ceph.conf" -i a -f </dev/null >>"$DIR/log/mon.a.out" 2>&1 &
    echo $! >"$DIR/pids/mon.pid"
}

start_osd_daemon() {
    setsid ceph-osd --conf "$DIR/ceph.conf" -i 0 -f </dev/null >>"$DIR/log/osd.0.out" 2>&1 &
    echo $! >"$DIR/pids/osd.pid"
}

# Stops the cluster once process OWNER is gone (or after OWNER_MAX_LIFE seconds).
start_watcher() {
    local owner=$1
    pid_alive "$owner" || die "--owner-pid $owner is not running"
    CLUSTER_SH_WATCHER=1 setsid bash -c '
        end=$((SECONDS + $3))
        while kill -0 "$1" 2>/dev/null && ((SECONDS < end)); do sleep 1; done
        exec "$0" stop "$2"
    ' "$0" "$owner" "$DIR" "$OWNER_MAX_LIFE" </dev/null >>"$DIR/log/watch.out" 2>&1 &
    echo $! >"$DIR/pids/watch.pid"
}

# Waits (bounded) until `ceph osd stat` reports WANT up OSDs.
wait_osds_up() {
    local want=$1 out end=$((SECONDS + START_WAIT))
    while ((SECONDS < end)); do
        out=$(ceph_cmd osd stat -f json 2>/dev/null || true)
        if [[ $out =~ \"num_up_osds\":$want[,}] ]]; then return 0; fi
        if [[ $want == 1 ]] && ! pid_alive "$(read_pid osd)"; then
            die "ceph-osd exited; see $DIR/log/osd.0.log and osd.0.out"
        fi
        sleep 1
    done
    die "OSD did not reach num_up_osds=$want within ${START_WAIT}s"
}

# Readiness is real I/O: PG states are only visible through a mgr.
wait_pool_io() {
    local obj="cluster-sh-probe-$$" end=$((SECONDS + START_WAIT))
    echo probe >"$DIR/run/probe"
    while ((SECONDS < end)); do
        if rados_cmd -p rbd put "$obj" "$DIR/run/probe" 2>/dev/null &&
            rados_cmd -p rbd rm "$obj" 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    die "pool rbd did not take I/O within ${START_WAIT}s"
}

write_env() {
    cat >"$DIR/env" <<EOF
CEPH_CONF=$DIR/ceph.conf
CEPH_KEYRING=$DIR/keyring
CEPH_ID=admin
CEPH_POOL=rbd
CEPH_MON_HOST=$MON_HOST
CEPH_PORT_BASE=$PORT_BASE
CEPH_STORE=$STORE
EOF
}

cmd_start() {
    local bluestore=0 owner=
    PORT_BASE=
    while (($#)); do
        case $1 in
            --bluestore) bluestore=1 ;;
            --port-base) shift; PORT_BASE=${1:-} ;;
            --owner-pid) shift; owner=${1:-} ;;
            *) usage ;;
        esac
        shift
    done
    for t in ceph ceph-mon ceph-osd monmaptool ceph-authtool rados rbd uuidgen ss setsid timeout; do
        need "$t"
    done
    if [[ -e $DIR ]] && [[ -n $(ls -A "$DIR") ]]; then
        die "$DIR is not empty"
    fi
    if [[ -z $PORT_BASE ]]; then
        PORT_BASE=$(pick_port_base)
    fi
    [[ $PORT_BASE =~ ^[0-9]+$ ]] && ((PORT_BASE >= 1024 && PORT_BASE <= 65535 - 64)) ||
        die "--port-base must be 1024..65471"
    STORE=memstore
    ((bluestore)) && STORE=bluestore
    MON_HOST="[v2:127.0.0.1:$PORT_BASE,v1:127.0.0.1:$((PORT_BASE + 1))]"
    FSID=$(uuidgen)
    [[ -z $owner || $owner =~ ^[0-9]+$ ]] || die "--owner-pid must be a PID"
    mkdir -p "$DIR"/{mon,osd,run,log,pids,crash}
    write_conf "$STORE"
    if [[ -n $owner ]]; then
        start_watcher "$owner"
    fi

    # One keyring with every key; `ceph-mon --mkfs --keyring` loads them all into
    # the auth database, so no `ceph auth` calls are needed later.
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/keyring" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
    chmod 600 "$DIR/keyring"

    monmaptool --create --fsid "$FSID" --addv a "$MON_HOST" "$DIR/run/monmap" >/dev/null
    ceph-mon --conf "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/run/monmap" \
        --keyring "$DIR/keyring" >>"$DIR/log/mon.a.out" 2>&1 ||
        die "ceph-mon --mkfs failed; see $DIR/log/mon.a.out"
    start_mon
    local end=$((SECONDS + START_WAIT))
    until ceph_cmd mon stat >/dev/null 2>&1; do
        pid_alive "$(read_pid mon)" || die "ceph-mon exited; see $DIR/log/mon.a.log"
        ((SECONDS < end)) || die "mon did not answer within ${START_WAIT}s"
        sleep 0.5
    done

    local uuid id
    uuid=$(uuidgen)
    id=$(ceph_cmd osd new "$uuid") || die "ceph osd new failed"
    [[ $id == 0 ]] || die "ceph osd new gave id $id, expected 0"
    ceph-osd --conf "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" \
        >>"$DIR/log/osd.0.out" 2>&1 || die "ceph-osd --mkfs failed; see $DIR/log/osd.0.out"
    start_osd_daemon
    wait_osds_up 1

    ceph_cmd osd pool create rbd 8 8 >/dev/null 2>&1 || die "pool create failed"
    timeout "$CEPH_TIMEOUT" rbd --conf "$DIR/ceph.conf" pool init rbd || die "rbd pool init failed"
    wait_pool_io
    write_env
    cat "$DIR/env"
}

cmd_stop() {
    stop_daemon osd
    stop_daemon mon
    local w
    w=$(read_pid watch)
    if [[ -z ${CLUSTER_SH_WATCHER:-} ]] && pid_alive "$w" &&
        grep -qF "$DIR" "/proc/$w/cmdline" 2>/dev/null; then
        kill -TERM "$w" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/watch.pid"
}

cmd_stop_osd() {
    stop_daemon osd
    # A killed OSD has no peer to report it; tell the mon, so clients stop waiting
    # for it and time out instead.
    local out end=$((SECONDS + 30))
    while ((SECONDS < end)); do
        out=$(ceph_cmd osd stat -f json 2>/dev/null || true)
        [[ $out =~ \"num_up_osds\":0[,}] ]] && return 0
        ceph_cmd osd down 0 >/dev/null 2>&1 || true
        sleep 1
    done
    die "the mon still counts the OSD as up"
}

cmd_start_osd() {
    pid_alive "$(read_pid osd)" && die "the OSD is already running (pid $(read_pid osd))"
    pid_alive "$(read_pid mon)" || die "the mon is not running"
    # A memstore OSD comes back empty, without the PGs the mon thinks it has, and
    # every request to the pool then waits forever.
    grep -q '^osd objectstore = bluestore' "$DIR/ceph.conf" ||
        die "start-osd needs a cluster started with --bluestore (memstore loses its PGs)"
    start_osd_daemon
    wait_osds_up 1
    wait_pool_io
}

cmd_status() {
    local mon osd rc=0
    mon=$(read_pid mon)
    osd=$(read_pid osd)
    if pid_alive "$mon"; then echo "mon.a: running (pid $mon)"; else echo "mon.a: stopped"; rc=1; fi
    if pid_alive "$osd"; then echo "osd.0: running (pid $osd)"; else echo "osd.0: stopped"; rc=1; fi
    if pid_alive "$mon"; then
        ceph_cmd osd stat 2>&1 || rc=1
    fi
    return $rc
}

(($# >= 2)) || usage
CMD=$1
DIR=$(abs_dir "$2")
shift 2
case $CMD in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    stop-osd) cmd_stop_osd ;;
    start-osd) cmd_start_osd ;;
    status) cmd_status ;;
    *) usage ;;
esac
