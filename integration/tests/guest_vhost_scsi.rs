//! A guest on oxtarget's vhost-user-scsi controller. The controller runs in this
//! process (a thread) with a 64 MiB thin file LUN opened with O_DIRECT; QEMU
//! attaches `vhost-user-scsi-pci` to its socket. In the guest: the disk's size, its
//! VPD page 83h (the NAA designator must be the LUN's), a direct write read back,
//! and a discard. On the host: the pattern in the file, the discarded range a hole
//! (the backend's block status), no bounce copies (guest memory went to the file
//! as it was). A second guest then connects to the same socket (the controller
//! accepts the next connection) and reads the pattern back.
//!
//! Run-time changes: while a guest runs, a LUN is attached (a new disk appears
//! without a reboot, with its size, and takes I/O), resized (the guest's
//! `/sys/block/sdX/size` follows) and detached (the disk goes away), each told to
//! the guest on the virtio-scsi event queue. Guest and host step together through
//! a marker the guest writes to sector 0 of LUN 0.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{ExtentState, FileBackend, FileOptions, RamBackend};
use common::{ScsiController, VhostScsiDisk};
use engine::{Lun, LunConfig, LunRegistry};
use integration::{GuestConfig, GuestEnv, GuestRun, Initramfs};
use vhost_target::Posted;

mod common;

const DISK_SIZE: u64 = 64 << 20;
/// The pattern: one dd block of this size at block SEEK_BLOCKS.
const BLOCK: u64 = 64 << 10;
const SEEK_BLOCKS: u64 = 80;
const OFFSET: u64 = SEEK_BLOCKS * BLOCK; // 5 MiB
/// Written, then discarded.
const DISCARD_OFFSET: u64 = 16 << 20;
const DISCARD_LEN: u64 = 4 << 20;

fn pattern() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for sector in 0..BLOCK / 512 {
        let mut s = format!("oxtarget vhost sector {sector:04}\n").into_bytes();
        while s.len() < 512 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(x.to_le_bytes()[0]);
        }
        out.extend_from_slice(&s);
    }
    out
}

const WAIT_FOR_DISK: &str = r#"
dev=/dev/sda
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b $dev ]; then
    echo "no $dev; block devices: $(ls /sys/block)" >&2
    exit 1
fi
"#;

const FIRST: &str = r#"
set -e
WAIT
pat=$OXTARGET_IN/pattern
echo "sda-sectors $(cat /sys/block/sda/size)"
echo "vpd83 $(od -An -tx1 -v /sys/block/sda/device/vpd_pg83 | tr -d ' \n')"
echo "discard-max $(cat /sys/block/sda/queue/discard_max_bytes)"
dd if=$pat of=$dev bs=BLOCK count=1 seek=SEEK oflag=direct conv=notrunc
dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK iflag=direct
echo "pattern-md5 $(md5sum <$pat | cut -d' ' -f1)"
echo "readback-md5 $(md5sum </tmp/back | cut -d' ' -f1)"
cmp $pat /tmp/back
echo "compare ok"
dd if=/dev/urandom of=/tmp/noise bs=65536 count=16
i=0
while [ $i -lt 4 ]; do
    dd if=/tmp/noise of=$dev bs=1048576 count=1 seek=$((DISCARD_MIB + i)) oflag=direct conv=notrunc
    i=$((i + 1))
done
if blkdiscard -o DISCARD_OFFSET -l DISCARD_LEN $dev; then
    echo "discard ok"
else
    echo "discard failed"
fi
"#;

const SECOND: &str = r#"
set -e
WAIT
dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK iflag=direct
echo "readback-md5 $(md5sum </tmp/back | cut -d' ' -f1)"
# (Unbinding and rebinding virtio_scsi here hung once under load in CI, on the
# rebind; it stays out of CI until that is understood: see the session notes.)
"#;

