#!/usr/bin/env bash
# oxtarget's vhost-user-blk and vhost-user-scsi devices against QEMU's
# qemu-storage-daemon vhost-user-blk export, all on the same backing file in the
# page cache, driven from the host by vhost-loadgen (no guest: under TCG a guest
# measures the emulator).
#
#   integration/bench/vhost-blk.sh            full run (release build)
#   integration/bench/vhost-blk.sh --smoke    tiny counts, debug build;
#                                             fails only if a command fails
#
# Environment: BENCH_TIME (seconds per run, default 4), BENCH_REPS (interleaved
# repetitions, default 3; the table shows medians), BENCH_MIB (backing file size,
# default 1024), BENCH_DIR (where the backing file goes; default the cache
# directory, integration/cache/bench: see vhost-vs-device-scsi.sh for why not
# tmpfs), BENCH_CONFIGS and BENCH_WORKLOADS to run a subset, BENCH_QSD_AIO
# (qemu-storage-daemon's file driver aio mode: threads, its default, or io_uring).
#
# Configurations, each run for every workload in every repetition, interleaved:
#   oxt-blk-qN    oxtarget's vhost-user-blk device (examples/vhost_blk_serve) on the
#                 backing file, N request queues; skipped with a message when the
#                 example is not in this tree
#   oxt-scsi-qN   oxtarget's vhost-user-scsi device (examples/vhost_serve), one LUN on
#                 the backing file, N request queues
#   qsd-qN        qemu-storage-daemon --export type=vhost-user-blk on the backing file
#                 (file driver, cache.direct=off: buffered, like the others), N queues
# Every daemon is started once with two request queues and serves one loadgen
# connection after another; a run uses one or both queues. Daemon CPU per I/O is
# utime+stime of the daemon (/proc/PID/stat) over the run, divided by the I/Os.
# The load average is noted with each run: the machine is shared, so look at it
# before trusting a ratio. Nothing here asserts a ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

CACHE=${OXTARGET_BENCH_CACHE:-$ROOT/integration/cache/bench}
mkdir -p "$CACHE"
TICK=$(getconf CLK_TCK)

if [ $SMOKE = 1 ]; then
    PROFILE=debug
    TIME=${BENCH_TIME:-2}
    COUNT=${BENCH_COUNT:-2000}
    REPS=${BENCH_REPS:-1}
    MIB=${BENCH_MIB:-64}
    CONFIGS=${BENCH_CONFIGS:-"oxt-blk-q1 oxt-blk-q2 oxt-scsi-q2 qsd-q1 qsd-q2"}
else
    PROFILE=release
    TIME=${BENCH_TIME:-4}
    COUNT=${BENCH_COUNT:-100000000}
    REPS=${BENCH_REPS:-3}
    MIB=${BENCH_MIB:-1024}
    CONFIGS=${BENCH_CONFIGS:-"oxt-blk-q1 oxt-blk-q2 oxt-scsi-q1 oxt-scsi-q2 qsd-q1 qsd-q2"}
fi
# name rw bs qd
WORKLOADS=${BENCH_WORKLOADS:-"randread-4k-qd1:randread:4k:1 randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 read-128k-qd8:read:128k:8 write-128k-qd8:write:128k:8"}

say() { printf '==> %s\n' "$*" >&2; }

# --- what the run needs -------------------------------------------------------
HAVE_BLK=0
[ -f vhost-target/examples/vhost_blk_serve.rs ] && HAVE_BLK=1
EXAMPLES=(--example vhost_serve)
[ $HAVE_BLK = 1 ] && EXAMPLES+=(--example vhost_blk_serve)
say "building vhost-loadgen and the serve examples ($PROFILE)"
RELEASE=()
[ $PROFILE = release ] && RELEASE=(--release)
cargo build "${RELEASE[@]}" --locked -p oxtarget-integration --bin vhost-loadgen \
    -p oxtarget-vhost-target "${EXAMPLES[@]}"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/$PROFILE/vhost-loadgen
SERVE_SCSI=$TARGET_DIR/$PROFILE/examples/vhost_serve
SERVE_BLK=$TARGET_DIR/$PROFILE/examples/vhost_blk_serve
if [ $HAVE_BLK = 0 ]; then
    say "vhost-target/examples/vhost_blk_serve.rs is not in this tree: skipping the oxt-blk configurations"
