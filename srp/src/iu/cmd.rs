//! SRP_CMD and its data buffer descriptors: direct, indirect with the whole
//! table inline, and SRP-2 immediate data. An indirect descriptor whose table
//! does not fit inline (the initiator's `allow_ext_sg`) would need an RDMA READ
//! of the table; like ib_srpt we refuse it with an error that names the tag.

use engine::TaskAttr;
use smallvec::SmallVec;

use super::wire::{self, Fixed};
use super::{opcode, IuError, IuErrorKind, Tag};

/// Data buffer descriptor formats, one per nibble of BUF_FMT (high: data-out,
/// low: data-in).
pub mod buf_fmt {
    pub const NONE: u8 = 0;
    pub const DIRECT: u8 = 1;
    pub const INDIRECT: u8 = 2;
    /// SRP-2: the data-out sits in the IU itself.
    pub const IMMEDIATE: u8 = 3;
}

/// Fixed part of an SRP_CMD, up to the additional CDB.
pub const CMD_HDR_LEN: usize = 48;
const CDB_OFF: usize = 32;
const CDB_LEN: usize = 16;
pub const DIRECT_DESC_LEN: usize = 16;
/// Table descriptor plus TOTAL LENGTH, before the inline descriptor list.
pub const INDIRECT_HDR_LEN: usize = 20;
const IMM_DESC_LEN: usize = 4;
/// The largest ADDITIONAL CDB LENGTH (the field's low two bits are reserved).
const MAX_ADD_CDB: usize = 0xfc;

/// One memory region of the initiator (a direct data buffer descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteBuf {
    pub va: u64,
    pub rkey: u32,
    pub len: u32,
}

impl RemoteBuf {
    fn parse(b: &[u8], off: usize) -> Option<Self> {
        Some(RemoteBuf {
            va: wire::u64_at(b, off)?,
            rkey: wire::u32_at(b, off.checked_add(8)?)?,
            len: wire::u32_at(b, off.checked_add(12)?)?,
        })
    }

    fn put(&self, out: &mut [u8], off: usize) {
        Fixed(out)
            .u64(off, self.va)
            .u32(off + 8, self.rkey)
            .u32(off + 12, self.len);
    }
}

/// The initiator's buffers of one command, in transfer order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RemoteBufs {
    pub bufs: SmallVec<[RemoteBuf; 4]>,
    /// Sum of the buffers' lengths (checked against TOTAL LENGTH for indirect).
    pub total_len: u32,
    /// Came as an indirect descriptor (kept so that encoding round-trips).
    pub indirect: bool,
}

/// The data phase of a command.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DataXfer<'a> {
    #[default]
    None,
    /// Data-out carried in the IU.
    Immediate(&'a [u8]),
    /// Data-out the target fetches with RDMA READ.
    Out(RemoteBufs),
    /// Data-in the target delivers with RDMA WRITE.
    In(RemoteBufs),
}

