//! MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-4 6.11-6.14) and the mode
//! pages of one LUN: read-write error recovery (01h), caching (08h), control
//! (0Ah) and control extension (0Ah/01h), informational exceptions control (1Ch).
//!
//! Changeable: caching WCE (writes are FUA while it is clear, see
//! [`write_cache_enabled`]), control D_SENSE (sense data format) and control SWP
//! (software write protect, see [`write_protected`]). Nothing is savable: PC=11b
//! and SP=1 are refused. A LOGICAL UNIT RESET restores the default values.

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

fn state(lun: &Lun) -> std::sync::MutexGuard<'_, ModeState> {
    lun.mode.lock().unwrap_or_else(|e| e.into_inner())
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
/// write must reach stable storage before it completes (FUA).
pub fn write_cache_enabled(lun: &Lun) -> bool {
    state(lun).wce
}

/// Whether writes are refused with DATA PROTECT, WRITE PROTECTED: the LUN is
/// configured read-only, or the control page's SWP bit is set.
pub fn write_protected(lun: &Lun) -> bool {
    lun.config.read_only || state(lun).swp
}

/// LOGICAL UNIT RESET: current values return to the defaults (there are no saved
/// values).
pub(crate) fn on_lun_reset(lun: &Lun) {
    *state(lun) = ModeState::new(&lun.config);
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

/// The sense format a LUN uses now, and MODE SENSE's header and block descriptor
/// as used by the worker's tests.
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
        let mut st = state(lun);
        let new = parse_select(lun, &st, &list, ten)?;
        let changed = new != *st;
        *st = new;
        changed
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
