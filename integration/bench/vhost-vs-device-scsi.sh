#!/usr/bin/env bash
# oxtarget's vhost-user-scsi device against rust-vmm's vhost-device-scsi and
# against fio (io_uring) on the same backing file, driven from the host by
# vhost-loadgen (no guest: under TCG a guest measures the emulator).
#
#   integration/bench/vhost-vs-device-scsi.sh            full run (release build)
#   integration/bench/vhost-vs-device-scsi.sh --smoke    tiny counts, debug build;
#                                                        fails only if a command fails
#
# Environment: BENCH_TIME (seconds per run, default 4), BENCH_REPS (interleaved
# repetitions, default 3; the table shows medians), BENCH_MIB (backing file size,
# default 1024), BENCH_DIR (where the backing file goes; default the cache
# directory, integration/cache/bench: a file system with non-blocking buffered
# reads, so page-cache hits complete inside io_uring_enter. On tmpfs (/dev/shm)
# io_uring hands every buffered read and write to its io-wq worker threads, which
# costs oxtarget's io_uring file backend and fio a thread hop per I/O and not
# vhost-device-scsi's plain pread/pwrite).
#
# Configurations, each run for every workload in every repetition, interleaved:
#   oxt-file-qN   oxtarget (examples/vhost_serve), LUN on the backing file, N request queues
#   vds-file-q1   vhost-device-scsi on the same file (it has one request queue)
#   oxt-null-qN   oxtarget on a null LUN (reads zeroes, drops writes): its own cost
#   oxt-ram-qN    oxtarget on a RAM LUN
#   fio-qN        fio, io_uring, buffered, N jobs sharing the depth: the file's limit
# Daemon CPU per I/O is utime+stime of the daemon (/proc/PID/stat) over the run,
# divided by the I/Os. The load average is noted with each run: the machine is
# shared, so look at it before trusting a ratio. Nothing here asserts a ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

CACHE=${OXTARGET_BENCH_CACHE:-$ROOT/integration/cache/bench}
mkdir -p "$CACHE"
VDS=$CACHE/vhost-device-scsi/bin/vhost-device-scsi
TICK=$(getconf CLK_TCK)

if [ $SMOKE = 1 ]; then
    PROFILE=debug
    TIME=${BENCH_TIME:-2}
    COUNT=${BENCH_COUNT:-2000}
    REPS=${BENCH_REPS:-1}
    MIB=${BENCH_MIB:-64}
    CONFIGS=${BENCH_CONFIGS:-"oxt-file-q1 oxt-null-q2 vds-file-q1 fio-q1"}
else
    PROFILE=release
    TIME=${BENCH_TIME:-4}
    COUNT=${BENCH_COUNT:-100000000}
    REPS=${BENCH_REPS:-3}
    MIB=${BENCH_MIB:-1024}
    CONFIGS=${BENCH_CONFIGS:-"oxt-file-q1 oxt-file-q2 vds-file-q1 oxt-null-q1 oxt-null-q2 oxt-ram-q2 fio-q1 fio-q2"}
fi
# name rw bs qd
WORKLOADS=${BENCH_WORKLOADS:-"randread-4k-qd1:randread:4k:1 randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 read-128k-qd8:read:128k:8 write-128k-qd8:write:128k:8"}

say() { printf '==> %s\n' "$*" >&2; }

# --- what the run needs -------------------------------------------------------
say "building vhost-loadgen and the serve example ($PROFILE)"
if [ $PROFILE = release ]; then
    cargo build --release --locked -p oxtarget-integration --bin vhost-loadgen \
        -p oxtarget-vhost-target --example vhost_serve
else
    cargo build --locked -p oxtarget-integration --bin vhost-loadgen \
        -p oxtarget-vhost-target --example vhost_serve
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN=$TARGET_DIR/$PROFILE/vhost-loadgen
SERVE=$TARGET_DIR/$PROFILE/examples/vhost_serve

