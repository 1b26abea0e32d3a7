//! The RDMA guest: Soft RoCE (`rdma_rxe`) on a virtio-net NIC, the kernel's
//! SRP initiator (`ib_srp`) and SRP target (`ib_srpt`, the reference), and
//! the user-space verbs stack a target in the guest needs (libibverbs with
//! the rxe provider, librdmacm). Everything runs in one guest: the initiator
//! logs in to a target on the guest's own address and rxe loops the traffic
//! back inside the kernel (the topology blktests uses).
//!
//! ```no_run
//! use integration::rdma::{self, RdmaGuest};
//! use integration::{GuestEnv, Initramfs};
//! let Some(env) = GuestEnv::require() else { return };
//! rdma::require_host_tools();
//! let initramfs = Initramfs::rdma().build(env).unwrap();
//! let script = format!("{}rxe_up\nsrpt_guid\n", rdma::SCRIPT_PROLOGUE);
//! let run = env.run(&RdmaGuest::config(&initramfs, script)).unwrap().check().unwrap();
//! ```

use std::path::Path;

use crate::error::INSTALL_HINT;
use crate::initramfs::SG_RESET;
use crate::qemu::{GuestConfig, GuestRun};
use crate::Initramfs;

/// The guest's modules for RDMA and SRP, in addition to [`BASE_MODULES`]
/// (dependencies follow from `.modinfo`). `rdma_rxe` needs `crc32_generic`
/// (a softdep by alias, which the load order does not resolve); `ib_srpt`
/// with LIO's ramdisk (`rd_mcp`, inside `target_core_mod`) and block
/// backstores is the reference target; `dm_mod` + `dm_zero` give the task
/// management check a device whose I/O can be held (`dmsetup suspend`).
///
/// [`BASE_MODULES`]: crate::initramfs::BASE_MODULES
pub const RDMA_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "sd_mod",
    "sg",
    "crc32_generic",
    "crc32c_generic",
    "configfs",
    "ib_uverbs",
    "rdma_ucm",
    "rdma_rxe",
    "ib_srp",
    "target_core_mod",
    "target_core_iblock",
    "target_core_file",
    "ib_srpt",
    "dm_mod",
    "dm_zero",
];

/// iproute2's `ip` (busybox's `ip` applet would shadow it on PATH: the
/// guest calls it by this path).
pub const IPROUTE2_IP: &str = "/usr/bin/ip";
/// iproute2's `rdma`: `rdma link add rxe0 type rxe netdev eth0` (rdma_rxe in
/// 6.1 has no module parameter for that).
pub const RDMA_TOOL: &str = "/usr/bin/rdma";
/// libibverbs' rxe provider, `dlopen`ed (ldd does not see it).
pub const RXE_PROVIDER: &str = "/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so";
/// The config file by which libibverbs finds the rxe provider.
pub const RXE_DRIVER_FILE: &str = "/etc/libibverbs.d/rxe.driver";
/// `ibv_devinfo`, to diagnose the verbs stack in the guest; it also brings
/// libibverbs and libnl.
pub const IBV_DEVINFO: &str = "/usr/bin/ibv_devinfo";
/// fio: data checks (`--verify`) and the benchmark; it brings librdmacm.
pub const FIO: &str = "/usr/bin/fio";
/// dmsetup: a device whose I/O the task management check holds.
pub const DMSETUP: &str = "/usr/sbin/dmsetup";

/// Host files the RDMA guest carries, with the Debian package of each.
pub const HOST_TOOLS: &[(&str, &str)] = &[
    (IPROUTE2_IP, "iproute2"),
    (RDMA_TOOL, "iproute2"),
    (RXE_PROVIDER, "ibverbs-providers"),
    (RXE_DRIVER_FILE, "ibverbs-providers"),
    (IBV_DEVINFO, "ibverbs-utils"),
    (FIO, "fio"),
    (DMSETUP, "dmsetup"),
    (SG_RESET, "sg3-utils"),
];

