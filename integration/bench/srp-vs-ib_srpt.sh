#!/usr/bin/env bash
# oxtarget's SRP target against the kernel's SRP target ib_srpt, in one RDMA guest
# (integration/src/rdma.rs: QEMU, Soft RoCE on virtio-net, two vCPUs), with the same
# initiator (the kernel's ib_srp, logged in to both at once) and the same fio jobs
# on equivalent RAM LUNs: ib_srpt on a 64 MiB LIO ramdisk (rd_mcp) on RDMA/CM port
# 5556, oxtarget (`oxtarget serve`, [[srp_target]]) on a 64 MiB RAM LUN on port 5555.
#
#   integration/bench/srp-vs-ib_srpt.sh [--reps N] [--seconds S] [--ch-count N]
#   integration/bench/srp-vs-ib_srpt.sh --smoke     # CI: tiny runs, no ratio asserted
#
# Workloads (fio, libaio, O_DIRECT, time-based, in the guest):
#   4k-randread-qd32, 4k-randwrite-qd32, 128k-seqread-qd8, 128k-seqwrite-qd8.
# Repetitions interleave the targets (which goes first rotates); the table shows
# medians: IOPS, MB/s (10^6 bytes), guest CPU per I/O (all busy time of the guest's
# vCPUs over the run from /proc/stat, divided by the I/Os: initiator, rxe and target
# together, since ib_srpt is in the kernel), and the ratios oxtarget/ib_srpt.
# Under TCG the guest's numbers measure the emulator as much as the targets: compare
# the ratios of one run, not numbers across runs or machines. The host's load average
# is printed before and after.
#
# Options:
#   --smoke          1 repetition of 1 s loads on a debug build; fails only if a target
#                    fails an I/O or dies. Asserts no ratio and no timing.
#   --reps N         repetitions (default 3)
#   --seconds S      fio run time per load (default 10)
#   --ch-count N     ib_srp channels per login (default: ib_srp's, one per vCPU)
#   --profile P      cargo profile of oxtarget: release (default) or debug
#   --no-build       use the already built binaries
#   --srpt-only      ib_srpt alone (while the daemon has no SRP target); no ratio
#   --keep-logs DIR  keep this script's work files and the guest's run directory
#                    (console log, results) in DIR
#   --only REGEX     only the workloads whose name matches (grep -E)
#   --baseline PATH  also an older oxtarget binary ("oxbase", its own daemon on port
#                    5557), interleaved with the others: before/after in one run, with
#                    the tables oxbase vs ib_srpt and oxtarget vs oxbase
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=3
SECONDS_PER_LOAD=10
CH_COUNT=""
PROFILE=""
SMOKE=0
BUILD=1
SRPT_ONLY=0
LOGDIR=""
ONLY=""
BASELINE=""

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --reps) REPS=$2; shift ;;
        --seconds) SECONDS_PER_LOAD=$2; shift ;;
        --ch-count) CH_COUNT=$2; shift ;;
        --profile) PROFILE=$2; shift ;;
        --no-build) BUILD=0 ;;
        --srpt-only) SRPT_ONLY=1 ;;
        --keep-logs) LOGDIR=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --baseline) BASELINE=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$SMOKE" = 1 ]; then
    REPS=1
    SECONDS_PER_LOAD=1
    PROFILE=${PROFILE:-debug}
fi
PROFILE=${PROFILE:-release}
case "$PROFILE" in release|debug) ;; *) echo "--profile is release or debug" >&2; exit 2 ;; esac
for n in "$REPS" "$SECONDS_PER_LOAD" ${CH_COUNT:+"$CH_COUNT"}; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--reps, --seconds and --ch-count take a positive integer" >&2; exit 2; }
done

say() { printf '==> %s\n' "$*" >&2; }

WORK=$(mktemp -d /tmp/oxtarget-srp-bench.XXXXXX)
if [ -n "$LOGDIR" ]; then
    mkdir -p "$LOGDIR"
    # The guest's run directory (console, results, QEMU's command line) too.
    export OXTARGET_GUEST_RUNS=$LOGDIR
