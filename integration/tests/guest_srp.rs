//! oxtarget's SRP target against the kernel's SRP initiator (ib_srp) over
//! Soft RoCE (rdma_rxe), in one guest: the daemon runs inside the guest
//! (`oxtarget serve --config /srp.toml` with an `[[srp_target]]`, `[srp]`
//! listening on RDMA/CM port 5555), as the kernel's ib_srpt does in `tests/guest_srpt.rs`, and
//! goes through the same suite (the guest library's `srp_suite`):
//!
//! - a login naming a target port the target does not have, refused;
//! - logins with `ch_count=1` and with two channels (one per vCPU; the
//!   second channel asks for MULTICHANNEL), the LUN's size, the channel
//!   count and the credits ib_srp sees;
//! - direct writes of random data read back and compared (`cmp`, MD5, fio's
//!   CRC32C verify) on LUN 0, a 64 MiB RAM LUN;
//! - task management on LUN 1, a block device LUN over a dm-zero device:
//!   with the device suspended, a direct read is held in the target past
//!   ib_srp's 2 s command timeout, so ib_srp sends ABORT TASK; it must be
//!   answered (no LUN or host reset after it, no response for the aborted
//!   command); then `sg_reset -d` has ib_srp send a LUN RESET, answered
//!   FUNCTION COMPLETE; LUN 0 reads back afterwards.
//!
//! Then, with ib_srp logged in again (one channel), `srp_probe` (the
//! user-space SRP initiator of `srp/examples`) takes the same daemon through
//! what ib_srp never sends (refused logins, immediate data, direct and
//! indirect descriptors, residuals, a malformed SRP_CMD, unknown task
//! management, credits, multichannel join and takeover) and hostile input
//! (commands to LUNs it does not have, IUs longer than granted and than any
//! receive buffer, a burst of three times the credits): each answered or its
//! channel dropped, never a hang. ib_srp's disk must still read back what is
//! written to it afterwards, on the same SCSI host (no reconnect).
//!
//! The oxtarget binary comes from the host (`integration::oxtarget_binary`:
//! OXTARGET_BIN, else `target/<profile>/oxtarget`) with the libraries ldd
//! lists (libibverbs, librdmacm). `cargo test --workspace` builds it;
//! `cargo test -p oxtarget-integration` alone does not (nor rebuilds a stale
//! one): `cargo build -p oxtarget` first, or set OXTARGET_BIN. A missing
//! binary fails the test with a message that says how to build it. The
//! probe is found the same way (SRP_PROBE_BIN, else
//! `target/<profile>/examples/srp_probe`, which `cargo test --workspace`
//! builds; alone: `cargo build -p oxtarget-srp --example srp_probe`).

use std::path::PathBuf;
use std::time::SystemTime;

use integration::rdma::{self, RdmaGuest, SCRIPT_PROLOGUE};
use integration::{GuestEnv, GuestRun, Initramfs};

/// Where the binary sits in the guest.
const GUEST_BIN: &str = "/usr/bin/oxtarget";
/// Where the probe sits in the guest.
const GUEST_PROBE: &str = "/usr/bin/srp_probe";

/// The target's identity: id_ext and ioc_guid of the login, and of the
/// target port id the target checks.
const GUID: &str = "0x0002c90300a1b2c3";

/// The RAM LUN: 64 MiB.
const RAM_SECTORS: u64 = 131_072;

/// The guest's script: the daemon's config (with the dm device's path,
/// known only in the guest), the daemon in the background, the suite, and
/// the daemon stopped with SIGTERM (its exit status reported). Its log goes
/// to the console as it is written.
const SCRIPT: &str = r#"
rxe_up
hold=$(dm_zero_device oxhold 65536)
cat >/srp.toml <<EOF
state_dir = "/tmp/oxtarget-state"
rpc_socket = "/run/oxtarget.sock"

[[backend]]
name = "ram0"
type = "ram"
size = "64M"

[[backend]]
name = "hold0"
type = "blockdev"
path = "$hold"

[[lun]]
name = "lun0"
backend = "ram0"
uuid = "5a7e0000-0000-4000-8000-000000000000"

[[lun]]
name = "lun1"
backend = "hold0"
uuid = "5a7e0000-0000-4000-8000-000000000001"

[srp]
listen = ["0.0.0.0:5555"]
queue_depth = 128

[[srp_target]]
name = "srp0"
id_ext = "__GUID__"
ioc_guid = "__GUID__"
luns = [{ id = 0, lun = "lun0" }, { id = 1, lun = "lun1" }]
EOF
mkdir -p /tmp/oxtarget-state
NO_COLOR=1 RUST_LOG=info __BIN__ serve --config /srp.toml >/tmp/oxtarget.log 2>&1 &
ox=$!
# The daemon's log, live on the console (still there when a hang ends in the
# harness's timeout).
tail -f /tmp/oxtarget.log | sed 's/^/oxtarget: /' >&2 &
# Listening (an RDMA/CM id in LISTEN on port 5555) or gone.
ox_ready() {
    ! kill -0 $ox 2>/dev/null || rdma resource show cm_id 2>/dev/null | grep LISTEN | grep -q ':5555'
}
wait_for 300 ox_ready || true
if ! kill -0 $ox 2>/dev/null; then
    wait $ox && st=0 || st=$?
    echo "oxtarget-died $st"
    exit 1
fi
if ! rdma resource show cm_id | grep LISTEN | grep -q ':5555'; then
    echo "oxtarget-listening no"
    rdma resource show cm_id >&2
    exit 1
