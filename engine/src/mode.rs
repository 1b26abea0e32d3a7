//! MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-4 6.11-6.14) and the mode
//! pages of one LUN: read-write error recovery (01h), caching (08h), control
//! (0Ah) and control extension (0Ah/01h), informational exceptions control (1Ch).
//!
//! Changeable: caching WCE (writes are FUA while it is clear, see
//! [`write_cache_enabled`]), control D_SENSE (sense data format) and control SWP
//! (software write protect, see [`write_protected`]). Nothing is savable: PC=11b
//! and SP=1 are refused. A LOGICAL UNIT RESET restores the default values.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::{Lun, LunConfig};
use crate::sense::{asc, CmdError, Sense, SenseFormat};

/// Current values of the changeable mode parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeState {
    /// Caching page WCE.
    pub wce: bool,
    /// Control page D_SENSE: sense data in descriptor format.
    pub d_sense: bool,
    /// Control page SWP: the medium is write-protected by software.
    pub swp: bool,
}

impl ModeState {
    /// The default values: what a LUN starts with and returns to on reset.
    pub fn new(config: &LunConfig) -> Self {
        ModeState {
            wce: config.write_cache,
            d_sense: false,
            swp: false,
        }
    }
}

const WCE: u8 = 1 << 0;
const D_SENSE: u8 = 1 << 1;
const SWP: u8 = 1 << 2;

/// The mode parameters of one LUN, readable without a lock: the write path asks
/// for WCE and SWP on every command. MODE SELECT and resets serialize on `select`.
#[derive(Debug)]
pub struct ModeParams {
    bits: AtomicU8,
    select: Mutex<()>,
}

impl ModeParams {
    pub fn new(config: &LunConfig) -> Self {
        let p = ModeParams {
            bits: AtomicU8::new(0),
            select: Mutex::new(()),
        };
        p.set(&ModeState::new(config));
        p
    }

    /// The current values.
    pub fn get(&self) -> ModeState {
        let b = self.bits.load(Ordering::Acquire);
        ModeState {
            wce: b & WCE != 0,
            d_sense: b & D_SENSE != 0,
            swp: b & SWP != 0,
        }
    }

    fn set(&self, st: &ModeState) {
        let mut b = 0;
        if st.wce {
            b |= WCE;
        }
        if st.d_sense {
            b |= D_SENSE;
        }
        if st.swp {
            b |= SWP;
        }
        self.bits.store(b, Ordering::Release);
    }