if [ ! -x "$VDS" ]; then
    if [ $SMOKE = 1 ]; then
        say "vhost-device-scsi not installed: smoke run without it"
    else
        say "installing vhost-device-scsi into $CACHE"
        cargo install vhost-device-scsi --locked --root "$CACHE/vhost-device-scsi"
    fi
fi
if ! command -v fio >/dev/null; then
    if [ $SMOKE = 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing fio"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null
    fi
fi
have() {
    case $1 in
        vds-*) [ -x "$VDS" ] ;;
        fio-*) command -v fio >/dev/null ;;
        *) true ;;
    esac
}

DIR=${BENCH_DIR:-$CACHE}
WORK=$(mktemp -d "$DIR/oxtarget-vhost-bench.XXXXXX")
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

# Long-lived oxtarget daemons (they take one connection after another), each with
# two request queues; a run uses one or both.
declare -A DAEMON
start_oxt() { # name backing
    local sock=$WORK/$1.sock
    "$SERVE" "$sock" "$2" 2 "$MIB" >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    DAEMON[$1]=$!
    for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
    say "oxtarget ($1) did not come up:"; cat "$WORK/$1.log" >&2; exit 1
}
for c in $CONFIGS; do
    case $c in
        oxt-file-*) [ -n "${DAEMON[file]:-}" ] || start_oxt file "$IMG" ;;
        oxt-null-*) [ -n "${DAEMON[null]:-}" ] || start_oxt null null ;;
        oxt-ram-*) [ -n "${DAEMON[ram]:-}" ] || start_oxt ram ram ;;
    esac
done

