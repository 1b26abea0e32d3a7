//! INQUIRY data: the standard page (SPC-4 6.6.2) and the vital product data pages
//! (SPC-4 7.8, SBC-3 6.5), and the block limits every command family enforces.
//!
//! The limits are constants here so that the commands that enforce them (SBC's
//! READ/WRITE, UNMAP, WRITE SAME, COMPARE AND WRITE, WRITE ATOMIC) and the page that
//! reports them (Block Limits, B0h) cannot disagree. A limit is reported only for a
//! command the opcode table has, so a command that is not implemented never shows
//! up with a limit (libiscsi checks both ways).

use crate::lun::Lun;
use crate::nexus::{Nexus, Protocol};
use crate::opcodes;

/// MAXIMUM TRANSFER LENGTH in logical blocks, before the backend's own limit
/// ([`max_transfer_blocks`] applies both). 16384 blocks: 8 MiB of 512-byte blocks.
pub const MAX_XFER_BLOCKS: u32 = 16384;
/// MAXIMUM UNMAP LBA COUNT: blocks one UNMAP command may deallocate in total.
/// libiscsi requires at most 1 Mi when it is not "unlimited".
pub const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// OPTIMAL UNMAP GRANULARITY in logical blocks.
pub const UNMAP_GRANULARITY: u32 = 1;
/// MAXIMUM WRITE SAME LENGTH in logical blocks (also the limit of a WRITE SAME
/// whose NUMBER OF LOGICAL BLOCKS is zero: "to the end of the medium").
/// 65535 fits WRITE SAME(10)'s field; WSNZ is 0, so a zero-block WRITE SAME
/// means "to the end of the medium" and fails when that is more than this.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 65535;
/// MAXIMUM COMPARE AND WRITE LENGTH in logical blocks (the field is one byte).
pub const MAX_CAW_BLOCKS: u8 = 255;
/// MAXIMUM ATOMIC TRANSFER LENGTH (WRITE ATOMIC(16)) in logical blocks; at most
/// [`MAX_XFER_BLOCKS`] as SBC-4 requires. libiscsi writes up to 256 blocks.
pub const MAX_ATOMIC_BLOCKS: u32 = 256;
const _: () = assert!(MAX_ATOMIC_BLOCKS <= MAX_XFER_BLOCKS);
/// ATOMIC ALIGNMENT: an atomic write's LBA must be a multiple of this (1: none).
pub const ATOMIC_ALIGNMENT: u32 = 1;
/// ATOMIC TRANSFER LENGTH GRANULARITY: an atomic write's length must be a multiple
/// of this (1: none).
pub const ATOMIC_GRANULARITY: u32 = 1;
/// WSNZ: whether a WRITE SAME with zero blocks is refused. It is not: zero blocks
/// writes from the LBA to the end of the medium (within [`MAX_WRITE_SAME_BLOCKS`]).
pub const WSNZ: bool = false;

/// VPD page codes.
pub mod page {
    pub const SUPPORTED: u8 = 0x00;
    pub const UNIT_SERIAL: u8 = 0x80;
    pub const DEVICE_ID: u8 = 0x83;
    pub const EXTENDED_INQUIRY: u8 = 0x86;
    pub const THIRD_PARTY_COPY: u8 = 0x8f;
    pub const BLOCK_LIMITS: u8 = 0xb0;
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;
}

/// Version descriptors (SPC-4 table 49).
const VERSION_SAM5: u16 = 0x00a0;
const VERSION_SPC4: u16 = 0x0460;
const VERSION_SBC3: u16 = 0x04c0;
const VERSION_SRP: u16 = 0x0940;
const VERSION_ISCSI: u16 = 0x0960;
const VERSION_SAS: u16 = 0x0be0;

/// The MAXIMUM TRANSFER LENGTH of `lun` in blocks: [`MAX_XFER_BLOCKS`], or less if
/// the backend takes smaller I/Os. SBC's READ/WRITE refuse longer transfers.
pub fn max_transfer_blocks(lun: &Lun) -> u32 {
    let bs = lun.block_size().max(1);
    match lun.backend.capabilities().max_transfer {
        0 => MAX_XFER_BLOCKS,
        bytes => (bytes / bs).clamp(1, MAX_XFER_BLOCKS),
    }
}

/// Whether the opcode table has this command.
fn supports(opcode: u8, sa: Option<u16>) -> bool {
    opcodes::find(opcode, sa).is_some()
}

