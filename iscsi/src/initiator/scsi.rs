//! SCSI on top of the session: the result type and the few commands tests use.

use super::{Initiator, InitiatorError};
use crate::pdu::ResidualFlag;

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// Sense key UNIT ATTENTION.
pub const UNIT_ATTENTION: u8 = 0x06;

/// How a SCSI command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: u8,
    /// Sense data without the iSCSI SenseLength prefix.
    pub sense: Vec<u8>,
    /// The data read, as far as the target sent it.
    pub data: Vec<u8>,
    pub residual: ResidualFlag,
    pub residual_count: u32,
}

impl ScsiResult {
    /// The result if GOOD, else the status and sense as an error.
    pub fn good(self) -> Result<ScsiResult, InitiatorError> {
        if self.status == GOOD {
            Ok(self)
        } else {
            Err(InitiatorError::Status {
                status: self.status,
                sense: self.sense,
            })
        }
    }

    /// Sense key, ASC and ASCQ of fixed or descriptor sense.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 => Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?)),
            0x72 | 0x73 => Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?)),
            _ => None,
        }
    }
}

impl Initiator {
    /// READ(16) of `blocks` blocks of `block_size` bytes from `lba`.
    pub fn read16(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<ScsiResult, InitiatorError> {
        let len = u64::from(blocks) * u64::from(block_size);
        let len =
            usize::try_from(len).map_err(|_| InitiatorError::Invalid("read too long".into()))?;
        self.command(lun, &rw16(0x88, lba, blocks), &[], len)
    }

    /// WRITE(16) of `data` (whole blocks of `block_size` bytes) at `lba`.
    pub fn write16(
        &mut self,
        lun: u64,
        lba: u64,
        data: &[u8],
        block_size: u32,
    ) -> Result<ScsiResult, InitiatorError> {
        let bs = usize::try_from(block_size).unwrap_or(0);
        if bs == 0 || data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(InitiatorError::Invalid(format!(
                "{} bytes are not whole {block_size}-byte blocks",
                data.len()
            )));
        }
        let blocks = u32::try_from(data.len() / bs)
            .map_err(|_| InitiatorError::Invalid("write too long".into()))?;
        self.command(lun, &rw16(0x8a, lba, blocks), data, 0)
    }

    pub fn test_unit_ready(&mut self, lun: u64) -> Result<ScsiResult, InitiatorError> {
        self.command(lun, &[0u8; 6], &[], 0)
    }

    /// TEST UNIT READY until no unit attention is left (a new nexus starts
    /// with one per reset or change); how many there were. At most 16.
    pub fn clear_unit_attentions(&mut self, lun: u64) -> Result<usize, InitiatorError> {
        for n in 0..16 {
            let r = self.test_unit_ready(lun)?;
            if r.status == GOOD {
                return Ok(n);
            }
            if r.status != CHECK_CONDITION || r.sense_key().map(|k| k.0) != Some(UNIT_ATTENTION) {
                return Err(InitiatorError::Status {
                    status: r.status,
                    sense: r.sense,
                });
            }
        }
        Err(InitiatorError::Protocol(
            "unit attentions without end".into(),
        ))
    }

    /// READ CAPACITY(16): (number of blocks, block size).
    pub fn read_capacity16(&mut self, lun: u64) -> Result<(u64, u32), InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = self.command(lun, &cdb, &[], 32)?.good()?;
        let last = r.data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
        let bs = r.data.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok());
        match (last, bs) {
            (Some(l), Some(b)) => Ok((
                u64::from_be_bytes(l).saturating_add(1),
                u32::from_be_bytes(b),
            )),
            _ => Err(InitiatorError::Protocol(format!(
                "READ CAPACITY(16) returned {} bytes",
                r.data.len()
            ))),
        }
    }

    /// INQUIRY of a VPD page; the page as returned.
    pub fn inquiry_vpd(&mut self, lun: u64, page: u8) -> Result<Vec<u8>, InitiatorError> {
        let alloc: u16 = 4096;
        let [hi, lo] = alloc.to_be_bytes();
        let cdb = [0x12, 0x01, page, hi, lo, 0];
        Ok(self
            .command(lun, &cdb, &[], usize::from(alloc))?
            .good()?
            .data)
    }
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Sense data from a SCSI Response's data segment (a two-byte length first).
pub(super) fn sense_of(seg: &[u8]) -> Result<Vec<u8>, InitiatorError> {
    let Some(len) = seg.get(..2) else {
        return Ok(Vec::new());
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    seg.get(2..2 + len).map(<[u8]>::to_vec).ok_or_else(|| {
        InitiatorError::Protocol(format!("SenseLength {len} in a {}-byte segment", seg.len()))
    })
}
