//! What a virtio-scsi driver puts on a request queue and reads back (virtio 1.x,
//! 5.6.6.1): the command header with the LUN field and the CDB, the response
//! header, and the few CDBs a load generator sends. Plain bytes in and out.

/// virtio_scsi_cmd_req with the default 32-byte CDB.
pub const CMD_REQ_LEN: usize = 51;
/// virtio_scsi_cmd_resp with the default 96-byte sense buffer.
pub const CMD_RESP_LEN: usize = 108;
const CDB_SIZE: usize = 32;
/// The response fields before the sense bytes.
pub const RESP_FIXED_LEN: usize = 12;

/// SCSI status GOOD and CHECK CONDITION.
pub const STATUS_GOOD: u8 = 0;
pub const STATUS_CHECK_CONDITION: u8 = 2;
/// virtio-scsi response VIRTIO_SCSI_S_OK.
pub const RESPONSE_OK: u8 = 0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScsiError {
    #[error("LUN {0}: flat addressing reaches 16383")]
    Lun(u16),
    #[error("CDB of {0} bytes: at most 32 fit the request header")]
    CdbLen(usize),
    #[error("{have} bytes of response header; {need} needed")]
    ShortResponse { have: usize, need: usize },
    #[error("{blocks} blocks at LBA {lba}: beyond what READ/WRITE(16) can address")]
    Range { lba: u64, blocks: u64 },
}

/// The 8-byte virtio-scsi LUN field for `lun` of `target`: byte 0 is 1, byte 1 the
/// target, bytes 2-3 the LUN with flat addressing (01b in the top bits), as Linux
/// sends it (some backends refuse peripheral addressing).
pub fn lun_field(target: u8, lun: u16) -> Result<[u8; 8], ScsiError> {
    if lun > 0x3fff {
        return Err(ScsiError::Lun(lun));
    }
    let [hi, lo] = lun.to_be_bytes();
    Ok([1, target, 0x40 | hi, lo, 0, 0, 0, 0])
}

/// A command request header: LUN field, tag, SIMPLE task attribute, the CDB
/// zero-padded to 32 bytes.
pub fn encode_cmd_req(lun: [u8; 8], tag: u64, cdb: &[u8]) -> Result<[u8; CMD_REQ_LEN], ScsiError> {
    if cdb.len() > CDB_SIZE {
        return Err(ScsiError::CdbLen(cdb.len()));
    }
    let mut b = [0u8; CMD_REQ_LEN];
    b[0..8].copy_from_slice(&lun);
    b[8..16].copy_from_slice(&tag.to_le_bytes());
    // task_attr 0 (SIMPLE), prio 0, crn 0
    b[19..19 + cdb.len()].copy_from_slice(cdb);
    Ok(b)
}

/// The fixed part of a command response, and the sense bytes the device wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResp {
    pub sense_len: u32,
    pub resid: u32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
    pub sense: Vec<u8>,
}

impl CmdResp {
    /// Decodes a response header; the sense bytes are those of `b` that
    /// `sense_len` covers.
    pub fn decode(b: &[u8]) -> Result<Self, ScsiError> {
        let fixed = b.get(..RESP_FIXED_LEN).ok_or(ScsiError::ShortResponse {
            have: b.len(),
            need: RESP_FIXED_LEN,
        })?;
        let u32_at =
            |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let sense_len = u32_at(0);
        let avail = b.len() - RESP_FIXED_LEN;
        let take = usize::try_from(sense_len).map_or(avail, |n| n.min(avail));
        Ok(CmdResp {
            sense_len,
            resid: u32_at(4),
            status_qualifier: u16::from_le_bytes([fixed[8], fixed[9]]),
            status: fixed[10],
            response: fixed[11],
            sense: b[RESP_FIXED_LEN..RESP_FIXED_LEN + take].to_vec(),
        })
    }

    /// Completed as asked: virtio response OK, status GOOD.
    pub fn is_good(&self) -> bool {
        self.response == RESPONSE_OK && self.status == STATUS_GOOD
    }

    /// Sense key, ASC and ASCQ of fixed (70h/71h) or descriptor (72h/73h) sense.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 => Some((*s.get(2)? & 0xf, *s.get(12)?, *s.get(13)?)),
            0x72 | 0x73 => Some((*s.get(1)? & 0xf, *s.get(2)?, *s.get(3)?)),
            _ => None,
        }
    }
}

/// A READ or WRITE CDB for `blocks` blocks at `lba`: the 10-byte form where it
/// fits (the only one some backends have), else the 16-byte one; `force16` always
/// takes the 16-byte one. Returns the CDB and its length.
pub fn rw_cdb(
    write: bool,
    lba: u64,
    blocks: u32,
    force16: bool,
) -> Result<([u8; 16], usize), ScsiError> {
    let mut c = [0u8; 16];
    let fits10 = u32::try_from(lba).is_ok() && u16::try_from(blocks).is_ok();
    if fits10 && !force16 {
        c[0] = if write { 0x2a } else { 0x28 };
        c[2..6].copy_from_slice(&u32::try_from(lba).unwrap_or(0).to_be_bytes());
        c[7..9].copy_from_slice(&u16::try_from(blocks).unwrap_or(0).to_be_bytes());
        return Ok((c, 10));
    }
    if lba.checked_add(u64::from(blocks)).is_none() {
        return Err(ScsiError::Range {
            lba,
            blocks: u64::from(blocks),
        });
    }
    c[0] = if write { 0x8a } else { 0x88 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    Ok((c, 16))
}

pub const TEST_UNIT_READY: [u8; 6] = [0; 6];
pub const READ_CAPACITY_10: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const READ_CAPACITY_16_LEN: u32 = 32;
/// SERVICE ACTION IN(16) / READ CAPACITY(16), allocation length 32.
pub const READ_CAPACITY_16: [u8; 16] = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];