/// Logical block provisioning features of `lun` (VPD B2h): UNMAP, WRITE SAME(16)
/// with UNMAP, WRITE SAME(10) with UNMAP. All false unless the LUN is thin.
pub fn provisioning(lun: &Lun) -> (bool, bool, bool) {
    if !lun.config.thin {
        return (false, false, false);
    }
    (
        supports(0x42, None),
        supports(0x93, None),
        supports(0x41, None),
    )
}

/// LBPRZ: deallocated blocks of `lun` read as zeroes. READ CAPACITY(16) must
/// report the same as VPD B2h.
pub fn lbprz(lun: &Lun) -> bool {
    lun.config.thin && lun.backend.capabilities().discard_zeroes
}

fn pad_ascii(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// Standard INQUIRY data (SPC-4 6.6.2): 96 bytes with version descriptors.
pub(crate) fn standard_inquiry(lun: &Lun, nexus: &Nexus) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // peripheral qualifier 000b, direct access block device
    d[1] = if lun.config.removable { 0x80 } else { 0 }; // RMB
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (d.len() - 5) as u8; // ADDITIONAL LENGTH
    d[5] = 0x10 | 0x08; // TPGS 01b (implicit ALUA), 3PC (EXTENDED COPY)
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&pad_ascii(&lun.config.vendor, 8));
    d[16..32].copy_from_slice(&pad_ascii(&lun.config.product, 16));
    d[32..36].copy_from_slice(&pad_ascii(&lun.config.revision, 4));
    let transport = match nexus.target.protocol {
        Protocol::Iscsi => VERSION_ISCSI,
        Protocol::Srp => VERSION_SRP,
        Protocol::Sas => VERSION_SAS,
    };
    for (i, v) in [VERSION_SAM5, transport, VERSION_SPC4, VERSION_SBC3]
        .iter()
        .enumerate()
    {
        let at = 58 + 2 * i;
        d[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// The VPD pages `lun` has, ascending (SPC-4 7.8.13).
pub fn supported_pages(lun: &Lun) -> Vec<u8> {
    let mut p = vec![
        page::SUPPORTED,
        page::UNIT_SERIAL,
        page::DEVICE_ID,
        page::EXTENDED_INQUIRY,
        page::THIRD_PARTY_COPY,
        page::BLOCK_LIMITS,
        page::BLOCK_DEVICE_CHARACTERISTICS,
    ];
    if lun.config.thin {
        p.push(page::LOGICAL_BLOCK_PROVISIONING);
    }
    p
}

/// A VPD page: header (peripheral byte, page code, 2-byte PAGE LENGTH) and body.
fn vpd(code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + body.len());
    d.push(0x00);
    d.push(code);
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&body[..usize::from(len)]);
    d
}

/// Designation descriptor (SPC-4 7.8.6.1). `piv_protocol`: the protocol to report
/// with PIV=1 (target port associations only).
fn designator(
    out: &mut Vec<u8>,
    code_set: u8,
    association: u8,
    kind: u8,
    piv_protocol: Option<Protocol>,
    id: &[u8],
) {
    let proto = piv_protocol.map_or(0, |p| (p as u8) << 4);
    let piv = if piv_protocol.is_some() { 0x80 } else { 0 };
    out.push(proto | (code_set & 0x0f));
    out.push(piv | ((association & 0x03) << 4) | (kind & 0x0f));
    out.push(0);
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&id[..id.len().min(255)]);
}

const CODE_BINARY: u8 = 1;
const CODE_ASCII: u8 = 2;
const CODE_UTF8: u8 = 3;
const ASSOC_LU: u8 = 0;
const ASSOC_PORT: u8 = 1;
const TYPE_T10: u8 = 1;
const TYPE_NAA: u8 = 3;
const TYPE_RELATIVE_PORT: u8 = 4;
const TYPE_PORT_GROUP: u8 = 5;
const TYPE_SCSI_NAME: u8 = 8;