fn script(body: &str) -> String {
    body.replace("WAIT", WAIT_FOR_DISK)
        .replace("BLOCK", &BLOCK.to_string())
        .replace("SEEK", &SEEK_BLOCKS.to_string())
        .replace("DISCARD_MIB", &(DISCARD_OFFSET >> 20).to_string())
        .replace("DISCARD_OFFSET", &DISCARD_OFFSET.to_string())
        .replace("DISCARD_LEN", &DISCARD_LEN.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A controller serving `lun` (in a registry of its own) on `sock` from a
/// thread.
fn serve(name: &str, sock: &Path, lun: &Arc<Lun>, queues: usize) -> ScsiController {
    let registry = LunRegistry::new();
    registry.add(lun.clone());
    ScsiController::start(name, sock, lun, registry, queues)
}

/// A thin file LUN of DISK_SIZE bytes opened with O_DIRECT.
fn file_lun(dir: &Path, name: &str) -> (Arc<Lun>, std::path::PathBuf) {
    let image = dir.join(format!("{name}.img"));
    let backend = FileBackend::create(
        &image,
        DISK_SIZE,
        FileOptions {
            direct: true,
            ..Default::default()
        },
    )
    .expect("file backend");
    let mut uuid = [0u8; 16];
    for (i, b) in name.bytes().enumerate() {
        uuid[i % 16] ^= b;
    }
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    let lun = Lun::new(LunConfig::new(name, uuid), Arc::new(backend)).expect("lun");
    assert!(lun.config.thin);
    (lun, image)
}

fn boot(env: &GuestEnv, initramfs: &Path, body: &str, sock: &Path, pattern: &Path) -> GuestRun {
    boot_with(env, initramfs, body, sock, pattern, 1)
}

fn boot_with(
    env: &GuestEnv,
    initramfs: &Path,
    body: &str,
    sock: &Path,
    pattern: &Path,
    queues: usize,
) -> GuestRun {
    let config = GuestConfig::new(initramfs, script(body))
        .cpus(u32::try_from(queues).expect("queues"))
        .fw_cfg_file("pattern", pattern)
        .vhost_scsi(sock, queues)
        .timeout(Duration::from_secs(240));
    let run = env
        .run(&config)
        .and_then(|run| run.check())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest ran in {:.1} s ({:?}); results:\n{}",
        run.elapsed.as_secs_f64(),
        env.accel,
        run.results
    );
    run
}

#[test]
fn guest_uses_a_vhost_user_scsi_disk() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (lun, image) = file_lun(dir.path(), "vhost-lun0");
    let sock = dir.path().join("vhost.sock");
    let served = serve("guest-vhost-test", &sock, &lun, 1);

    let pattern = pattern();
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, &pattern).expect("pattern file");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));

    let run = boot(env, &initramfs, FIRST, &sock, &pattern_file);

    // What the guest saw.
    let sectors = (DISK_SIZE / 512).to_string();
    assert_eq!(run.field("sda-sectors"), Some(sectors.as_str()));
    let vpd = run.field("vpd83").expect("vpd83 line");
    let naa = hex(&lun.naa());
    // Designator header: code set 1 (binary), association 0, type 3 (NAA), length 16.
    assert!(
        vpd.contains(&format!("01030010{naa}")),
        "VPD 83h {vpd} holds NAA designator {naa}"
    );
    let written = run.field("pattern-md5").expect("pattern-md5");
    assert_eq!(Some(written), run.field("readback-md5"));
    assert!(run.lines().any(|l| l == "compare ok"));

    // What landed in the file.
    let mut file = File::open(&image).expect("image");
    let mut got = vec![0u8; pattern.len()];
    file.seek(SeekFrom::Start(OFFSET)).unwrap();
    file.read_exact(&mut got).unwrap();
    assert!(got == pattern, "the image holds the pattern at {OFFSET}");

    // The discard punched a hole (the guest splits it as discard_max_bytes says).
    let discard_max: u64 = run
        .field("discard-max")
        .and_then(|s| s.parse().ok())
        .expect("discard-max line");
    assert!(discard_max > 0, "the guest sees a thin-provisioned disk");
    assert!(
        run.lines().any(|l| l == "discard ok"),
        "blkdiscard succeeded"
    );
    let extent = lun
        .backend
        .block_status(DISCARD_OFFSET, DISCARD_LEN)
        .expect("block status");
    assert_eq!(extent.state, ExtentState::Deallocated, "{extent:?}");
    assert!(
        extent.offset <= DISCARD_OFFSET
            && extent.offset + extent.len >= DISCARD_OFFSET + DISCARD_LEN,
        "the whole range is a hole: {extent:?}"
    );
    let data = lun
        .backend
        .block_status(OFFSET, BLOCK)
        .expect("block status");
    assert_eq!(data.state, ExtentState::Mapped, "{data:?}");

    // Every read and write went between the file and guest memory directly.
    assert_eq!(lun.stats.bounce_copies.load(Ordering::Relaxed), 0);

    // The controller takes the next connection on the same socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.controller.connections() < 1 {
        assert!(
            Instant::now() < deadline,
            "the first connection did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = boot(env, &initramfs, SECOND, &sock, &pattern_file);
    assert_eq!(again.field("readback-md5"), Some(written));
    assert_eq!(lun.stats.bounce_copies.load(Ordering::Relaxed), 0);

    let chains = served.controller.queue_chains();
    assert!(chains[2] > 0, "request queue 0 was used: {chains:?}");
    served.stop();
}