/// Capacity in blocks and block length from READ CAPACITY(10) data; `None` when
/// the device says to ask READ CAPACITY(16) (last LBA FFFFFFFFh) or the data is
/// short.
pub fn parse_read_capacity10(d: &[u8]) -> Option<(u64, u32)> {
    let last = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?);
    let bl = u32::from_be_bytes(d.get(4..8)?.try_into().ok()?);
    if last == u32::MAX {
        return None;
    }
    Some((u64::from(last) + 1, bl))
}

/// Capacity in blocks and block length from READ CAPACITY(16) data.
pub fn parse_read_capacity16(d: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let bl = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, bl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_field_uses_flat_addressing() {
        assert_eq!(lun_field(0, 0).unwrap(), [1, 0, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(lun_field(3, 0x123).unwrap(), [1, 3, 0x41, 0x23, 0, 0, 0, 0]);
        assert_eq!(lun_field(0, 0x4000), Err(ScsiError::Lun(0x4000)));
    }

    #[test]
    fn request_header_layout() {
        let b = encode_cmd_req(
            [1, 0, 0x40, 0, 0, 0, 0, 0],
            0x0102_0304_0506_0708,
            &[0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0],
        )
        .unwrap();
        assert_eq!(&b[0..8], &[1, 0, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..19], &[0, 0, 0]);
        assert_eq!(&b[19..29], &[0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]);
        assert!(b[29..].iter().all(|&x| x == 0));
        assert_eq!(
            encode_cmd_req([0; 8], 0, &[0; 33]),
            Err(ScsiError::CdbLen(33))
        );
    }

    #[test]
    fn response_decoding_and_sense() {
        let mut b = [0u8; CMD_RESP_LEN];
        b[0..4].copy_from_slice(&18u32.to_le_bytes());
        b[4..8].copy_from_slice(&512u32.to_le_bytes());
        b[10] = STATUS_CHECK_CONDITION;
        b[12] = 0x70;
        b[14] = 0x06;
        b[24] = 0x29;
        b[25] = 0x00;
        let r = CmdResp::decode(&b).unwrap();
        assert_eq!(
            (r.sense_len, r.resid, r.status, r.response),
            (18, 512, 2, 0)
        );
        assert_eq!(r.sense.len(), 18);
        assert_eq!(r.sense_key(), Some((6, 0x29, 0)));
        assert!(!r.is_good());
        // Descriptor sense.
        let mut d = [0u8; 20];
        d[0..4].copy_from_slice(&8u32.to_le_bytes());
        d[12] = 0x72;
        d[13] = 0x05;
        d[14] = 0x24;
        let r = CmdResp::decode(&d).unwrap();
        assert_eq!(r.sense_key(), Some((5, 0x24, 0)));
        // A sense length beyond the buffer is clipped, a short header refused.
        let mut e = [0u8; 14];
        e[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(CmdResp::decode(&e).unwrap().sense.len(), 2);
        assert_eq!(
            CmdResp::decode(&e[..11]),
            Err(ScsiError::ShortResponse { have: 11, need: 12 })
        );
        assert!(CmdResp::decode(&[0u8; 12]).unwrap().is_good());
    }

    #[test]
    fn rw_cdbs_pick_10_where_it_fits() {
        let (c, n) = rw_cdb(false, 0x0102_0304, 8, false).unwrap();
        assert_eq!(&c[..n], &[0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]);
        let (c, n) = rw_cdb(true, 7, 256, false).unwrap();
        assert_eq!(&c[..n], &[0x2a, 0, 0, 0, 0, 7, 0, 1, 0, 0]);
        let (c, n) = rw_cdb(false, 1 << 32, 8, false).unwrap();
        assert_eq!(
            &c[..n],
            &[0x88, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]
        );
        let (c, n) = rw_cdb(true, 5, 65536, false).unwrap();
        assert_eq!(
            &c[..n],
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0]
        );
        let (c, n) = rw_cdb(true, 5, 1, true).unwrap();
        assert_eq!((c[0], n), (0x8a, 16));
        assert!(rw_cdb(false, u64::MAX, 2, false).is_err());
    }

    #[test]
    fn read_capacity_parsing() {
        assert_eq!(
            parse_read_capacity10(&[0, 0, 0x0f, 0xff, 0, 0, 2, 0]),
            Some((4096, 512))
        );
        assert_eq!(parse_read_capacity10(&[0xff; 8]), None);
        assert_eq!(parse_read_capacity10(&[0; 7]), None);
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        d[8..12].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(parse_read_capacity16(&d), Some((0x1_0000_0001, 4096)));
        assert_eq!(parse_read_capacity16(&[0xff; 12]), None);
    }
}
