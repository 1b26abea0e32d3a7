//! The Linux kernel's iSCSI initiator (iscsi_tcp, driven by open-iscsi's
//! iscsid and iscsiadm) against oxtarget's iSCSI server.
//!
//! The server runs in this process on 127.0.0.1 (an ephemeral port) with one
//! target: a 64 MiB thin file LUN opened with O_DIRECT and a 32 MiB RAM LUN,
//! an ACL that admits the guest's initiator name, and CHAP required (the
//! target also holds a secret of its own, for mutual CHAP). The guest reaches
//! it through QEMU's user network with `restrict=on`: the guest's
//! 10.0.2.100:3260 is a `guestfwd` whose command, `busybox nc`, relays each
//! guest connection to the server, so every packet stays inside QEMU and the
//! host's loopback.
//!
//! In the guest: SendTargets discovery; a login with one-way CHAP and CRC32C
//! header and data digests; both LUNs found; a direct write of a pattern and
//! of 4 MiB of random data, read back; eight writers and then eight readers
//! at once on the RAM LUN; a LOGICAL UNIT RESET and a TARGET RESET from the
//! kernel's error handler (sg_reset), the data read back after; logout; a wrong secret and no CHAP at all, both
//! refused by the target; a login with mutual CHAP that idles past the
//! kernel's ping timeout without a connection error, loses its network until
//! the kernel fails the connection, recovers (iscsid logs in again with the
//! same ISID: the target reinstates the session) and reads the data back; a
//! login that expects the wrong target secret, which the initiator refuses.
//! On the host: the login statuses, the digests and CHAP settings of the live
//! sessions (`iscsiadm -m session -P 3`), the bytes in the LUN's file, and
//! that every session ended.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backends::ram::RamBackend;
use backends::{FileBackend, FileOptions};
use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
use integration::error::INSTALL_HINT;
use integration::initramfs::{
    host_has_open_iscsi, GUEST_INITIATOR_NAME, OPEN_ISCSI_BINARIES, SG_RESET,
};
use integration::{GuestConfig, GuestEnv, GuestRun, Initramfs};
use iscsi::chap::{ChapCredentials, Secret};
use iscsi::server::{Server, ServerConfig, Target};
use md5::{Digest, Md5};

const IQN: &str = "iqn.2026-11.org.oxtarget:guest-iscsi";
/// LUN 0: a file.
const DISK_SIZE: u64 = 64 << 20;
/// LUN 1: RAM.
const RAM_SIZE: u64 = 32 << 20;
/// The pattern: one 64 KiB block at block SEEK_BLOCKS (5 MiB).
const BLOCK: u64 = 64 << 10;
const SEEK_BLOCKS: u64 = 80;
/// 4 MiB of random data from the guest at this MiB: several bursts, with
/// R2Ts and Data-Out beyond the first burst.
const BIG_MIB: u64 = 16;
const BIG_LEN: u64 = 4 << 20;

const INITIATOR_USER: &str = "guest-user";
const INITIATOR_SECRET: &str = "initiator-secret-0123";
const TARGET_USER: &str = "oxtarget-target";
const TARGET_SECRET: &str = "target-secret-456789";
const WRONG_SECRET: &str = "not-the-right-secret";

fn pattern() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u32 = 0x2545_f491;
    for sector in 0..BLOCK / 512 {
        let mut s = format!("oxtarget iscsi sector {sector:04}\n").into_bytes();
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

/// The guest's script. Every iscsiadm call is bounded by `timeout`; the node
/// defaults in the standard initramfs's iscsid.conf make a refused login one
/// attempt with a short login timeout.
const SCRIPT: &str = r#"
set -e
PORTAL=10.0.2.100:3260
adm() { timeout 60 iscsiadm "$@"; }
node() { adm -m node -T __IQN__ -p $PORTAL "$@"; }
upd() { node -o update -n "$1" -v "$2"; }
# Prints "login-<name> <iscsiadm's status>"; the host judges it.
login() {
    set +e
    node --login >/tmp/login.out 2>&1
    st=$?
    set -e
    sed "s/^/login-$1: /" /tmp/login.out >&2
    echo "login-$1 $st"
    return 0
}
sessions() { ls /sys/class/iscsi_session | wc -l; }
# The disks of the (one) iSCSI session in LUN order, once the kernel has
# scanned $1 of them.
disks() {
    i=0
    while [ $i -lt 200 ]; do
        found=
        n=0
        for b in /sys/class/iscsi_session/session*/device/target*/*/block/*; do
            [ -e "$b" ] && [ -b "/dev/${b##*/}" ] || continue
            found="$found /dev/${b##*/}"
            n=$((n + 1))
        done
        if [ $n -ge $1 ]; then
            echo $found
            return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "$n of $1 iSCSI disks appeared:$found" >&2
    return 1
}

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