/// The guest's shell library (`integration/guest/rdma.sh`): rxe setup, the
/// ib_srpt configuration, ib_srp logins, data and task management checks.
pub const GUEST_LIB: &str = include_str!("../guest/rdma.sh");

/// Where [`Initramfs::rdma`] puts [`GUEST_LIB`].
pub const GUEST_LIB_PATH: &str = "/etc/oxtarget/rdma.sh";

/// The start of a script for the RDMA guest: stop at the first failing
/// command, load the library.
pub const SCRIPT_PROLOGUE: &str = "set -e\n. /etc/oxtarget/rdma.sh\n";

/// The RDMA cm port ib_srpt listens on in these guests (oxtarget's SRP
/// target uses 5555, the port blktests uses).
pub const SRPT_PORT: u16 = 5556;

/// The host files of [`HOST_TOOLS`] that are missing, with their packages.
pub fn missing_host_tools() -> Vec<(&'static str, &'static str)> {
    HOST_TOOLS
        .iter()
        .copied()
        .filter(|(path, _)| !Path::new(path).is_file())
        .collect()
}

/// For tests: panics with the packages to install when a host file of
/// [`HOST_TOOLS`] is missing.
///
/// # Panics
/// When something is missing (the message names the files, the packages and
/// the install hint).
pub fn require_host_tools() {
    let missing = missing_host_tools();
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(path, pkg)| format!("{path} (package {pkg})"))
            .collect();
        panic!(
            "the RDMA guest needs host files that are missing: {}; {INSTALL_HINT}",
            list.join(", ")
        );
    }
}

impl Initramfs {
    /// The RDMA guest's archive: [`RDMA_MODULES`], iproute2's `ip` and
    /// `rdma`, libibverbs with the rxe provider and its driver file,
    /// librdmacm and libnl (through `ibv_devinfo` and fio), fio, dmsetup,
    /// sg_reset, and [`GUEST_LIB`] at [`GUEST_LIB_PATH`]. /init mounts
    /// devtmpfs, so `/dev/infiniband/uverbs0` and `rdma_cm` appear. Every
    /// RDMA guest test and the SRP benchmark share it; a test adds the
    /// oxtarget binary with [`Initramfs::binary_at`].
    pub fn rdma() -> Self {
        let mut me = Self::new().modules(RDMA_MODULES);
        for (path, _) in HOST_TOOLS {
            me = if *path == RXE_DRIVER_FILE {
                me.file(path, *path)
            } else {
                // The provider is a shared object: its libraries come too.
                me.binary(path)
            };
        }
        me.bytes(GUEST_LIB_PATH, GUEST_LIB, 0o644)
    }
}

/// Guest settings for the RDMA guest.
pub struct RdmaGuest;

impl RdmaGuest {
    /// Memory of the guest: the initramfs (about 100 MiB unpacked, most of it
    /// fio's libraries), two 64 MiB RAM LUNs (ib_srpt's ramdisk and
    /// oxtarget's), and the rest for the kernel and the target.
    pub const MEMORY_MIB: u64 = 1024;

    /// Two vCPUs: ib_srp makes at most one channel per CPU, and the
    /// multichannel login needs two.
    pub const CPUS: u32 = 2;

    /// A guest on `initramfs` (from [`Initramfs::rdma`]) running `script`,
    /// with a virtio-net NIC on QEMU's user network with `restrict=on` (no
    /// packet leaves QEMU; the NIC has carrier, which rxe needs),
    /// [`Self::MEMORY_MIB`] and [`Self::CPUS`].
    pub fn config(initramfs: impl AsRef<Path>, script: impl Into<String>) -> GuestConfig {
        GuestConfig::new(initramfs, script)
            .memory_mib(Self::MEMORY_MIB)
            .cpus(Self::CPUS)
            .args(["-netdev", "user,id=n0,restrict=on"])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
    }
}

