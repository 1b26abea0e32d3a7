//! The harness's error type.

use std::path::PathBuf;

/// The hint every "not installed" error carries.
pub const INSTALL_HINT: &str =
    "run `sudo integration/install-deps.sh` (or set OXTARGET_SKIP_GUEST=1 to skip guest tests)";

/// What went wrong while preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool, the kernel or a cache entry the harness needs is not there.
    #[error("{what} not found: {INSTALL_HINT}")]
    Missing {
        /// What is missing, with the places that were searched.
        what: String,
    },
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bzImage holds no payload that unpacks to an ELF vmlinux.
    #[error("no compressed ELF vmlinux found in {path} (tried: {tried})")]
    NoVmlinux {
        /// The bzImage.
        path: PathBuf,
        /// The formats and offsets that were tried.
        tried: String,
    },
    /// A kernel module is neither a `.ko` in the kernel tree nor built in.
    #[error("kernel module {name:?} not found under {dir} (needed by {needed_by})")]
    UnknownModule {
        /// The module name.
        name: String,
        /// The `lib/modules/<release>` directory searched.
        dir: PathBuf,
        /// Who asked for it: "the caller" or another module.
        needed_by: String,
    },
    /// A `.ko` file is not a well-formed ELF64 object with a `.modinfo` section.
    #[error("bad kernel module {path}: {reason}")]
    BadModule {
        /// The `.ko` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Module dependencies form a cycle.
    #[error("kernel module dependency cycle through {0}")]
    ModuleCycle(String),
    /// `ldd` failed on a binary to be copied into the initramfs.
    #[error("ldd {path} failed: {detail}")]
    Ldd {
        /// The binary.
        path: PathBuf,
        /// ldd's exit status and stderr.
        detail: String,
    },
    /// A binary of this workspace that a test runs is not built.
    #[error("{what} not found at {}: {hint}", path.display())]
    NotBuilt {
        /// The binary.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to build it or point the test at it.
        hint: String,
    },
    /// A guest path is not absolute or otherwise unusable in the archive.
    #[error("bad guest path {0:?}: must be absolute, without `..`")]
    BadGuestPath(String),
    /// QEMU ran past the hard timeout and was killed (by its own pid).
    #[error("guest timed out after {secs} s and QEMU (pid {pid}) was killed; {report}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// QEMU's process id.
        pid: u32,
        /// What the guest left behind.
        report: Box<RunReport>,
    },
    /// The guest ended without reporting success.
    #[error("guest failed: {reason}; {report}")]
    GuestFailed {
        /// Why the run counts as failed.
        reason: String,
        /// What the guest left behind.
        report: Box<RunReport>,
    },
}

/// What a failed or timed-out guest left behind, for the error message.
#[derive(Debug)]
pub struct RunReport {
    /// The run directory (kept for inspection).
    pub dir: PathBuf,
    /// QEMU's stdout and stderr.
    pub qemu_output: String,
    /// Everything the guest wrote to the results port.
    pub results: String,
    /// The console log file.
    pub console: PathBuf,
    /// The last lines of the console log.
    pub console_tail: String,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run dir {}\n--- QEMU output ---\n{}\n--- results ---\n{}\n--- console tail ({}) ---\n{}",
            self.dir.display(),
            self.qemu_output.trim_end(),
            self.results.trim_end(),
            self.console.display(),
            self.console_tail
        )
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
