//! A SCSI command as a transport hands it to the engine, its data buffer, and the
//! response the engine hands back.

use crate::sense::{ScsiStatus, Sense};

/// The longest CDB the engine accepts. Variable-length CDBs beyond this are refused
/// (we support none of the long ones).
pub const MAX_CDB_LEN: usize = 32;

/// A command descriptor block, stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
    len: u8,
}

impl Cdb {
    /// Copies `bytes`; `None` if empty or longer than [`MAX_CDB_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_CDB_LEN {
            return None;
        }
        let mut b = [0u8; MAX_CDB_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        Some(Cdb {
            bytes: b,
            len: bytes.len() as u8,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }
}

impl std::fmt::Debug for Cdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// SAM-5 task attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TaskAttr {
    #[default]
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// Direction of the data phase, from the initiator's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataDir {
    #[default]
    None,
    /// Data-in: target to initiator (READ).
    FromDevice,
    /// Data-out: initiator to target (WRITE).
    ToDevice,
}

/// The data of one command: guest memory (vhost), a pooled buffer (iSCSI) or a
/// registered region (SRP). Emulated commands copy in and out; block I/O takes the
/// iovecs straight to the backend.
pub trait DataBuf: Send {
    /// Bytes the initiator provided room for (data-in) or sent (data-out).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends iovecs covering `[offset, offset + len)` (clipped to the buffer) to
    /// `out`. The memory must stay valid while the buffer lives and is not moved.
    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>);

    /// Copies `src` into the buffer at `offset`; returns bytes copied (clipped).
    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize;

    /// Copies from the buffer at `offset` into `dst`; returns bytes copied (clipped).
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize;
}

/// A data buffer in one heap allocation: what tests and simple transports use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecBuf(pub Vec<u8>);

impl VecBuf {
    pub fn zeroed(len: usize) -> Self {
        VecBuf(vec![0u8; len])
    }
}

impl DataBuf for VecBuf {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
        let start = offset.min(self.0.len());
        let end = offset.saturating_add(len).min(self.0.len());
        if end > start {
            out.push(libc::iovec {
                iov_base: self.0[start..end].as_mut_ptr().cast(),
                iov_len: end - start,
            });
        }
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let start = offset.min(self.0.len());
        let n = src.len().min(self.0.len() - start);
        self.0[start..start + n].copy_from_slice(&src[..n]);
        n
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let start = offset.min(self.0.len());
        let n = dst.len().min(self.0.len() - start);
        dst[..n].copy_from_slice(&self.0[start..start + n]);
        n
    }
}

/// One command from a transport.
pub struct ScsiCmd {
    /// LUN as the initiator addressed it (the transport decodes its format).
    pub lun: u64,
    pub cdb: Cdb,
    /// The initiator's task tag (ABORT TASK and QUERY TASK name it).
    pub tag: u64,
    pub attr: TaskAttr,
    pub dir: DataDir,
    /// The transport's own handle for this command, returned with the completion.
    pub token: u64,
    pub data: Box<dyn DataBuf>,
}

impl std::fmt::Debug for ScsiCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiCmd")
            .field("lun", &self.lun)
            .field("cdb", &self.cdb)
            .field("tag", &self.tag)
            .field("attr", &self.attr)
            .field("dir", &self.dir)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Residual count (SAM-5): the initiator expected more (`Under`) or less (`Over`)
/// data than the command moved or wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Under(u32),
    Over(u32),
}

/// What the engine hands back for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResponse {
    pub status: ScsiStatus,
    /// Sense data, already encoded in the LUN's format (fixed or descriptor).
    pub sense: Option<Vec<u8>>,
    /// The decoded sense, for transports and tests that look at it.
    pub sense_data: Option<Sense>,
    /// Bytes of data-in written to the buffer, or data-out consumed.
    pub transferred: u32,
    pub residual: Residual,
}

impl CmdResponse {
    pub fn good(transferred: u32) -> Self {
        CmdResponse {
            status: ScsiStatus::Good,
            sense: None,
            sense_data: None,
            transferred,
            residual: Residual::None,
        }
    }
}

/// A finished command: the transport's token, its buffer back, and either the
/// response or, if the command was aborted by a task management function on this
/// I_T nexus, nothing to send (`response == None`).
pub struct Completed {
    pub token: u64,
    pub tag: u64,
    pub data: Box<dyn DataBuf>,
    pub response: Option<CmdResponse>,
}

impl std::fmt::Debug for Completed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completed")
            .field("token", &self.token)
            .field("tag", &self.tag)
            .field("response", &self.response)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_rejects_empty_and_oversized() {
        assert!(Cdb::new(&[]).is_none());
        assert!(Cdb::new(&[0u8; 33]).is_none());
        let c = Cdb::new(&[0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]).unwrap();
        assert_eq!(c.as_slice().len(), 10);
        assert_eq!(c.opcode(), 0x28);
    }

    #[test]
    fn vecbuf_clips_copies_and_iovecs() {
        let mut b = VecBuf::zeroed(8);
        assert_eq!(b.write_at(6, &[1, 2, 3, 4]), 2);
        let mut out = [0u8; 4];
        assert_eq!(b.read_at(6, &mut out), 2);
        assert_eq!(&out[..2], &[1, 2]);
        assert_eq!(b.write_at(100, &[1]), 0);
        let mut iov = Vec::new();
        b.iovecs(4, 100, &mut iov);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 4);
        iov.clear();
        b.iovecs(9, 1, &mut iov);
        assert!(iov.is_empty());
    }
}
