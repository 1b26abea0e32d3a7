#!/usr/bin/env bash
# A/B of two builds of oxtarget's iSCSI `serve` example, interleaved in the same run:
# both serve a null LUN (1 TiB, 512-byte blocks) on loopback, and `qemu-img bench`
# drives 4K random writes, then reads, at QD32 against each in turn (which goes
# first alternates). Prints IOPS and target CPU per I/O (utime+stime of the target
# process over the load) per repetition, then the medians. For the commit messages
# of performance changes; compare within one run only.
#
#   integration/bench/iscsi-ab.sh A_BINARY B_BINARY [REPS (6)] [COUNT (150000)]
#
# A binary is e.g. a copy of target/release/examples/serve built before the change.
# Every load is bounded by its request count and by `timeout`. Needs qemu-img with
# its iSCSI driver (qemu-utils, qemu-block-extra). WL="1 0" (default) selects the
# loads: 1 = writes, 0 = reads.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
A=$1; B=$2; REPS=${3:-6}; COUNT=${4:-150000}
[[ "$REPS" =~ ^[1-9][0-9]*$ && "$COUNT" =~ ^[1-9][0-9]*$ ]] || { echo "REPS and COUNT are positive integers" >&2; exit 2; }
for b in "$A" "$B"; do [ -x "$b" ] || { echo "$b is not an executable" >&2; exit 2; }; done
CLK=$(getconf CLK_TCK)
IQN=iqn.2026-11.org.oxtarget:test
WORK=$(mktemp -d /tmp/oxtarget-ab.XXXXXX)
free_port() {
    local p
    for p in $(shuf -i 20000-29999 -n 50); do
        if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
    done
    echo "no free port" >&2; exit 1
}
PA=$(free_port); PB=$(free_port)
while [ "$PB" = "$PA" ]; do PB=$(free_port); done
"$A" "$PA" 1 1048576 null >"$WORK/a.log" 2>&1 & A_PID=$!
"$B" "$PB" 1 1048576 null >"$WORK/b.log" 2>&1 & B_PID=$!
cleanup() { kill "$A_PID" "$B_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
for port in "$PA" "$PB"; do
    for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && break; sleep 0.1; done
done
ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
# run PID PORT WRITE: prints "IOPS US_PER_IO"
run() {
    local w=() t0 t1 secs
    [ "$3" = 1 ] && w=(-w)
    t0=$(ticks "$1")
    timeout 120 qemu-img bench -f raw -t none -c "$COUNT" -d 32 -s 4096 -S $((4096 * 314159)) \
        "${w[@]}" "iscsi://127.0.0.1:$2/$IQN/0" >"$WORK/q.log" 2>&1 \
        || { echo "qemu-img failed:" >&2; cat "$WORK/q.log" >&2; exit 1; }
    t1=$(ticks "$1")
    secs=$(awk '/^Run completed in/ { print $4 + 0 }' "$WORK/q.log")
    awk -v n="$COUNT" -v s="$secs" -v t=$((t1 - t0)) -v c="$CLK" \
        'BEGIN { printf "%.0f %.2f\n", n / s, t / c * 1e6 / n }'
}
for wl in ${WL:-1 0}; do
    name=$([ "$wl" = 1 ] && echo "4K rand write QD32" || echo "4K rand read QD32")
    : >"$WORK/rows"
    for r in $(seq "$REPS"); do
        if [ $((r % 2)) = 1 ]; then a=$(run "$A_PID" "$PA" "$wl"); b=$(run "$B_PID" "$PB" "$wl")
        else b=$(run "$B_PID" "$PB" "$wl"); a=$(run "$A_PID" "$PA" "$wl"); fi
        echo "$a $b" >>"$WORK/rows"
        printf '%s rep %d: A %s IOPS %s us/IO  B %s IOPS %s us/IO  (load %s)\n' "$name" "$r" \
            ${a} ${b} "$(cut -d' ' -f1 /proc/loadavg)"
    done
    for col in 1 2 3 4; do sort -g -k"$col","$col" "$WORK/rows" | awk -v c="$col" '{ v[NR] = $c }
        END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; done \
        | paste -sd' ' | awk -v n="$name" '{ printf "%s median: A %.0f IOPS %.2f us/IO  B %.0f IOPS %.2f us/IO\n", n, $1, $2, $3, $4 }'
done
