#!/usr/bin/env bash
# oxtarget's iSCSI target against STGT's tgtd, in the same run, on loopback, with the
# same initiators and equivalent null LUNs (reads return at once, writes are dropped),
# so that what is measured is the target: its PDU handling, its SCSI layer, its
# syscalls. Run as root (tgtd needs it; the script installs Debian's `tgt` package
# and libiscsi's and QEMU's tools with apt-get when they are missing).
#
#   integration/bench/iscsi-vs-tgtd.sh [--reps N] [--seconds S] [--scale F]
#   integration/bench/iscsi-vs-tgtd.sh --smoke     # CI: tiny counts, no ratio asserted
#
# Workloads (each with `qemu-img bench`, iscsi:// through libiscsi; the reads also with
# libiscsi's `iscsi-perf`, which only reads):
#   4K random read QD1, 4K random read QD32, 4K random write QD32,
#   128K sequential read QD8, 128K sequential write QD8.
# Every load is bounded: qemu-img by its request count, iscsi-perf by its run time,
# both under `timeout`. Repetitions interleave the targets (which goes first
# alternates), and the table shows medians of the repetitions:
#   IOPS, MB/s (10^6 bytes), target CPU per I/O (utime+stime of the target process
#   from /proc/PID/stat over the load, divided by its I/Os), and oxtarget/tgtd.
# Initiator and targets share the machine's cores: compare ratios from one run, not
# numbers across runs or machines. The load average is printed with every repetition.
#
# Options:
#   --smoke          1 repetition of tiny loads on a debug build; fails only if a
#                    target fails an I/O or dies. Asserts no ratio and no timing.
#   --reps N         repetitions (default 5)
#   --seconds S      iscsi-perf run time per load (default 5)
#   --scale F        multiplies qemu-img's request counts (default 1)
#   --profile P      cargo profile of the oxtarget example: release (default) or debug
#   --no-build       use the already built example
#   --keep-logs DIR  keep the targets' and initiators' output in DIR
#   --only REGEX     only the workloads whose "name initiator" matches (grep -E)
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=5
SECONDS_PER_LOAD=5
SCALE=1
PROFILE=""
SMOKE=0
BUILD=1
LOGDIR=""
ONLY=""

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --reps) REPS=$2; shift ;;
        --seconds) SECONDS_PER_LOAD=$2; shift ;;
        --scale) SCALE=$2; shift ;;
        --profile) PROFILE=$2; shift ;;
        --no-build) BUILD=0 ;;
        --keep-logs) LOGDIR=$2; shift ;;
        --only) ONLY=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$SMOKE" = 1 ]; then
    REPS=1
    SECONDS_PER_LOAD=1
    SCALE=0.01
    PROFILE=${PROFILE:-debug}
