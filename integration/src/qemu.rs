//! Runs one guest: QEMU with the cached kernel and an initramfs, the test
//! script passed in through fw_cfg, the console to a log file, the script's
//! stdout (second serial port) to a results file, and a hard timeout.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{io, Error, Result, RunReport};
use crate::initramfs::{EXIT_MARKER, INSMOD_FAILED_MARKER};
use crate::{Accel, GuestEnv, Initramfs};

/// Default hard timeout of one guest run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// Lines of the console log quoted in errors.
const TAIL_LINES: usize = 60;

/// One guest run's settings. The script is run by busybox `sh` in the guest
/// from `/tmp`; its stdout is the results text, its stderr goes to the
/// console log.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    initramfs: PathBuf,
    script: String,
    memory_mib: u64,
    cpus: u32,
    timeout: Duration,
    cmdline: Vec<String>,
    fw_cfg: Vec<(String, PathBuf)>,
    args: Vec<OsString>,
    overlay: Option<Initramfs>,
}

impl GuestConfig {
    /// A guest booting `initramfs` (from [`crate::Initramfs::build`]) that
    /// runs `script`. 512 MiB, one vCPU, [`DEFAULT_TIMEOUT`].
    pub fn new(initramfs: impl AsRef<Path>, script: impl Into<String>) -> Self {
        let timeout = std::env::var("OXTARGET_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        Self {
            initramfs: initramfs.as_ref().to_path_buf(),
            script: script.into(),
            memory_mib: 512,
            cpus: 1,
            timeout,
            cmdline: Vec::new(),
            fw_cfg: Vec::new(),
            args: Vec::new(),
            overlay: None,
        }
    }

    /// Guest memory in MiB (one shared memfd backend, as vhost-user needs).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Hard timeout after which QEMU is killed (OXTARGET_GUEST_TIMEOUT, in
    /// seconds, sets the default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Appends a word to the kernel command line.
    pub fn cmdline(mut self, word: impl Into<String>) -> Self {
        self.cmdline.push(word.into());
        self
    }

    /// Passes a small host file to the guest as `/oxtarget/in/<name>`
    /// (fw_cfg `opt/oxtarget/<name>`). fw_cfg reads are slow in the guest
    /// (quadratic in the size): keep these to tens of KiB; put larger data
    /// in the initramfs or on a disk.
    pub fn fw_cfg_file(mut self, name: impl Into<String>, host: impl AsRef<Path>) -> Self {
        self.fw_cfg.push((name.into(), host.as_ref().to_path_buf()));
        self
    }

    /// Files unpacked over the initramfs for this run only: the extras of
    /// `overlay` (see [`Initramfs::overlay_archive`]) are archived at run
    /// time and appended to a copy of the initramfs in the run directory.
    /// For a binary that changes from build to build (the oxtarget daemon),
    /// so the cached archive stays one file instead of one per build.
    pub fn overlay(mut self, overlay: Initramfs) -> Self {
        self.overlay = Some(overlay);
        self
    }

    /// Appends one raw QEMU argument (`-device`, `-drive`, `-chardev`, ...).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends raw QEMU arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// What one guest run left behind.
#[derive(Debug)]
pub struct GuestRun {
    /// QEMU's exit status.
    pub qemu_status: ExitStatus,
    /// The script's exit status, if /init got to report it.
    pub script_status: Option<i32>,
    /// Modules that failed to insmod.
    pub insmod_failures: Vec<String>,
    /// The script's stdout (CR removed, /init's marker lines left out).
    pub results: String,
    /// The guest console (kernel messages, /init, the script's stderr).
    pub console_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    /// The run directory holding the logs, the script and results.
    pub dir: PathBuf,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
    /// Deletes the run directory on drop unless it is kept.
    tmp: Option<tempfile::TempDir>,
}

impl GuestRun {
    /// The results as lines.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.results.lines()
    }

    /// The rest of the first results line that starts with `key` and a
    /// space: `field("md5")` on `md5 abc` gives `abc`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
            .map(str::trim)
    }

    /// The console log's text.
    pub fn console(&self) -> String {
        read_lossy(&self.console_log)
    }

    /// The last `n` lines of the console log.
    pub fn console_tail(&self, n: usize) -> String {
        tail(&self.console(), n)
    }

    /// Keeps the run directory after this value is dropped.
    pub fn keep(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.keep();
        }
    }

    /// Ok if QEMU exited 0, every module loaded and the script exited 0;
    /// otherwise an error with the results, QEMU's output and the console
    /// tail, and the run directory is kept.
    pub fn check(mut self) -> Result<Self> {
        let reason = if !self.qemu_status.success() {
            Some(format!("QEMU exited with {}", self.qemu_status))
        } else if !self.insmod_failures.is_empty() {
            Some(format!("insmod failed: {}", self.insmod_failures.join(" ")))
        } else {
            match self.script_status {
                None => Some("the guest did not report the script's exit status".into()),
                Some(0) => None,
                Some(n) => Some(format!("the script exited with status {n}")),
            }
        };
        match reason {
            None => Ok(self),
            Some(reason) => {
                self.keep();
                Err(Error::GuestFailed {
                    reason,
                    report: Box::new(RunReport {
                        dir: self.dir.clone(),
                        qemu_output: read_lossy(&self.qemu_log),
                        results: self.results.clone(),
                        console: self.console_log.clone(),
                        console_tail: self.console_tail(TAIL_LINES),
                    }),
                })
            }
        }
    }
}