mkdir -p /run/lock/iscsi
setsid iscsid -f </dev/null >/tmp/iscsid.log 2>&1 &
iscsid_pid=$!
i=0
until grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "iscsid did not start" >&2
        cat /tmp/iscsid.log >&2
        exit 1
    fi
    sleep 0.1
done
echo "iscsid up"

adm -m discovery -t sendtargets -p $PORTAL >/tmp/discovered
sed 's/^/discovered /' /tmp/discovered
# SendTargets names the target's own portal (127.0.0.1 on the host), which the
# guest cannot reach: the node record for the forwarded portal is made by hand.
node -o new >/dev/null
upd node.session.auth.authmethod CHAP
upd node.session.auth.username __IUSER__
upd node.session.auth.password __ISECRET__
upd 'node.conn[0].iscsi.HeaderDigest' CRC32C
upd 'node.conn[0].iscsi.DataDigest' CRC32C

# One-way CHAP, digests on: write, read back.
login oneway
all=$(disks 2)
dev=${all%% *}
dev1=${all##* }
for d in $all; do
    echo "disk ${d##*/} $(cat /sys/block/${d##*/}/size)"
done
adm -m session -P 3 | sed 's/^/oneway-p3 /'
pat=$OXTARGET_IN/pattern
dd if=$pat of=$dev bs=__BLOCK__ count=1 seek=__SEEK__ oflag=direct conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/tmp/big bs=1048576 count=__BIG_COUNT__ 2>/dev/null
dd if=/tmp/big of=$dev bs=1048576 count=__BIG_COUNT__ seek=__BIG_MIB__ oflag=direct conv=notrunc 2>/dev/null
echo "big-md5 $(md5sum </tmp/big | cut -d' ' -f1)"
dd if=$dev of=/tmp/back bs=__BLOCK__ count=1 skip=__SEEK__ iflag=direct 2>/dev/null
cmp $pat /tmp/back
echo "pattern compare ok"
dd if=$dev of=/tmp/bigback bs=1048576 count=__BIG_COUNT__ skip=__BIG_MIB__ iflag=direct 2>/dev/null
cmp /tmp/big /tmp/bigback
echo "big compare ok"
# Eight writers at once on the RAM LUN, then eight readers: many commands
# in flight on one connection, all with digests. (A bare `wait` would wait
# for iscsid too: the jobs are waited for by pid.)
pids=
i=0
while [ $i -lt 8 ]; do
    dd if=/tmp/big of=$dev1 bs=65536 count=8 skip=$((i * 8)) seek=$((i * 8)) oflag=direct conv=notrunc 2>/dev/null &
    pids="$pids $!"
    i=$((i + 1))
done
for p in $pids; do wait $p; done
pids=
i=0
while [ $i -lt 8 ]; do
    dd if=$dev1 of=/tmp/par$i bs=65536 count=8 skip=$((i * 8)) iflag=direct 2>/dev/null &
    pids="$pids $!"
    i=$((i + 1))
done
for p in $pids; do wait $p; done
cat /tmp/par0 /tmp/par1 /tmp/par2 /tmp/par3 /tmp/par4 /tmp/par5 /tmp/par6 /tmp/par7 | cmp /tmp/big -
echo "parallel compare ok"
# The kernel's error handler resets the RAM LUN, then the target, through
# iscsi_tcp: a LOGICAL UNIT RESET and a TARGET WARM RESET task management
# function. With -N a failed LU reset does not escalate and sg_reset fails;
# a failed target reset falls back to a session reset (a new login), which
# the kernel logs as a connection error.
dmesg -c >/dev/null
set +e
timeout 60 sg_reset -N -d $dev1
echo "lu-reset $?"
timeout 60 sg_reset -N -t $dev1
echo "target-reset $?"
set -e
echo "reset-conn-errors $(dmesg | grep -c -e 'conn error' -e 'recovery')"
dd if=$dev1 of=/tmp/afterreset bs=65536 count=64 iflag=direct 2>/dev/null
cmp /tmp/big /tmp/afterreset
echo "read after resets ok"
node --logout >/dev/null
echo "sessions-after-logout $(sessions)"

# The wrong secret, then no authentication at all: the target refuses both.
upd node.session.auth.password __WRONG__
login wrong
echo "sessions-after-wrong $(sessions)"
upd node.session.auth.authmethod None
login none
echo "sessions-after-none $(sessions)"

# Mutual CHAP: the initiator checks the target's answer too.
upd node.session.auth.authmethod CHAP
upd node.session.auth.password __ISECRET__
upd node.session.auth.username_in __TUSER__
upd node.session.auth.password_in __TSECRET__
login mutual
all=$(disks 2)
dev=${all%% *}
adm -m session -P 3 | sed 's/^/mutual-p3 /'
sid=$(ls /sys/class/iscsi_session)
state() { cat /sys/class/iscsi_session/$sid/state; }
# Idle for longer than a ping interval and its timeout (iscsid.conf: a ping
# after 5 s without traffic, 10 s to answer): the target answers the
# kernel's pings, or the kernel logs a ping timeout and fails the connection.
dmesg -c >/dev/null
sleep 17
echo "idle-conn-errors $(dmesg | grep -c -e 'conn error' -e 'ping timeout' -e 'recovery')"
echo "idle-state $(state)"
# A network outage: the kernel's pings go unanswered (10 s), it fails the
# connection, and iscsid logs in again with the same ISID and TSIH 0 while
# the target still holds the old connection (nothing reached it): the target
# reinstates the session, and I/O goes on through the new connection.
ip link set eth0 down
i=0
while [ "$(state)" = LOGGED_IN ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "outage-state $(state)"
ip link set eth0 up
i=0
while [ "$(state)" != LOGGED_IN ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "recovered-state $(state)"
dd if=$dev of=/tmp/back bs=__BLOCK__ count=1 skip=__SEEK__ iflag=direct 2>/dev/null
echo "mutual-readback-md5 $(md5sum </tmp/back | cut -d' ' -f1)"
echo "pattern-md5 $(md5sum <$pat | cut -d' ' -f1)"
node --logout >/dev/null
echo "sessions-after-mutual $(sessions)"

# The initiator expects another target secret: it refuses the target.
upd node.session.auth.password_in __WRONG__
login mutual-wrong
echo "sessions-end $(sessions)"

kill $iscsid_pid
cat /tmp/iscsid.log >&2
"#;

fn script() -> String {
    SCRIPT
        .replace("__IQN__", IQN)
        .replace("__IUSER__", INITIATOR_USER)
        .replace("__ISECRET__", INITIATOR_SECRET)
        .replace("__TUSER__", TARGET_USER)
        .replace("__TSECRET__", TARGET_SECRET)
        .replace("__WRONG__", WRONG_SECRET)
        .replace("__BLOCK__", &BLOCK.to_string())
        .replace("__SEEK__", &SEEK_BLOCKS.to_string())
        .replace("__BIG_MIB__", &BIG_MIB.to_string())
        .replace("__BIG_COUNT__", &(BIG_LEN >> 20).to_string())
}

/// A thin file LUN of DISK_SIZE bytes opened with O_DIRECT.
fn file_lun(dir: &Path) -> (Arc<Lun>, std::path::PathBuf) {
    let image = dir.join("iscsi-lun0.img");
    let backend = FileBackend::create(
        &image,
        DISK_SIZE,
        FileOptions {
            direct: true,
            ..Default::default()
        },
    )
    .expect("file backend");
    let mut uuid = *b"oxtarget-iscsi-0";
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    let lun = Lun::new(LunConfig::new("iscsi-lun0", uuid), Arc::new(backend)).expect("lun");
    (lun, image)
}

/// A RAM LUN of RAM_SIZE bytes.
fn ram_lun() -> Arc<Lun> {
    let mut uuid = *b"oxtarget-iscsi-1";
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    Lun::new(
        LunConfig::new("iscsi-lun1", uuid),
        Arc::new(RamBackend::new(RAM_SIZE)),
    )
    .expect("lun")
}

/// The server on 127.0.0.1 (ephemeral port) with one CHAP-protected target
/// holding `luns` as LUN 0, 1, ...
fn start_server(luns: &[&Arc<Lun>]) -> Server {
    let registry = LunRegistry::new();
    let map = LunMap::new();
    for (n, lun) in (0u64..).zip(luns) {
        registry.add((*lun).clone());
        map.insert(n, (*lun).clone());
    }
    let target = Target {
        name: IQN.to_string(),
        alias: Some("oxtarget guest test".into()),
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        portal_group_tag: 1,
        port: Arc::new(TargetPort {
            name: format!("{IQN},t,0x0001"),
            protocol: Protocol::Iscsi,
            relative_id: 1,
            group_id: 1,
        }),
        luns: map,
        acl: vec![GUEST_INITIATOR_NAME.to_string()],
        chap: Some(ChapCredentials {
            initiator: Secret {
                user: INITIATOR_USER.into(),
                secret: INITIATOR_SECRET.as_bytes().to_vec(),
            },
            target: Some(Secret {
                user: TARGET_USER.into(),
                secret: TARGET_SECRET.as_bytes().to_vec(),
            }),
        }),
        chap_required: true,
    };
    let cfg = ServerConfig {
        targets: vec![target],
        workers: 1,
        ..ServerConfig::default()
    };
    Server::start(cfg, registry).expect("the iSCSI server starts")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of `key: value` in the `prefix` lines of `iscsiadm -m session -P 3`.
fn session_value<'a>(run: &'a GuestRun, prefix: &str, key: &str) -> Vec<&'a str> {
    run.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.trim().strip_prefix(key))
        .filter_map(|l| l.trim_start().strip_prefix(':'))
        .map(str::trim)
        .collect()
}

#[test]
fn kernel_initiator_logs_in_with_chap_and_digests() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    assert!(
        host_has_open_iscsi(),
        "open-iscsi ({}) not found on the host: {INSTALL_HINT}",
        OPEN_ISCSI_BINARIES.join(", ")
    );
    assert!(
        Path::new(SG_RESET).is_file(),
        "{SG_RESET} (sg3-utils) not found on the host: {INSTALL_HINT}"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let (lun, image) = file_lun(dir.path());
    let ram = ram_lun();
    let server = start_server(&[&lun, &ram]);
    let addr = server.local_addrs()[0];

    let pattern = pattern();
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, &pattern).expect("pattern file");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));

    // One relay per guest connection (the `tcp:` form of guestfwd opens a
    // single host connection at startup and breaks every later login).
    let netdev = format!(
        "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:3260-cmd:{} nc 127.0.0.1 {}",
        env.busybox.display(),
        addr.port()
    );
    let config = GuestConfig::new(&initramfs, script())
        .fw_cfg_file("pattern", &pattern_file)
        .arg("-netdev")
        .arg(netdev)
        .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
        .timeout(Duration::from_secs(300));
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

    // Discovery named this target at the server's own portal.
    let discovered = format!("{addr},1 {IQN}");
    assert!(
        run.lines()
            .any(|l| l.strip_prefix("discovered ") == Some(discovered.as_str())),
        "SendTargets answered {discovered:?}:\n{}",
        run.results
    );

    // One-way CHAP with digests.
    assert_eq!(run.field("login-oneway"), Some("0"), "{}", run.results);
    // Both LUNs, in LUN order, at their sizes.
    let sizes: Vec<&str> = run
        .lines()
        .filter_map(|l| l.strip_prefix("disk "))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    let want = [(DISK_SIZE / 512).to_string(), (RAM_SIZE / 512).to_string()];
    assert_eq!(sizes, want, "{}", run.results);
    for prefix in ["oneway-p3 ", "mutual-p3 "] {
        assert_eq!(
            session_value(&run, prefix, "HeaderDigest"),
            ["CRC32C"],
            "{prefix}header digest:\n{}",
            run.results
        );
        assert_eq!(
            session_value(&run, prefix, "DataDigest"),
            ["CRC32C"],
            "{prefix}data digest:\n{}",
            run.results
        );
        assert_eq!(
            session_value(&run, prefix, "username"),
            [INITIATOR_USER],
            "{prefix}CHAP user:\n{}",
            run.results
        );
        // "Target: <name> (non-flash)"
        let targets = session_value(&run, prefix, "Target");
        assert!(
            targets.len() == 1 && targets[0].split(' ').next() == Some(IQN),
            "{prefix}one session, to {IQN}: {targets:?}"
        );
    }
    assert_eq!(
        session_value(&run, "mutual-p3 ", "username_in"),
        [TARGET_USER],
        "mutual CHAP checked the target's name:\n{}",
        run.results
    );
    assert!(run.lines().any(|l| l == "pattern compare ok"));
    assert!(run.lines().any(|l| l == "big compare ok"));
    assert!(run.lines().any(|l| l == "parallel compare ok"));
    assert_eq!(run.field("lu-reset"), Some("0"), "{}", run.console());
    assert_eq!(run.field("target-reset"), Some("0"), "{}", run.console());
    assert_eq!(
        run.field("reset-conn-errors"),
        Some("0"),
        "the target reset was not a session reset: {}",
        run.console()
    );
    assert!(run.lines().any(|l| l == "read after resets ok"));
    assert_eq!(run.field("sessions-after-logout"), Some("0"));

    // Refused by the target: iscsiadm's status 24 is "login failed due to
    // authorization failure" (the target's Login Response 0x0201).
    assert_eq!(run.field("login-wrong"), Some("24"), "{}", run.results);
    assert_eq!(run.field("sessions-after-wrong"), Some("0"));
    assert_eq!(run.field("login-none"), Some("24"), "{}", run.results);
    assert_eq!(run.field("sessions-after-none"), Some("0"));

    // Mutual CHAP, and the data of the first session read back.
    assert_eq!(run.field("login-mutual"), Some("0"), "{}", run.results);
    let pattern_md5 = hex(&Md5::digest(&pattern));
    assert_eq!(run.field("pattern-md5"), Some(pattern_md5.as_str()));
    assert_eq!(
        run.field("mutual-readback-md5"),
        Some(pattern_md5.as_str()),
        "the mutual-CHAP session read the pattern back"
    );
    assert_eq!(run.field("sessions-after-mutual"), Some("0"));
    // The kernel's pings while idle were answered.
    assert_eq!(
        run.field("idle-conn-errors"),
        Some("0"),
        "{}",
        run.console()
    );
    assert_eq!(run.field("idle-state"), Some("LOGGED_IN"));
    // The outage was noticed, and the session came back on a new connection
    // (the read back above went through it).
    assert_eq!(
        run.field("outage-state"),
        Some("FAILED"),
        "{}",
        run.console()
    );
    assert_eq!(
        run.field("recovered-state"),
        Some("LOGGED_IN"),
        "{}",
        run.console()
    );

    // A target that cannot prove itself is refused by the initiator.
    let status = run.field("login-mutual-wrong").expect("login-mutual-wrong");
    assert_ne!(status, "0", "{}", run.results);
    assert_eq!(run.field("sessions-end"), Some("0"));

    // What landed in the LUN's file.
    let mut file = File::open(&image).expect("image");
    let mut got = vec![0u8; pattern.len()];
    file.seek(SeekFrom::Start(SEEK_BLOCKS * BLOCK)).unwrap();
    file.read_exact(&mut got).unwrap();
    assert!(got == pattern, "the image holds the pattern");
    let mut big = vec![0u8; usize::try_from(BIG_LEN).unwrap()];
    file.seek(SeekFrom::Start(BIG_MIB << 20)).unwrap();
    file.read_exact(&mut big).unwrap();
    assert_eq!(
        run.field("big-md5"),
        Some(hex(&Md5::digest(&big)).as_str()),
        "the image holds the guest's random data"
    );

    // Every session the guest made has ended on the server too.
    assert_eq!(server.sessions(), 0);
    server.shutdown();
}