fi
cleanup() {
    local rc=$?
    if [ -n "$LOGDIR" ]; then cp -r "$WORK"/. "$LOGDIR"/; fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT INT TERM

# --- binaries ----------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ "$BUILD" = 1 ]; then
    say "building the guest runner (rdma-guest)"
    cargo build -p oxtarget-integration --bin rdma-guest >&2
    if [ "$SRPT_ONLY" = 0 ]; then
        say "building oxtarget ($PROFILE)"
        flag=(); [ "$PROFILE" = release ] && flag=(--release)
        cargo build "${flag[@]}" -p oxtarget >&2
    fi
fi
RUNNER=$TARGET_DIR/debug/rdma-guest
[ -x "$RUNNER" ] || { echo "$RUNNER is not built" >&2; exit 1; }
RUNNER_ARGS=()
if [ "$SRPT_ONLY" = 0 ]; then
    OXTARGET=${OXTARGET_BIN:-$TARGET_DIR/$PROFILE/oxtarget}
    [ -x "$OXTARGET" ] || { echo "$OXTARGET is not built (or set OXTARGET_BIN)" >&2; exit 1; }
    RUNNER_ARGS+=(--oxtarget "$OXTARGET")
fi
if [ -n "$BASELINE" ]; then
    [ "$SRPT_ONLY" = 0 ] || { echo "--baseline needs oxtarget (not --srpt-only)" >&2; exit 2; }
    [ -x "$BASELINE" ] || { echo "--baseline $BASELINE is not an executable" >&2; exit 2; }
    # rdma-guest puts a --binary at /usr/bin/ under its file name.
    cp "$BASELINE" "$WORK/oxtarget-base"
    RUNNER_ARGS+=(--binary "$WORK/oxtarget-base")
fi

# --- workloads ---------------------------------------------------------------------
# name|fio rw|block size|depth
ALL_WORKLOADS=(
    "4k-randread-qd32|randread|4k|32"
    "4k-randwrite-qd32|randwrite|4k|32"
    "128k-seqread-qd8|read|128k|8"
    "128k-seqwrite-qd8|write|128k|8"
)
WORKLOADS=""
for w in "${ALL_WORKLOADS[@]}"; do
    if [ -n "$ONLY" ] && ! grep -Eq -- "$ONLY" <<<"${w%%|*}"; then continue; fi
    WORKLOADS="$WORKLOADS $w"
done
[ -n "$WORKLOADS" ] || { echo "no workload matches --only $ONLY" >&2; exit 2; }
if [ "$SRPT_ONLY" = 1 ]; then TARGETS="srpt"; elif [ -n "$BASELINE" ]; then TARGETS="oxtarget oxbase srpt"; else TARGETS="oxtarget srpt"; fi
nloads=$(( REPS * $(wc -w <<<"$WORKLOADS") * $(wc -w <<<"$TARGETS") ))
# Boot, setup and logins take under a minute under TCG; each load its run time plus
# fio's start and the target switch.
GUEST_TIMEOUT=$(( 180 + nloads * (SECONDS_PER_LOAD + 30) ))

# --- the guest's script --------------------------------------------------------------
OX_GUID=0x0002c90300a1b2c3
BASE_GUID=0x0002c90300a1b2c4
cat >"$WORK/script.sh" <<EOF
REPS=$REPS
SECS=$SECONDS_PER_LOAD
WORKLOADS="$WORKLOADS"
TARGETS="$TARGETS"
CH="${CH_COUNT:+ch_count=$CH_COUNT}"
OX_GUID=$OX_GUID
BASE_GUID=$BASE_GUID
EOF
cat >>"$WORK/script.sh" <<'EOF'
rxe_up
guid=$(srpt_guid)
rd_backstore ramdisk0 16384
srpt_setup 5556 rd_mcp_0/ramdisk0
srp_login 5556 $guid $guid $CH
srpt_host=$(srp_host)
disk_srpt=$(srp_disk $srpt_host 0)
echo "srpt-disk $disk_srpt $(cat /sys/block/$disk_srpt/size) sectors, $(cat /sys/class/scsi_host/host$srpt_host/ch_count) channels"
# ox_start NAME BINARY PORT GUID: a daemon serving a 64 MiB RAM LUN on PORT as
# target port GUID, with its own state and RPC socket; ib_srp logs in; sets
# disk_NAME and pid_NAME.
ox_start() {
    cat >/srp-$1.toml <<TOML
state_dir = "/tmp/$1-state"
rpc_socket = "/run/$1.sock"

[[backend]]
name = "ram0"
type = "ram"
size = "64M"

[[lun]]
name = "lun0"
backend = "ram0"
uuid = "5a7e0000-0000-4000-8000-000000000000"

[srp]
listen = ["0.0.0.0:$3"]
queue_depth = 128

[[srp_target]]
name = "srp0"
id_ext = "$4"
ioc_guid = "$4"
luns = [{ id = 0, lun = "lun0" }]
TOML
    mkdir -p /tmp/$1-state
    NO_COLOR=1 $2 serve --config /srp-$1.toml >/tmp/$1.log 2>&1 &
    eval pid_$1=$!
    _pid=$!
    _port=$3
    _ready() {
        ! kill -0 $_pid 2>/dev/null || rdma resource show cm_id 2>/dev/null | grep LISTEN | grep -q ":$_port"
    }
    wait_for 300 _ready || true
    kill -0 $_pid 2>/dev/null || { echo "$1 died at start" >&2; exit 1; }
    srp_login $3 $4 $4 $CH
    _host=$(srp_host)
    _disk=$(srp_disk $_host 0)
    eval disk_$1=$_disk
    echo "$1-disk $_disk $(cat /sys/block/$_disk/size) sectors, $(cat /sys/class/scsi_host/host$_host/ch_count) channels"
}
oxs=
case " $TARGETS " in *" oxtarget "*)
    trap 'for l in /tmp/oxtarget.log /tmp/oxbase.log; do [ -e $l ] && sed "s|^|${l#/tmp/}: |" $l >&2; done' EXIT
    ox_start oxtarget oxtarget 5555 $OX_GUID
    oxs="$pid_oxtarget"
    ;;
