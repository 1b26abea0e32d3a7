#!/usr/bin/env bash
# oxtarget's RBD backend against librbd itself, on one throwaway one-node Ceph
# cluster (integration/ceph/cluster.sh) and one image, in the same run:
#   rbd-bench          `rbd bench` (librbd, no target): 4K random I/O, --io-threads
#                      32, librbd's default cache (writeback once the client has
#                      flushed: its writes may end in client RAM)
#   rbd-bench-nocache  the same with --rbd-cache=false (what the backend does: a
#                      write completes when the OSD has it)
#   oxt-backend        the backend alone (backends/examples/rbd_bench: one
#                      channel, its eventfd, QD32), no daemon, no transport
#   iscsi              the daemon's RBD LUN over iSCSI on loopback: `qemu-img
#                      bench`, QD32, one session
#   vhost              the same LUN on the daemon's vhost-user-scsi controller,
#                      driven from the host by vhost-loadgen (no guest), QD32, one
#                      queue
# for 4K random reads and 4K random writes. The image is filled first, so reads
# hit written objects. Prints IOPS per configuration (median of the
# repetitions, which interleave the configurations) and the ratios to rbd bench
# with and without its cache.
# The cluster's OSD, the daemon and the load generators share the machine's cores:
# compare ratios from one run, not numbers across runs or machines.
#
#   integration/bench/rbd.sh            full run (release build)
#   integration/bench/rbd.sh --smoke    tiny counts, debug build; fails only if a
#                                       command fails or a process dies (no ratio
#                                       asserted)
#
# Environment: BENCH_REPS (repetitions, default 3), BENCH_OPS (I/Os per run,
# default 60000), BENCH_MIB (image size, default 256; with memstore the OSD holds
# about twice that in RAM), BENCH_STORE (memstore, the default, or bluestore: on a
# sparse file in the cluster directory), BENCH_KEEP (a file to copy the raw
# results to), BENCH_CONFIGS (a subset of the configurations above). Every load is bounded by its I/O count and by `timeout`.
# Needs Ceph (ceph-mon ceph-osd ceph-common librbd-dev), qemu-img with its iSCSI
# driver (qemu-utils, qemu-block-extra).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SMOKE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
esac
if [ $SMOKE = 1 ]; then
    PROFILE=debug
    REPS=${BENCH_REPS:-1}
    OPS=${BENCH_OPS:-2000}
    MIB=${BENCH_MIB:-64}
else
    PROFILE=release
    REPS=${BENCH_REPS:-3}
    OPS=${BENCH_OPS:-60000}
    MIB=${BENCH_MIB:-256}
fi
STORE=${BENCH_STORE:-memstore}
ALL_CONFIGS="rbd-bench rbd-bench-nocache oxt-backend iscsi vhost"
CONFIGS=${BENCH_CONFIGS:-$ALL_CONFIGS}
for c in $CONFIGS; do
    case " $ALL_CONFIGS " in *" $c "*) ;; *) echo "BENCH_CONFIGS: unknown configuration $c" >&2; exit 2 ;; esac
done
NEED_DAEMON=0
case " $CONFIGS " in *" iscsi "*|*" vhost "*) NEED_DAEMON=1 ;; esac
NEED_BACKEND=0
case " $CONFIGS " in *" oxt-backend "*) NEED_BACKEND=1 ;; esac
for n in "$REPS" "$OPS" "$MIB"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPS, BENCH_OPS and BENCH_MIB are positive integers" >&2; exit 2; }
done
case $STORE in memstore|bluestore) ;; *) echo "BENCH_STORE is memstore or bluestore" >&2; exit 2 ;; esac
QD=32
# Upper bound on one load's wall time.
LOAD_TIMEOUT=600

