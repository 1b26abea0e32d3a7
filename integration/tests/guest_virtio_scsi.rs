//! A guest writes a known pattern to QEMU's own virtio-scsi disk, reads it
//! back and compares; the host then finds the pattern in the raw file. No
//! oxtarget here: this proves the guest harness (kernel, initramfs, fw_cfg
//! input, results port, timeout) that the vhost, iSCSI and SRP tests use.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

use integration::{GuestConfig, GuestEnv, Initramfs};

const DISK_SIZE: u64 = 64 << 20;
/// Write size (one dd block) and offset, in bytes.
const BLOCK: u64 = 64 << 10;
const SEEK_BLOCKS: u64 = 80;
const OFFSET: u64 = SEEK_BLOCKS * BLOCK; // 5 MiB

/// Each 512-byte sector: a header naming it, then pseudo-random bytes, so a
/// misplaced or stale sector shows.
fn pattern() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u32 = 0x2545_f491;
    for sector in 0..BLOCK / 512 {
        let mut s = format!("oxtarget sector {sector:04}\n").into_bytes();
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

const SCRIPT: &str = r#"
set -e
pat=$OXTARGET_IN/pattern
dev=/dev/sda
if [ ! -b $dev ]; then
    echo "no $dev; block devices: $(ls /sys/block)" >&2
    exit 1
fi
echo "sda-sectors $(cat /sys/block/sda/size)"
if dd --help 2>&1 | grep -q 'oflag=.*direct'; then
    mode=direct
    dd if=$pat of=$dev bs=BLOCK count=1 seek=SEEK oflag=direct conv=notrunc
    echo 3 >/proc/sys/vm/drop_caches
    dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK iflag=direct
else
    mode=fsync
    dd if=$pat of=$dev bs=BLOCK count=1 seek=SEEK conv=notrunc,fsync
    echo 3 >/proc/sys/vm/drop_caches
    dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK
fi
echo "dd-mode $mode"
echo "pattern-md5 $(md5sum <$pat | cut -d' ' -f1)"
echo "readback-md5 $(md5sum </tmp/back | cut -d' ' -f1)"
cmp $pat /tmp/back
echo "compare ok"
"#;

#[test]
fn guest_writes_and_reads_back_a_virtio_scsi_disk() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = dir.path().join("disk.raw");
    File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("create the raw disk file");
    let pattern = pattern();
    let pattern_file = dir.path().join("pattern");
    fs::write(&pattern_file, &pattern).expect("write the pattern file");

    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let script = SCRIPT
        .replace("BLOCK", &BLOCK.to_string())
        .replace("SEEK", &SEEK_BLOCKS.to_string());
    let config = GuestConfig::new(&initramfs, script)
        .fw_cfg_file("pattern", &pattern_file)
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=disk0",
            disk.display().to_string().replace(',', ",,")
        ))
        .args([
            "-device",
            "scsi-hd,drive=disk0,bus=scsi0.0,channel=0,scsi-id=0,lun=0",
        ]);
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

    // What the guest reported.
    let sectors = (DISK_SIZE / 512).to_string();
    assert_eq!(
        run.field("sda-sectors"),
        Some(sectors.as_str()),
        "disk size seen by the guest"
    );
    let mode = run.field("dd-mode").expect("dd-mode line");
    assert!(mode == "direct" || mode == "fsync", "dd-mode {mode}");
    let written = run.field("pattern-md5").expect("pattern-md5 line");
    let read = run.field("readback-md5").expect("readback-md5 line");
    assert_eq!(written.len(), 32, "md5 of the pattern: {written:?}");
    assert_eq!(written, read, "the guest read back what it wrote");
    assert!(run.lines().any(|l| l == "compare ok"), "guest cmp passed");

    // What landed in the raw file on the host.
    let mut file = File::open(&disk).expect("open the raw disk file");
    let mut region = vec![0u8; usize::try_from(BLOCK + 2 * 4096).unwrap()];
    file.seek(SeekFrom::Start(OFFSET - 4096)).unwrap();
    file.read_exact(&mut region).unwrap();
    let (before, rest) = region.split_at(4096);
    let (written, after) = rest.split_at(pattern.len());
    assert!(
        before.iter().all(|&b| b == 0),
        "nothing written before the offset"
    );
    assert!(
        written == pattern.as_slice(),
        "the raw file holds the pattern at {OFFSET}"
    );
    assert!(
        after.iter().all(|&b| b == 0),
        "nothing written after the pattern"
    );
    assert_eq!(fs::metadata(&disk).unwrap().len(), DISK_SIZE);
}
