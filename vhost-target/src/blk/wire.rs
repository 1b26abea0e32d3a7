//! virtio-blk's wire format (virtio 1.2 §5.2): the request header, the status
//! byte, discard / write-zeroes segments, and the device configuration space.
//! Little-endian throughout; every field's offset is written once, here.

use thiserror::Error;

/// Request types (`virtio_blk_outhdr.type`).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

/// Status byte values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Bytes of the request header (type, ioprio, sector).
pub const HEADER_LEN: usize = 16;
/// Bytes of one discard / write-zeroes segment.
pub const SEGMENT_LEN: usize = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;
/// virtio-blk counts in 512-byte sectors whatever the block size.
pub const SECTOR: u64 = 512;

/// Segment flag of WRITE_ZEROES: the device may deallocate.
pub const SEG_F_UNMAP: u32 = 1;

/// Feature bits (`VIRTIO_BLK_F_*`).
pub mod feature {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const TOPOLOGY: u32 = 10;
    pub const CONFIG_WCE: u32 = 11;
    pub const MQ: u32 = 12;
    pub const DISCARD: u32 = 13;
    pub const WRITE_ZEROES: u32 = 14;
}

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub sector: u64,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&b[0..4]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&b[8..16]);
        Header {
            kind: u32::from_le_bytes(kind),
            sector: u64::from_le_bytes(sector),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// One `virtio_blk_discard_write_zeroes` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

/// Why a segment list was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SegmentError {
    #[error("{len} bytes of segments is not a positive multiple of {SEGMENT_LEN}")]
    Length { len: usize },
    #[error("{count} segments; at most {max}")]
    TooMany { count: usize, max: usize },
}

impl Segment {
    pub fn encode(&self) -> [u8; SEGMENT_LEN] {
        let mut b = [0u8; SEGMENT_LEN];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// The segments of a DISCARD or WRITE_ZEROES payload, at most `max`.
    pub fn parse_list(b: &[u8], max: usize) -> Result<Vec<Segment>, SegmentError> {
        if b.is_empty() || !b.len().is_multiple_of(SEGMENT_LEN) {
            return Err(SegmentError::Length { len: b.len() });
        }
        let count = b.len() / SEGMENT_LEN;
        if count > max {
            return Err(SegmentError::TooMany { count, max });
        }
        Ok(b.chunks_exact(SEGMENT_LEN)
            .map(|c| {
                let mut s = [0u8; 8];
                s.copy_from_slice(&c[0..8]);
                let mut n = [0u8; 4];
                n.copy_from_slice(&c[8..12]);
                let mut f = [0u8; 4];
                f.copy_from_slice(&c[12..16]);
                Segment {
                    sector: u64::from_le_bytes(s),
                    num_sectors: u32::from_le_bytes(n),
                    flags: u32::from_le_bytes(f),
                }
            })
            .collect())
    }
}

/// The device configuration space (`virtio_blk_config`), the fields we fill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

/// Bytes of the configuration space we describe (up to and including the secure
/// erase fields, which stay zero: SECURE_ERASE is not offered).
pub const CONFIG_LEN: usize = 72;
/// Offset of `writeback`, the one field the driver writes.
pub const WRITEBACK_OFFSET: usize = 32;

impl Config {
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry, not offered.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        // 25: alignment_offset 0.
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[WRITEBACK_OFFSET] = self.writeback;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// The bytes `[offset, offset + size)` of the space, zero beyond what we
    /// describe; `None` when the window is not inside the 256 bytes vhost-user
    /// allows.
    pub fn window(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        if end > 256 {
            return None;
        }
        let full = self.encode();
        Some(
            (start..end)
                .map(|i| full.get(i).copied().unwrap_or(0))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_segments_round_trip() {
        let h = Header {
            kind: T_OUT,
            sector: 0x0102_0304_0506_0708,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        let segs = [
            Segment {
                sector: 8,
                num_sectors: 16,
                flags: 0,
            },
            Segment {
                sector: u64::MAX,
                num_sectors: u32::MAX,
                flags: SEG_F_UNMAP,
            },
        ];
        let bytes: Vec<u8> = segs.iter().flat_map(|s| s.encode()).collect();
        assert_eq!(Segment::parse_list(&bytes, 2).unwrap(), segs);
        assert_eq!(
            Segment::parse_list(&bytes, 1),
            Err(SegmentError::TooMany { count: 2, max: 1 })
        );
        assert_eq!(
            Segment::parse_list(&bytes[..17], 4),
            Err(SegmentError::Length { len: 17 })
        );
        assert_eq!(
            Segment::parse_list(&[], 4),
            Err(SegmentError::Length { len: 0 })
        );
    }

    #[test]
    fn config_offsets_follow_the_spec() {
        let c = Config {
            capacity: 0x1122,
            blk_size: 4096,
            physical_block_exp: 3,
            writeback: 1,
            num_queues: 4,
            max_discard_seg: 7,
            write_zeroes_may_unmap: 1,
            ..Config::default()
        };
        let b = c.encode();
        assert_eq!(&b[0..8], &0x1122u64.to_le_bytes());
        assert_eq!(&b[20..24], &4096u32.to_le_bytes());
        assert_eq!(b[24], 3);
        assert_eq!(b[32], 1);
        assert_eq!(&b[34..36], &4u16.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
        assert_eq!(b[56], 1);
        assert_eq!(c.window(34, 2).unwrap(), vec![4, 0]);
        assert_eq!(c.window(250, 6).unwrap(), vec![0; 6]);
        assert!(c.window(250, 7).is_none());
        assert!(c.window(u32::MAX, 2).is_none());
    }
}