impl DataXfer<'_> {
    /// The expected data transfer length, in bytes.
    pub fn len(&self) -> u32 {
        match self {
            DataXfer::None => 0,
            // The parser bounded it by the IU length.
            DataXfer::Immediate(d) => u32::try_from(d.len()).unwrap_or(u32::MAX),
            DataXfer::Out(b) | DataXfer::In(b) => b.total_len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed SRP_CMD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd<'a> {
    pub tag: Tag,
    /// SAM LUN structure, as sent.
    pub lun: [u8; 8],
    /// The CDB field plus the additional CDB (16 bytes or more, zero padded).
    pub cdb: &'a [u8],
    pub task_attr: TaskAttr,
    pub data: DataXfer<'a>,
}

fn task_attr(v: u8) -> Option<TaskAttr> {
    match v {
        0 => Some(TaskAttr::Simple),
        1 => Some(TaskAttr::HeadOfQueue),
        2 => Some(TaskAttr::Ordered),
        4 => Some(TaskAttr::Aca),
        _ => None,
    }
}

fn task_attr_code(a: TaskAttr) -> u8 {
    match a {
        TaskAttr::Simple => 0,
        TaskAttr::HeadOfQueue => 1,
        TaskAttr::Ordered => 2,
        TaskAttr::Aca => 4,
    }
}

impl<'a> Cmd<'a> {
    /// Parses an SRP_CMD. `imm_data_offset` is the channel's, if it granted
    /// immediate data.
    pub fn parse(iu: &'a [u8], imm_data_offset: Option<u16>) -> Result<Self, IuError> {
        let tag = wire::tag(iu);
        let op = wire::u8_at(iu, 0);
        let err = |kind| IuError::new(op, tag, kind);
        let (
            Some(op),
            Some(tag),
            Some(fmt),
            Some(out_cnt),
            Some(in_cnt),
            Some(lun),
            Some(attr),
            Some(add),
        ) = (
            op,
            tag,
            wire::u8_at(iu, 5),
            wire::u8_at(iu, 6),
            wire::u8_at(iu, 7),
            wire::bytes::<8>(iu, 20),
            wire::u8_at(iu, 29),
            wire::u8_at(iu, 31),
        )
        else {
            return Err(err(IuErrorKind::TooShort {
                len: iu.len(),
                need: CMD_HDR_LEN,
            }));
        };
        if op != opcode::CMD {
            return Err(err(IuErrorKind::WrongOpcode {
                found: op,
                expected: opcode::CMD,
            }));
        }
        let cdb_end = CMD_HDR_LEN + usize::from(add & 0xfc);
        let Some(cdb) = iu.get(CDB_OFF..cdb_end) else {
            return Err(err(IuErrorKind::TooShort {
                len: iu.len(),
                need: cdb_end,
            }));
        };
        let Some(task_attr) = task_attr(attr & 0x07) else {
            return Err(err(IuErrorKind::BadTaskAttr(attr & 0x07)));
        };
        let (out_fmt, in_fmt) = (fmt >> 4, fmt & 0x0f);
        for f in [out_fmt, in_fmt] {
            if f > buf_fmt::IMMEDIATE {
                return Err(err(IuErrorKind::BadDescFormat(f)));
            }
        }
        if in_fmt == buf_fmt::IMMEDIATE {
            return Err(err(IuErrorKind::ImmediateDataIn));
        }
        if out_fmt != buf_fmt::NONE && in_fmt != buf_fmt::NONE {
            return Err(err(IuErrorKind::Bidirectional));
        }
        let data = match (out_fmt, in_fmt) {
            (buf_fmt::NONE, buf_fmt::NONE) => DataXfer::None,
            (buf_fmt::IMMEDIATE, _) => {
                let Some(offset) = imm_data_offset else {
                    return Err(err(IuErrorKind::ImmediateNotGranted));
                };
                let desc_end = cdb_end + IMM_DESC_LEN;
                let Some(len) = wire::u32_at(iu, cdb_end) else {
                    return Err(err(IuErrorKind::DescriptorsOutside {
                        end: desc_end,
                        iu_len: iu.len(),
                    }));
                };
                let offset = usize::from(offset);
                let outside = err(IuErrorKind::ImmediateOutside {
                    offset,
                    len,
                    iu_len: iu.len(),
                });
                // The data may not overlap the header or the descriptor.
                if offset < desc_end {
                    return Err(outside);
                }
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| offset.checked_add(l));
                match end.and_then(|e| iu.get(offset..e)) {
                    Some(d) => DataXfer::Immediate(d),
                    None => return Err(outside),
                }
            }
            (buf_fmt::NONE, f) => DataXfer::In(Self::bufs(iu, cdb_end, f, in_cnt).map_err(err)?),
            (f, _) => DataXfer::Out(Self::bufs(iu, cdb_end, f, out_cnt).map_err(err)?),
        };
        Ok(Cmd {
            tag,
            lun,
            cdb,
            task_attr,
            data,
        })
    }

    /// Reads a direct or indirect descriptor at `off`; `inline` is the
    /// direction's descriptor count (the entries of the table present in the IU).
    fn bufs(iu: &[u8], off: usize, fmt: u8, inline: u8) -> Result<RemoteBufs, IuErrorKind> {
        let outside = |end: usize| IuErrorKind::DescriptorsOutside {
            end,
            iu_len: iu.len(),
        };
        if fmt == buf_fmt::DIRECT {
            let d = RemoteBuf::parse(iu, off).ok_or(outside(off + DIRECT_DESC_LEN))?;
            let mut bufs = SmallVec::new();
            bufs.push(d);
            return Ok(RemoteBufs {
                bufs,
                total_len: d.len,
                indirect: false,
            });
        }
        let hdr_end = off + INDIRECT_HDR_LEN;
        let (Some(table), Some(total)) = (RemoteBuf::parse(iu, off), wire::u32_at(iu, off + 16))
        else {
            return Err(outside(hdr_end));
        };
        if table.len % 16 != 0 {
            return Err(IuErrorKind::TableLength { table: table.len });
        }
        let n = table.len / 16;
        if n > u32::from(inline) {
            return Err(IuErrorKind::ExternalTable { table: n, inline });
        }
        // n ≤ 255 here, so the arithmetic below cannot overflow.
        let n = usize::from(u8::try_from(n).unwrap_or(u8::MAX));
        let end = hdr_end + n * DIRECT_DESC_LEN;
        if end > iu.len() {
            return Err(outside(end));
        }
        let mut bufs = SmallVec::with_capacity(n);
        let mut sum: u64 = 0;
        for i in 0..n {
            let d = RemoteBuf::parse(iu, hdr_end + i * DIRECT_DESC_LEN).ok_or(outside(end))?;
            sum += u64::from(d.len);
            bufs.push(d);
        }
        if sum != u64::from(total) {
            return Err(IuErrorKind::TotalLength { total, sum });
        }
        Ok(RemoteBufs {
            bufs,
            total_len: total,
            indirect: true,
        })
    }

    /// Encodes the command as an initiator would send it (for tests, the fuzzer's
    /// round trips and test initiators). Immediate data goes at
    /// `imm_data_offset`, which must lie past the descriptor.
    pub fn encode(&self, imm_data_offset: Option<u16>) -> Result<Vec<u8>, IuError> {
        let err = |kind| IuError::new(Some(opcode::CMD), Some(self.tag), kind);
        let add = self.cdb.len().saturating_sub(CDB_LEN).next_multiple_of(4);
        if add > MAX_ADD_CDB {
            return Err(err(IuErrorKind::TooShort {
                len: self.cdb.len(),
                need: CDB_LEN + MAX_ADD_CDB,
            }));
        }
        let cdb_end = CMD_HDR_LEN + add;
        let (fmt, counts, desc_len) = match &self.data {
            DataXfer::None => (0u8, (0u8, 0u8), 0usize),
            DataXfer::Immediate(_) => (buf_fmt::IMMEDIATE << 4, (0, 0), IMM_DESC_LEN),
            DataXfer::Out(b) | DataXfer::In(b) => {
                let out = matches!(self.data, DataXfer::Out(_));
                let direct = !b.indirect && b.bufs.len() == 1;
                let n = u8::try_from(b.bufs.len()).map_err(|_| {
                    err(IuErrorKind::ExternalTable {
                        table: u32::try_from(b.bufs.len()).unwrap_or(u32::MAX),
                        inline: u8::MAX,
                    })
                })?;
                let (f, len, cnt) = if direct {
                    (buf_fmt::DIRECT, DIRECT_DESC_LEN, 0)
                } else {
                    (
                        buf_fmt::INDIRECT,
                        INDIRECT_HDR_LEN + usize::from(n) * DIRECT_DESC_LEN,
                        n,
                    )
                };
                if out {
                    (f << 4, (cnt, 0), len)
                } else {
                    (f, (0, cnt), len)
                }
            }
        };
        let desc_end = cdb_end + desc_len;
        let mut iu = vec![0u8; desc_end];
        Fixed(&mut iu)
            .u8(0, opcode::CMD)
            .u8(5, fmt)
            .u8(6, counts.0)
            .u8(7, counts.1)
            .bytes(8, &self.tag)
            .bytes(20, &self.lun)
            .u8(29, task_attr_code(self.task_attr))
            .u8(31, u8::try_from(add).unwrap_or(0))
            .bytes(CDB_OFF, self.cdb);
        match &self.data {
            DataXfer::None => {}
            DataXfer::Immediate(d) => {
                let offset = imm_data_offset.map(usize::from).unwrap_or(desc_end);
                let len = u32::try_from(d.len()).ok();
                let (Some(len), true) = (len, offset >= desc_end) else {
                    return Err(err(IuErrorKind::ImmediateOutside {
                        offset,
                        len: u32::try_from(d.len()).unwrap_or(u32::MAX),
                        iu_len: desc_end,
                    }));
                };
                Fixed(&mut iu).u32(cdb_end, len);
                iu.resize(offset, 0);
                iu.extend_from_slice(d);
            }
            DataXfer::Out(b) | DataXfer::In(b) => {
                if desc_len == DIRECT_DESC_LEN && !b.indirect {
                    if let Some(d) = b.bufs.first() {
                        d.put(&mut iu, cdb_end);
                    }
                } else {
                    let table_len = b.bufs.len() * DIRECT_DESC_LEN;
                    Fixed(&mut iu)
                        .u32(cdb_end + 12, u32::try_from(table_len).unwrap_or(u32::MAX))
                        .u32(cdb_end + 16, b.total_len);
                    for (i, d) in b.bufs.iter().enumerate() {
                        d.put(&mut iu, cdb_end + INDIRECT_HDR_LEN + i * DIRECT_DESC_LEN);
                    }
                }
            }
        }
        Ok(iu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = [1, 2, 3, 4, 5, 6, 7, 8];

    /// An SRP_CMD header built from the offsets of notes §3.
    fn header(fmt: u8, out_cnt: u8, in_cnt: u8, add_cdb: u8, cdb: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 48 + usize::from(add_cdb & 0xfc)];
        b[0] = 0x02;
        b[5] = fmt;
        b[6] = out_cnt;
        b[7] = in_cnt;
        b[8..16].copy_from_slice(&TAG);
        b[20..28].copy_from_slice(&[0x40, 0x05, 0, 0, 0, 0, 0, 0]); // flat LUN 5
        b[29] = 0;
        b[31] = add_cdb;
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        b
    }

    fn direct(va: u64, key: u32, len: u32) -> Vec<u8> {
        let mut d = va.to_be_bytes().to_vec();
        d.extend_from_slice(&key.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d
    }

    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0];

    fn round_trip(iu: &[u8], imm: Option<u16>) {
        let c = Cmd::parse(iu, imm).unwrap();
        let again = c.encode(imm).unwrap();
        assert_eq!(Cmd::parse(&again, imm).unwrap(), c);
    }

    #[test]
    fn no_data() {
        let b = header(0, 0, 0, 0, &[0, 0, 0, 0, 0, 0]);
        let c = Cmd::parse(&b, None).unwrap();
        assert_eq!(c.tag, TAG);
        assert_eq!(c.lun, [0x40, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.cdb, &[0u8; 16]);
        assert_eq!(c.task_attr, TaskAttr::Simple);
        assert_eq!(c.data, DataXfer::None);
        assert_eq!(c.encode(None).unwrap(), b);
    }

    #[test]
    fn direct_data_in_layout() {
        let mut b = header(0x01, 0, 0, 0, &READ10);
        b.extend(direct(0x1122_3344_5566_7788, 0xabcd_ef01, 4096));
        let c = Cmd::parse(&b, Some(68)).unwrap();
        assert_eq!(&c.cdb[..10], &READ10);
        let DataXfer::In(bufs) = &c.data else {
            panic!("{:?}", c.data)
        };
        assert_eq!(bufs.total_len, 4096);
        assert!(!bufs.indirect);
        assert_eq!(
            bufs.bufs.as_slice(),
            &[RemoteBuf {
                va: 0x1122_3344_5566_7788,
                rkey: 0xabcd_ef01,
                len: 4096
            }]
        );
        assert_eq!(c.data.len(), 4096);
        assert_eq!(c.encode(Some(68)).unwrap(), b);
        // One byte short of the descriptor.
        let e = Cmd::parse(&b[..63], None).unwrap_err();
        assert_eq!(e.tag, Some(TAG));
        assert_eq!(
            e.kind,
            IuErrorKind::DescriptorsOutside {
                end: 64,
                iu_len: 63
            }
        );
    }

    #[test]
    fn direct_data_out_after_additional_cdb() {
        // A 32-byte CDB: 16 more bytes of additional CDB; low bits of the length
        // field are reserved and ignored.
        let mut cdb = [0u8; 32];
        cdb[0] = 0x7f;
        cdb[7] = 24;
        let mut b = header(0x10, 0, 0, 16 | 0x3, &cdb[..16]);
        b[48..64].copy_from_slice(&cdb[16..]);
        b.extend(direct(0x1000, 7, 512));
        let c = Cmd::parse(&b, None).unwrap();
        assert_eq!(c.cdb, &cdb);
        assert!(matches!(&c.data, DataXfer::Out(x) if x.total_len == 512 && x.bufs[0].rkey == 7));
        round_trip(&b, None);
    }

    #[test]
    fn indirect_inline_table() {
        let mut b = header(0x02, 0, 3, 0, &READ10);
        b.extend(direct(0xfeed_0000, 0x99, 48)); // table descriptor: 3 entries
        b.extend(4096u32.to_be_bytes()); // total length
        b.extend(direct(0x1000, 1, 1024));
        b.extend(direct(0x2000, 2, 1024));
        b.extend(direct(0x3000, 3, 2048));
        let c = Cmd::parse(&b, None).unwrap();
        let DataXfer::In(bufs) = &c.data else {
            panic!()
        };
        assert!(bufs.indirect);
        assert_eq!(bufs.total_len, 4096);
        assert_eq!(
            bufs.bufs
                .iter()
                .map(|d| (d.va, d.rkey, d.len))
                .collect::<Vec<_>>(),
            vec![(0x1000, 1, 1024), (0x2000, 2, 1024), (0x3000, 3, 2048)]
        );
        round_trip(&b, None);
        // Data-out: the same descriptor in the high nibble with its own count.
        let mut w = b.clone();
        w[5] = 0x20;
        w[6] = 3;
        w[7] = 0;
        w[32] = 0x2a;
        assert!(matches!(
            Cmd::parse(&w, None).unwrap().data,
            DataXfer::Out(_)
        ));
        round_trip(&w, None);
    }

    #[test]
    fn indirect_malformed() {
        let base = {
            let mut b = header(0x02, 0, 2, 0, &READ10);
            b.extend(direct(0, 0, 32));
            b.extend(2048u32.to_be_bytes());
            b.extend(direct(0x1000, 1, 1024));
            b.extend(direct(0x2000, 2, 1024));
            b
        };
        assert!(Cmd::parse(&base, None).is_ok());
        // External table: 2 entries in the table, 1 inline.
        let mut b = base.clone();
        b[7] = 1;
        let e = Cmd::parse(&b, None).unwrap_err();
        assert_eq!(
            e.kind,
            IuErrorKind::ExternalTable {
                table: 2,
                inline: 1
            }
        );
        assert_eq!(e.tag, Some(TAG));
        // Table length not a multiple of 16.
        let mut b = base.clone();
        b[48 + 15] = 33;
        assert_eq!(
            Cmd::parse(&b, None).unwrap_err().kind,
            IuErrorKind::TableLength { table: 33 }
        );
        // Total length disagrees with the descriptors.
        let mut b = base.clone();
        b[48 + 19] = 1;
        assert_eq!(
            Cmd::parse(&b, None).unwrap_err().kind,
            IuErrorKind::TotalLength {
                total: 2049,
                sum: 2048
            }
        );
        // The list is cut short.
        let e = Cmd::parse(&base[..base.len() - 1], None).unwrap_err();
        assert!(matches!(e.kind, IuErrorKind::DescriptorsOutside { .. }));
        // Header of the indirect descriptor cut short.
        let e = Cmd::parse(&base[..60], None).unwrap_err();
        assert!(matches!(
            e.kind,
            IuErrorKind::DescriptorsOutside { end: 68, .. }
        ));
        // A huge table length cannot overflow anything.
        let mut b = base.clone();
        b[48 + 12..48 + 16].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        b[7] = 255;
        assert!(matches!(
            Cmd::parse(&b, None).unwrap_err().kind,
            IuErrorKind::ExternalTable { inline: 255, .. }
        ));
        // Sum of lengths beyond u32 is reported, not wrapped.
        let mut b = header(0x02, 0, 2, 0, &READ10);
        b.extend(direct(0, 0, 32));
        b.extend(0u32.to_be_bytes());
        b.extend(direct(0x1000, 1, u32::MAX));
        b.extend(direct(0x2000, 2, 1));
        assert_eq!(
            Cmd::parse(&b, None).unwrap_err().kind,
            IuErrorKind::TotalLength {
                total: 0,
                sum: 1 << 32
            }
        );
    }

    /// Linux ib_srp's immediate-data write: the 4-byte descriptor right after the
    /// CDB (byte 48), the data at SRP_IMM_DATA_OFFSET = 48 + 16 (room for the
    /// largest additional CDB) + 4 = 68.
    #[test]
    fn immediate_data_layout() {
        let mut b = header(0x30, 0, 0, 0, &WRITE10);
        b.extend(512u32.to_be_bytes());
        b.resize(68, 0);
        b.extend((0..512u32).map(|i| (i % 251) as u8));
        let c = Cmd::parse(&b, Some(68)).unwrap();
        let DataXfer::Immediate(d) = c.data else {
            panic!()
        };
        assert_eq!(d.len(), 512);
        assert_eq!(d[..4], [0, 1, 2, 3]);
        assert_eq!(c.encode(Some(68)).unwrap(), b);
        // Not granted at login.
        assert_eq!(
            Cmd::parse(&b, None).unwrap_err().kind,
            IuErrorKind::ImmediateNotGranted
        );
        // Data running past the IU.
        let e = Cmd::parse(&b[..579], Some(68)).unwrap_err();
        assert_eq!(
            e.kind,
            IuErrorKind::ImmediateOutside {
                offset: 68,
                len: 512,
                iu_len: 579
            }
        );
        assert_eq!(e.tag, Some(TAG));
        // An offset inside the descriptor.
        assert!(matches!(
            Cmd::parse(&b, Some(50)).unwrap_err().kind,
            IuErrorKind::ImmediateOutside { offset: 50, .. }
        ));
        // Any offset past the descriptor works (the channel's, from login).
        let c = Cmd::parse(&b, Some(52)).unwrap();
        assert!(matches!(c.data, DataXfer::Immediate(d) if d.len() == 512 && d[0] == 0));
        // Length u32::MAX: no overflow.
        let mut h = b.clone();
        h[48..52].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Cmd::parse(&h, Some(u16::MAX)).unwrap_err().kind,
            IuErrorKind::ImmediateOutside { .. }
        ));
        // Descriptor cut off.
        assert!(matches!(
            Cmd::parse(&b[..50], Some(68)).unwrap_err().kind,
            IuErrorKind::DescriptorsOutside { end: 52, .. }
        ));
    }

    #[test]
    fn formats_and_attributes() {
        let with_fmt = |fmt: u8| {
            let mut b = header(fmt, 0, 0, 0, &READ10);
            b.extend(direct(0, 0, 0));
            b.extend([0u8; 16]);
            b
        };
        assert_eq!(
            Cmd::parse(&with_fmt(0x11), Some(68)).unwrap_err().kind,
            IuErrorKind::Bidirectional
        );
        assert_eq!(
            Cmd::parse(&with_fmt(0x03), Some(68)).unwrap_err().kind,
            IuErrorKind::ImmediateDataIn
        );
        assert_eq!(
            Cmd::parse(&with_fmt(0x40), Some(68)).unwrap_err().kind,
            IuErrorKind::BadDescFormat(4)
        );
        assert_eq!(
            Cmd::parse(&with_fmt(0x0f), Some(68)).unwrap_err().kind,
            IuErrorKind::BadDescFormat(15)
        );
        for (v, a) in [
            (0, TaskAttr::Simple),
            (1, TaskAttr::HeadOfQueue),
            (2, TaskAttr::Ordered),
            (4, TaskAttr::Aca),
        ] {
            let mut b = header(0, 0, 0, 0, &READ10);
            b[29] = v;
            let c = Cmd::parse(&b, None).unwrap();
            assert_eq!(c.task_attr, a);
            assert_eq!(c.encode(None).unwrap(), b);
        }
        for v in [3, 5, 6, 7] {
            let mut b = header(0, 0, 0, 0, &READ10);
            b[29] = v;
            assert_eq!(
                Cmd::parse(&b, None).unwrap_err().kind,
                IuErrorKind::BadTaskAttr(v)
            );
        }
    }

    #[test]
    fn short_and_wrong() {
        let b = header(0, 0, 0, 0, &READ10);
        for n in [0, 1, 15, 16, 47] {
            let e = Cmd::parse(&b[..n], None).unwrap_err();
            assert_eq!(e.kind, IuErrorKind::TooShort { len: n, need: 48 });
            assert_eq!(e.tag.is_some(), n >= 16);
        }
        // Additional CDB announced but absent.
        let mut a = b.clone();
        a[31] = 8;
        assert_eq!(
            Cmd::parse(&a, None).unwrap_err().kind,
            IuErrorKind::TooShort { len: 48, need: 56 }
        );
        let mut w = b.clone();
        w[0] = opcode::TSK_MGMT;
        assert!(matches!(
            Cmd::parse(&w, None).unwrap_err().kind,
            IuErrorKind::WrongOpcode {
                found: 1,
                expected: 2
            }
        ));
    }
}