esac
case " $TARGETS " in *" oxbase "*)
    ox_start oxbase oxtarget-base 5557 $BASE_GUID
    oxs="$oxs $pid_oxbase"
    ;;
esac

# Busy jiffies of all vCPUs (everything but idle and iowait).
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
hz=100
for rep in $(seq $REPS); do
    wi=0
    for w in $WORKLOADS; do
        wi=$((wi + 1))
        IFS='|' read -r name rw bs qd <<W
$w
W
        # The targets' order rotates by rep + workload: each workload sees every
        # target go first in turn (alternating by load number alone gave each
        # workload the same order in every rep when their number is even).
        order=$(echo $TARGETS | awk -v k=$((rep + wi)) '{ for (i = 0; i < NF; i++) printf "%s ", $(((i + k) % NF) + 1) }')
        for t in $order; do
            for p in $oxs; do kill -0 $p 2>/dev/null || { echo "a daemon died" >&2; exit 1; }; done
            eval disk=\$disk_$t
            b0=$(busy)
            if ! fio --name=$name --filename=/dev/$disk --direct=1 --ioengine=libaio \
                --rw=$rw --bs=$bs --iodepth=$qd --runtime=$SECS --time_based \
                --output-format=terse --terse-version=3 >/tmp/fio.out 2>/tmp/fio.err; then
                echo "fio $name failed against $t:" >&2
                cat /tmp/fio.out /tmp/fio.err >&2
                exit 1
            fi
            b1=$(busy)
            case $rw in *read) col=7 ;; *) col=48 ;; esac
            awk -F';' -v rep=$rep -v w=$name -v t=$t -v c=$col -v d=$((b1 - b0)) -v hz=$hz -v s=$SECS '
                NR == 1 {
                    if ($5 != 0) { print "fio error " $5 > "/dev/stderr"; exit 1 }
                    bw = $c; iops = $(c + 1); ios = iops * s
                    if (iops <= 0) { print "no I/O completed" > "/dev/stderr"; exit 1 }
                    printf "result %s %s %s %.1f %.3f %.2f\n", rep, w, t, iops, bw * 1024 / 1e6, d / hz * 1e6 / ios
                    ok = 1
                }
                END { if (!ok) exit 1 }' /tmp/fio.out || { cat /tmp/fio.out >&2; exit 1; }
        done
    done