say() { printf '==> %s\n' "$*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

for t in rbd qemu-img ceph-mon ceph-osd ss; do
    command -v "$t" >/dev/null || { echo "$t not found: install ceph-mon ceph-osd ceph-common librbd-dev qemu-utils qemu-block-extra" >&2; exit 1; }
done

# --- build -------------------------------------------------------------------
if [ $NEED_DAEMON = 1 ]; then
say "building oxtarget (feature rbd) and vhost-loadgen ($PROFILE)"
RELEASE=()
[ $PROFILE = release ] && RELEASE=(--release)
cargo build "${RELEASE[@]}" -p oxtarget --features rbd --bin oxtarget >&2
cargo build "${RELEASE[@]}" -p oxtarget-integration --bin vhost-loadgen >&2
fi
if [ $NEED_BACKEND = 1 ]; then
say "building the backend's rbd_bench example ($PROFILE)"
cargo build "${RELEASE[@]}" -p oxtarget-backends --features rbd --example rbd_bench >&2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OXTARGET=$TARGET_DIR/$PROFILE/oxtarget
LOADGEN=$TARGET_DIR/$PROFILE/vhost-loadgen
BACKEND_BENCH=$TARGET_DIR/$PROFILE/examples/rbd_bench

# --- cluster, image, daemon --------------------------------------------------
WORK=$(mktemp -d /tmp/oxtarget-rbd-bench.XXXXXX)
CLUSTER=$WORK/ceph
DAEMON_PID=""
cleanup() {
    local rc=$?
    if [ -n "$DAEMON_PID" ]; then
        kill "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [ -d "$CLUSTER" ]; then
        timeout 120 bash integration/ceph/cluster.sh stop "$CLUSTER" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT INT TERM

say "starting a one-node Ceph cluster ($STORE) in $CLUSTER"
STORE_ARG=()
[ "$STORE" = bluestore ] && STORE_ARG=(--bluestore)
timeout 300 bash integration/ceph/cluster.sh start "$CLUSTER" "${STORE_ARG[@]}" --owner-pid $$ >"$WORK/cluster.out" 2>&1 \
    || { cat "$WORK/cluster.out" >&2; exit 1; }
# shellcheck disable=SC1091
. "$CLUSTER/env"
RBD=(rbd --conf "$CEPH_CONF" --keyring "$CEPH_KEYRING" --id "$CEPH_ID")
IMG=bench
timeout 120 "${RBD[@]}" create --size "${MIB}M" "$CEPH_POOL/$IMG"
say "filling the image ($MIB MiB) so that reads hit written objects"
timeout "$LOAD_TIMEOUT" "${RBD[@]}" bench --io-type write --io-size 4M --io-threads 4 \
    --io-pattern seq --io-total "${MIB}M" "$CEPH_POOL/$IMG" >"$WORK/fill.log" 2>&1 \
    || { cat "$WORK/fill.log" >&2; exit 1; }

if [ $NEED_DAEMON = 1 ]; then
free_port() {
    local p
    for p in $(shuf -i 20000-29999 -n 50); do
        if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
    done
    echo "no free port" >&2; exit 1
}
PORT=$(free_port)
IQN=iqn.2026-11.org.oxtarget:rbd-bench
VSOCK=$WORK/vhost.sock
mkdir -p "$WORK/state"
cat >"$WORK/oxtarget.toml" <<EOF
state_dir = "$WORK/state"
rpc_socket = "$WORK/rpc.sock"

[[backend]]
name = "rbd0"
type = "rbd"
pool = "$CEPH_POOL"
image = "$IMG"
ceph_conf = "$CEPH_CONF"
client_id = "$CEPH_ID"
keyring = "$CEPH_KEYRING"

[[lun]]
name = "rbd"
backend = "rbd0"
uuid = "7b1d2c3e-4f50-4a61-8b72-8c9daebfc0d1"

[[iscsi_target]]
name = "$IQN"
portals = ["127.0.0.1:$PORT"]
luns = [{ id = 0, lun = "rbd" }]

[[vhost_scsi]]
name = "bench"
socket = "$VSOCK"
queues = 1
luns = [{ id = 0, lun = "rbd" }]
EOF
"$OXTARGET" serve --config "$WORK/oxtarget.toml" >"$WORK/oxtarget.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 300); do
    { ss -Htln "sport = :$PORT" | grep -q . && [ -S "$VSOCK" ]; } && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { say "oxtarget exited:"; cat "$WORK/oxtarget.log" >&2; exit 1; }
    sleep 0.1
done
{ ss -Htln "sport = :$PORT" | grep -q . && [ -S "$VSOCK" ]; } \
    || { say "oxtarget did not come up:"; cat "$WORK/oxtarget.log" >&2; exit 1; }
URL=iscsi://127.0.0.1:$PORT/$IQN/0
say "oxtarget pid $DAEMON_PID: $URL and $VSOCK"
fi

alive() {
    [ -z "$DAEMON_PID" ] || kill -0 "$DAEMON_PID" 2>/dev/null || { say "oxtarget died:"; cat "$WORK/oxtarget.log" >&2; exit 1; }
    bash integration/ceph/cluster.sh status "$CLUSTER" >/dev/null 2>&1 \
        || { say "the cluster is down:"; bash integration/ceph/cluster.sh status "$CLUSTER" >&2 || true; exit 1; }
}

# --- loads -------------------------------------------------------------------
# A step that scatters qemu-img's 4K I/O over the LUN (it has no random mode;
# the offset wraps at the end of the LUN).
RAND_STEP=$((4096 * 314159))
FAILED=0

# One run; prints its IOPS on stdout, or nothing (and sets FAILED) on error.
run_one() { # config rw(randread|randwrite) log
    local cfg=$1 rw=$2 log=$3
    case $cfg in
        rbd-bench|rbd-bench-nocache)
            local type=read cache=()
            [ "$rw" = randwrite ] && type=write
            [ "$cfg" = rbd-bench-nocache ] && cache=(--rbd-cache=false)
            if ! timeout "$LOAD_TIMEOUT" "${RBD[@]}" bench "${cache[@]}" --io-type "$type" --io-size 4K \
                --io-threads "$QD" --io-pattern rand --io-total $((OPS * 4096)) \
                "$CEPH_POOL/$IMG" >"$log" 2>&1; then
                say "rbd bench failed:"; cat "$log" >&2; FAILED=1; return 0
            fi
            awk '/^elapsed:/ { for (i = 1; i < NF; i++) if ($i == "ops/sec:") v = $(i + 1) }
                END { if (v != "") print v }' "$log"
            ;;
        oxt-backend)
            local type=read
            [ "$rw" = randwrite ] && type=write
            if ! timeout "$LOAD_TIMEOUT" "$BACKEND_BENCH" --conf "$CEPH_CONF" --keyring "$CEPH_KEYRING" \
                --id "$CEPH_ID" --image "$CEPH_POOL/$IMG" --io-type "$type" --io-size 4K --qd "$QD" \
                --io-total $((OPS * 4096)) --pattern rand --seconds "$LOAD_TIMEOUT" >"$log" 2>&1; then
                say "rbd_bench failed:"; cat "$log" >&2; FAILED=1; return 0
            fi
            sed -n 's/.* \([0-9.]*\) IOPS.*/\1/p' "$log" | tail -n 1
            ;;
        iscsi)
            local w=()
            [ "$rw" = randwrite ] && w=(-w)
            if ! timeout "$LOAD_TIMEOUT" qemu-img bench -f raw -t none -c "$OPS" -d "$QD" -s 4096 \
                -S "$RAND_STEP" "${w[@]}" "$URL" >"$log" 2>&1; then
                say "qemu-img bench failed:"; cat "$log" >&2; FAILED=1; return 0
            fi
            awk -v n="$OPS" '/^Run completed in/ { s = $4 + 0; if (s > 0) printf "%.1f\n", n / s }' "$log"
            ;;
        vhost)
            if ! timeout "$LOAD_TIMEOUT" "$LOADGEN" --socket "$VSOCK" --rw "$rw" --bs 4k --qd "$QD" \
                --queues 1 --time "$LOAD_TIMEOUT" --count "$OPS" >"$log" 2>&1; then
                say "vhost-loadgen failed:"; cat "$log" >&2; FAILED=1; return 0
            fi
            sed -n 's/^RESULT.* iops=\([^ ]*\).*/\1/p' "$log"
            ;;
    esac
}