    /// Sets WCE directly (tests of the write path).
    #[cfg(test)]
    pub(crate) fn set_wce_for_test(&self, wce: bool) {
        let _g = self.lock();
        let mut st = self.get();
        st.wce = wce;
        self.set(&st);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.select.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn state(lun: &Lun) -> ModeState {
    lun.mode.get()
}

/// The sense data format the control mode page selects.
pub(crate) fn sense_format(lun: &Lun) -> SenseFormat {
    if state(lun).d_sense {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    }
}

/// Whether the write cache is enabled (caching page WCE). When it is not, every
/// write must reach stable storage before it completes (FUA). Lock-free.
pub fn write_cache_enabled(lun: &Lun) -> bool {
    state(lun).wce
}

/// Whether writes are refused with DATA PROTECT, WRITE PROTECTED: the LUN is
/// configured read-only, or the control page's SWP bit is set. Lock-free.
pub fn write_protected(lun: &Lun) -> bool {
    lun.config.read_only || state(lun).swp
}

/// LOGICAL UNIT RESET: current values return to the defaults (there are no saved
/// values; SAM-5 6.3.3).
pub(crate) fn on_lun_reset(lun: &Lun) {
    let _g = lun.mode.lock();
    lun.mode.set(&ModeState::new(&lun.config));
}

/// Page control (PC) of MODE SENSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// The pages we have, (page code, subpage code), ascending.
const PAGES: &[(u8, u8)] = &[(0x01, 0), (0x08, 0), (0x0a, 0), (0x0a, 0x01), (0x1c, 0)];

/// One page as MODE SENSE returns it: `st` gives the values; with `mask` the bytes
/// have a bit set for every changeable bit instead.
fn build(code: u8, sub: u8, st: &ModeState, mask: bool) -> Vec<u8> {
    let bit = |on: bool, b: u8| if mask || on { b } else { 0 };
    match (code, sub) {
        (0x01, 0) => {
            // Read-write error recovery (SBC-3 6.4.7): no retries to report.
            let mut p = vec![0u8; 12];
            p[0] = 0x01;
            p[1] = 0x0a;
            p
        }
        (0x08, 0) => {
            // Caching (SBC-3 6.4.5): WCE; RCD=0 (read cache on).
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            p[2] = bit(st.wce, 0x04);
            p
        }
        (0x0a, 0) => {
            // Control (SPC-4 7.5.8): TST=000b, TMF_ONLY=0, D_SENSE, QUEUE
            // ALGORITHM MODIFIER=1 (unrestricted reordering of SIMPLE tasks),
            // QERR=00b, UA_INTLCK_CTRL=00b, SWP, TAS=0, BUSY TIMEOUT unlimited.
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            p[2] = bit(st.d_sense, 0x04);
            p[4] = bit(st.swp, 0x08);
            if !mask {
                p[3] = 0x10;
                p[8] = 0xff;
                p[9] = 0xff;
            }
            p
        }
        (0x0a, 0x01) => {
            // Control extension (SPC-4 7.5.9): nothing set, nothing changeable.
            let mut p = vec![0u8; 32];
            p[0] = 0x40 | 0x0a;
            p[1] = 0x01;
            p[3] = 0x1c;
            p
        }
        (0x1c, 0) => {
            // Informational exceptions control (SPC-4 7.5.12): DEXCPT=1, MRIE=0.
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            if !mask {
                p[2] = 0x08;
            }
            p
        }
        _ => Vec::new(),
    }
}

fn page_bytes(lun: &Lun, code: u8, sub: u8, pc: Pc) -> Vec<u8> {
    match pc {
        Pc::Current => build(code, sub, &state(lun), false),
        Pc::Changeable => build(code, sub, &ModeState::new(&lun.config), true),
        Pc::Default => build(code, sub, &ModeState::new(&lun.config), false),
    }
}

/// The pages a (page code, subpage code) request selects, or the CDB field at fault.
fn select_pages(code: u8, sub: u8) -> Result<Vec<(u8, u8)>, Sense> {
    let pick: Vec<(u8, u8)> = PAGES
        .iter()
        .copied()
        .filter(|&(c, s)| (code == 0x3f || c == code) && (sub == 0xff || s == sub))
        .collect();
    if !pick.is_empty() {
        return Ok(pick);
    }
    if code == 0x3f || PAGES.iter().any(|&(c, _)| c == code) {
        Err(Sense::invalid_cdb_field(3, Some(7)))
    } else {
        Err(Sense::invalid_cdb_field(2, Some(5)))
    }
}

/// The block descriptor (SBC-3 6.4.2): short, or long for LLBAA=1.
fn block_descriptor(lun: &Lun, long: bool) -> Vec<u8> {
    let blocks = lun.num_blocks();
    let bs = lun.block_size();
    if long {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&blocks.to_be_bytes());
        d[12..16].copy_from_slice(&bs.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let n = u32::try_from(blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&n.to_be_bytes());
        d[5..8].copy_from_slice(&bs.to_be_bytes()[1..4]);
        d
    }
}

/// The whole MODE SENSE parameter data (before allocation-length truncation).
fn mode_sense_data(ctx: &CmdCtx<'_>, ten: bool) -> Result<Vec<u8>, CmdError> {
    let cdb = ctx.cdb;
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = match cdb[2] >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED).into()),
    };
    let pages = select_pages(cdb[2] & 0x3f, cdb[3])?;
    let lun = ctx.lun;
    let mut body = Vec::new();
    for (c, s) in pages {
        body.extend_from_slice(&page_bytes(lun, c, s, pc));
    }
    let bd = if dbd {
        Vec::new()
    } else {
        block_descriptor(lun, llbaa)
    };
    let mut dsp = 0x10u8; // DPOFUA
    if write_protected(lun) {
        dsp |= 0x80; // WP
    }
    let mut d = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        if llbaa && !bd.is_empty() {
            h[4] = 0x01; // LONGLBA
        }
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    d.extend_from_slice(&bd);
    d.extend_from_slice(&body);
    if ten {
        let n = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
        d[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(d)
}

pub(crate) fn mode_sense6(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let mut d = mode_sense_data(ctx, false)?;
    d.truncate(usize::from(ctx.cdb[4]));
    Ok(Exec::Data(d))
}

pub(crate) fn mode_sense10(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let mut d = mode_sense_data(ctx, true)?;
    d.truncate(usize::from(u16::from_be_bytes([ctx.cdb[7], ctx.cdb[8]])));
    Ok(Exec::Data(d))
}

fn length_error() -> CmdError {
    Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into()
}

/// The most significant bit set in `b` (for field pointers).
fn top_bit(b: u8) -> u8 {
    7 - b.leading_zeros().min(7) as u8
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

/// Checks a MODE SELECT parameter list against the current values and returns the
/// new values. `list` is what the initiator sent.
fn parse_select(lun: &Lun, cur: &ModeState, list: &[u8], ten: bool) -> Result<ModeState, CmdError> {
    let hdr = if ten { 8 } else { 4 };
    if list.len() < hdr {
        return Err(length_error());
    }
    let medium_type_at = if ten { 2 } else { 1 };
    if list[medium_type_at] != 0 {
        return Err(Sense::invalid_param_field(medium_type_at as u16, None).into());
    }
    let (bd_len, bd_len_at, long) = if ten {
        (be16(list, 6), 6u16, list[4] & 0x01 != 0)
    } else {
        (usize::from(list[3]), 3u16, false)
    };
    let want_bd = if long { 16 } else { 8 };
    if bd_len != 0 && bd_len != want_bd {
        return Err(Sense::invalid_param_field(bd_len_at, None).into());
    }
    if list.len() < hdr + bd_len {
        return Err(length_error());
    }
    if bd_len != 0 {
        let bd = &list[hdr..hdr + bd_len];
        let (blocks, bs, bs_at) = if long {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bd[0..8]);
            (
                u64::from_be_bytes(a),
                u32::from_be_bytes([bd[12], bd[13], bd[14], bd[15]]),
                12,
            )
        } else {
            (
                u64::from(u32::from_be_bytes([bd[0], bd[1], bd[2], bd[3]])),
                u32::from_be_bytes([0, bd[5], bd[6], bd[7]]),
                5,
            )
        };
        let current = if long {
            lun.num_blocks()
        } else {
            lun.num_blocks().min(u64::from(u32::MAX))
        };
        if blocks != 0 && blocks != current {
            return Err(Sense::invalid_param_field(hdr as u16, None).into());
        }
        if bs != lun.block_size() {
            return Err(Sense::invalid_param_field((hdr + bs_at) as u16, None).into());
        }
    }
    let mask_state = ModeState::new(&lun.config);
    let mut new = cur.clone();
    let mut pos = hdr + bd_len;
    let mut seen: Vec<(u8, u8)> = Vec::new();
    while pos < list.len() {
        let rest = &list[pos..];
        if rest.len() < 2 {
            return Err(length_error());
        }
        let code = rest[0] & 0x3f;
        let spf = rest[0] & 0x40 != 0;
        let (sub, plen, hl, len_at) = if spf {
            if rest.len() < 4 {
                return Err(length_error());
            }
            (rest[1], be16(rest, 2), 4, pos + 2)
        } else {
            (0, usize::from(rest[1]), 2, pos + 1)
        };
        let known = PAGES.contains(&(code, sub)) && (spf == (sub != 0));
        if !known {
            let at = if spf && PAGES.iter().any(|&(c, _)| c == code) {
                (pos + 1, None)
            } else {
                (pos, Some(5))
            };
            return Err(Sense::invalid_param_field(at.0 as u16, at.1).into());
        }
        let curp = build(code, sub, &new, false);
        if hl + plen != curp.len() {
            return Err(Sense::invalid_param_field(len_at as u16, None).into());
        }
        if rest.len() < curp.len() {
            return Err(length_error());
        }
        if seen.contains(&(code, sub)) {
            return Err(Sense::invalid_param_field(pos as u16, Some(5)).into());
        }
        seen.push((code, sub));
        let maskp = build(code, sub, &mask_state, true);
        let newp = &rest[..curp.len()];
        for i in hl..curp.len() {
            let bad = (newp[i] ^ curp[i]) & !maskp[i];
            if bad != 0 {
                return Err(
                    Sense::invalid_param_field((pos + i) as u16, Some(top_bit(bad))).into(),
                );
            }
        }
        match (code, sub) {
            (0x08, 0) => new.wce = newp[2] & 0x04 != 0,
            (0x0a, 0) => {
                new.d_sense = newp[2] & 0x04 != 0;
                new.swp = newp[4] & 0x08 != 0;
            }
            _ => {}
        }
        pos += curp.len();
    }
    Ok(new)
}

fn mode_select(ctx: &mut CmdCtx<'_>, ten: bool) -> ExecResult {
    let cdb = ctx.cdb;
    if cdb[1] & 0x01 != 0 {
        // SP: we cannot save pages.
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    let len = if ten {
        be16(cdb, 7)
    } else {
        usize::from(cdb[4])
    };
    if len == 0 {
        return Ok(Exec::Good(0));
    }
    let list = ctx.data_out(len);
    let lun = ctx.lun;
    let changed = {
        let _g = lun.mode.lock();
        let cur = lun.mode.get();
        let new = parse_select(lun, &cur, &list, ten)?;
        lun.mode.set(&new);
        new != cur
    };
    if changed {
        lun.ua
            .establish_all(asc::MODE_PARAMETERS_CHANGED, Some(&ctx.nexus.key));
    }
    Ok(Exec::Good(u32::try_from(list.len()).unwrap_or(u32::MAX)))
}

pub(crate) fn mode_select6(ctx: &mut CmdCtx<'_>) -> ExecResult {
    mode_select(ctx, false)
}

pub(crate) fn mode_select10(ctx: &mut CmdCtx<'_>) -> ExecResult {
    mode_select(ctx, true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::ram::RamBackend;

    use super::*;
    use crate::cmd::{CmdResponse, DataDir};
    use crate::sense::{FieldPointer, SenseKey};
    use crate::testutil::{assert_check, assert_good, uuid_for, Fixture};

    fn sense6(dbd: bool, pc: u8, page: u8, sub: u8, alloc: u8) -> [u8; 6] {
        [0x1a, u8::from(dbd) << 3, (pc << 6) | page, sub, alloc, 0]
    }

    fn sense10(llbaa: bool, dbd: bool, pc: u8, page: u8, sub: u8) -> [u8; 10] {
        let b1 = (u8::from(llbaa) << 4) | (u8::from(dbd) << 3);
        [0x5a, b1, (pc << 6) | page, sub, 0, 0, 0, 0x01, 0x00, 0]
    }

    fn select6(list: &[u8]) -> [u8; 6] {
        [0x15, 0x10, 0, 0, list.len() as u8, 0]
    }

    /// The pages after header and block descriptor of MODE SENSE(6) data.
    fn pages6(d: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 4 + usize::from(d[3]);
        while pos < d.len() {
            let spf = d[pos] & 0x40 != 0;
            let (sub, len) = if spf {
                (
                    d[pos + 1],
                    4 + usize::from(u16::from_be_bytes([d[pos + 2], d[pos + 3]])),
                )
            } else {
                (0, 2 + usize::from(d[pos + 1]))
            };
            out.push((d[pos] & 0x3f, sub, d[pos..pos + len].to_vec()));
            pos += len;
        }
        out
    }

    fn field(r: &CmdResponse) -> Option<FieldPointer> {
        r.sense_data.and_then(|s| s.field)
    }

    /// MODE SELECT(6) list: header, no block descriptor, then `pages`.
    fn list6(pages: &[&[u8]]) -> Vec<u8> {
        let mut l = vec![0u8; 4];
        for p in pages {
            l.extend_from_slice(p);
        }
        l
    }

    fn current_page(f: &mut Fixture, page: u8) -> Vec<u8> {
        let (r, d) = f.read_in(&sense6(true, 0, page, 0, 255), 255);
        assert_good(&r);
        pages6(&d).remove(0).2
    }

    #[test]
    fn mode_sense6_all_pages_with_block_descriptor() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&sense6(false, 0, 0x3f, 0, 255), 255);
        assert_good(&r);
        assert_eq!(usize::from(d[0]) + 1, d.len());
        assert_eq!(d[2], 0x10, "DPOFUA, not write-protected");
        assert_eq!(d[3], 8);
        let blocks = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        assert_eq!(u64::from(blocks), f.lun.num_blocks());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        let codes: Vec<(u8, u8)> = pages6(&d).iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(codes, vec![(0x01, 0), (0x08, 0), (0x0a, 0), (0x1c, 0)]);
        // Subpage FFh adds the control extension subpage.
        let (r, d) = f.read_in(&sense6(true, 0, 0x3f, 0xff, 255), 255);
        assert_good(&r);
        assert_eq!(d[3], 0);
        let codes: Vec<(u8, u8)> = pages6(&d).iter().map(|p| (p.0, p.1)).collect();
        assert!(codes.contains(&(0x0a, 0x01)));
        let (r, d) = f.read_in(&sense6(true, 0, 0x0a, 0x01, 255), 255);
        assert_good(&r);
        assert_eq!(pages6(&d).len(), 1);
        assert_eq!(&d[4..8], &[0x4a, 0x01, 0x00, 0x1c]);
    }

    #[test]
    fn mode_sense_page_control_values() {
        let mut f = Fixture::ram();
        let cur = current_page(&mut f, 0x08);
        assert_eq!(cur[2] & 0x04, 0x04, "WCE on by default");
        let (_, d) = f.read_in(&sense6(true, 1, 0x0a, 0, 255), 255);
        let mask = pages6(&d).remove(0).2;
        assert_eq!(mask[2], 0x04, "D_SENSE changeable");
        assert_eq!(mask[4], 0x08, "SWP changeable");
        assert_eq!(mask[3], 0, "QERR, QAM not changeable");
        let ctl = current_page(&mut f, 0x0a);
        assert_eq!(ctl[3] & 0x06, 0, "QERR 00b");
        assert_eq!(ctl[5] & 0x40, 0, "TAS 0");
        assert_eq!(&ctl[8..10], &[0xff, 0xff]);
        let (r, _) = f.read_in(&sense6(true, 2, 0x08, 0, 255), 255);
        assert_good(&r);
        let (r, _) = f.read_in(&sense6(true, 3, 0x08, 0, 255), 255);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::SAVING_PARAMETERS_NOT_SUPPORTED,
        );
    }

    #[test]
    fn mode_sense_unknown_page_or_subpage_is_invalid_field() {
        let mut f = Fixture::ram();
        let (r, _) = f.read_in(&sense6(false, 0, 0x19, 0, 255), 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(2));
        let (r, _) = f.read_in(&sense6(false, 0, 0x08, 0x05, 255), 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(3));
    }

    #[test]
    fn mode_sense_truncates_to_allocation_length() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&sense6(false, 0, 0x3f, 0, 4), 4);
        assert_good(&r);
        assert_eq!(d.len(), 4);
        assert!(usize::from(d[0]) > 3);
    }

    #[test]
    fn mode_sense10_long_lba_descriptor() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&sense10(true, false, 0, 0x08, 0), 256);
        assert_good(&r);
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
        assert_eq!(d[4] & 0x01, 1, "LONGLBA");
        assert_eq!(&d[6..8], &[0, 16]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[8..16]);
        assert_eq!(u64::from_be_bytes(b), f.lun.num_blocks());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
        assert_eq!(d[24], 0x08);
        let (r, d) = f.read_in(&sense10(false, true, 0, 0x08, 0), 256);
        assert_good(&r);
        assert_eq!(&d[6..8], &[0, 0]);
        assert_eq!(d[8], 0x08);
    }

    #[test]
    fn read_only_lun_reports_wp() {
        let mut c = LunConfig::new("ro", uuid_for("ro"));
        c.read_only = true;
        let mut f = Fixture::with(c, Arc::new(RamBackend::new(1 << 20)));
        let (r, d) = f.read_in(&sense6(false, 0, 0x3f, 0, 255), 255);
        assert_good(&r);
        assert_eq!(d[2] & 0x80, 0x80);
    }

    #[test]
    fn mode_select_wce_changes_and_tells_other_nexuses() {
        let mut f = Fixture::ram();
        let n2 = f.second_nexus("iqn.x:two,i,0x1");
        let mut page = current_page(&mut f, 0x08);
        page[2] &= !0x04;
        let list = list6(&[&page]);
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list.clone());
        assert_good(&r);
        assert!(!write_cache_enabled(&f.lun));
        assert_eq!(current_page(&mut f, 0x08)[2] & 0x04, 0);
        let (r, _) = f.run_on(&n2, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(&r, SenseKey::UnitAttention, asc::MODE_PARAMETERS_CHANGED);
        // The originator got no unit attention; the same list again changes nothing.
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list.clone());
        assert_good(&r);
        let (r, _) = f.run_on(&n2, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_good(&r);
        // LOGICAL UNIT RESET restores the default.
        crate::spc::on_lun_reset(&f.lun);
        assert!(write_cache_enabled(&f.lun));
    }

    #[test]
    fn mode_select_d_sense_switches_sense_format() {
        let mut f = Fixture::ram();
        let mut page = current_page(&mut f, 0x0a);
        page[2] |= 0x04;
        let list = list6(&[&page]);
        assert_good(&f.run(&select6(&list), DataDir::ToDevice, list).0);
        let (r, _) = f.read_in(&[0x12, 0, 0x80, 0, 255, 0], 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(r.sense.as_ref().map(|s| s[0]), Some(0x72));
    }

    #[test]
    fn mode_select_swp_write_protects() {
        let mut f = Fixture::ram();
        let mut page = current_page(&mut f, 0x0a);
        page[4] |= 0x08;
        let list = list6(&[&page]);
        assert_good(&f.run(&select6(&list), DataDir::ToDevice, list).0);
        assert!(write_protected(&f.lun));
        let (r, d) = f.read_in(&sense6(true, 0, 0x0a, 0, 255), 255);
        assert_good(&r);
        assert_eq!(d[2] & 0x80, 0x80);
        let w = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let (r, _) = f.run(&w, DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::DataProtect, asc::WRITE_PROTECTED);
    }

    #[test]
    fn mode_select_refuses_non_changeable_fields() {
        let mut f = Fixture::ram();
        let mut page = current_page(&mut f, 0x0a);
        page[3] |= 0x02; // QERR 01b
        let list = list6(&[&page]);
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        let p = field(&r).expect("field pointer");
        assert!(!p.cdb);
        assert_eq!((p.byte, p.bit), (4 + 3, Some(1)));
        // Nothing changed.
        assert_eq!(current_page(&mut f, 0x0a)[3] & 0x02, 0);
    }

    #[test]
    fn mode_select_list_errors() {
        let mut f = Fixture::ram();
        // Unknown page.
        let list = list6(&[&[0x19, 0x02, 0, 0]]);
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        assert_eq!(field(&r).map(|p| p.byte), Some(4));
        // Wrong page length.
        let list = list6(&[&[0x08, 0x04, 0, 0, 0, 0]]);
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        assert_eq!(field(&r).map(|p| p.byte), Some(5));
        // A page cut short by the end of the list.
        let page = current_page(&mut f, 0x08);
        let list = list6(&[&page[..10]]);
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::PARAMETER_LIST_LENGTH_ERROR,
        );
        // Shorter than the header.
        let (r, _) = f.run(&[0x15, 0x10, 0, 0, 2, 0], DataDir::ToDevice, vec![0, 0]);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::PARAMETER_LIST_LENGTH_ERROR,
        );
        // Block descriptor with another block size.
        let mut list = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        let (r, _) = f.run(&select6(&list), DataDir::ToDevice, list.clone());
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        assert_eq!(field(&r).map(|p| p.byte), Some(9));
        list[10] = 0x02;
        assert_good(&f.run(&select6(&list), DataDir::ToDevice, list).0);
        // SP=1: no saved pages.
        let (r, _) = f.run(&[0x15, 0x11, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // Zero length is no error.
        assert_good(&f.run(&[0x15, 0x10, 0, 0, 0, 0], DataDir::None, vec![]).0);
    }

    #[test]
    fn mode_select10_with_subpage() {
        let mut f = Fixture::ram();
        let (_, d) = f.read_in(&sense10(false, true, 0, 0x0a, 0x01), 256);
        let mut list = vec![0u8; 8];
        list.extend_from_slice(&d[8..]);
        let l = (list.len() as u16).to_be_bytes();
        let cdb = [0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0];
        assert_good(&f.run(&cdb, DataDir::ToDevice, list.clone()).0);
        list[8 + 4] = 0x01; // TCMOS: not changeable
        let (r, _) = f.run(&cdb, DataDir::ToDevice, list);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        assert_eq!(field(&r).map(|p| p.byte), Some(12));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any parameter list is either refused or yields values; never a panic.
        #[test]
        fn parse_select_never_panics(
            list in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            ten in proptest::prelude::any::<bool>(),
        ) {
            let f = Fixture::ram();
            let cur = f.lun.mode.get();
            let _ = parse_select(&f.lun, &cur, &list, ten);
        }

        /// A valid page with only changeable bits flipped is accepted.
        #[test]
        fn changeable_bits_are_accepted(wce in proptest::prelude::any::<bool>(),
                                        d_sense in proptest::prelude::any::<bool>()) {
            let f = Fixture::ram();
            let cur = f.lun.mode.get();
            let want = ModeState { wce, d_sense, swp: false };
            let mut list = vec![0u8; 4];
            list.extend(build(0x08, 0, &want, false));
            list.extend(build(0x0a, 0, &want, false));
            let got = parse_select(&f.lun, &cur, &list, false);
            proptest::prop_assert_eq!(got, Ok(want));
        }
    }
}