FAILED=0
# Appends: workload config rep iops mbps lat_mean p50 p99 cpu_us_per_io load1
run_one() { # workload rw bs qd config rep
    local wl=$1 rw=$2 bs=$3 qd=$4 cfg=$5 rep=$6
    local q=${cfg##*-q} out load ios ticks0 ticks1 cpu
    load=$(load1)
    case $cfg in
        fio-*)
            local jobs=$q depth=$((qd / q))
            [ "$depth" -ge 1 ] || return 0
            out=$(fio --name=bench --filename="$IMG" --ioengine=io_uring --direct=0 --invalidate=0 \
                --rw="$rw" --bs="$bs" --iodepth="$depth" --numjobs="$jobs" --group_reporting \
                --time_based --runtime="$TIME" --output-format=terse 2>&1) || {
                say "fio failed: $out"; FAILED=1; return 0; }
            echo "$out" | awk -F';' -v wl="$wl" -v cfg="$cfg" -v rep="$rep" -v load="$load" '
                $1 == 3 { if ($8 + $49 == 0) next;
                  iops = $8 + $49; kbs = $7 + $48; lat = ($8 > 0) ? $40 : $81;
                  printf "%s\t%s\t%s\t%.1f\t%.2f\t%.2f\t-\t-\t-\t%s\n", wl, cfg, rep, iops, kbs * 1.024 / 1000, lat, load }' >>"$RESULTS"
            return 0 ;;
    esac
    [ "$qd" -ge "$q" ] || return 0
    local sock args=(--rw "$rw" --bs "$bs" --qd "$qd" --queues "$q" --time "$TIME" --count "$COUNT")
    case $cfg in
        vds-*)
            sock=$WORK/vds.sock
            rm -f "$sock"
            # vhost-device-scsi serves one connection and exits; the shell around
            # it reports its CPU time (cutime/cstime of the waited child).
            sh -c '"$1" -s "$2" "$3" >/dev/null 2>&1; cat /proc/$$/stat' sh "$VDS" "$sock" "$IMG" \
                >"$WORK/vds.stat" &
            local wrapper=$!
            for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
            out=$("$LOADGEN" --socket "$sock" "${args[@]}" 2>"$WORK/loadgen.err") || {
                say "$cfg $wl failed:"; cat "$WORK/loadgen.err" >&2; echo "$out" >&2; FAILED=1; }
            # It exits at the disconnect; bounded wait, then make sure.
            for _ in $(seq 100); do kill -0 "$wrapper" 2>/dev/null || break; sleep 0.05; done
            if kill -0 "$wrapper" 2>/dev/null; then
                for p in $(ps -o pid= --ppid "$wrapper"); do kill "$p" 2>/dev/null || true; done
                say "vhost-device-scsi did not exit at the disconnect"
            fi
            wait "$wrapper" 2>/dev/null || true
            ticks0=0
            ticks1=$(awk '{print $16 + $17}' "$WORK/vds.stat" 2>/dev/null || echo 0)
            ;;
        oxt-*)
            local kind=${cfg#oxt-}; kind=${kind%-q*}
            sock=$WORK/$kind.sock
            ticks0=$(cpu_ticks "${DAEMON[$kind]}")
            out=$("$LOADGEN" --socket "$sock" "${args[@]}" 2>"$WORK/loadgen.err") || {
                say "$cfg $wl failed:"; cat "$WORK/loadgen.err" >&2; echo "$out" >&2; FAILED=1; }
            ticks1=$(cpu_ticks "${DAEMON[$kind]}")
            ;;
    esac
    local res
    res=$(echo "$out" | grep '^RESULT' || true)
    [ -n "$res" ] || return 0
    ios=$(echo "$res" | field ios)
    cpu=$(awk -v t0="$ticks0" -v t1="$ticks1" -v hz="$TICK" -v n="$ios" \
        'BEGIN { if (n > 0 && t1 > 0) printf "%.2f", (t1 - t0) / hz * 1e6 / n; else print "-" }')
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
echo "vhost-user-scsi from the host (vhost-loadgen), backing file in $DIR, ${TIME}s runs, median of $REPS"
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
        k = order[i]; split(k, p, SUBSEP)
        mi[k] = median(iops[k]); mc[k] = median(cpu[k])
    }
    for (w = 1; w <= nw; w++) {
        wl = worder[w]
        printf "\n%s\n", wl
        printf "  %-13s %10s %9s %10s %9s %11s %8s %8s %8s  %s\n", "config", "IOPS", "MB/s", "lat mean", "lat p99", "CPU us/IO", "x vds", "x fio", "CPU/vds", "load"
        vds = wl SUBSEP "vds-file-q1"
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, p, SUBSEP)
            if (p[1] != wl) continue
            cfg = p[2]; q = cfg; sub(/.*-q/, "", q)
            fio = wl SUBSEP "fio-q" q
            rv = (vds in mi && mi[vds] > 0) ? sprintf("%.2f", mi[k] / mi[vds]) : "-"
            rf = (fio in mi && mi[fio] > 0 && cfg !~ /^fio/) ? sprintf("%.2f", mi[k] / mi[fio]) : "-"
            rc = (vds in mc && mc[vds] != "-" && mc[vds] > 0 && mc[k] != "-") ? sprintf("%.2f", mc[k] / mc[vds]) : "-"
            m99 = median(p99[k]); m99 = (m99 == "-") ? "-" : sprintf("%.1fus", m99)
            printf "  %-13s %10.0f %9.1f %8.1fus %9s %11s %8s %8s %8s  %s-%s\n", cfg, mi[k], median(mbps[k]), median(lat[k]), m99, mc[k], rv, rf, rc, lmin[k], lmax[k]
        }
    }
}'
echo
echo "x vds: IOPS / vhost-device-scsi's (1 queue); x fio: IOPS / fio's with as many jobs as queues;"
echo "CPU/vds: daemon CPU per I/O / vhost-device-scsi's. Raw results: one line per run, kept in \$BENCH_KEEP if set."
if [ -n "${BENCH_KEEP:-}" ]; then cp "$RESULTS" "$BENCH_KEEP"; fi
if [ $FAILED != 0 ]; then
    echo "some runs failed (see above)" >&2
    exit 1
fi
