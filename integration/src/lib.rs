//! End-to-end tests of oxtarget against real peers, and the one guest harness
//! every test that needs a real Linux guest uses.
//!
//! A guest is QEMU booting the Debian kernel's ELF `vmlinux` (PVH entry)
//! with an initramfs of busybox, the kernel modules the test names and any
//! host binaries it adds. The test script comes in through fw_cfg, its
//! stdout leaves through the second serial port into a results file, the
//! console goes to a log file, and the guest powers off when the script
//! ends. See `integration/README.md` for the API in use.
//!
//! ```no_run
//! use integration::{GuestConfig, GuestEnv, Initramfs};
//! let Some(env) = GuestEnv::require() else { return }; // skipped
//! let initramfs = Initramfs::standard().build(env).unwrap();
//! let run = env
//!     .run(&GuestConfig::new(&initramfs, "echo \"kernel $(uname -r)\""))
//!     .unwrap()
//!     .check()
//!     .unwrap();
//! assert_eq!(run.field("kernel"), Some(env.kernel.release.as_str()));
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod ceph;
pub mod cpio;
pub mod error;
pub mod initramfs;
pub mod kernel;
pub mod libiscsi_suite;
pub mod qemu;
pub mod rdma;
pub mod testkit;
pub mod vhost_frontend;

pub use error::{Error, Result};
pub use initramfs::Initramfs;
pub use kernel::Kernel;
pub use qemu::{GuestConfig, GuestRun};

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// OXTARGET_GUEST_ACCEL=kvm|tcg if set; TCG if `/sys/module/kvm_pvm`
    /// exists (kvm-pvm cannot run a stock kernel) or `/dev/kvm` cannot be
    /// opened read-write; KVM otherwise.
    pub fn detect() -> Self {
        match std::env::var("OXTARGET_GUEST_ACCEL").as_deref() {
            Ok("kvm") => return Self::Kvm,
            Ok("tcg") => return Self::Tcg,
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return Self::Tcg;
        }
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable {
            Self::Kvm
        } else {
            Self::Tcg
        }
    }
}

/// Everything a guest run needs from the host, found once per process.
#[derive(Debug)]
pub struct GuestEnv {
    /// The cache directory: OXTARGET_GUEST_CACHE or `integration/cache`.
    pub cache: PathBuf,
    /// The unpacked guest kernel.
    pub kernel: Kernel,
    /// Its extracted ELF vmlinux.
    pub vmlinux: PathBuf,
    /// `qemu-system-x86_64` (OXTARGET_QEMU overrides the PATH search).
    pub qemu: PathBuf,
    /// The busybox binary copied into every initramfs.
    pub busybox: PathBuf,
    /// qboot, if installed (faster firmware than SeaBIOS).
    pub bios: Option<PathBuf>,
    /// KVM or TCG.
    pub accel: Accel,
}

/// The cache directory: OXTARGET_GUEST_CACHE, else `integration/cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("OXTARGET_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("cache"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `oxtarget` binary, for tests that run the daemon inside a guest
/// (`CARGO_BIN_EXE_oxtarget` exists only for the root package's own tests):
/// `OXTARGET_BIN` if set, else `oxtarget` in the target directory of the
/// running test executable (`target/<profile>/deps/<test>` ->
/// `target/<profile>/oxtarget`, so the same profile and `CARGO_TARGET_DIR`).
/// `cargo build -p oxtarget` makes it; `cargo test --workspace` does too.
/// The caller should print the path and its age: a stale binary is not
/// rebuilt by `cargo test -p oxtarget-integration`.
pub fn oxtarget_binary() -> Result<PathBuf> {
    let hint = "build it with `cargo build -p oxtarget` (the same profile as the tests) \
                or set OXTARGET_BIN to the binary"
        .to_string();
    let path = match std::env::var_os("OXTARGET_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().map_err(|e| Error::Io {
                context: "locate the running test executable".into(),
                source: e,
            })?;
            // target/<profile>/deps/<test> -> target/<profile>
            let profile_dir =
                exe.parent()
                    .and_then(Path::parent)
                    .ok_or_else(|| Error::NotBuilt {
                        what: "the oxtarget binary".into(),
                        path: exe.clone(),
                        hint: hint.clone(),
                    })?;
            profile_dir.join("oxtarget")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NotBuilt {
            what: "the oxtarget binary".into(),
            path,
            hint,
        })
    }
}

/// A copy of `binary` in `dir` without its DWARF debug info (`objcopy
/// --strip-debug`: the symbols stay, so a backtrace in the guest still names
/// functions), to keep what goes into a guest small: a debug build of the
/// daemon is about 90 MB, 20 MB without. Falls back to `binary` itself when
/// objcopy is missing or fails.
pub fn strip_debug_copy(binary: &Path, dir: &Path) -> PathBuf {
    let name = binary.file_name().unwrap_or_else(|| "binary".as_ref());
    let out = dir.join(name);
    let stripped = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        out
    } else {
        binary.to_path_buf()
    }
}

impl GuestEnv {
    /// Finds QEMU, busybox, qboot and the cached kernel, and extracts the
    /// kernel's vmlinux if it is not cached yet.
    pub fn locate() -> Result<Self> {
        let qemu = match std::env::var_os("OXTARGET_QEMU") {
            Some(path) => PathBuf::from(path),
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| Error::Missing {
                what: "qemu-system-x86_64 (searched PATH)".into(),
            })?,
        };
        if !qemu.is_file() {
            return Err(Error::Missing {
                what: format!("QEMU at {}", qemu.display()),
            });
        }
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Missing {
                what: "busybox (/usr/bin/busybox, /bin/busybox)".into(),
            })?;
        let bios = ["/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let cache = cache_dir();
        let kernel = Kernel::open(&cache)?;
        let vmlinux = kernel.vmlinux()?;
        Ok(Self {
            cache,
            kernel,
            vmlinux,
            qemu,
            busybox,
            bios,
            accel: Accel::detect(),
        })
    }

    /// For tests: the process's shared environment, or `None` (after saying
    /// so on stderr) when OXTARGET_SKIP_GUEST=1.
    ///
    /// # Panics
    /// When something is missing and guest tests are not skipped: the
    /// message names what is missing and says to run
    /// `integration/install-deps.sh`.
    pub fn require() -> Option<&'static Self> {
        static ENV: OnceLock<Result<GuestEnv, String>> = OnceLock::new();
        if std::env::var("OXTARGET_SKIP_GUEST").is_ok_and(|v| v == "1") {
            eprintln!("guest test skipped: OXTARGET_SKIP_GUEST=1");
            return None;
        }
        match ENV.get_or_init(|| Self::locate().map_err(|e| e.to_string())) {
            Ok(env) => Some(env),
            Err(e) => panic!("guest test cannot run: {e}"),
        }
    }
}