/// Kills QEMU if the run is abandoned (a panic while waiting).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Doubles commas, QEMU's escape inside an option value.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

impl GuestEnv {
    /// Boots a guest and waits for it to power off or for the timeout.
    ///
    /// Guests of one process run one at a time (TCG on shared cores). The
    /// run directory is a fresh temporary directory (under
    /// OXTARGET_GUEST_RUNS if set), deleted with the returned value unless
    /// [`GuestRun::keep`] or a failed [`GuestRun::check`] keeps it, or
    /// OXTARGET_KEEP_GUEST=1.
    pub fn run(&self, config: &GuestConfig) -> Result<GuestRun> {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());

        for (name, _) in &config.fw_cfg {
            if name.is_empty() || name.contains('/') || name == "script" {
                return Err(Error::Io {
                    context: format!("fw_cfg name {name:?}"),
                    source: std::io::Error::other("must be non-empty, without '/', not \"script\""),
                });
            }
        }

        let base = std::env::var_os("OXTARGET_GUEST_RUNS")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).map_err(io(format!("create {}", base.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix("oxtarget-guest-")
            .tempdir_in(&base)
            .map_err(io(format!("create a run directory in {}", base.display())))?;
        let dir = tmp.path().to_path_buf();
        let script = dir.join("script.sh");
        let console_log = dir.join("console.log");
        let results_path = dir.join("results.txt");
        let qemu_log = dir.join("qemu.log");
        fs::write(&script, &config.script).map_err(io(format!("write {}", script.display())))?;
        let initrd = match &config.overlay {
            None => config.initramfs.clone(),
            Some(overlay) => {
                // The kernel unpacks concatenated newc archives in order.
                let combined = dir.join("initrd.cpio");
                fs::copy(&config.initramfs, &combined).map_err(io(format!(
                    "copy {} to {}",
                    config.initramfs.display(),
                    combined.display()
                )))?;
                let extra = overlay.overlay_archive()?;
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(&combined)
                    .map_err(io(format!("open {}", combined.display())))?;
                std::io::Write::write_all(&mut file, &extra)
                    .map_err(io(format!("append the overlay to {}", combined.display())))?;
                combined
            }
        };

        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        let mem = config.memory_mib;
        cmd.args(["-machine", "q35,memory-backend=mem0"])
            .args(["-m", &format!("{mem}M")])
            .args(["-smp", &config.cpus.to_string()])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem0,size={mem}M,share=on"),
            ]);
        if let Some(bios) = &self.bios {
            cmd.arg("-bios").arg(bios);
        }
        let mut append = String::from("console=ttyS0 8250.nr_uarts=2 quiet panic=-1");
        for word in &config.cmdline {
            append.push(' ');
            append.push_str(word);
        }
        cmd.arg("-kernel")
            .arg(&self.vmlinux)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args([
                "-chardev",
                &format!("file,id=oxconsole,path={}", qemu_escape(&console_log)),
                "-serial",
                "chardev:oxconsole",
                "-chardev",
                &format!("file,id=oxresults,path={}", qemu_escape(&results_path)),
                "-serial",
                "chardev:oxresults",
                "-fw_cfg",
                &format!("name=opt/oxtarget/script,file={}", qemu_escape(&script)),
            ]);
        for (name, host) in &config.fw_cfg {
            cmd.arg("-fw_cfg").arg(format!(
                "name=opt/oxtarget/{name},file={}",
                qemu_escape(host)
            ));
        }
        cmd.args(&config.args);

        let log = File::create(&qemu_log).map_err(io(format!("create {}", qemu_log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io(format!("dup {}", qemu_log.display())))?;
        fs::write(dir.join("qemu.cmdline"), format!("{cmd:?}\n"))
            .map_err(io(format!("write the command line into {}", dir.display())))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);

        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io(format!("start {}", self.qemu.display())))?;
        let pid = child.id();
        let mut guard = ChildGuard(Some(child));
        let status = loop {
            let child = guard.0.as_mut().expect("child present until reaped");
            if let Some(status) = child
                .try_wait()
                .map_err(io(format!("wait for QEMU (pid {pid})")))?
            {
                guard.0 = None;
                break status;
            }
            if start.elapsed() >= config.timeout {
                // Kills exactly the QEMU this call started, by its pid.
                let _ = child.kill();
                let _ = child.wait();
                guard.0 = None;
                return Err(Error::Timeout {
                    secs: config.timeout.as_secs(),
                    pid,
                    report: Box::new(RunReport {
                        dir: tmp.keep(),
                        qemu_output: read_lossy(&qemu_log),
                        results: read_results(&results_path),
                        console_tail: tail(&read_lossy(&console_log), TAIL_LINES),
                        console: console_log,
                    }),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = start.elapsed();

        let raw = read_results(&results_path);
        let mut results = String::new();
        let mut script_status = None;
        let mut insmod_failures = Vec::new();
        for line in raw.lines() {
            if let Some(rest) = line.strip_prefix(EXIT_MARKER) {
                script_status = rest.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix(INSMOD_FAILED_MARKER) {
                insmod_failures.push(rest.trim().to_string());
            } else {
                results.push_str(line);
                results.push('\n');
            }
        }
        let keep = std::env::var("OXTARGET_KEEP_GUEST").is_ok_and(|v| v == "1");
        Ok(GuestRun {
            qemu_status: status,
            script_status,
            insmod_failures,
            results,
            console_log,
            qemu_log,
            dir,
            elapsed,
            tmp: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The results port's text without the CRs a tty may add; empty if QEMU
/// never created the file.
fn read_results(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
