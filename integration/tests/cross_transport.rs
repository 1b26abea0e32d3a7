//! One LUN, two transports at once: a guest on oxtarget's vhost-user-scsi
//! controller and iSCSI initiators on the in-process iSCSI server (127.0.0.1)
//! share the same `Arc<Lun>`.
//!
//! - Identity: the NAA designator of VPD page 83h that the guest's kernel read
//!   equals the one libiscsi's `iscsi-inq` reads over iSCSI.
//! - Data: what QEMU's iSCSI driver (`qemu-io`) wrote before the guest booted, the
//!   guest reads; what the guest wrote, `qemu-img` reads over iSCSI byte for byte.
//! - Reservations: an iSCSI initiator (the iscsi crate's test initiator:
//!   libiscsi's tools cannot send PERSISTENT RESERVE OUT and sg_persist needs a
//!   kernel initiator) registers and takes a WRITE EXCLUSIVE reservation
//!   while the guest runs; its write of a marker reaches the guest, and the
//!   guest's own write fails with RESERVATION CONFLICT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::RamBackend;
use common::{qemu_img_read, qemu_io_write, ScsiController, VhostScsiDisk};
use engine::{Lun, LunConfig, LunRegistry};
use integration::testkit::{have, noise, run_bytes};
use integration::{GuestConfig, GuestEnv, Initramfs};
use iscsi::server::Server;

mod common;

const IQN: &str = "iqn.2026-11.org.oxtarget:cross";
const DISK_SIZE: u64 = 64 << 20;
const BLOCK: u64 = 64 << 10;
/// Written over iSCSI before the guest boots, read by the guest.
const ISCSI_BLK: u64 = 128; // 8 MiB
/// Written by the guest, read over iSCSI.
const GUEST_BLK: u64 = 80; // 5 MiB
/// The guest's write under the iSCSI initiator's reservation (refused).
const PR_BLK: u64 = 200;
/// The reservation key of the iSCSI initiator.
const PR_KEY: u64 = 0x0123_4567_89ab_cdef;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The designators (type, value) with logical-unit association in a VPD page
/// 83h: the identity of the LUN, the same on every transport (the target port
/// designators differ by design).
fn lu_designators(page: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(len) = page
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return out;
    };
    let end = (4 + len).min(page.len());
    let mut at = 4;
    while at + 4 <= end {
        let assoc = (page[at + 1] >> 4) & 0x3;
        let kind = page[at + 1] & 0x0f;
        let dlen = usize::from(page[at + 3]);
        let Some(d) = page.get(at + 4..at + 4 + dlen) else {
            break;
        };
        if assoc == 0 {
            out.push((kind, d.to_vec()));
        }
        at += 4 + dlen;
    }
    out
}

/// A minimal iSCSI initiator over one TCP connection: login straight into the
/// operational stage (no security), then SCSI commands whose data-out fits in
/// immediate data. Enough to send PERSISTENT RESERVE OUT and a small WRITE.
/// The iscsi crate's test initiator, with the shape these tests use.
mod initiator {
    use super::*;

    pub struct Initiator(iscsi::initiator::Initiator);

    /// A command's SCSI status and sense data.
    #[derive(Debug)]
    pub struct Status {
        pub status: u8,
        pub sense: Vec<u8>,
    }

    impl Initiator {
        pub fn login(addr: SocketAddr, initiator: &str, target: &str) -> Self {
            let mut cfg = iscsi::initiator::InitiatorConfig::new(initiator, target);
            cfg.timeout = Duration::from_secs(30);
            Initiator(iscsi::initiator::Initiator::connect(addr, cfg).expect("login"))
        }

        /// Any command on LUN 0: its status and sense, and the data read.
        pub fn command(&mut self, cdb: &[u8], out: &[u8], in_len: u32) -> (Status, Vec<u8>) {
            let len = usize::try_from(in_len).expect("length");
            let r = self.0.command(0, cdb, out, len).expect("command");
            (
                Status {
                    status: r.status,
                    sense: r.sense,
                },
                r.data,
            )
        }
    }

    /// PERSISTENT RESERVE OUT: `action` (0 REGISTER, 1 RESERVE, 2 RELEASE,
    /// 3 CLEAR) of `kind` (1 WRITE EXCLUSIVE) with keys `key` and `sa_key`.
    pub fn pr_out(action: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], [u8; 24]) {
        let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (cdb, p)
    }
}

