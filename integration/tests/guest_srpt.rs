//! The SRP test bed, proven with the kernel on both sides: the initiator
//! ib_srp and the kernel's target ib_srpt over Soft RoCE (rdma_rxe) in one
//! guest. This is the reference for oxtarget's SRP target
//! (`tests/guest_srp.rs`, which runs the same suite) and the peer of the
//! benchmark (`bench/srp-vs-ib_srpt.sh`).
//!
//! ib_srpt is configured through configfs: LUN 0 a 64 MiB LIO ramdisk
//! (rd_mcp), LUN 1 a block backstore on a dm-zero device whose I/O can be
//! held (`dmsetup suspend`), RDMA/CM port 5556, the target port named by
//! rxe0's GID, an ACL for the guest's address. The guest library's
//! `srp_suite` then has ib_srp log in with one channel and with two (one per
//! vCPU); each time the host checks the channel count, ib_srpt's count of
//! login requests, and that direct writes of random data read back equal
//! (`cmp` and MD5 in the guest, fio's CRC32C verify). With one channel, a
//! read held in the dm device outlives ib_srp's 2 s command timeout, so
//! ib_srp sends ABORT TASK, and `sg_reset -d` has it send a LUN RESET: both
//! answered, no escalation, and the data reads back afterwards.

use integration::rdma::{self, RdmaGuest, SCRIPT_PROLOGUE, SRPT_PORT};
use integration::{GuestEnv, GuestRun, Initramfs};

/// 16384 pages of 4 KiB.
const RAMDISK_SECTORS: u64 = 131_072;

const SCRIPT: &str = r#"
rxe_up
echo "gid $(cat /sys/class/infiniband/rxe0/ports/1/gids/0)"
guid=$(srpt_guid)
echo "srpt-guid $guid"
rd_backstore ramdisk0 16384
iblock_backstore hold0 $(dm_zero_device oxhold 65536)
srpt_setup __PORT__ rd_mcp_0/ramdisk0 iblock_0/hold0
srp_suite __PORT__ $guid 0 131072 1 oxhold
"#;

#[test]
fn kernel_initiator_and_kernel_target_over_rxe() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    rdma::require_host_tools();
    let initramfs = Initramfs::rdma()
        .build(env)
        .unwrap_or_else(|e| panic!("building the RDMA initramfs: {e}"));
    let script = format!(
        "{SCRIPT_PROLOGUE}{}",
        SCRIPT.replace("__PORT__", &SRPT_PORT.to_string())
    );
    let run = env
        .run(&RdmaGuest::config(&initramfs, script))
        .and_then(GuestRun::check)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest run: {:.1} s\n{}",
        run.elapsed.as_secs_f64(),
        run.results
    );
    // The target is the one we configured: rxe0's node GUID.
    let guid = run.field("srpt-guid").unwrap_or_default();
    assert!(
        guid.starts_with("0x") && guid.len() == 18,
        "srpt_service_guid {guid:?}"
    );
    rdma::assert_srp_suite(&run, RAMDISK_SECTORS, true);
}