const TWO_QUEUES: &str = r#"
set -e
WAIT
pat=$OXTARGET_IN/pattern
echo "cpus $(nproc)"
echo "mq $(ls /sys/block/sda/mq | wc -l)"
echo "features $(cat /sys/bus/virtio/devices/virtio0/features)"
taskset 1 dd if=$pat of=$dev bs=BLOCK count=1 seek=SEEK oflag=direct conv=notrunc
taskset 2 dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK iflag=direct
cmp $pat /tmp/back
echo "compare ok"
# Eight writers at once, alternating CPUs, then eight readers: many commands in
# flight on both queues.
dd if=/dev/urandom of=/tmp/src bs=1048576 count=8
i=0
while [ $i -lt 8 ]; do
    taskset $((1 << (i % 2))) dd if=/tmp/src of=$dev bs=65536 count=16 skip=$((i * 16)) seek=$((512 + i * 16)) oflag=direct conv=notrunc 2>/dev/null &
    i=$((i + 1))
done
wait
i=0
while [ $i -lt 8 ]; do
    taskset $((1 << (i % 2))) dd if=$dev of=/tmp/dst$i bs=65536 count=16 skip=$((512 + i * 16)) iflag=direct 2>/dev/null &
    i=$((i + 1))
done
wait
cat /tmp/dst0 /tmp/dst1 /tmp/dst2 /tmp/dst3 /tmp/dst4 /tmp/dst5 /tmp/dst6 /tmp/dst7 | cmp /tmp/src -
echo "parallel ok"
"#;

/// Two request queues, two vCPUs: I/O from each CPU goes down its own queue, and
/// each queue's thread runs its own engine worker.
#[test]
fn guest_uses_two_request_queues() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (lun, _image) = file_lun(dir.path(), "vhost-mq");
    let sock = dir.path().join("vhost-mq.sock");
    let served = serve("guest-vhost-mq", &sock, &lun, 2);
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, pattern()).expect("pattern file");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let run = boot_with(env, &initramfs, TWO_QUEUES, &sock, &pattern_file, 2);
    assert_eq!(run.field("cpus"), Some("2"));
    assert_eq!(
        run.field("mq"),
        Some("2"),
        "two hardware queues in the guest"
    );
    assert!(run.lines().any(|l| l == "compare ok"));
    assert!(run.lines().any(|l| l == "parallel ok"));
    // Negotiated: HOTPLUG, CHANGE, INDIRECT_DESC, EVENT_IDX, VERSION_1.
    let features = run.field("features").expect("features line");
    for bit in [1, 2, 28, 29, 32] {
        assert_eq!(
            features.as_bytes().get(bit),
            Some(&b'1'),
            "bit {bit} of {features}"
        );
    }
    let chains = served.controller.queue_chains();
    assert!(
        chains[2] > 0 && chains[3] > 0,
        "both request queues were used: {chains:?}"
    );
    assert_eq!(lun.stats.bounce_copies.load(Ordering::Relaxed), 0);
    served.stop();
}