fi

QSD=$(command -v qemu-storage-daemon || true)
if [ -z "$QSD" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The same QEMU as the guest tests (bookworm-backports): install-deps.sh sets
    # that up; qemu-storage-daemon is in qemu-system-common.
    say "installing qemu-storage-daemon (integration/install-deps.sh)"
    bash integration/install-deps.sh >&2
    QSD=$(command -v qemu-storage-daemon || true)
fi
if [ -z "$QSD" ]; then
    if [ $SMOKE = 1 ]; then
        say "qemu-storage-daemon not installed: smoke run without it"
    else
        say "qemu-storage-daemon not installed (run integration/install-deps.sh as root)"
        exit 1
    fi
fi
have() {
    case $1 in
        oxt-blk-*) [ $HAVE_BLK = 1 ] ;;
        qsd-*) [ -n "$QSD" ] ;;
        *) true ;;
    esac
}

DIR=${BENCH_DIR:-$CACHE}
WORK=$(mktemp -d "$DIR/oxtarget-vhost-blk-bench.XXXXXX")
IMG=$WORK/backing.img
RESULTS=$WORK/results.tsv
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

say "backing file $IMG ($MIB MiB, written once so it sits in the page cache)"
dd if=/dev/zero of="$IMG" bs=1M count="$MIB" conv=fsync status=none
cat "$IMG" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# Long-lived daemons, each with two request queues, one per device kind.
declare -A DAEMON
wait_socket() { # name sock
    for _ in $(seq 100); do [ -S "$2" ] && return 0; sleep 0.05; done
    say "$1 did not come up:"; cat "$WORK/$1.log" >&2; exit 1
}
start_daemon() { # kind
    local sock=$WORK/$1.sock
    case $1 in
        blk) "$SERVE_BLK" "$sock" "$IMG" 2 "$MIB" >"$WORK/$1.log" 2>&1 & ;;
        scsi) "$SERVE_SCSI" "$sock" "$IMG" 2 "$MIB" >"$WORK/$1.log" 2>&1 & ;;
        qsd)
            "$QSD" --blockdev "driver=file,filename=$IMG,node-name=n,cache.direct=off,aio=${BENCH_QSD_AIO:-threads}" \
                --export "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=$sock,writable=on,num-queues=2" \
                >"$WORK/$1.log" 2>&1 &
            ;;
    esac
    PIDS+=($!)
    DAEMON[$1]=$!
    wait_socket "$1" "$sock"
}
kind_of() { # config -> daemon kind
    case $1 in
        oxt-blk-*) echo blk ;;
        oxt-scsi-*) echo scsi ;;
        qsd-*) echo qsd ;;
    esac
}
for c in $CONFIGS; do
    have "$c" || continue
    k=$(kind_of "$c")
    [ -n "$k" ] || { say "unknown configuration $c"; exit 2; }
    [ -n "${DAEMON[$k]:-}" ] || start_daemon "$k"
done

