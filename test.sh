#!/usr/bin/env bash
# Runs every test of oxtarget: formatting, lints, unit and integration tests
# (including the QEMU guest tests), and a short fuzzing smoke run of every fuzz
# target. On a fresh Debian 12 machine run it as root: it installs what it needs.
#
#   ./test.sh                 everything
#   FUZZ_SECONDS=0 ./test.sh  skip fuzzing
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS=${FUZZ_SECONDS:-20}

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing test dependencies"
    bash integration/install-deps.sh
fi

step "cargo fmt --check"
cargo fmt --all --check

# Every feature is on (the RBD backend and its tests need librbd, which the
# dependencies step installs); a check without features keeps the build that
# needs no Ceph honest.
step "cargo check without features"
cargo check --workspace --locked

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo test"
cargo test --workspace --all-features --locked

step "vhost-user-scsi benchmark smoke (drives the device from the host; asserts no ratio)"
integration/bench/vhost-vs-device-scsi.sh --smoke

step "iSCSI benchmark smoke: oxtarget and tgtd serve the same loads"
if [ "$(id -u)" = 0 ]; then integration/bench/iscsi-vs-tgtd.sh --smoke; else echo "skipped (needs root)"; fi

step "SRP benchmark smoke: ib_srp in a TCG guest against oxtarget and the kernel's ib_srpt (asserts no ratio)"
integration/bench/srp-vs-ib_srpt.sh --smoke

step "RBD benchmark smoke: rbd bench, the backend alone and the daemon's RBD LUN over iSCSI and vhost-user-scsi on one throwaway Ceph (asserts no ratio)"
integration/bench/rbd.sh --smoke

step "vhost-user-blk benchmark smoke: oxtarget (blk, scsi) and qemu-storage-daemon (asserts no ratio)"
integration/bench/vhost-blk.sh --smoke

if [ "$FUZZ_SECONDS" != 0 ]; then
    step "fuzz smoke (${FUZZ_SECONDS}s per target)"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    (
        cd fuzz
        for t in $(cargo +nightly fuzz list); do
            echo "fuzz target $t"
            mkdir -p "corpus/$t"
            cargo +nightly fuzz run "$t" "corpus/$t" -- \
                -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
                | grep -E '^(stat::number_of_executed_units|Done|==|SUMMARY|thread)' || true
            # cargo fuzz exits non-zero on a crash; the pipeline above hides it, so
            # check for crash artifacts explicitly.
            if ls "artifacts/$t"/crash-* "artifacts/$t"/timeout-* "artifacts/$t"/oom-* >/dev/null 2>&1; then
                echo "fuzz target $t found a failure:"; ls "artifacts/$t"
                exit 1
            fi
        done
    )
fi

echo
echo "all tests passed"