/// Device Identification (SPC-4 7.8.6): the LUN's NAA-6 and T10 vendor id
/// designators, then the target port's SCSI name, relative port and port group.
fn device_identification(lun: &Lun, nexus: &Nexus) -> Vec<u8> {
    let mut b = Vec::new();
    designator(&mut b, CODE_BINARY, ASSOC_LU, TYPE_NAA, None, &lun.naa());
    let mut t10 = pad_ascii(&lun.config.vendor, 8);
    t10.extend(
        lun.config
            .serial
            .bytes()
            .filter(|c| (0x21..0x7f).contains(c))
            .take(200),
    );
    designator(&mut b, CODE_ASCII, ASSOC_LU, TYPE_T10, None, &t10);
    let port = &nexus.target;
    // SCSI name string: UTF-8, NUL-terminated, padded to a multiple of 4 (7.8.6.11).
    let mut name: Vec<u8> = port.name.bytes().take(251).collect();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    designator(
        &mut b,
        CODE_UTF8,
        ASSOC_PORT,
        TYPE_SCSI_NAME,
        Some(port.protocol),
        &name,
    );
    let rel = port.relative_id.to_be_bytes();
    designator(
        &mut b,
        CODE_BINARY,
        ASSOC_PORT,
        TYPE_RELATIVE_PORT,
        Some(port.protocol),
        &[0, 0, rel[0], rel[1]],
    );
    let grp = port.group_id.to_be_bytes();
    designator(
        &mut b,
        CODE_BINARY,
        ASSOC_PORT,
        TYPE_PORT_GROUP,
        Some(port.protocol),
        &[0, 0, grp[0], grp[1]],
    );
    vpd(page::DEVICE_ID, &b)
}

/// Extended INQUIRY Data (SPC-4 7.8.7).
fn extended_inquiry() -> Vec<u8> {
    let mut b = vec![0u8; 60];
    b[1] = 0x04 | 0x02 | 0x01; // HEADSUP, ORDSUP, SIMPSUP
    b[2] = 0x01; // V_SUP: a volatile write cache (caching page WCE)
    vpd(page::EXTENDED_INQUIRY, &b)
}

/// Block Limits (SBC-3 6.5.3, with SBC-4's atomic fields).
fn block_limits(lun: &Lun) -> Vec<u8> {
    let mut b = vec![0u8; 60];
    let caps = lun.backend.capabilities();
    let bs = lun.block_size().max(1);
    // Offsets below are page offsets minus the 4-byte header.
    b[0] = u8::from(WSNZ);
    if supports(0x89, None) {
        b[1] = MAX_CAW_BLOCKS;
    }
    // OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block.
    let granularity = 1u16 << crate::sbc::lbppb_exponent(lun);
    b[2..4].copy_from_slice(&granularity.to_be_bytes());
    let max = max_transfer_blocks(lun);
    b[4..8].copy_from_slice(&max.to_be_bytes());
    let optimal = (caps.optimal_transfer / bs).min(max);
    b[8..12].copy_from_slice(&optimal.to_be_bytes());
    if provisioning(lun).0 {
        b[16..20].copy_from_slice(&MAX_UNMAP_LBA_COUNT.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[24..28].copy_from_slice(&UNMAP_GRANULARITY.to_be_bytes());
    }
    if supports(0x41, None) || supports(0x93, None) {
        b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    }
    if supports(0x9c, None) {
        b[40..44].copy_from_slice(&MAX_ATOMIC_BLOCKS.min(max).to_be_bytes());
        b[44..48].copy_from_slice(&ATOMIC_ALIGNMENT.to_be_bytes());
        b[48..52].copy_from_slice(&ATOMIC_GRANULARITY.to_be_bytes());
    }
    vpd(page::BLOCK_LIMITS, &b)
}

/// Block Device Characteristics (SBC-3 6.5.2).
fn block_device_characteristics(lun: &Lun) -> Vec<u8> {
    let mut b = vec![0u8; 60];
    // MEDIUM ROTATION RATE: 1 = non-rotating; 0 = not reported (we do not know a
    // rotational backend's speed). NOMINAL FORM FACTOR: 0 = not reported.
    let rate: u16 = if lun.backend.capabilities().rotational {
        0
    } else {
        1
    };
    b[0..2].copy_from_slice(&rate.to_be_bytes());
    // WABEREQ 01b: a read after a SANITIZE BLOCK ERASE completes with GOOD and
    // returns the (zeroed) logical block data; WACEREQ 00b: no crypto erase.
    b[3] = 0x40;
    vpd(page::BLOCK_DEVICE_CHARACTERISTICS, &b)
}

/// Logical Block Provisioning (SBC-3 6.5.4).
fn logical_block_provisioning(lun: &Lun) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    let (lbpu, lbpws, lbpws10) = provisioning(lun);
    let mut f = 0u8;
    if lbpu {
        f |= 0x80;
    }
    if lbpws {
        f |= 0x40;
    }
    if lbpws10 {
        f |= 0x20;
    }
    if lbprz(lun) {
        f |= 0x04; // LBPRZ
    }
    b[1] = f;
    b[2] = 0x02; // PROVISIONING TYPE 010b: thin
    vpd(page::LOGICAL_BLOCK_PROVISIONING, &b)
}