/// The hot-plugged LUN: its number, its size, its size after the resize.
const HOT_LUN: u64 = 5;
const HOT_SIZE: u64 = 32 << 20;
const HOT_RESIZED: u64 = 48 << 20;

/// Guest side of the run-time changes. `mark N` writes "stepN" to sector 0 of
/// sda (the host polls it); every wait polls /sys for at most 60 s.
const HOTPLUG: &str = r#"
set -e
WAIT
mark() {
    printf '%-512s' "step$1" >/tmp/mark
    dd if=/tmp/mark of=/dev/sda bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null
}
# The block device of LUN $1 of target 0, if there is one.
disk_of() {
    for b in /sys/class/scsi_device/*:0:0:$1/device/block/*; do
        if [ -e "$b" ]; then basename "$b"; fi
    done
    return 0
}
wait_for() {
    i=0
    while ! eval "$1" && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    eval "$1"
}
echo "before $(ls /sys/block | tr '\n' ' ')"
mark 1
if wait_for '[ -n "$(disk_of HOT_LUN)" ] && [ -b /dev/$(disk_of HOT_LUN) ]'; then
    hot=$(disk_of HOT_LUN)
    echo "hot-name $hot"
    echo "hot-sectors $(cat /sys/block/$hot/size)"
    dd if=$OXTARGET_IN/pattern of=/dev/$hot bs=BLOCK count=1 seek=3 oflag=direct conv=notrunc 2>/dev/null
    echo "pattern-md5 $(md5sum <$OXTARGET_IN/pattern | cut -d' ' -f1)"
    echo "hot-md5 $(dd if=/dev/$hot bs=BLOCK count=1 skip=3 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
    mark 2
    if wait_for '[ "$(cat /sys/block/$hot/size)" != "HOT_SECTORS" ]'; then
        echo "resized-sectors $(cat /sys/block/$hot/size)"
    else
        echo "resize not seen"
    fi
    mark 3
    if wait_for '[ ! -e /sys/block/$hot ] && [ -z "$(disk_of HOT_LUN)" ]'; then
        echo "removed ok"
    else
        echo "still there: $(ls /sys/block | tr '\n' ' ')"
    fi
else
    echo "hot disk not seen: $(ls /sys/block | tr '\n' ' ')"
fi
mark 4
echo "after $(ls /sys/block | tr '\n' ' ')"
"#;

/// The step the guest marked on `ram` (sector 0), 0 if none.
fn marked_step(ram: &RamBackend) -> u32 {
    let mut b = [0u8; 8];
    if ram.0.read_at(0, &mut b).is_err() || &b[..4] != b"step" {
        return 0;
    }
    std::str::from_utf8(&b[4..5])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A LUN is attached, resized and detached while the guest runs; the guest sees
/// each change through the event queue, without a reboot or a manual rescan.
#[test]
fn guest_sees_luns_attached_resized_and_detached_at_run_time() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let ram0 = Arc::new(RamBackend::new(DISK_SIZE));
    let lun0 = Lun::new(LunConfig::new("hot-base", [0x31; 16]), ram0.clone()).expect("lun 0");
    let hot_ram = Arc::new(RamBackend::new(HOT_SIZE));
    let hot = Lun::new(LunConfig::new("hot-added", [0x32; 16]), hot_ram.clone()).expect("hot lun");
    let sock = dir.path().join("vhost-hot.sock");
    let served = serve("guest-vhost-hotplug", &sock, &lun0, 1);
    let pattern = pattern();
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, &pattern).expect("pattern file");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));

    // The host side: act on each step the guest marks, bounded in time.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let controller = served.controller.clone();
        let done = done.clone();
        let hot = hot.clone();
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut step = 0;
            let deadline = Instant::now() + Duration::from_secs(300);
            while step < 4 && !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                let marked = marked_step(&ram0);
                if marked > step {
                    step += 1;
                    let outcome = match step {
                        1 => format!("{:?}", controller.attach_lun(HOT_LUN, hot.clone())),
                        2 => format!("{:?}", hot.resize(HOT_RESIZED)),
                        3 => format!("{:?}", controller.detach_lun(HOT_LUN).map(|(_, p)| p)),
                        _ => "done".to_string(),
                    };
                    outcomes.push(outcome);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            outcomes
        })
    };
    let body = HOTPLUG
        .replace("HOT_LUN", &HOT_LUN.to_string())
        .replace("HOT_SECTORS", &(HOT_SIZE / 512).to_string());
    let run = boot(env, &initramfs, &body, &sock, &pattern_file);
    done.store(true, Ordering::SeqCst);
    let outcomes = host.join().expect("host thread");
    eprintln!(
        "host steps: {outcomes:?}; events: {:?}",
        served.controller.event_stats()
    );

    assert_eq!(
        outcomes.first().map(String::as_str),
        Some(format!("{:?}", Ok::<_, ()>(Posted::Queued)).as_str()),
        "attached, and the guest negotiated HOTPLUG"
    );
    let name = run
        .field("hot-name")
        .expect("the attached LUN appeared in the guest");
    assert_ne!(name, "sda");
    assert_eq!(
        run.field("hot-sectors"),
        Some((HOT_SIZE / 512).to_string().as_str()),
        "its size"
    );
    // It took I/O: the pattern is in the hot LUN's store and read back the same.
    let mut got = vec![0u8; pattern.len()];
    hot_ram
        .0
        .read_at(3 * BLOCK, &mut got)
        .expect("read the hot LUN");
    assert!(
        got == pattern,
        "the guest's write reached the hot-added LUN"
    );
    let digest = run.field("hot-md5").expect("hot-md5");
    assert_eq!(
        Some(digest),
        run.field("pattern-md5"),
        "read back as written"
    );
    assert_eq!(
        run.field("resized-sectors"),
        Some((HOT_RESIZED / 512).to_string().as_str()),
        "the guest re-read the capacity"
    );
    assert!(
        run.lines().any(|l| l == "removed ok"),
        "the detached LUN left the guest:\n{}",
        run.results
    );
    assert!(served.controller.lun_map().get(HOT_LUN).is_none());
    let stats = served.controller.event_stats();
    assert!(stats.delivered >= 3, "{stats:?}");
    assert_eq!(stats.lost, 0, "{stats:?}");
    served.stop();
}

/// LUNs attached in one burst while the VM is paused.
const BURST: u64 = 70;
/// The first of them.
const BURST_FIRST: u64 = 10;

const BURST_SCRIPT: &str = r#"
set -e
WAIT
printf '%-512s' step1 >/tmp/mark
dd if=/tmp/mark of=/dev/sda bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null
# Every LUN of the burst must appear (at most 150 s of guest uptime from here).
count() { ls -d /sys/class/scsi_disk/*:0:0:* 2>/dev/null | grep -vc ':0:0:0$' || true; }
uptime_s() { cut -d. -f1 /proc/uptime; }
end=$(($(uptime_s) + 150))
while [ "$(count)" -lt BURST ] && [ "$(uptime_s)" -lt $end ]; do sleep 0.2; done
echo "burst-disks $(count)"
if [ "$(count)" -lt BURST ]; then
    grep -i virtio /proc/interrupts >&2
    ls /sys/class/scsi_device >&2
    dmesg | tail -20 >&2
fi
"#;

/// Sends one QMP command; returns the reply line (events in between skipped).
fn qmp(stream: &mut std::os::unix::net::UnixStream, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    stream
        .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .expect("QMP write");
    let mut reader = BufReader::new(stream.try_clone().expect("QMP clone"));
    for _ in 0..64 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return line;
        }
    }
    panic!("no QMP reply to {command}");
}

/// More LUNs than the event queue keeps are attached while the VM is stopped
/// (QEMU stops the vhost queues with it): the events that fit wait, the rest
/// are lost and the first event delivered after the resume says so
/// (EVENTS_MISSED), on which Linux rescans the target. Every LUN appears.
#[test]
fn guest_finds_every_lun_of_a_burst_that_overflowed_the_event_queue() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let ram0 = Arc::new(RamBackend::new(DISK_SIZE));
    let lun0 = Lun::new(LunConfig::new("burst-base", [0x41; 16]), ram0.clone()).expect("lun 0");
    let sock = dir.path().join("vhost-burst.sock");
    let qmp_sock = dir.path().join("qmp.sock");
    let served = serve("guest-vhost-burst", &sock, &lun0, 1);
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let controller = served.controller.clone();
        let done = done.clone();
        let qmp_sock = qmp_sock.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while marked_step(&ram0) < 1 {
                if done.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut q = std::os::unix::net::UnixStream::connect(&qmp_sock).expect("QMP socket");
            q.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("QMP timeout");
            let capabilities = qmp(&mut q, "qmp_capabilities");
            let stop = qmp(&mut q, "stop");
            let before = controller.event_stats();
            let mut posted = Vec::new();
            for n in BURST_FIRST..BURST_FIRST + BURST {
                let mut uuid = [0x42u8; 16];
                uuid[15] = n as u8;
                let lun = Lun::new(
                    LunConfig::new(&format!("burst{n}"), uuid),
                    Arc::new(RamBackend::new(1 << 20)),
                )
                .expect("burst lun");
                posted.push(controller.attach_lun(n, lun));
            }
            let stopped = controller.event_stats();
            let cont = qmp(&mut q, "cont");
            Some((capabilities, stop, cont, before, stopped, posted))
        })
    };
    let config = GuestConfig::new(
        &initramfs,
        script(&BURST_SCRIPT.replace("BURST", &BURST.to_string())),
    )
    .vhost_scsi(&sock, 1)
    .arg("-qmp")
    .arg(format!(
        "unix:{},server=on,wait=off",
        qmp_sock.display().to_string().replace(',', ",,")
    ))
    .timeout(Duration::from_secs(300));
    let run = env.run(&config).and_then(|r| r.check());
    done.store(true, Ordering::SeqCst);
    let host = host.join().expect("host thread");
    let run = run.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest results:\n{}", run.results);
    let (capabilities, stop, cont, before, stopped, posted) =
        host.expect("the guest marked its step");
    for reply in [&capabilities, &stop, &cont] {
        assert!(reply.contains("\"return\""), "QMP: {reply}");
    }
    eprintln!(
        "events before the burst {before:?}, while stopped {stopped:?}, at the end {:?}; queue stops {}, chains {:?}, last error {:?}",
        served.controller.event_stats(),
        served.controller.queue_stops(),
        served.controller.queue_chains(),
        served.controller.last_error()
    );
    let queued = posted.iter().filter(|p| **p == Ok(Posted::Queued)).count();
    let lost = posted.iter().filter(|p| **p == Ok(Posted::Lost)).count();
    assert_eq!(queued + lost, BURST as usize, "{posted:?}");
    assert!(lost > 0, "the burst overflowed the event queue: {posted:?}");
    assert_eq!(
        stopped.delivered, before.delivered,
        "nothing is delivered to a stopped VM"
    );
    assert_eq!(
        run.field("burst-disks"),
        Some(BURST.to_string().as_str()),
        "every LUN of the burst appeared, the lost ones by the rescan"
    );
    let end = served.controller.event_stats();
    assert!(
        end.delivered > stopped.delivered,
        "events went out after the resume: {end:?}"
    );
    served.stop();
}
