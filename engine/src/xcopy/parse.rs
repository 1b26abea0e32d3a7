//! The EXTENDED COPY (LID1) parameter list (SPC-4 6.4.3): header, CSCD (target)
//! descriptors and segment descriptors, parsed into an [`XcopyParams`] by a pure
//! function that never panics, whatever the bytes. What it cannot know (which LUN a
//! designator names, block sizes, capacities) is checked when the copy is resolved.

use crate::sense::{asc, Asc, Sense, SenseKey};

/// Length of the parameter list header.
pub const HEADER_LEN: usize = 16;
/// Length of an identification (E4h) target descriptor.
pub const TARGET_DESC_LEN: usize = 32;
/// Length of a block-to-block (02h) segment descriptor, header included.
pub const B2B_SEG_DESC_LEN: usize = 28;
/// What DESCRIPTOR LENGTH says for a block-to-block segment descriptor.
const B2B_DESC_LENGTH_FIELD: u16 = 0x18;

/// MAXIMUM TARGET (CSCD) DESCRIPTOR COUNT we report and enforce.
pub const MAX_TARGET_DESCRIPTORS: usize = 32;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT we report and enforce.
pub const MAX_SEGMENT_DESCRIPTORS: usize = 256;
/// MAXIMUM DESCRIPTOR LIST LENGTH (target plus segment descriptor lists), bytes.
/// Room for the maximum of both kinds.
pub const MAX_DESCRIPTOR_LIST_LEN: u32 =
    (MAX_TARGET_DESCRIPTORS * TARGET_DESC_LEN + MAX_SEGMENT_DESCRIPTORS * B2B_SEG_DESC_LEN) as u32;

/// Identification descriptor target descriptor type code.
pub const TARGET_DESC_IDENTIFICATION: u8 = 0xe4;
/// Block device to block device segment descriptor type code.
pub const SEG_DESC_BLOCK_TO_BLOCK: u8 = 0x02;

/// LIST ID USAGE (SPC-4 table 107): what the copy manager keeps for RECEIVE COPY
/// RESULTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: keep the copy status and any held data (failed segment details); the
    /// list identifier must be unique.
    Hold,
    /// 10b: keep the copy status only; the list identifier must be unique.
    NoHold,
    /// 11b: keep nothing; the list identifier means nothing.
    None,
}

/// An identification target descriptor naming a logical unit by NAA designator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetDescriptor {
    /// The 16-byte NAA IEEE registered extended designator.
    pub naa: [u8; 16],
    /// DISK BLOCK LENGTH of the device type specific parameters (0: not given).
    pub block_len: u32,
    /// Offset of the descriptor in the parameter list (for field pointers).
    pub offset: usize,
}

/// A block-to-block segment descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// SOURCE and DESTINATION CSCD DESCRIPTOR ID: indices into the target list.
    pub src: u16,
    pub dst: u16,
    /// DC: NUMBER OF BLOCKS counts destination blocks (else source blocks).
    pub dc: bool,
    pub cat: bool,
    pub blocks: u16,
    pub src_lba: u64,
    pub dst_lba: u64,
    /// Offset of the descriptor in the parameter list (for field pointers).
    pub offset: usize,
}

impl Segment {
    /// Parameter list offset of the NUMBER OF BLOCKS field.
    pub fn blocks_field(&self) -> usize {
        self.offset + 10
    }
    /// Parameter list offset of the SOURCE LOGICAL BLOCK ADDRESS field.
    pub fn src_lba_field(&self) -> usize {
        self.offset + 12
    }
    /// Parameter list offset of the DESTINATION LOGICAL BLOCK ADDRESS field.
    pub fn dst_lba_field(&self) -> usize {
        self.offset + 20
    }
}

/// A parsed EXTENDED COPY (LID1) parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XcopyParams {
    pub list_id: u8,
    pub usage: ListIdUsage,
    /// STR (sequential striped): a hint, ignored.
    pub striped: bool,
    pub priority: u8,
    pub targets: Vec<TargetDescriptor>,
    pub segments: Vec<Segment>,
}