fi
PROFILE=${PROFILE:-release}
case "$PROFILE" in release|debug) ;; *) echo "--profile is release or debug" >&2; exit 2 ;; esac
for n in "$REPS" "$SECONDS_PER_LOAD"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--reps and --seconds take a positive integer" >&2; exit 2; }
done
[[ "$SCALE" =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "--scale takes a positive number" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then
    echo "run as root: tgtd needs it" >&2
    exit 2
fi

say() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------
missing=()
command -v tgtd >/dev/null && command -v tgtadm >/dev/null || missing+=(tgt)
command -v iscsi-perf >/dev/null || missing+=(libiscsi-bin)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v ss >/dev/null || missing+=(iproute2)
# qemu-img's iSCSI driver is a module in qemu-block-extra.
ls /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so /usr/lib/*/qemu/block-iscsi.so \
    >/dev/null 2>&1 || missing+=(qemu-block-extra)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    # A tgt service the package may start keeps to its own port (3260) and
    # management socket; this script runs its own tgtd on others.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

WORK=$(mktemp -d /tmp/oxtarget-bench.XXXXXX)
[ -n "$LOGDIR" ] && mkdir -p "$LOGDIR"
OX_PID=""
TGT_PID=""
TGT_CTL=""
cleanup() {
    local rc=$?
    # tgtd ignores SIGTERM; it stops when its management socket says so.
    if [ -n "$TGT_PID" ]; then
        timeout 10 tgtadm -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1 || true
    fi
    for p in $OX_PID $TGT_PID; do
        kill "$p" 2>/dev/null || true
    done
    for p in $OX_PID $TGT_PID; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ -n "$LOGDIR" ]; then cp -r "$WORK"/. "$LOGDIR"/; fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT INT TERM

# A free TCP port on 127.0.0.1 (none listening on it now).
free_port() {
    local p
    for p in $(shuf -i 20000-29999 -n 50); do
        if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
    done
    echo "no free port" >&2; exit 1
}

# --- oxtarget ----------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    say "building oxtarget's serve example ($PROFILE)"
    flag=(); [ "$PROFILE" = release ] && flag=(--release)
    cargo build "${flag[@]}" -p oxtarget-iscsi --example serve >&2
fi
SERVE=target/$PROFILE/examples/serve
[ -x "$SERVE" ] || { echo "$SERVE is not built" >&2; exit 1; }

OX_PORT=$(free_port)
OX_IQN=iqn.2026-11.org.oxtarget:test
# One null LUN of 1 TiB (like tgtd's null LUN), 512-byte blocks.
"$SERVE" "$OX_PORT" 1 1048576 null >"$WORK/oxtarget.log" 2>&1 &
OX_PID=$!
OX_URL=iscsi://127.0.0.1:$OX_PORT/$OX_IQN/0

# --- tgtd --------------------------------------------------------------------------
TGT_PORT=$(free_port)
while [ "$TGT_PORT" = "$OX_PORT" ]; do TGT_PORT=$(free_port); done
# Its own management socket (/var/run/tgtd/socket.N), not another tgtd's.
TGT_CTL=$(shuf -i 1000-9999 -n 1)
while [ -e "/var/run/tgtd/socket.$TGT_CTL" ]; do TGT_CTL=$(shuf -i 1000-9999 -n 1); done
TGT_IQN=iqn.2026-11.org.oxtarget:tgtd-bench
mkdir -p /var/run/tgtd
tgtd -f -C "$TGT_CTL" --iscsi "portal=127.0.0.1:$TGT_PORT" >"$WORK/tgtd.log" 2>&1 &
TGT_PID=$!
tgtadm_() { tgtadm -C "$TGT_CTL" --lld iscsi "$@"; }
for _ in $(seq 50); do tgtadm_ --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm_ --mode target --op new --tid 1 -T "$TGT_IQN"
# LUN 0 of a tgtd target is its controller; the disk is LUN 1. Null of 1 TiB, 512-byte blocks.
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --bstype null -b /dev/null
tgtadm_ --mode target --op bind --tid 1 -I ALL
TGT_URL=iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1

# Wait until both listen (bounded).
for port in "$OX_PORT" "$TGT_PORT"; do
    for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && break; sleep 0.1; done
    ss -Htln "sport = :$port" | grep -q . || { echo "nothing listens on $port" >&2; cat "$WORK"/*.log >&2; exit 1; }
done
say "oxtarget pid $OX_PID at $OX_URL; tgtd pid $TGT_PID at $TGT_URL"

CLK_TCK=$(getconf CLK_TCK)
# utime+stime (clock ticks) of a whole process, all its threads: fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat") || { echo "target process $1 is gone" >&2; exit 1; }
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( ${12} + ${13} ))
}

alive() {
    kill -0 "$OX_PID" 2>/dev/null || { echo "oxtarget died" >&2; cat "$WORK/oxtarget.log" >&2; exit 1; }
    kill -0 "$TGT_PID" 2>/dev/null || { echo "tgtd died" >&2; cat "$WORK/tgtd.log" >&2; exit 1; }
}

# --- workloads ---------------------------------------------------------------------
# name|tool|bytes per I/O|depth|write|base count (qemu-img)
WORKLOADS=(
    "4k-randread-qd1|qemu-img|4096|1|0|40000"
    "4k-randread-qd32|qemu-img|4096|32|0|200000"
    "4k-randwrite-qd32|qemu-img|4096|32|1|200000"
    "128k-seqread-qd8|qemu-img|131072|8|0|40000"
    "128k-seqwrite-qd8|qemu-img|131072|8|1|30000"
    "4k-randread-qd1|iscsi-perf|4096|1|0|"
    "4k-randread-qd32|iscsi-perf|4096|32|0|"
    "128k-seqread-qd8|iscsi-perf|131072|8|0|"
)
# A step that scatters 4K I/O over the LUN (qemu-img bench has no random mode; the
# offset wraps at the end of the LUN).
RAND_STEP=$((4096 * 314159))
# Upper bound on any one load's wall time.
LOAD_TIMEOUT=$(( SECONDS_PER_LOAD + 120 ))

# Runs one load against one target; prints "IOPS IOS" on stdout.
run_load() {
    local url=$1 tool=$2 bytes=$3 depth=$4 write=$5 base=$6 log=$7
    case "$tool" in
        qemu-img)
            local count args=()
            count=$(awk -v b="$base" -v s="$SCALE" 'BEGIN { c = int(b * s); if (c < 100) c = 100; print c }')
            args=(-f raw -t none -c "$count" -d "$depth" -s "$bytes")
            [ "$bytes" = 4096 ] && args+=(-S "$RAND_STEP")
            [ "$write" = 1 ] && args+=(-w)
            if ! timeout "$LOAD_TIMEOUT" qemu-img bench "${args[@]}" "$url" >"$log" 2>&1; then
                echo "qemu-img bench failed against $url:" >&2; cat "$log" >&2; return 1
            fi
            awk -v n="$count" '/^Run completed in/ { s = $4 + 0; if (s > 0) { printf "%.1f %d\n", n / s, n; ok = 1 } }
                END { if (!ok) exit 1 }' "$log" || { echo "no result from qemu-img:" >&2; cat "$log" >&2; return 1; }
            ;;
        iscsi-perf)
            local blocks=$(( bytes / 512 )) args=()
            args=(-i iqn.2026-11.org.oxtarget:bench-initiator -m "$depth" -b "$blocks" -t "$SECONDS_PER_LOAD")
            [ "$bytes" = 4096 ] && args+=(-r)
            if ! timeout "$LOAD_TIMEOUT" iscsi-perf "${args[@]}" "$url" >"$log" 2>&1; then
                echo "iscsi-perf failed against $url:" >&2; tr '\r' '\n' <"$log" >&2; return 1
            fi
            # The last "iops average N" is the whole run's; it counts completed reads.
            tr '\r' '\n' <"$log" | awk -v t="$SECONDS_PER_LOAD" '
                /iops average/ { for (i = 1; i < NF; i++) if ($i == "average") v = $(i + 1) }
                /[Ee]rror|[Ff]ailed/ { bad = 1 }
                END { if (bad || v == "" || v + 0 <= 0) exit 1; printf "%.1f %d\n", v, v * t }' \
                || { echo "no result or an error from iscsi-perf:" >&2; tr '\r' '\n' <"$log" >&2; return 1; }
            ;;
    esac
}

RESULTS=$WORK/results   # rep workload tool target iops mbps cpu_us_per_io
: >"$RESULTS"
n=0
for rep in $(seq "$REPS"); do
    say "repetition $rep/$REPS; load: $(uptime | sed 's/.*load average: //')"
    for w in "${WORKLOADS[@]}"; do
        IFS='|' read -r name tool bytes depth write base <<<"$w"
        if [ -n "$ONLY" ] && ! grep -Eq -- "$ONLY" <<<"$name $tool"; then continue; fi
        # Alternate which target goes first, per repetition and workload.
        n=$((n + 1))
        if [ $((n % 2)) = 1 ]; then order="oxtarget tgtd"; else order="tgtd oxtarget"; fi
        for target in $order; do
            if [ "$target" = oxtarget ]; then url=$OX_URL; pid=$OX_PID; else url=$TGT_URL; pid=$TGT_PID; fi
            alive
            before=$(cpu_ticks "$pid")
            out=$(run_load "$url" "$tool" "$bytes" "$depth" "$write" "$base" \
                "$WORK/$rep-$name-$tool-$target.log")
            after=$(cpu_ticks "$pid")
            read -r iops ios <<<"$out"
            awk -v r="$rep" -v w="$name" -v tl="$tool" -v tg="$target" -v iops="$iops" \
                -v ios="$ios" -v b="$bytes" -v d=$((after - before)) -v hz="$CLK_TCK" \
                'BEGIN { printf "%s %s %s %s %.1f %.2f %.3f\n", r, w, tl, tg, iops, iops * b / 1e6, d / hz * 1e6 / ios }' \
                >>"$RESULTS"
            tail -n 1 "$RESULTS" | awk '{ printf "    %-18s %-10s %-8s %10.0f IOPS %9.1f MB/s %8.2f us CPU/IO\n", $2, $3, $4, $5, $6, $7 }' >&2
        done
    done
done
alive
say "load after: $(uptime | sed 's/.*load average: //')"

# --- table -------------------------------------------------------------------------
echo
echo "oxtarget ($PROFILE, null LUN) vs tgtd $(tgtd -V 2>/dev/null | awk '{print $NF}') (bstype null), loopback, median of $REPS"
awk '
    function median(key,   n, i, j, t, a) {
        n = split(vals[key], a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        k = $2 " " $3
        if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
        for (f = 5; f <= 7; f++) vals[k " " $4 " " f] = vals[k " " $4 " " f] " " $f
    }
    END {
        printf "| %-18s | %-10s | %9s | %9s | %5s | %8s | %8s | %6s | %7s | %7s | %5s |\n", \
            "workload", "initiator", "ox IOPS", "tgtd IOPS", "ratio", "ox MB/s", "tgt MB/s", "ratio", \
            "ox us/IO", "tgt us/IO", "ratio"
        printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "--------------------", "------------", \
            "-----------", "-----------", "-------", "----------", "----------", "--------", "---------", "----------", "-------"
        for (i = 1; i <= nk; i++) {
            k = order[i]; split(k, kk, " ")
            oi = median(k " oxtarget 5"); ti = median(k " tgtd 5")
            om = median(k " oxtarget 6"); tm = median(k " tgtd 6")
            oc = median(k " oxtarget 7"); tc = median(k " tgtd 7")
            printf "| %-18s | %-10s | %9.0f | %9.0f | %5.2f | %8.1f | %8.1f | %6.2f | %7.2f | %9.2f | %5.2f |\n", \
                kk[1], kk[2], oi, ti, (ti > 0 ? oi / ti : 0), om, tm, (tm > 0 ? om / tm : 0), \
                oc, tc, (tc > 0 ? oc / tc : 0)
        }
    }' "$RESULTS"
echo "(ratio = oxtarget / tgtd; us/IO = target CPU microseconds per I/O, lower is better)"
if [ "$SMOKE" = 1 ]; then
    echo "smoke: both targets served every load without error (tiny loads, numbers mean nothing)"
fi