fi
echo "oxtarget-listening yes"
srp_suite 5555 __GUID__ 0 131072 1 oxhold
# ib_srp logged in while srp_probe (another initiator port) runs its checks
# and hostile input against the same daemon; ib_srp's disk afterwards.
srp_login 5555 __GUID__ __GUID__ ch_count=1
ib_host=$(srp_host)
ib_disk=$(srp_disk $ib_host 0)
# The control plane sees the login, and maps and unmaps a LUN on the live target.
cli() { __BIN__ --socket /run/oxtarget.sock --json "$@"; }
cli srp sessions srp0 >/tmp/cli.sessions 2>&1 && echo "cli-sessions ok" || echo "cli-sessions failed"
echo "cli-sessions-channels $(grep -o '"channels": *[0-9]*' /tmp/cli.sessions | grep -o '[0-9]*$' | head -n1)"
cli srp map srp0 7 lun0 >/dev/null 2>&1 && echo "cli-map ok" || echo "cli-map failed"
echo "cli-list-luns $(cli srp list | grep -o '"id": *[0-9]*' | grep -o '[0-9]*$' | sort -n | paste -sd, -)"
cli srp unmap srp0 7 >/dev/null 2>&1 && echo "cli-unmap ok" || echo "cli-unmap failed"
cli srp map srp0 0 lun1 >/dev/null 2>&1 && echo "cli-map-taken accepted" || echo "cli-map-taken refused"
__PROBE__ $GUEST_ADDR:5555 __GUID__ __GUID__ >/tmp/probe.out 2>/tmp/probe.err && pst=0 || pst=$?
sed 's/^/probe-/' /tmp/probe.out
sed 's/^/srp_probe: /' /tmp/probe.err >&2
echo "probe-exit $pst"
if kill -0 $ox 2>/dev/null; then echo "oxtarget-alive-after-probe yes"; else echo "oxtarget-alive-after-probe no"; fi
io_check after-probe "$ib_disk" 1 40
echo "after-probe-same-host $([ "$(srp_host)" = "$ib_host" ] && echo yes || echo no)"
srp_logout
kill -TERM $ox
wait $ox && st=0 || st=$?
echo "oxtarget-exit $st"
echo "oxtarget-panics $(grep -c panicked /tmp/oxtarget.log || true)"
"#;

#[test]
fn kernel_initiator_against_oxtarget_srp_over_rxe() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    rdma::require_host_tools();
    let bin = integration::oxtarget_binary().unwrap_or_else(|e| panic!("{e}"));
    let age = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or_else(|| "?".into(), |d| format!("{} s", d.as_secs()));
    eprintln!("oxtarget binary: {} (built {age} ago)", bin.display());
    // The shared RDMA archive, and the daemon (which changes with every
    // build) unpacked over it for this run only.
    let initramfs = Initramfs::rdma()
        .build(env)
        .unwrap_or_else(|e| panic!("building the RDMA initramfs: {e}"));
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let small = integration::strip_debug_copy(&bin, tmp.path());
    let probe = integration::strip_debug_copy(&probe_binary(), tmp.path());
    let script = format!(
        "{SCRIPT_PROLOGUE}{}",
        SCRIPT
            .replace("__GUID__", GUID)
            .replace("__BIN__", GUEST_BIN)
            .replace("__PROBE__", GUEST_PROBE)
    );
    let run = env
        .run(
            &RdmaGuest::config(&initramfs, script).overlay(
                Initramfs::new()
                    .binary_at(&small, GUEST_BIN)
                    .binary_at(&probe, GUEST_PROBE),
            ),
        )
        .and_then(GuestRun::check)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest run: {:.1} s\n{}",
        run.elapsed.as_secs_f64(),
        run.results
    );
    assert_eq!(run.field("oxtarget-listening"), Some("yes"));
    rdma::assert_srp_suite(&run, RAM_SECTORS, false);
    for (key, want) in [
        ("probe-probe-mismatches", "0"),
        ("probe-exit", "0"),
        ("probe-bad-lun-sense", "5/25/00"),
        ("probe-after-hostile-readback", "ok"),
        ("oxtarget-alive-after-probe", "yes"),
        ("after-probe-cmp", "ok"),
        ("after-probe-same-host", "yes"),
        ("cli-sessions", "ok"),
        ("cli-sessions-channels", "1"),
        ("cli-map", "ok"),
        ("cli-list-luns", "0,1,7"),
        ("cli-unmap", "ok"),
        ("cli-map-taken", "refused"),
    ] {
        assert_eq!(run.field(key), Some(want), "{key}");
    }
    for key in ["probe-long-iu", "probe-oversize-iu", "probe-credit-burst"] {
        let got = run.field(key);
        assert!(
            matches!(got, Some("answered" | "dropped")),
            "{key}: {got:?} (the target must answer or drop the channel)"
        );
    }
    assert_eq!(
        run.field("oxtarget-exit"),
        Some("0"),
        "the daemon's exit status after SIGTERM"
    );
    assert_eq!(
        run.field("oxtarget-panics"),
        Some("0"),
        "panics in the daemon's log"
    );
}

/// srp_probe, found as the daemon is: SRP_PROBE_BIN, else `examples/srp_probe`
/// in the test's own target directory.
fn probe_binary() -> PathBuf {
    let path = match std::env::var_os("SRP_PROBE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("examples/srp_probe")))
            .unwrap_or_else(|| PathBuf::from("target/debug/examples/srp_probe")),
    };
    assert!(
        path.is_file(),
        "{} is not built: `cargo build -p oxtarget-srp --example srp_probe` \
         (the same profile as the tests) or set SRP_PROBE_BIN",
        path.display()
    );
    path
}