done
srp_logout
for p in $oxs; do
    kill -TERM $p
    wait $p && st=0 || st=$?
    echo "oxtarget-exit $st"
done
echo "bench done"
EOF

say "host load: $(uptime | sed 's/.*load average: //')"
say "running $nloads loads of ${SECONDS_PER_LOAD}s in the guest (timeout ${GUEST_TIMEOUT}s)"
set +e
"$RUNNER" "${RUNNER_ARGS[@]}" --timeout "$GUEST_TIMEOUT" ${LOGDIR:+--keep} "$WORK/script.sh" \
    >"$WORK/results" 2>"$WORK/runner.log"
status=$?
set -e
grep -E '^(srpt|oxtarget)-disk ' "$WORK/results" | sed 's/^/    /' >&2 || true
if [ $status != 0 ] || ! grep -qx 'bench done' "$WORK/results"; then
    echo "the guest failed (status $status):" >&2
    cat "$WORK/results" "$WORK/runner.log" >&2
    exit 1
fi
grep '^rdma-guest' "$WORK/runner.log" >&2 || true
if grep '^oxtarget-exit ' "$WORK/results" | grep -qvx 'oxtarget-exit 0'; then
    echo "oxtarget did not exit cleanly: $(grep '^oxtarget-exit' "$WORK/results")" >&2
    exit 1
fi
say "host load after: $(uptime | sed 's/.*load average: //')"

# --- table -------------------------------------------------------------------------
# table A B: medians of targets A and B (oxtarget, oxbase, srpt) side by side, with
# the ratios A/B.
table() {
    awk -v srpt_only="$SRPT_ONLY" -v a="$1" -v b="$2" '
    function median(key,   n, i, j, t, x) {
        n = split(vals[key], x, " ")
        if (n == 0) return 0
        for (i = 2; i <= n; i++) for (j = i; j > 1 && x[j - 1] + 0 > x[j] + 0; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
        return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
    }
    function ratio(o, s) { return (srpt_only || s <= 0) ? "-" : sprintf("%.2f", o / s) }
    $1 == "result" {
        k = $3
        if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
        for (f = 5; f <= 7; f++) vals[k " " $4 " " f] = vals[k " " $4 " " f] " " $f
    }
    END {
        printf "| %-18s | %9s | %9s | %5s | %8s | %8s | %5s | %8s | %8s | %5s |\n", \
            "workload", a " IOPS", b " IOPS", "ratio", a " MB/s", b " MB/s", "ratio", \
            a " us/IO", b " us/IO", "ratio"
        printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "--------------------", "-----------", \
            "-----------", "-------", "----------", "-----------", "-------", "----------", "------------", "-------"
        for (i = 1; i <= nk; i++) {
            k = order[i]
            oi = median(k " " a " 5"); si = median(k " " b " 5")
            om = median(k " " a " 6"); sm = median(k " " b " 6")
            oc = median(k " " a " 7"); sc = median(k " " b " 7")
            printf "| %-18s | %9.0f | %9.0f | %5s | %8.1f | %9.1f | %5s | %8.1f | %10.1f | %5s |\n", \
                k, oi, si, ratio(oi, si), om, sm, ratio(om, sm), oc, sc, ratio(oc, sc)
        }
    }' "$WORK/results"
}
echo
if [ "$SRPT_ONLY" = 1 ]; then
    echo "ib_srpt (rd_mcp) alone (--srpt-only), ib_srp over rxe in one guest, median of $REPS"
    table srpt srpt
else
    echo "oxtarget ($PROFILE, RAM LUN) vs ib_srpt (rd_mcp), ib_srp over rxe in one guest, median of $REPS"
    table oxtarget srpt
fi
if [ -n "$BASELINE" ]; then
    echo
    echo "oxbase ($BASELINE) vs ib_srpt, same run"
    table oxbase srpt
    echo
    echo "oxtarget vs oxbase, same run"
    table oxtarget oxbase
fi
echo "(ratio = first / second; us/IO = guest CPU microseconds per I/O, initiator and target together, lower is better)"
if [ "$SMOKE" = 1 ]; then
    echo "smoke: every target served every load without error (tiny loads, numbers mean nothing)"
fi