/// The shared LUN, the vhost controller on `sock` and the iSCSI server on a free
/// port of 127.0.0.1, each with its own target port and LUN map.
struct Both {
    lun: Arc<Lun>,
    ram: RamBackend,
    controller: ScsiController,
    server: Server,
}

impl Both {
    fn start(sock: &Path) -> Self {
        let ram = RamBackend::new(DISK_SIZE);
        let mut uuid = *b"cross-transport!";
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        let lun = Lun::new(LunConfig::new("cross0", uuid), Arc::new(ram.clone())).expect("lun");
        let registry = LunRegistry::new();
        registry.add(lun.clone());
        let controller = ScsiController::start("cross-vm", sock, &lun, registry.clone(), 1);
        let server = common::iscsi_server(IQN, &lun, registry, |c| c.workers = 1);
        Both {
            lun,
            ram,
            controller,
            server,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addrs()[0]
    }

    fn url(&self) -> String {
        format!("iscsi://{}/{IQN}/0", self.addr())
    }

    fn stop(self) {
        self.server.shutdown();
        self.controller.stop();
    }
}

const GUEST: &str = r#"
set -e
dev=/dev/sda
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "vpd83 $(od -An -tx1 -v /sys/block/sda/device/vpd_pg83 | tr -d ' \n')"
echo "from-iscsi-md5 $(dd if=$dev bs=BLOCK count=1 skip=ISCSI_BLK iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "iscsi-pattern-md5 $(md5sum <$OXTARGET_IN/from_iscsi | cut -d' ' -f1)"
dd if=$OXTARGET_IN/from_guest of=$dev bs=BLOCK count=1 seek=GUEST_BLK oflag=direct conv=notrunc 2>/dev/null
echo "guest-wrote ok"
# Ask the host's iSCSI initiator to reserve the LUN; it writes "reserved" to
# sector 1 when it holds the reservation (at most 60 s).
printf '%-512s' step1 >/tmp/mark
dd if=/tmp/mark of=$dev bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null
seen=no
i=0
while [ $i -lt 600 ]; do
    if [ "$(dd if=$dev bs=512 count=1 skip=1 iflag=direct 2>/dev/null | head -c 8)" = reserved ]; then
        seen=yes
        break
    fi
    sleep 0.1
    i=$((i + 1))
done
echo "reservation-seen $seen"
if dd if=$OXTARGET_IN/from_guest of=$dev bs=BLOCK count=1 seek=PR_BLK oflag=direct conv=notrunc 2>/dev/null; then
    echo "pr-write accepted"
else
    echo "pr-write refused"
fi
echo "pr-read $(dd if=$dev bs=512 count=1 skip=1 iflag=direct 2>/dev/null | head -c 8)"
echo "conflicts $(dmesg | grep -ci 'reservation conflict')"
"#;

#[test]
fn one_lun_over_vhost_user_scsi_and_iscsi() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    for tool in ["iscsi-inq", "qemu-io", "qemu-img"] {
        assert!(
            have(tool),
            "{tool} is needed (libiscsi-bin, qemu-utils, qemu-block-extra)"
        );
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let sock = dir.path().join("cross.sock");
    let both = Both::start(&sock);
    let limit = Duration::from_secs(120);

    // An iSCSI initiator (QEMU's) writes before the guest boots.
    let from_iscsi = noise(0x1357_9bdf, BLOCK as usize);
    let from_iscsi_file = dir.path().join("from_iscsi");
    std::fs::write(&from_iscsi_file, &from_iscsi).expect("pattern");
    qemu_io_write(
        &from_iscsi_file,
        ISCSI_BLK * BLOCK,
        BLOCK,
        &both.url(),
        limit,
    );
    let mut stored = vec![0u8; BLOCK as usize];
    both.ram
        .0
        .read_at(ISCSI_BLK * BLOCK, &mut stored)
        .expect("read the store");
    assert!(stored == from_iscsi, "QEMU's iSCSI write reached the LUN");

    let from_guest = noise(0x2468_ace1, BLOCK as usize);
    let from_guest_file = dir.path().join("from_guest");
    std::fs::write(&from_guest_file, &from_guest).expect("pattern");

    // The iSCSI side of the reservation step, run when the guest asks.
    let done = Arc::new(AtomicBool::new(false));
    let pr = {
        let addr = both.addr();
        let ram = both.ram.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let mut b = [0u8; 5];
                if ram.0.read_at(0, &mut b).is_ok() && &b == b"step1" {
                    break;
                }
                if done.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut ini =
                initiator::Initiator::login(addr, "iqn.2026-11.org.oxtarget:pr-host", IQN);
            let mut steps = Vec::new();
            // Clear the power-on unit attention first (TEST UNIT READY until GOOD).
            for _ in 0..4 {
                let (s, _) = ini.command(&[0; 6], &[], 0);
                if s.status == 0 {
                    break;
                }
            }
            let (cdb, p) = initiator::pr_out(0, 0, 0, PR_KEY);
            steps.push(("register", ini.command(&cdb, &p, 0).0));
            let (cdb, p) = initiator::pr_out(1, 1, PR_KEY, 0);
            steps.push(("reserve", ini.command(&cdb, &p, 0).0));
            // The holder may write: the marker the guest waits for.
            let mut marker = vec![b' '; 512];
            marker[..8].copy_from_slice(b"reserved");
            let write10 = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
            steps.push(("write", ini.command(&write10, &marker, 0).0));
            Some((ini, steps))
        })
    };

    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let script = GUEST
        .replace("ISCSI_BLK", &ISCSI_BLK.to_string())
        .replace("GUEST_BLK", &GUEST_BLK.to_string())
        .replace("PR_BLK", &PR_BLK.to_string())
        .replace("BLOCK", &BLOCK.to_string());
    let config = GuestConfig::new(&initramfs, script)
        .fw_cfg_file("from_iscsi", &from_iscsi_file)
        .fw_cfg_file("from_guest", &from_guest_file)
        .vhost_scsi(&sock, 1)
        .timeout(Duration::from_secs(240));
    let run_result = env.run(&config).and_then(|r| r.check());
    done.store(true, Ordering::SeqCst);
    let reserved = pr.join().expect("reservation thread");
    let guest = run_result.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest results:\n{}", guest.results);

    // Identity: the guest's NAA designator is the one iSCSI reports.
    let vpd = unhex(guest.field("vpd83").expect("vpd83 line")).expect("VPD 83h in hex");
    let guest_ids = lu_designators(&vpd);
    let guest_naa: Vec<&Vec<u8>> = guest_ids
        .iter()
        .filter(|(kind, _)| *kind == 3)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(guest_naa.len(), 1, "one LU NAA designator: {}", hex(&vpd));
    let naa = guest_naa[0].clone();
    assert_eq!(naa, both.lun.naa());
    // libiscsi's iscsi-inq (page code in decimal: it does not take hex) prints a
    // binary designator's bytes raw between brackets, up to a NUL.
    assert!(
        !naa.iter().any(|&b| b == 0 || b == b']' || b == b'\n'),
        "this LUN's NAA designator prints whole: {}",
        hex(&naa)
    );
    let (ok, inq) = run_bytes("iscsi-inq", &["-e", "1", "-c", "131", &both.url()], limit);
    let inq_text = String::from_utf8_lossy(&inq).into_owned();
    assert!(ok, "iscsi-inq: {inq_text}");
    assert_eq!(
        iscsi_inq_naa(&inq).map(|d| hex(&d)),
        Some(hex(&naa)),
        "the NAA designator iscsi-inq reads equals the guest's:\n{inq_text}"
    );
    // The whole logical-unit identity, read with INQUIRY over iSCSI, is the
    // guest's.
    let mut ini = initiator::Initiator::login(both.addr(), "iqn.2026-11.org.oxtarget:inq", IQN);
    let _ = ini.command(&[0; 6], &[], 0); // the power-on unit attention
    let (s, page) = ini.command(&[0x12, 1, 0x83, 0x10, 0, 0], &[], 4096);
    assert_eq!(s.status, 0, "INQUIRY VPD 83h over iSCSI: {s:?}");
    assert_eq!(
        lu_designators(&page),
        guest_ids,
        "VPD 83h over iSCSI: {}",
        hex(&page)
    );
    drop(ini);

    // Data: what iSCSI wrote, the guest read; what the guest wrote, iSCSI reads.
    let want = guest.field("iscsi-pattern-md5").expect("pattern md5");
    assert_eq!(guest.field("from-iscsi-md5"), Some(want));
    assert!(guest.lines().any(|l| l == "guest-wrote ok"));
    let image = qemu_img_read(&both.url(), &dir.path().join("back.img"), limit);
    assert_eq!(image.len() as u64, DISK_SIZE);
    let at = (GUEST_BLK * BLOCK) as usize;
    assert!(
        image[at..at + BLOCK as usize] == from_guest[..],
        "the guest's write, read over iSCSI"
    );

    // Reservations: the iSCSI initiator's reservation held the guest's write off.
    let (mut ini, steps) = reserved.expect("the guest asked for the reservation");
    for (what, s) in &steps {
        assert_eq!(s.status, 0, "{what} over iSCSI: {s:?}");
    }
    assert_eq!(guest.field("reservation-seen"), Some("yes"));
    assert_eq!(guest.field("pr-read"), Some("reserved"));
    assert!(
        guest.lines().any(|l| l == "pr-write refused"),
        "a write from the guest under another initiator's WRITE EXCLUSIVE reservation"
    );
    let conflicts: u32 = guest
        .field("conflicts")
        .and_then(|s| s.parse().ok())
        .expect("conflicts line");
    assert!(conflicts > 0, "the guest's kernel saw RESERVATION CONFLICT");
    let pr_at = (PR_BLK * BLOCK) as usize;
    assert!(
        image[pr_at..pr_at + BLOCK as usize].iter().all(|&b| b == 0),
        "nothing of the refused write reached the LUN"
    );
    // The holder releases; the registration goes with CLEAR.
    let (cdb, p) = initiator::pr_out(3, 0, PR_KEY, 0);
    assert_eq!(ini.command(&cdb, &p, 0).0.status, 0, "CLEAR");
    drop(ini);
    both.stop();
}