/// The VPD page `code` of `lun` as seen through `nexus`; `None` if unsupported.
pub(crate) fn page(lun: &Lun, nexus: &Nexus, code: u8) -> Option<Vec<u8>> {
    if !supported_pages(lun).contains(&code) {
        return None;
    }
    Some(match code {
        page::SUPPORTED => vpd(code, &supported_pages(lun)),
        page::UNIT_SERIAL => {
            let s: Vec<u8> = lun
                .config
                .serial
                .bytes()
                .filter(|c| (0x20..0x7f).contains(c))
                .take(252)
                .collect();
            vpd(code, &s)
        }
        page::DEVICE_ID => device_identification(lun, nexus),
        page::EXTENDED_INQUIRY => extended_inquiry(),
        page::THIRD_PARTY_COPY => crate::xcopy::third_party_copy_vpd(lun),
        page::BLOCK_LIMITS => block_limits(lun),
        page::BLOCK_DEVICE_CHARACTERISTICS => block_device_characteristics(lun),
        page::LOGICAL_BLOCK_PROVISIONING => logical_block_provisioning(lun),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::ram::RamBackend;

    use super::*;
    use crate::lun::LunConfig;
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, uuid_for, Fixture};

    fn vpd_cdb(code: u8, alloc: u16) -> [u8; 6] {
        let a = alloc.to_be_bytes();
        [0x12, 0x01, code, a[0], a[1], 0]
    }

    fn read_page(f: &mut Fixture, code: u8) -> Vec<u8> {
        let (r, d) = f.read_in(&vpd_cdb(code, 1024), 1024);
        assert_good(&r);
        assert_eq!(d[1], code);
        assert_eq!(
            usize::from(u16::from_be_bytes([d[2], d[3]])) + 4,
            d.len(),
            "page length of {code:#x}"
        );
        d
    }

    fn thick() -> Fixture {
        let mut c = LunConfig::new("thick", uuid_for("thick"));
        c.thin = false;
        Fixture::with(c, Arc::new(RamBackend::new(1 << 20)))
    }

    #[test]
    fn supported_pages_are_sorted_and_all_readable() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::SUPPORTED);
        let pages = d[4..].to_vec();
        assert_eq!(pages, vec![0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2]);
        assert!(pages.windows(2).all(|w| w[0] < w[1]));
        for p in pages {
            read_page(&mut f, p);
        }
    }

    #[test]
    fn provisioning_page_only_when_thin() {
        let mut f = thick();
        let d = read_page(&mut f, page::SUPPORTED);
        assert!(!d[4..].contains(&0xb2));
        let (r, _) = f.read_in(&vpd_cdb(0xb2, 255), 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let bl = read_page(&mut f, page::BLOCK_LIMITS);
        assert_eq!(&bl[20..28], &[0; 8], "no UNMAP limits when not thin");
    }

    #[test]
    fn unit_serial_number() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::UNIT_SERIAL);
        assert_eq!(&d[4..], f.lun.config.serial.as_bytes());
    }

    #[test]
    fn device_identification_designators() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::DEVICE_ID);
        let mut descs = Vec::new();
        let mut pos = 4;
        while pos < d.len() {
            let len = usize::from(d[pos + 3]);
            descs.push(d[pos..pos + 4 + len].to_vec());
            pos += 4 + len;
        }
        assert_eq!(pos, d.len());
        // NAA-6, binary, LU association.
        assert_eq!(&descs[0][..4], &[0x01, 0x03, 0, 16]);
        assert_eq!(&descs[0][4..], &f.lun.naa());
        assert_eq!(descs[0][4] >> 4, 6);
        // T10 vendor id, ASCII.
        assert_eq!(&descs[1][..2], &[0x02, 0x01]);
        assert_eq!(&descs[1][4..12], b"OXTARGET");
        // SCSI name string of the target port: iSCSI, PIV, port association.
        assert_eq!(&descs[2][..2], &[0x53, 0x98]);
        assert_eq!(descs[2].len() % 4, 0);
        let name = &descs[2][4..];
        assert!(name.starts_with(f.port.name.as_bytes()));
        assert!(name.ends_with(&[0]));
        // Relative target port 1 and target port group 1.
        assert_eq!(descs[3], vec![0x51, 0x94, 0, 4, 0, 0, 0, 1]);
        assert_eq!(descs[4], vec![0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn extended_inquiry_task_attributes() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::EXTENDED_INQUIRY);
        assert_eq!(d.len(), 64);
        assert_eq!(d[5] & 0x07, 0x07);
        assert_eq!(d[6] & 0x01, 0x01);
    }

    #[test]
    fn block_limits_match_the_opcode_table() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::BLOCK_LIMITS);
        assert_eq!(d.len(), 64);
        assert_eq!(d[4] & 0x01, u8::from(WSNZ));
        let caw = if supports(0x89, None) {
            MAX_CAW_BLOCKS
        } else {
            0
        };
        assert_eq!(d[5], caw);
        let be32 = |at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
        assert_eq!(be32(8), MAX_XFER_BLOCKS);
        let unmap = supports(0x42, None);
        assert_eq!(be32(20), if unmap { MAX_UNMAP_LBA_COUNT } else { 0 });
        assert_eq!(be32(24), if unmap { MAX_UNMAP_DESCRIPTORS } else { 0 });
        let atomic = supports(0x9c, None);
        assert_eq!(be32(44), if atomic { MAX_ATOMIC_BLOCKS } else { 0 });
        // Truncation keeps the page length field of the whole page.
        let (r, t) = f.read_in(&vpd_cdb(page::BLOCK_LIMITS, 8), 8);
        assert_good(&r);
        assert_eq!(t.len(), 8);
        assert_eq!(t[3], 0x3c);
    }

    #[test]
    fn block_device_characteristics_non_rotating() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::BLOCK_DEVICE_CHARACTERISTICS);
        assert_eq!(d.len(), 64);
        assert_eq!(&d[4..6], &[0, 1]);
    }

    #[test]
    fn logical_block_provisioning_thin() {
        let mut f = Fixture::ram();
        let d = read_page(&mut f, page::LOGICAL_BLOCK_PROVISIONING);
        assert_eq!(d.len(), 8);
        assert_eq!(d[5] & 0x04, 0x04, "LBPRZ: RAM discards read as zeroes");
        assert_eq!(d[5] & 0x80 != 0, supports(0x42, None));
        assert_eq!(d[6] & 0x07, 0x02);
    }

    /// A RAM backend that takes at most 64 KiB per I/O.
    struct Limited(RamBackend);

    impl backends::Backend for Limited {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn capabilities(&self) -> backends::Capabilities {
            let mut c = self.0.capabilities();
            c.max_transfer = 64 << 10;
            c.optimal_transfer = 16 << 10;
            c.rotational = true;
            c
        }
        fn open_channel(
            &self,
            notify: &vmm_sys_util::eventfd::EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            self.0.open_channel(notify)
        }
        fn block_status(
            &self,
            offset: u64,
            len: u64,
        ) -> Result<backends::Extent, backends::BackendError> {
            self.0.block_status(offset, len)
        }
        fn resize(&self, new_size: u64) -> Result<(), backends::BackendError> {
            self.0.resize(new_size)
        }
        fn describe(&self) -> String {
            "limited".into()
        }
    }

    #[test]
    fn backend_capabilities_shape_limits_and_characteristics() {
        let f = Fixture::ram();
        assert_eq!(max_transfer_blocks(&f.lun), MAX_XFER_BLOCKS);
        let c = LunConfig::new("lim", uuid_for("lim"));
        let mut f = Fixture::with(c, Arc::new(Limited(RamBackend::new(1 << 20))));
        assert_eq!(max_transfer_blocks(&f.lun), 128);
        let d = read_page(&mut f, page::BLOCK_LIMITS);
        assert_eq!(&d[8..12], &128u32.to_be_bytes());
        assert_eq!(&d[12..16], &32u32.to_be_bytes());
        let d = read_page(&mut f, page::BLOCK_DEVICE_CHARACTERISTICS);
        assert_eq!(&d[4..6], &[0, 0], "rotational: rate not reported");
    }
}