fn be16(d: &[u8], at: usize) -> u16 {
    match d.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn be32(d: &[u8], at: usize) -> u32 {
    match d.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn be64(d: &[u8], at: usize) -> u64 {
    match d.get(at..at + 8) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        }
        None => 0,
    }
}

/// A field pointer into the parameter list; offsets beyond 65535 cannot be
/// pointed at (SPC-4 4.5.2.4.2) and are reported without one.
pub(crate) fn param_field(byte: usize, bit: Option<u8>) -> Sense {
    match u16::try_from(byte) {
        Ok(b) => Sense::invalid_param_field(b, bit),
        Err(_) => Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST),
    }
}

/// ILLEGAL REQUEST with `a`, pointing at `byte` of the parameter list.
fn illegal_at(a: Asc, byte: usize) -> Sense {
    let mut s = param_field(byte, None);
    s.asc = a;
    s
}

fn length_error() -> Sense {
    Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
}

/// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE for segment `seg` (SPC-4: a
/// segment names a CSCD descriptor the copy manager cannot reach).
pub(crate) fn unreachable(seg: usize) -> Sense {
    let mut s = Sense::new(SenseKey::CopyAborted, asc::COPY_TARGET_DEVICE_NOT_REACHABLE);
    s.command_specific = Some(seg as u64);
    s
}

/// Parses an EXTENDED COPY (LID1) parameter list. `data` is what the initiator
/// sent (the PARAMETER LIST LENGTH bytes, or fewer). Errors are the sense data to
/// answer with: PARAMETER LIST LENGTH ERROR when lengths do not add up, TOO MANY
/// TARGET/SEGMENT DESCRIPTORS, UNSUPPORTED TARGET/SEGMENT DESCRIPTOR TYPE CODE,
/// INVALID FIELD IN PARAMETER LIST with a field pointer, and COPY ABORTED / COPY
/// TARGET DEVICE NOT REACHABLE for a segment naming a descriptor that is not in
/// the list. Never panics.
pub fn parse_xcopy(data: &[u8]) -> Result<XcopyParams, Sense> {
    if data.len() < HEADER_LEN {
        return Err(length_error());
    }
    let list_id = data[0];
    let striped = data[1] & 0x20 != 0;
    let priority = data[1] & 0x07;
    let usage = match (data[1] >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::NoHold,
        0b11 => ListIdUsage::None,
        _ => return Err(param_field(1, Some(4))),
    };
    let tdll = usize::from(be16(data, 2));
    let sdll = be32(data, 8);
    let inline_len = be32(data, 12);

    // The descriptor lists together may not exceed what we report (checked first:
    // a list that is too long is too long whatever it holds).
    let lists = u64::from(be16(data, 2)) + u64::from(sdll);
    if lists > u64::from(MAX_DESCRIPTOR_LIST_LEN) {
        return Err(length_error());
    }
    let needed = HEADER_LEN as u64 + lists + u64::from(inline_len);
    if needed > data.len() as u64 {
        return Err(length_error());
    }
    if inline_len != 0 {
        // MAXIMUM INLINE DATA LENGTH is zero.
        return Err(param_field(12, Some(7)));
    }
    // Both fit in `data` now, so they fit in usize.
    let sdll = lists as usize - tdll;

    // Target (CSCD) descriptors: all 32 bytes long for the types we know of.
    if tdll.div_ceil(TARGET_DESC_LEN) > MAX_TARGET_DESCRIPTORS {
        return Err(illegal_at(asc::TOO_MANY_TARGET_DESCRIPTORS, 2));
    }
    let tstart = HEADER_LEN;
    let tend = tstart + tdll;
    let mut targets = Vec::with_capacity(tdll / TARGET_DESC_LEN);
    let mut off = tstart;
    while off < tend {
        let ty = data[off];
        if ty != TARGET_DESC_IDENTIFICATION {
            return Err(illegal_at(
                asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
                off,
            ));
        }
        let Some(d) = data
            .get(off..off + TARGET_DESC_LEN)
            .filter(|_| off + TARGET_DESC_LEN <= tend)
        else {
            return Err(length_error());
        };
        targets.push(parse_identification(d, off)?);
        off += TARGET_DESC_LEN;
    }

    // Segment descriptors.
    let sstart = tend;
    let send = sstart + sdll;
    let mut segments = Vec::new();
    let mut off = sstart;
    while off < send {
        if segments.len() == MAX_SEGMENT_DESCRIPTORS {
            return Err(illegal_at(asc::TOO_MANY_SEGMENT_DESCRIPTORS, 8));
        }
        let ty = data[off];
        if ty != SEG_DESC_BLOCK_TO_BLOCK {
            return Err(illegal_at(
                asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
                off,
            ));
        }
        if off + 4 > send {
            return Err(length_error());
        }
        if be16(data, off + 2) != B2B_DESC_LENGTH_FIELD {
            return Err(param_field(off + 2, Some(7)));
        }
        let Some(d) = data
            .get(off..off + B2B_SEG_DESC_LEN)
            .filter(|_| off + B2B_SEG_DESC_LEN <= send)
        else {
            return Err(length_error());
        };
        segments.push(Segment {
            src: be16(d, 4),
            dst: be16(d, 6),
            dc: d[1] & 0x02 != 0,
            cat: d[1] & 0x01 != 0,
            blocks: be16(d, 10),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
            offset: off,
        });
        off += B2B_SEG_DESC_LEN;
    }

    // A segment naming a descriptor the list does not have names a copy target the
    // copy manager cannot reach (what LIO answers, and libiscsi expects).
    for (i, s) in segments.iter().enumerate() {
        if usize::from(s.src) >= targets.len() || usize::from(s.dst) >= targets.len() {
            return Err(unreachable(i));
        }
    }

    Ok(XcopyParams {
        list_id,
        usage,
        striped,
        priority,
        targets,
        segments,
    })
}

