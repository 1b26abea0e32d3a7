//! What a virtio-blk driver puts on a request queue and reads back (virtio 1.2,
//! 5.2.6): the 16-byte request header (type, reserved, sector), the data, and the
//! one status byte the device writes last; plus the device configuration space
//! (5.2.4) that GET_CONFIG returns. Plain bytes in and out.

/// Request header: le32 type, le32 reserved, le64 sector.
pub const REQ_LEN: usize = 16;
/// The status the device writes after the data.
pub const STATUS_LEN: usize = 1;
/// Sectors are 512 bytes whatever the device's logical block size.
pub const SECTOR: u64 = 512;

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
/// GET_ID's data: a serial number of up to 20 bytes.
pub const ID_BYTES: u32 = 20;

/// Feature bits (5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_GEOMETRY: u64 = 1 << 4;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_TOPOLOGY: u64 = 1 << 10;
pub const F_CONFIG_WCE: u64 = 1 << 11;
pub const F_MQ: u64 = 1 << 12;
/// What this driver understands and acks when offered (plus VERSION_1 and
/// EVENT_IDX, which the device layer handles). DISCARD and WRITE_ZEROES are left
/// out: the load generator sends neither.
pub const DRIVER_FEATURES: u64 = F_SIZE_MAX
    | F_SEG_MAX
    | F_GEOMETRY
    | F_RO
    | F_BLK_SIZE
    | F_FLUSH
    | F_TOPOLOGY
    | F_CONFIG_WCE
    | F_MQ;

/// The configuration space up to and including num_queues.
pub const CONFIG_LEN: u32 = 36;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlkError {
    #[error("{have} bytes of configuration space; {need} needed")]
    ShortConfig { have: usize, need: usize },
    #[error("block size {0}: not a power of two multiple of 512")]
    BlockSize(u32),
    #[error("{blocks} blocks of {block_len} bytes at block {lba}: beyond the sector field")]
    Range {
        lba: u64,
        blocks: u64,
        block_len: u32,
    },
}

/// The request status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupported,
    /// A value the specification does not define (or one the device never wrote).
    Other(u8),
}

impl Status {
    pub fn decode(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupported,
            v => Status::Other(v),
        }
    }

    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Ok => write!(f, "OK"),
            Status::IoErr => write!(f, "IOERR"),
            Status::Unsupported => write!(f, "UNSUPP"),
            Status::Other(v) => write!(f, "undefined status {v:#04x}"),
        }
    }
}

/// A request header.
pub fn encode_req(kind: u32, sector: u64) -> [u8; REQ_LEN] {
    let mut b = [0u8; REQ_LEN];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    // reserved (ioprio in the legacy layout) stays 0
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    b
}

/// The header of a read or write of `blocks` logical blocks of `block_len` bytes
/// starting at logical block `lba`: the sector field counts 512-byte sectors.
pub fn rw_req(
    write: bool,
    lba: u64,
    blocks: u32,
    block_len: u32,
) -> Result<[u8; REQ_LEN], BlkError> {
    let range = || BlkError::Range {
        lba,
        blocks: u64::from(blocks),
        block_len,
    };
    if block_len == 0 || !u64::from(block_len).is_multiple_of(SECTOR) {
        return Err(BlkError::BlockSize(block_len));
    }
    let per_block = u64::from(block_len) / SECTOR;
    let sector = lba.checked_mul(per_block).ok_or_else(range)?;
    // The last sector must be addressable too.
    sector
        .checked_add(u64::from(blocks).checked_mul(per_block).ok_or_else(range)?)
        .ok_or_else(range)?;
    Ok(encode_req(if write { T_OUT } else { T_IN }, sector))
}

/// The fields of the configuration space a driver of this generator needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
}

