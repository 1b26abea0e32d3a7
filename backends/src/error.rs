//! Errors of the backends. A failed I/O is a value ([`IoError`]) that the engine turns
//! into sense data; a failure to open or configure a backend is a [`BackendError`].

use std::io;

/// Why a backend could not be opened, configured or asked something.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{what} is not supported by this backend")]
    Unsupported { what: &'static str },
    #[error("invalid backend configuration: {0}")]
    Config(String),
    #[error("queue full ({0} operations in flight)")]
    QueueFull(usize),
    #[error("{op} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("io_uring: {0}")]
    Uring(io::Error),
    /// A Ceph RBD image could not be reached, opened or changed: `image` is
    /// `pool/[namespace/]image[@snapshot]`, `what` the step that failed.
    #[error("rbd image {image}: cannot {what}: {source}")]
    Rbd {
        image: String,
        what: &'static str,
        source: io::Error,
    },
}

/// What kind of I/O failure, which decides the sense data the initiator sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoErrorKind {
    /// The medium could not be read (MEDIUM ERROR, UNRECOVERED READ ERROR).
    Read,
    /// The medium could not be written (MEDIUM ERROR, WRITE ERROR).
    Write,
    /// Out of space on a thin store (DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT).
    NoSpace,
    /// The range is outside the store.
    OutOfRange,
    /// The operation was canceled before it reached the store.
    Canceled,
    /// The operation is not supported (e.g. discard on a file system without holes).
    Unsupported,
    /// The store did not answer in time (`ETIMEDOUT`: librados' OSD op timeout, a
    /// block device's command timeout). Nothing says the medium is bad: the
    /// initiator may retry (ABORTED COMMAND).
    TimedOut,
    /// Anything else (HARDWARE ERROR).
    Other,
}

/// A failed operation: the kind, the errno if the OS gave one, and the byte offset
/// where it failed if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError {
    pub kind: IoErrorKind,
    pub errno: i32,
    pub offset: Option<u64>,
}

impl IoError {
    pub fn new(kind: IoErrorKind, errno: i32, offset: Option<u64>) -> Self {
        Self {
            kind,
            errno,
            offset,
        }
    }

    /// Classifies an errno from a read or write at `offset`.
    pub fn from_errno(errno: i32, is_write: bool, offset: Option<u64>) -> Self {
        let kind = match errno {
            libc::ENOSPC | libc::EDQUOT => IoErrorKind::NoSpace,
            libc::ECANCELED => IoErrorKind::Canceled,
            libc::EOPNOTSUPP | libc::ENOTTY => IoErrorKind::Unsupported,
            libc::EFBIG => IoErrorKind::OutOfRange,
            libc::ETIMEDOUT => IoErrorKind::TimedOut,
            libc::EIO | libc::ENODATA | libc::EILSEQ if is_write => IoErrorKind::Write,
            libc::EIO | libc::ENODATA | libc::EILSEQ => IoErrorKind::Read,
            _ => IoErrorKind::Other,
        };
        Self {
            kind,
            errno,
            offset,
        }
    }
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} error (errno {})", self.kind, self.errno)?;
        if let Some(off) = self.offset {
            write!(f, " at byte {off}")?;
        }
        Ok(())
    }
}

impl std::error::Error for IoError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_classify() {
        let kind = |errno, write| IoError::from_errno(errno, write, None).kind;
        assert_eq!(kind(libc::ETIMEDOUT, false), IoErrorKind::TimedOut);
        assert_eq!(kind(libc::ETIMEDOUT, true), IoErrorKind::TimedOut);
        assert_eq!(kind(libc::EIO, false), IoErrorKind::Read);
        assert_eq!(kind(libc::EIO, true), IoErrorKind::Write);
        assert_eq!(kind(libc::ENOSPC, true), IoErrorKind::NoSpace);
        assert_eq!(kind(libc::EPERM, true), IoErrorKind::Other);
    }
}
