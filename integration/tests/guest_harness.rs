//! The guest harness's own behaviour: host binaries with their libraries,
//! module loading, script failures reported with the console, and the hard
//! timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::error::INSTALL_HINT;
use integration::initramfs::{
    host_has_open_iscsi, BASE_MODULES, GUEST_INITIATOR_NAME, ISCSIADM, OPEN_ISCSI_BINARIES,
    STANDARD_MODULES,
};
use integration::{Error, GuestConfig, GuestEnv, Initramfs};

/// The standard archive (the one every guest test shares) carries host
/// binaries with the libraries ldd lists (open-iscsi's), generated files, and
/// the standard modules; a script's failure is reported with its output and
/// the console.
#[test]
fn host_binary_runs_and_a_failing_script_is_reported() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    assert!(
        host_has_open_iscsi(),
        "open-iscsi ({}) not found on the host: {INSTALL_HINT}",
        OPEN_ISCSI_BINARIES.join(", ")
    );
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let script = r#"
echo "modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "name $(cat /etc/iscsi/initiatorname.iscsi)"
echo "iscsiadm $(iscsiadm --version)"
echo "this goes to the console" >&2
exit 3
"#;
    let run = env
        .run(&GuestConfig::new(&initramfs, script))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(run.qemu_status.success(), "QEMU: {}", run.qemu_status);
    assert_eq!(run.script_status, Some(3));
    assert!(run.insmod_failures.is_empty(), "{:?}", run.insmod_failures);
    let name = format!("InitiatorName={GUEST_INITIATOR_NAME}");
    assert_eq!(run.field("name"), Some(name.as_str()));
    let host_version = std::process::Command::new(ISCSIADM)
        .arg("--version")
        .output()
        .expect("the host's iscsiadm runs");
    let host_version = String::from_utf8_lossy(&host_version.stdout);
    assert_eq!(
        run.field("iscsiadm"),
        Some(host_version.trim()),
        "iscsiadm and its libraries run in the guest"
    );

    let loaded: Vec<&str> = run.field("modules").unwrap_or("").split(' ').collect();
    let wanted: Vec<&str> = BASE_MODULES
        .iter()
        .chain(STANDARD_MODULES)
        .copied()
        .collect();
    for module in env.kernel.load_order(&wanted).unwrap() {
        assert!(
            loaded.contains(&module.name.as_str()),
            "{} loaded: {loaded:?}",
            module.name
        );
    }
    assert!(run.console().contains("this goes to the console"));

    let console_log = run.console_log.clone();
    let err = run.check().expect_err("exit status 3 is a failure");
    let text = err.to_string();
    assert!(text.contains("the script exited with status 3"), "{text}");
    assert!(
        text.contains(&format!("name {name}")),
        "results quoted: {text}"
    );
    assert!(
        text.contains("this goes to the console"),
        "console quoted: {text}"
    );
    assert!(console_log.is_file(), "a failed run keeps its directory");
    if let Some(dir) = console_log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn hard_timeout_kills_qemu() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let timeout = Duration::from_secs(15);
    let config = GuestConfig::new(&initramfs, "echo started\nsleep 600\n").timeout(timeout);
    let start = Instant::now();
    let err = env.run(&config).expect_err("the guest never ends");
    let elapsed = start.elapsed();
    let Error::Timeout { secs, pid, report } = &err else {
        panic!("expected a timeout, got: {err}");
    };
    assert_eq!(*secs, 15);
    assert!(
        elapsed < timeout + Duration::from_secs(10),
        "killed promptly: {elapsed:?}"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} is gone"
    );
    assert!(report.results.contains("started"), "results so far: {err}");
    assert!(err.to_string().contains("console tail"), "{err}");
    let _ = std::fs::remove_dir_all(&report.dir);
}

#[test]
fn qemu_refusing_its_arguments_is_reported() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let config = GuestConfig::new(&initramfs, "true\n").args(["-device", "no-such-device"]);
    let run = env.run(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(!run.qemu_status.success());
    assert_eq!(run.script_status, None);
    assert!(run.results.is_empty(), "{:?}", run.results);
    let err = run.check().expect_err("QEMU failed");
    let text = err.to_string();
    assert!(text.contains("QEMU exited with"), "{text}");
    assert!(
        text.contains("no-such-device"),
        "QEMU's own message quoted: {text}"
    );
    if let Error::GuestFailed { report, .. } = &err {
        let _ = std::fs::remove_dir_all(&report.dir);
    }
}

/// An overlay is unpacked over the initramfs for one run: its files replace
/// the archive's (the generated /etc/passwd here), its new files appear with
/// their modes, a host binary at a new path runs, and the cached archive is
/// left as it was.
#[test]
fn overlay_files_go_over_the_archive_for_one_run() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let before = std::fs::read(&initramfs).expect("the cached archive");
    let overlay = Initramfs::new()
        .bytes("/etc/passwd", "root:x:0:0:overlaid:/root:/bin/sh\n", 0o644)
        .bytes("/opt/overlay/new", "new file\n", 0o600)
        .binary_at(ISCSIADM, "/opt/overlay/iscsiadm");
    let script = r#"
echo "passwd $(cut -d: -f5 /etc/passwd)"
echo "new $(cat /opt/overlay/new) $(stat -c %a /opt/overlay/new)"
echo "version $(/opt/overlay/iscsiadm --version)"
"#;
    let run = env
        .run(&GuestConfig::new(&initramfs, script).overlay(overlay))
        .and_then(integration::GuestRun::check)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.field("passwd"), Some("overlaid"));
    assert_eq!(run.field("new"), Some("new file 600"));
    assert!(
        run.field("version").is_some_and(|v| v.contains("iscsiadm")),
        "a binary of the overlay runs:\n{}",
        run.results
    );
    assert!(
        std::fs::read(&initramfs).expect("the cached archive") == before,
        "the cached archive is unchanged"
    );
}