impl Config {
    /// Decodes the configuration space (little-endian fields, virtio 1.x). Fields
    /// whose feature was not negotiated are decoded all the same; the caller
    /// decides which to believe.
    pub fn decode(b: &[u8]) -> Result<Config, BlkError> {
        let need = CONFIG_LEN as usize;
        let b = b.get(..need).ok_or(BlkError::ShortConfig {
            have: b.len(),
            need,
        })?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[0..8]);
        Ok(Config {
            capacity: u64::from_le_bytes(cap),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            // geometry at 16..20
            blk_size: u32_at(20),
            // topology at 24..32
            writeback: b[32],
            num_queues: u16::from_le_bytes([b[34], b[35]]),
        })
    }

    /// The logical block size to use: blk_size when BLK_SIZE was negotiated and
    /// the value is sane (a power of two, at least a sector), else 512.
    pub fn block_len(&self, features: u64) -> Result<u32, BlkError> {
        if features & F_BLK_SIZE == 0 {
            return Ok(SECTOR as u32);
        }
        let bs = self.blk_size;
        if bs < SECTOR as u32 || !bs.is_power_of_two() {
            return Err(BlkError::BlockSize(bs));
        }
        Ok(bs)
    }

    /// Whole logical blocks of `block_len` in the capacity.
    pub fn blocks(&self, block_len: u32) -> u64 {
        let per_block = (u64::from(block_len) / SECTOR).max(1);
        self.capacity / per_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout() {
        let b = encode_req(T_OUT, 0x0102_0304_0506_0708);
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&encode_req(T_FLUSH, 0)[..4], &[4, 0, 0, 0]);
        assert_eq!(&encode_req(T_GET_ID, 0)[..4], &[8, 0, 0, 0]);
    }

    #[test]
    fn rw_headers_count_512_byte_sectors() {
        let r = rw_req(false, 10, 1, 512).unwrap();
        assert_eq!(r, encode_req(T_IN, 10));
        // 4K logical blocks: block 10 is sector 80.
        let w = rw_req(true, 10, 32, 4096).unwrap();
        assert_eq!(w, encode_req(T_OUT, 80));
        assert_eq!(rw_req(false, 0, 1, 0), Err(BlkError::BlockSize(0)));
        assert_eq!(rw_req(false, 0, 1, 1000), Err(BlkError::BlockSize(1000)));
        assert!(matches!(
            rw_req(false, u64::MAX / 4, 1, 4096),
            Err(BlkError::Range { .. })
        ));
        // The start fits but the end does not.
        assert!(matches!(
            rw_req(true, u64::MAX - 1, 2, 512),
            Err(BlkError::Range { .. })
        ));
        assert!(rw_req(true, u64::MAX - 1, 1, 512).is_ok());
    }

    #[test]
    fn status_decoding() {
        assert_eq!(Status::decode(0), Status::Ok);
        assert!(Status::decode(0).is_ok());
        assert_eq!(Status::decode(1), Status::IoErr);
        assert_eq!(Status::decode(2), Status::Unsupported);
        assert_eq!(Status::decode(0xff), Status::Other(0xff));
        assert!(!Status::decode(0xff).is_ok());
        assert_eq!(Status::decode(2).to_string(), "UNSUPP");
    }

    fn config_bytes(capacity: u64, blk_size: u32, num_queues: u16) -> Vec<u8> {
        let mut b = vec![0u8; 60];
        b[0..8].copy_from_slice(&capacity.to_le_bytes());
        b[8..12].copy_from_slice(&65536u32.to_le_bytes());
        b[12..16].copy_from_slice(&126u32.to_le_bytes());
        b[20..24].copy_from_slice(&blk_size.to_le_bytes());
        b[32] = 1;
        b[34..36].copy_from_slice(&num_queues.to_le_bytes());
        b
    }

    #[test]
    fn config_space_decoding() {
        let c = Config::decode(&config_bytes(2 << 20, 4096, 2)).unwrap();
        assert_eq!(
            c,
            Config {
                capacity: 2 << 20,
                size_max: 65536,
                seg_max: 126,
                blk_size: 4096,
                writeback: 1,
                num_queues: 2,
            }
        );
        assert_eq!(c.block_len(F_BLK_SIZE).unwrap(), 4096);
        assert_eq!(c.blocks(4096), (2 << 20) / 8);
        // Without BLK_SIZE the field is not believed.
        assert_eq!(c.block_len(0).unwrap(), 512);
        assert_eq!(c.blocks(512), 2 << 20);
        assert_eq!(
            Config::decode(&[0u8; 35]),
            Err(BlkError::ShortConfig { have: 35, need: 36 })
        );
        let odd = Config::decode(&config_bytes(8, 1000, 1)).unwrap();
        assert_eq!(odd.block_len(F_BLK_SIZE), Err(BlkError::BlockSize(1000)));
        let tiny = Config::decode(&config_bytes(8, 256, 1)).unwrap();
        assert_eq!(tiny.block_len(F_BLK_SIZE), Err(BlkError::BlockSize(256)));
    }
}