FAILED=0
RUNS=0
# Appends: workload config rep iops mbps lat_mean p50 p99 cpu_us_per_io load1
run_one() { # workload rw bs qd config rep
    local wl=$1 rw=$2 bs=$3 qd=$4 cfg=$5 rep=$6
    local q=${cfg##*-q} kind out load ios ticks0 ticks1 cpu dev=blk
    [ "$qd" -ge "$q" ] || return 0
    kind=$(kind_of "$cfg")
    [ "$kind" = scsi ] && dev=scsi
    load=$(load1)
    local args=(--socket "$WORK/$kind.sock" --device "$dev" --rw "$rw" --bs "$bs" --qd "$qd"
        --queues "$q" --time "$TIME" --count "$COUNT")
    ticks0=$(cpu_ticks "${DAEMON[$kind]}")
    out=$("$LOADGEN" "${args[@]}" 2>"$WORK/loadgen.err") || {
        say "$cfg $wl failed:"; cat "$WORK/loadgen.err" >&2; echo "$out" >&2; FAILED=1; }
    ticks1=$(cpu_ticks "${DAEMON[$kind]}")
    RUNS=$((RUNS + 1))
    local res
    res=$(echo "$out" | grep '^RESULT' || true)
    [ -n "$res" ] || return 0
    ios=$(echo "$res" | field ios)
    cpu=$(awk -v t0="$ticks0" -v t1="$ticks1" -v hz="$TICK" -v n="$ios" \
        'BEGIN { if (n > 0) printf "%.2f", (t1 - t0) / hz * 1e6 / n; else print "-" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$cfg" "$rep" \
        "$(echo "$res" | field iops)" "$(echo "$res" | field mbps)" \
        "$(echo "$res" | field lat_mean_us)" "$(echo "$res" | field lat_p50_us)" \
        "$(echo "$res" | field lat_p99_us)" "$cpu" "$load" >>"$RESULTS"
}

: >"$RESULTS"
for rep in $(seq "$REPS"); do
    for w in $WORKLOADS; do
        IFS=: read -r wl rw bs qd <<<"$w"
        for c in $CONFIGS; do
            have "$c" || continue
            say "rep $rep/$REPS  $wl  $c  (load $(load1))"
            run_one "$wl" "$rw" "$bs" "$qd" "$c" "$rep"
        done
    done
done

# --- the table: medians over the repetitions ----------------------------------
echo
echo "vhost-user-blk and -scsi from the host (vhost-loadgen), backing file in $DIR, ${TIME}s runs, median of $REPS"
echo "$(nproc) CPUs; load average during the runs in the last column (min-max)"
sort -t$'\t' -k1,1 -k2,2 "$RESULTS" | awk -F'\t' '
function median(s,   n, a, i, t, j) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1
        while (j > 0 && a[j] + 0 > t + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    if (n == 0) return "-"
    if (a[1] == "-") return "-"
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++n] = k; if (!($1 in wseen)) { wseen[$1] = 1; worder[++nw] = $1 } }
    iops[k] = iops[k] " " $4; mbps[k] = mbps[k] " " $5; lat[k] = lat[k] " " $6
    p99[k] = p99[k] " " $8; cpu[k] = cpu[k] " " $9
    if (!(k in lmin) || $10 < lmin[k]) lmin[k] = $10
    if (!(k in lmax) || $10 > lmax[k]) lmax[k] = $10
}
END {
    for (i = 1; i <= n; i++) {
        k = order[i]
        mi[k] = median(iops[k]); mc[k] = median(cpu[k])
    }
    for (w = 1; w <= nw; w++) {
        wl = worder[w]
        printf "\n%s\n", wl
        printf "  %-12s %10s %9s %10s %9s %11s %8s %8s  %s\n", "config", "IOPS", "MB/s", "lat mean", "lat p99", "CPU us/IO", "x qsd", "CPU/qsd", "load"
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, p, SUBSEP)
            if (p[1] != wl) continue
            cfg = p[2]; q = cfg; sub(/.*-q/, "", q)
            qsd = wl SUBSEP "qsd-q" q
            rq = (qsd in mi && mi[qsd] > 0) ? sprintf("%.2f", mi[k] / mi[qsd]) : "-"
            rc = (qsd in mc && mc[qsd] != "-" && mc[qsd] > 0 && mc[k] != "-") ? sprintf("%.2f", mc[k] / mc[qsd]) : "-"
            m99 = median(p99[k]); m99 = (m99 == "-") ? "-" : sprintf("%.1fus", m99)
            printf "  %-12s %10.0f %9.1f %8.1fus %9s %11s %8s %8s  %s-%s\n", cfg, mi[k], median(mbps[k]), median(lat[k]), m99, mc[k], rq, rc, lmin[k], lmax[k]
        }
    }
}'
echo
echo "x qsd: IOPS / qemu-storage-daemon's with as many queues; CPU/qsd: daemon CPU per I/O / qemu-storage-daemon's."
echo "Raw results: one line per run, kept in \$BENCH_KEEP if set."
if [ -n "${BENCH_KEEP:-}" ]; then cp "$RESULTS" "$BENCH_KEEP"; fi
if [ $RUNS = 0 ]; then
    echo "no configuration could run" >&2
    exit 1
fi
if [ $FAILED != 0 ]; then
    echo "some runs failed (see above)" >&2
    exit 1
fi
