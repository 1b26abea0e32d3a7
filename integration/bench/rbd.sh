#!/usr/bin/env bash
# oxtarget's RBD backend driven directly (backends/examples/rbd_bench: one channel,
# its eventfd, QD32) against `rbd bench --io-threads 32` on the same 1 GiB image of a
# throwaway one-node bluestore cluster (integration/ceph/cluster.sh). No daemon, no
# transport: this measures the backend's submit/complete path against librbd's own
# benchmark client.
#
#   integration/bench/rbd.sh            full run (release build)
#   integration/bench/rbd.sh --smoke    tiny totals; fails only if a command fails
#
# Environment: BENCH_REPS (interleaved repetitions, default 3; the table shows
# medians), BENCH_TOTAL (bytes per run, default 256M), BENCH_DIR (cluster
# directory; default a new one under /tmp, removed at the end).
#
# Configurations, each run for random 4K reads and writes in every repetition:
#   rbd-bench          rbd bench with librbd's default cache (writeback once the
#                      client has flushed: rbd bench's writes may end in client RAM)
#   rbd-bench-nocache  rbd bench --rbd-cache=false (what the backend does: a write
#                      completes when the OSD has it)
#   oxt-backend        rbd_bench example (the backend; cache off)
# The image is written whole first, so reads never hit unallocated extents. The load
# average is printed with each run: the machine may be shared.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SMOKE=0
[[ ${1:-} == --smoke ]] && SMOKE=1
REPS=${BENCH_REPS:-3}
TOTAL=${BENCH_TOTAL:-256M}
if ((SMOKE)); then REPS=1; TOTAL=4M; fi

PROFILE=release
((SMOKE)) && PROFILE=debug
cargo build -q $([[ $PROFILE == release ]] && echo --release) -p oxtarget-backends \
    --features rbd --example rbd_bench
BIN=$ROOT/target/$PROFILE/examples/rbd_bench

DIR=${BENCH_DIR:-$(mktemp -u /tmp/oxt-rbd-bench.XXXXXX)}
cleanup() {
    timeout 120 "$ROOT/integration/ceph/cluster.sh" stop "$DIR" || true
    [[ -z ${BENCH_DIR:-} ]] && rm -rf "$DIR"
}
trap cleanup EXIT
timeout 300 "$ROOT/integration/ceph/cluster.sh" start "$DIR" --bluestore >/dev/null

RBD=(timeout 600 rbd --conf "$DIR/ceph.conf" --id admin --keyring "$DIR/keyring")
"${RBD[@]}" create --size 1G rbd/bench
"${RBD[@]}" bench --io-type write --io-size 4M --io-threads 16 --io-total 1G \
    --io-pattern seq rbd/bench >/dev/null

# Prints the IOPS of one run.
run() {
    local cfg=$1 type=$2 out
    case $cfg in
        rbd-bench | rbd-bench-nocache)
            local extra=()
            [[ $cfg == rbd-bench-nocache ]] && extra=(--rbd-cache=false)
            out=$("${RBD[@]}" bench "${extra[@]}" --io-type "$type" --io-size 4K \
                --io-threads 32 --io-total "$TOTAL" --io-pattern rand rbd/bench)
            # Last line: "elapsed: N ops: N ops/sec: X bytes/sec: ..."
            awk '/^elapsed:/ { for (i = 1; i <= NF; i++) if ($i == "ops/sec:") v = $(i + 1) } END { printf "%.0f\n", v }' <<<"$out"
            ;;
        oxt-backend)
            out=$(timeout 600 "$BIN" --conf "$DIR/ceph.conf" --keyring "$DIR/keyring" \
                --image rbd/bench --io-type "$type" --io-size 4K --qd 32 \
                --io-total "$TOTAL" --pattern rand --seconds 120)
            sed -n 's/.* \([0-9]*\) IOPS.*/\1/p' <<<"$out"
            ;;
    esac
}

CONFIGS=(rbd-bench rbd-bench-nocache oxt-backend)
declare -A RES
for ((rep = 1; rep <= REPS; rep++)); do
    for type in read write; do
        for cfg in "${CONFIGS[@]}"; do
            iops=$(run "$cfg" "$type")
            echo "rep $rep $type $cfg: $iops IOPS (load $(cut -d' ' -f1 /proc/loadavg))" >&2
            RES[$cfg.$type]+="$iops "
        done
    done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf '\n| 4K random, QD32 (median of %s) | read IOPS | write IOPS |\n|---|---|---|\n' "$REPS"
for cfg in "${CONFIGS[@]}"; do
    printf '| %s | %s | %s |\n' "$cfg" "$(median "${RES[$cfg.read]}")" "$(median "${RES[$cfg.write]}")"
done