/// An identification descriptor (SPC-4 6.4.5.6), `d` its 32 bytes at `off`.
/// LU ID TYPE and NUL are obsolete in SPC-4 and ignored, as is the RELATIVE
/// INITIATOR PORT IDENTIFIER (we reach every LUN of this daemon directly).
fn parse_identification(d: &[u8], off: usize) -> Result<TargetDescriptor, Sense> {
    // Peripheral device type 00h: the device type specific parameters are the
    // block device ones, and block devices are all we copy between.
    if d[1] & 0x1f != 0 {
        return Err(param_field(off + 1, Some(4)));
    }
    // The designation descriptor header: code set binary, association logical
    // unit, designator type NAA, 16 bytes, NAA 6h (IEEE registered extended).
    if d[4] & 0x0f != 0x01 {
        return Err(param_field(off + 4, Some(3)));
    }
    if d[5] & 0x30 != 0 {
        return Err(param_field(off + 5, Some(5)));
    }
    if d[5] & 0x0f != 0x03 {
        return Err(param_field(off + 5, Some(3)));
    }
    if d[7] != 16 {
        return Err(param_field(off + 7, None));
    }
    if d[8] & 0xf0 != 0x60 {
        return Err(param_field(off + 8, Some(7)));
    }
    let mut naa = [0u8; 16];
    naa.copy_from_slice(&d[8..24]);
    let block_len = u32::from_be_bytes([0, d[29], d[30], d[31]]);
    Ok(TargetDescriptor {
        naa,
        block_len,
        offset: off,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sense::FieldPointer;

    /// An identification descriptor for `naa` with `block_len`.
    pub(crate) fn target_desc(naa: &[u8; 16], block_len: u32) -> Vec<u8> {
        let mut d = vec![0u8; TARGET_DESC_LEN];
        d[0] = TARGET_DESC_IDENTIFICATION;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&block_len.to_be_bytes()[1..]);
        d
    }

    /// A block-to-block segment descriptor.
    pub(crate) fn seg_desc(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; B2B_SEG_DESC_LEN];
        d[0] = SEG_DESC_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&B2B_DESC_LENGTH_FIELD.to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    /// A whole parameter list from descriptors.
    pub(crate) fn param_list(
        list_id: u8,
        usage: u8,
        targets: &[Vec<u8>],
        segs: &[Vec<u8>],
    ) -> Vec<u8> {
        let t: Vec<u8> = targets.concat();
        let s: Vec<u8> = segs.concat();
        let mut d = vec![0u8; HEADER_LEN];
        d[0] = list_id;
        d[1] = (usage & 3) << 3;
        d[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
        d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend_from_slice(&t);
        d.extend_from_slice(&s);
        d
    }

    const NAA: [u8; 16] = [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn simple() -> Vec<u8> {
        param_list(
            7,
            0,
            &[target_desc(&NAA, 512)],
            &[seg_desc(0, 0, 8, 100, 200)],
        )
    }

    fn err(d: &[u8]) -> Sense {
        parse_xcopy(d).expect_err("must fail")
    }

    fn ptr(s: &Sense) -> Option<(u16, Option<u8>)> {
        s.field.map(|FieldPointer { byte, bit, cdb }| {
            assert!(!cdb);
            (byte, bit)
        })
    }

    #[test]
    fn parses_a_simple_list() {
        let p = parse_xcopy(&simple()).unwrap();
        assert_eq!(p.list_id, 7);
        assert_eq!(p.usage, ListIdUsage::Hold);
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].naa, NAA);
        assert_eq!(p.targets[0].block_len, 512);
        assert_eq!(p.targets[0].offset, 16);
        assert_eq!(p.segments.len(), 1);
        let s = p.segments[0];
        assert_eq!(
            (s.src, s.dst, s.blocks, s.src_lba, s.dst_lba),
            (0, 0, 8, 100, 200)
        );
        assert_eq!(s.offset, 48);
        assert!(!s.dc);
    }

    #[test]
    fn list_id_usage_values() {
        let mut d = simple();
        d[1] = 0b10 << 3 | 0x20 | 5;
        let p = parse_xcopy(&d).unwrap();
        assert_eq!(p.usage, ListIdUsage::NoHold);
        assert!(p.striped);
        assert_eq!(p.priority, 5);
        d[1] = 0b11 << 3;
        assert_eq!(parse_xcopy(&d).unwrap().usage, ListIdUsage::None);
        d[1] = 0b01 << 3;
        let s = err(&d);
        assert_eq!(s.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(ptr(&s), Some((1, Some(4))));
    }

    #[test]
    fn short_header_and_truncated_lists_are_length_errors() {
        assert_eq!(err(&[0u8; 15]).asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        let d = simple();
        // Truncating the target descriptor, then the segment descriptor.
        assert_eq!(err(&d[..16 + 31]).asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        assert_eq!(err(&d[..d.len() - 1]).asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        // A header alone with empty lists is fine.
        let p = parse_xcopy(&[0u8; 16]).unwrap();
        assert!(p.targets.is_empty() && p.segments.is_empty());
    }

    #[test]
    fn target_list_length_not_a_multiple_is_a_length_error() {
        let t = target_desc(&NAA, 512);
        let mut d = param_list(1, 0, &[t.clone(), t], &[]);
        // 40 bytes of targets: the second descriptor is cut short.
        d[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(err(&d).asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        // What follows a short list is read as the next descriptor's type.
        let mut d = simple();
        d[2..4].copy_from_slice(&33u16.to_be_bytes());
        d[8..12].copy_from_slice(&27u32.to_be_bytes());
        assert_eq!(err(&d).asc, asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE);
    }

    #[test]
    fn too_long_descriptor_lists_are_length_errors_before_counts() {
        let mut d = vec![0u8; 16];
        d[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        d[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(err(&d).asc, asc::PARAMETER_LIST_LENGTH_ERROR);
    }

    #[test]
    fn too_many_descriptors() {
        let t: Vec<Vec<u8>> = (0..=MAX_TARGET_DESCRIPTORS)
            .map(|_| target_desc(&NAA, 512))
            .collect();
        let d = param_list(1, 0, &t, &[seg_desc(0, 0, 1, 0, 1)]);
        assert_eq!(err(&d).asc, asc::TOO_MANY_TARGET_DESCRIPTORS);
        assert_eq!(err(&d).key, SenseKey::IllegalRequest);
        let s: Vec<Vec<u8>> = (0..=MAX_SEGMENT_DESCRIPTORS)
            .map(|_| seg_desc(0, 0, 1, 0, 1))
            .collect();
        let d = param_list(1, 0, &[target_desc(&NAA, 512)], &s);
        assert_eq!(err(&d).asc, asc::TOO_MANY_SEGMENT_DESCRIPTORS);
        // Exactly the maximum is fine.
        let d = param_list(1, 0, &[target_desc(&NAA, 512)], &s[1..]);
        assert_eq!(
            parse_xcopy(&d).unwrap().segments.len(),
            MAX_SEGMENT_DESCRIPTORS
        );
    }

    #[test]
    fn unsupported_descriptor_types() {
        let mut t = target_desc(&NAA, 512);
        t[0] = 0xe0;
        let d = param_list(1, 0, &[t], &[seg_desc(0, 0, 1, 0, 1)]);
        let s = err(&d);
        assert_eq!(s.asc, asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE);
        assert_eq!(ptr(&s), Some((16, None)));
        // Stream-to-stream (03h), 20 bytes long.
        let mut sd = vec![0u8; 20];
        sd[0] = 0x03;
        sd[2..4].copy_from_slice(&16u16.to_be_bytes());
        let d = param_list(1, 0, &[target_desc(&NAA, 512)], &[sd]);
        let s = err(&d);
        assert_eq!(s.asc, asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE);
        assert_eq!(ptr(&s), Some((48, None)));
    }

    #[test]
    fn invalid_identification_fields_point_at_the_byte() {
        let cases: &[(usize, u8, u16, Option<u8>)] = &[
            (1, 0x01, 17, Some(4)), // peripheral device type 1
            (4, 0x02, 20, Some(3)), // code set ASCII
            (5, 0x13, 21, Some(5)), // association target port
            (5, 0x02, 21, Some(3)), // designator type EUI-64
            (7, 8, 23, None),       // designator length
            (8, 0x50, 24, Some(7)), // NAA 5
        ];
        for &(at, val, byte, bit) in cases {
            let mut t = target_desc(&NAA, 512);
            t[at] = val;
            let d = param_list(1, 0, &[t], &[seg_desc(0, 0, 1, 0, 1)]);
            let s = err(&d);
            assert_eq!(s.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST, "byte {at}");
            assert_eq!(ptr(&s), Some((byte, bit)), "byte {at}");
        }
        // LU ID TYPE and NUL are ignored (SPC-4).
        let mut t = target_desc(&NAA, 512);
        t[1] = 0x80 | 0x20;
        let d = param_list(1, 0, &[t], &[seg_desc(0, 0, 1, 0, 1)]);
        assert!(parse_xcopy(&d).is_ok());
    }

    #[test]
    fn bad_segment_descriptor_length_and_inline_data() {
        let mut s = seg_desc(0, 0, 1, 0, 1);
        s[3] = 0x14;
        let d = param_list(1, 0, &[target_desc(&NAA, 512)], &[s]);
        let e = err(&d);
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(ptr(&e), Some((50, Some(7))));
        let mut d = simple();
        d[12..16].copy_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        let e = err(&d);
        assert_eq!(ptr(&e), Some((12, Some(7))));
    }

    #[test]
    fn segment_naming_a_missing_descriptor_is_copy_aborted() {
        let d = param_list(
            1,
            0,
            &[target_desc(&NAA, 512)],
            &[seg_desc(0, 0, 1, 0, 1), seg_desc(0, 1, 1, 0, 1)],
        );
        let s = err(&d);
        assert_eq!(s.key, SenseKey::CopyAborted);
        assert_eq!(s.asc, asc::COPY_TARGET_DEVICE_NOT_REACHABLE);
        assert_eq!(s.command_specific, Some(1));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_xcopy(&data);
        }

        #[test]
        fn never_panics_on_mutated_valid_lists(
            flips in proptest::collection::vec((0usize..76, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..80,
        ) {
            let mut d = simple();
            for (at, v) in flips {
                d[at] = v;
            }
            d.truncate(cut);
            let _ = parse_xcopy(&d);
        }
    }
}