/// The bytes of the NAA designator `iscsi-inq -e 1 -c 131` prints.
fn iscsi_inq_naa(out: &[u8]) -> Option<Vec<u8>> {
    let tag = b"Designator Type:(3) NAA\nDesignator:[";
    let at = out.windows(tag.len()).position(|w| w == tag)? + tag.len();
    let rest = &out[at..];
    let end = rest.windows(2).position(|w| w == b"]\n")?;
    Some(rest[..end].to_vec())
}

/// The test initiator against the server alone (no guest): login, a
/// registration and reservation, and a conflicting write from a second session.
#[test]
fn minimal_initiator_reserves_over_iscsi() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let both = Both::start(&dir.path().join("unused.sock"));
    let mut a = initiator::Initiator::login(both.addr(), "iqn.2026-11.org.oxtarget:a", IQN);
    let mut b = initiator::Initiator::login(both.addr(), "iqn.2026-11.org.oxtarget:b", IQN);
    for ini in [&mut a, &mut b] {
        // A new nexus: the first command reports the power-on unit attention.
        let (s, _) = ini.command(&[0; 6], &[], 0);
        assert_eq!(s.status, 2, "CHECK CONDITION");
        assert_eq!(
            s.sense.get(2).map(|k| k & 0x0f),
            Some(6),
            "UNIT ATTENTION: {s:?}"
        );
        assert_eq!(ini.command(&[0; 6], &[], 0).0.status, 0);
    }
    let (cdb, p) = initiator::pr_out(0, 0, 0, PR_KEY);
    assert_eq!(a.command(&cdb, &p, 0).0.status, 0, "register");
    let (cdb, p) = initiator::pr_out(1, 1, PR_KEY, 0);
    assert_eq!(a.command(&cdb, &p, 0).0.status, 0, "reserve");
    let write10 = [0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    assert_eq!(
        a.command(&write10, &[7u8; 512], 0).0.status,
        0,
        "holder writes"
    );
    assert_eq!(
        b.command(&write10, &[9u8; 512], 0).0.status,
        0x18,
        "RESERVATION CONFLICT"
    );
    let read10 = [0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    let (s, data) = b.command(&read10, &[], 512);
    assert_eq!((s.status, data), (0, vec![7u8; 512]), "others may read");
    let (cdb, p) = initiator::pr_out(3, 0, PR_KEY, 0);
    assert_eq!(a.command(&cdb, &p, 0).0.status, 0, "clear");
    assert_eq!(
        b.command(&write10, &[9u8; 512], 0).0.status,
        0,
        "free again"
    );
    drop((a, b));
    both.stop();
}
