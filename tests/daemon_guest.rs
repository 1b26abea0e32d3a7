//! The daemon, a running QEMU guest on its vhost-user-scsi controller, and the
//! CLI only: a file-backed LUN created, attached to the running guest's
//! controller, resized and detached; the guest sees each change without a
//! reboot or a rescan of its own (the controller's event queue). Guest and
//! host step together through a marker the guest writes to sector 0 of LUN 0,
//! which the host reads from LUN 0's backing file.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::{GuestConfig, GuestEnv, Initramfs};

mod common;
use common::{cli, DaemonProc};

const HOT_LUN: u64 = 3;

/// Guest side: `mark N` writes "stepN" to sector 0 of sda; every wait polls
/// /sys for at most 60 s.
const SCRIPT: &str = r#"
set -e
i=0
while [ ! -b /dev/sda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mark() {
    printf '%-512s' "step$1" >/tmp/mark
    dd if=/tmp/mark of=/dev/sda bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null
}
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
mark 1
if wait_for '[ -n "$(disk_of HOT)" ] && [ -b /dev/$(disk_of HOT) ]'; then
    hot=$(disk_of HOT)
    echo "hot-sectors $(cat /sys/block/$hot/size)"
    printf 'written by the guest' | dd of=/dev/$hot bs=512 count=1 conv=sync,notrunc oflag=direct 2>/dev/null
    mark 2
    if wait_for '[ "$(cat /sys/block/$hot/size)" != "32768" ]'; then
        echo "resized-sectors $(cat /sys/block/$hot/size)"
    fi
    mark 3
    if wait_for '[ ! -e /sys/block/$hot ]'; then echo "removed ok"; fi
fi
mark 4
"#;

/// The step the guest marked in the base LUN's file, 0 if none.
fn marked(base: &Path) -> u32 {
    let b = std::fs::read(base).unwrap_or_default();
    if b.len() < 5 || &b[..4] != b"step" {
        return 0;
    }
    u32::from(b[4].wrapping_sub(b'0'))
}

#[test]
fn cli_attaches_resizes_and_detaches_a_lun_on_a_running_guest() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("rpc.sock");
    let vhost = dir.path().join("vhost0.sock");
    let base = dir.path().join("base.img");
    let hot = dir.path().join("hot.img");
    let config = dir.path().join("oxtarget.toml");
    std::fs::write(
        &config,
        format!(
            r#"rpc_socket = "{}"

[[backend]]
name = "base"
type = "file"
path = "{}"
size = "16M"

[[lun]]
name = "base"
backend = "base"
uuid = "21111111-2222-4333-8444-555555555555"

[[vhost_scsi]]
name = "vm"
socket = "{}"
luns = [{{ id = 0, lun = "base" }}]
"#,
            socket.display(),
            base.display(),
            vhost.display()
        ),
    )
    .expect("config");
    let mut daemon = DaemonProc::spawn_serve(&config, &socket, &dir.path().join("log"));
    let start = Instant::now();
    while !vhost.exists() || !socket.exists() {
        assert!(
            start.elapsed() <= Duration::from_secs(30),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("initramfs: {e}"));

    // Host side: the CLI acts on each step the guest marks (bounded).
    let guest_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let (socket, base, hot) = (socket.clone(), base.clone(), hot.clone());
        let guest_done = guest_done.clone();
        std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut step = 0;
            let deadline = Instant::now() + Duration::from_secs(300);
            while step < 4
                && Instant::now() < deadline
                && !guest_done.load(std::sync::atomic::Ordering::SeqCst)
            {
                if marked(&base) <= step {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                step += 1;
                let hot_s = hot.display().to_string();
                let n = HOT_LUN.to_string();
                match step {
                    1 => {
                        cli(
                            &socket,
                            &[
                                "backend", "create", "hot", "--type", "file", "--path", &hot_s,
                                "--size", "16M",
                            ],
                        );
                        cli(&socket, &["lun", "create", "hot", "--backend", "hot"]);
                        done.push(cli(
                            &socket,
                            &["--json", "vhost", "attach", "vm", &n, "hot"],
                        ));
                    }
                    2 => done.push(cli(&socket, &["lun", "resize", "hot", "24M"])),
                    3 => done.push(cli(&socket, &["--json", "vhost", "detach", "vm", &n])),
                    _ => {}
                }
            }
            done
        })
    };
    let guest = GuestConfig::new(&initramfs, SCRIPT.replace("HOT", &HOT_LUN.to_string()))
        .arg("-chardev")
        .arg(format!("socket,id=vhost0,path={}", vhost.display()))
        .arg("-device")
        .arg("vhost-user-scsi-pci,chardev=vhost0,num_queues=1")
        .timeout(Duration::from_secs(240));
    let run = env.run(&guest).and_then(|r| r.check());
    guest_done.store(true, std::sync::atomic::Ordering::SeqCst);
    // The daemon stops first, whatever the guest and the host thread did.
    let status = daemon.terminate();
    let steps = host.join().expect("host thread");
    let run = run.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("host steps: {steps:?}\nguest:\n{}", run.results);
    assert!(status.success(), "{status:?}");
    assert!(
        steps.first().is_some_and(|s| s.contains("\"Queued\"")),
        "{steps:?}"
    );
    assert_eq!(
        run.field("hot-sectors"),
        Some("32768"),
        "the attached LUN's size"
    );
    assert_eq!(
        run.field("resized-sectors"),
        Some("49152"),
        "the resize reached the guest"
    );
    assert!(
        run.lines().any(|l| l == "removed ok"),
        "the detached LUN left the guest"
    );
    let written = std::fs::read(&hot).expect("hot image");
    assert!(
        written.starts_with(b"written by the guest"),
        "the guest's write reached the new LUN's file"
    );
}