/// The value of results line `key` as a number.
fn number(run: &GuestRun, key: &str) -> u64 {
    let text = run
        .field(key)
        .unwrap_or_else(|| panic!("no {key:?} line in the guest's results:\n{}", run.results));
    text.parse()
        .unwrap_or_else(|_| panic!("{key:?} is {text:?}, not a number:\n{}", run.results))
}

fn expect(run: &GuestRun, key: &str, want: &str) {
    assert_eq!(
        run.field(key),
        Some(want),
        "{key} (guest results:\n{})",
        run.results
    );
}

/// A direct write read back equal: `KEY-cmp ok` and the same MD5 written
/// and read.
fn expect_io(run: &GuestRun, key: &str) {
    expect(run, &format!("{key}-cmp"), "ok");
    let written = run.field(&format!("{key}-written"));
    assert!(
        written.is_some_and(|m| m.len() == 32),
        "{key}: no MD5 of the written data:\n{}",
        run.results
    );
    assert_eq!(
        written,
        run.field(&format!("{key}-read")),
        "{key}: the data read back differs from the data written:\n{}",
        run.results
    );
}

/// Checks the results of the guest library's `srp_suite` (see
/// `integration/guest/rdma.sh`): a login naming a target port the target
/// does not have refused with SRP_LOGIN_REJ (reason 0x10003, unable to
/// associate the channel); for one and for two channels, the data
/// LUN's size (`data_sectors` of 512 bytes), ib_srp's channel count, credits
/// granted, direct writes read back equal (`cmp`, MD5, fio's verify); with
/// one channel, ABORT TASK sent on a held command's timeout and answered (no
/// LUN or host reset followed it, the read completed, no response arrived for
/// the aborted command), a LUN RESET answered FUNCTION COMPLETE, and the data
/// LUN working afterwards. `srpt_logins`: the target is ib_srpt, whose log
/// counts the login requests (one per channel).
///
/// # Panics
/// On the first check that fails, quoting the results.
pub fn assert_srp_suite(run: &GuestRun, data_sectors: u64, srpt_logins: bool) {
    assert!(
        run.lines().any(|l| l == "suite done"),
        "the suite did not finish:\n{}",
        run.results
    );
    expect(run, "wrong-target-login", "refused");
    // SRP_LOGIN_REJ with UNABLE TO ASSOCIATE CHANNEL WITH I_T NEXUS, as
    // ib_srpt answers a target port id it does not have.
    expect(run, "wrong-target-login-reason", "0x00010003");
    for ch in [1u64, 2] {
        let key = |k: &str| format!("ch{ch}-{k}");
        assert_eq!(
            number(run, &key("disk-sectors")),
            data_sectors,
            "{}",
            key("disk-sectors")
        );
        assert_eq!(number(run, &key("ch_count")), ch, "{}", key("ch_count"));
        assert!(
            number(run, &key("req_lim")) > 0,
            "{}: no credits",
            key("req_lim")
        );
        if srpt_logins {
            assert_eq!(
                number(run, &key("srpt-logins")),
                ch,
                "{}",
                key("srpt-logins")
            );
        }
        expect_io(run, &format!("ch{ch}"));
        expect(run, &key("fio"), "ok");
    }
    expect(run, "ch1-abort-read", "ok");
    assert!(
        number(run, "ch1-abort-sent") >= 1,
        "ib_srp sent no ABORT TASK for the held command:\n{}",
        run.results
    );
    expect(run, "ch1-lun-reset", "0");
    // One LUN reset: the one sg_reset asked for; an unanswered abort would
    // have escalated to another, then to a host reset (a reconnect).
    assert_eq!(number(run, "ch1-reset-device-called"), 1, "LUN resets");
    assert_eq!(number(run, "ch1-reset-host-called"), 0, "host resets");
    assert_eq!(
        number(run, "ch1-null-scmnd"),
        0,
        "responses for commands ib_srp had aborted"
    );
    expect_io(run, "ch1-after-tm");
}