RESULTS=$WORK/results   # workload config rep iops load
: >"$RESULTS"
n=0
for rep in $(seq "$REPS"); do
    for rw in randread randwrite; do
        # Rotate which configuration goes first.
        n=$((n + 1))
        order=$(echo $CONFIGS | awk -v n="$n" '{ for (i = 0; i < NF; i++) printf "%s ", $((n + i) % NF + 1) }')
        for cfg in $order; do
            alive
            load=$(load1)
            iops=$(run_one "$cfg" "$rw" "$WORK/$rep-$rw-$cfg.log")
            if [ -z "$iops" ]; then
                say "$cfg $rw: no result"; FAILED=1; continue
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' "4k-$rw-qd$QD" "$cfg" "$rep" "$iops" "$load" >>"$RESULTS"
            say "rep $rep/$REPS  4k-$rw-qd$QD  $(printf '%-9s' "$cfg") $(printf '%8.0f' "$iops") IOPS  (load $load)"
        done
    done
done
alive

# --- table ---------------------------------------------------------------------
echo
echo "RBD image $CEPH_POOL/$IMG ($MIB MiB, $STORE, one OSD on loopback), oxtarget $PROFILE build,"
echo "$OPS I/Os per run, median of $REPS; $(nproc) CPUs shared by the OSD, the daemon and the load"
awk -F'\t' '
function median(s,   n, a, i, t, j) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1
        while (j > 0 && a[j] + 0 > t + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++n] = k; if (!($1 in wseen)) { wseen[$1] = 1; worder[++nw] = $1 } }
    iops[k] = iops[k] " " $4
    if (!(k in lmin) || $5 < lmin[k]) lmin[k] = $5
    if (!(k in lmax) || $5 > lmax[k]) lmax[k] = $5
}
END {
    printf "| %-18s | %-17s | %9s | %11s | %11s | %-9s |\n", "workload", "config", "IOPS", "x rbd bench", "x nocache", "load"
    printf "|%s|%s|%s|%s|%s|%s|\n", "--------------------", "-------------------", "-----------", "-------------", "-------------", "-----------"
    nc = split("rbd-bench rbd-bench-nocache oxt-backend iscsi vhost", cfgs, " ")
    for (w = 1; w <= nw; w++) {
        wl = worder[w]
        b1 = (wl SUBSEP "rbd-bench" in seen) ? median(iops[wl SUBSEP "rbd-bench"]) : 0
        b2 = (wl SUBSEP "rbd-bench-nocache" in seen) ? median(iops[wl SUBSEP "rbd-bench-nocache"]) : 0
        for (c = 1; c <= nc; c++) {
            cfg = cfgs[c]; k = wl SUBSEP cfg
            if (!(k in seen)) continue
            m = median(iops[k])
            r1 = (b1 > 0) ? sprintf("%.2f", m / b1) : "-"
            r2 = (b2 > 0) ? sprintf("%.2f", m / b2) : "-"
            printf "| %-18s | %-17s | %9.0f | %11s | %11s | %4s-%-4s |\n", wl, cfg, m, r1, r2, lmin[k], lmax[k]
        }
    }
}' "$RESULTS"
echo "(x rbd bench / x nocache: IOPS / rbd bench's, with librbd's default cache / without, as many"
echo " I/Os in flight; iscsi: qemu-img bench over libiscsi, one session; vhost: vhost-loadgen, one queue)"
if [ -n "${BENCH_KEEP:-}" ]; then cp "$RESULTS" "$BENCH_KEEP"; fi
if [ $SMOKE = 1 ]; then
    echo "smoke: every configuration ran without error (tiny loads, the numbers mean nothing)"
fi
if [ $FAILED != 0 ]; then
    echo "some runs failed (see above)" >&2
    exit 1
fi
