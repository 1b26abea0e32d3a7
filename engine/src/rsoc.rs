//! MAINTENANCE IN service actions: REPORT SUPPORTED OPERATION CODES (SPC-4 6.35),
//! built from the one opcode table and nothing else; REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS (6.36), matching what `tmf.rs` implements; REPORT TARGET
//! PORT GROUPS (6.37), one active/optimized group per target port (implicit ALUA).

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::opcodes::{self, OpInfo};
use crate::sense::{CmdError, Sense};

fn alloc_len(cdb: &[u8]) -> usize {
    u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]])
        .try_into()
        .unwrap_or(usize::MAX)
}

/// Recommended timeout reported in the command timeouts descriptor, seconds.
const RECOMMENDED_TIMEOUT_S: u32 = 30;

/// Command timeouts descriptor (SPC-4 6.35.4): 12 bytes, DESCRIPTOR LENGTH 0Ah.
fn timeouts_descriptor(out: &mut Vec<u8>) {
    out.extend_from_slice(&0x0au16.to_be_bytes());
    out.push(0); // reserved
    out.push(0); // command specific
    out.extend_from_slice(&0u32.to_be_bytes()); // nominal: not specified
    out.extend_from_slice(&RECOMMENDED_TIMEOUT_S.to_be_bytes());
}

/// All-commands parameter data (reporting options 000b).
fn all_commands(rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for op in opcodes::all() {
        d.push(op.opcode);
        d.push(0);
        d.extend_from_slice(&op.service_action.unwrap_or(0).to_be_bytes());
        d.push(0);
        let mut f = 0u8;
        if rctd {
            f |= 0x02; // CTDP
        }
        if op.service_action.is_some() {
            f |= 0x01; // SERVACTV
        }
        d.push(f);
        d.extend_from_slice(&(op.cdb_len() as u16).to_be_bytes());
        if rctd {
            timeouts_descriptor(&mut d);
        }
    }
    let n = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d
}

/// One-command parameter data: SUPPORT 011b with the usage data, or 001b.
fn one_command(op: Option<&OpInfo>, rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    match op {
        Some(op) => {
            d[1] = 0x03; // SUPPORT: supported as the standard says
            if rctd {
                d[1] |= 0x80; // CTDP
            }
            d[2..4].copy_from_slice(&(op.cdb_len() as u16).to_be_bytes());
            d.extend_from_slice(op.usage);
            if rctd {
                timeouts_descriptor(&mut d);
            }
        }
        None => d[1] = 0x01, // SUPPORT: not supported
    }
    d
}

pub(crate) fn report_supported_opcodes(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let opcode = cdb[3];
    let sa = u16::from_be_bytes([cdb[4], cdb[5]]);
    let has_sa = opcodes::opcode_has_service_actions(opcode);
    let mut d = match options {
        0 => all_commands(rctd),
        1 => {
            if has_sa {
                return Err(Sense::invalid_cdb_field(3, None).into());
            }
            one_command(opcodes::find(opcode, None), rctd)
        }
        2 => {
            if !has_sa && opcodes::find(opcode, None).is_some() {
                return Err(Sense::invalid_cdb_field(3, None).into());
            }
            one_command(opcodes::find(opcode, Some(sa)), rctd)
        }
        3 => {
            let op = if has_sa {
                opcodes::find(opcode, Some(sa))
            } else {
                opcodes::find(opcode, None)
            };
            one_command(op, rctd)
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2)).into()),
    };
    d.truncate(alloc_len(cdb));
    Ok(Exec::Data(d))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET, CLEAR
/// TASK SET, LOGICAL UNIT RESET, QUERY TASK, TARGET RESET, QUERY ASYNCHRONOUS
/// EVENT, QUERY TASK SET, I_T NEXUS RESET. CLEAR ACA is rejected (NormACA=0).
pub(crate) fn report_supported_tmfs(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let repd = cdb[2] & 0x80 != 0;
    let alloc = alloc_len(cdb);
    if alloc < 4 {
        return Err(Sense::invalid_cdb_field(6, None).into());
    }
    let mut d = vec![0u8; if repd { 16 } else { 4 }];
    // ATS, ATSS, (CACAS=0), CTSS, LURS, QTS, TRS, (WAKES=0)
    d[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x04 | 0x02;
    // QAES, QTSS, ITNRS
    d[1] = 0x04 | 0x02 | 0x01;
    if repd {
        d[3] = 0x0c; // ADDITIONAL DATA LENGTH; TMFTMOV=0: no timeouts reported
    }
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// REPORT TARGET PORT GROUPS: the group of the port the command came through,
/// active/optimized, with that one port in it.
pub(crate) fn report_target_port_groups(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let extended = match cdb[1] >> 5 {
        0 => false,
        1 => true,
        _ => return Err(CmdError::Check(Sense::invalid_cdb_field(1, Some(7)))),
    };
    let port = &ctx.nexus.target;
    let mut d = vec![0u8; 4];
    if extended {
        d.extend_from_slice(&[0x10, 0, 0, 0]); // FORMAT TYPE 001b, no transition time
    }
    d.push(0x00); // PREF=0, ASYMMETRIC ACCESS STATE 0h: active/optimized
    d.push(0x01); // AO_SUP
    d.extend_from_slice(&port.group_id.to_be_bytes());
    d.push(0);
    d.push(0); // STATUS CODE: none
    d.push(0);
    d.push(1); // TARGET PORT COUNT
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&port.relative_id.to_be_bytes());
    let n = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d.truncate(alloc_len(cdb));
    Ok(Exec::Data(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::CmdResponse;
    use crate::sense::{asc, FieldPointer, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
        let s = sa.to_be_bytes();
        let a = alloc.to_be_bytes();
        [
            0xa3,
            0x0c,
            (u8::from(rctd) << 7) | options,
            opcode,
            s[0],
            s[1],
            a[0],
            a[1],
            a[2],
            a[3],
            0,
            0,
        ]
    }

    fn maint_in(sa: u8, b1_high: u8, b2: u8, alloc: u32) -> [u8; 12] {
        let a = alloc.to_be_bytes();
        [
            0xa3,
            b1_high | sa,
            b2,
            0,
            0,
            0,
            a[0],
            a[1],
            a[2],
            a[3],
            0,
            0,
        ]
    }

    fn field(r: &CmdResponse) -> Option<FieldPointer> {
        r.sense_data.and_then(|s| s.field)
    }

    #[test]
    fn all_commands_lists_every_table_row() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rsoc(false, 0, 0, 0, 65535), 65535);
        assert_good(&r);
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len + 4, d.len());
        let rows: Vec<&OpInfo> = opcodes::all().collect();
        assert_eq!(len, rows.len() * 8);
        for (i, op) in rows.iter().enumerate() {
            let e = &d[4 + 8 * i..12 + 8 * i];
            assert_eq!(e[0], op.opcode);
            assert_eq!(
                u16::from_be_bytes([e[2], e[3]]),
                op.service_action.unwrap_or(0)
            );
            assert_eq!(e[5], u8::from(op.service_action.is_some()), "{}", op.name);
            assert_eq!(usize::from(u16::from_be_bytes([e[6], e[7]])), op.cdb_len());
        }
        // With RCTD every descriptor carries a 12-byte timeouts descriptor.
        let (r, d) = f.read_in(&rsoc(true, 0, 0, 0, 65535), 65535);
        assert_good(&r);
        assert_eq!(d.len(), 4 + rows.len() * 20);
        assert_eq!(d[4 + 5] & 0x02, 0x02, "CTDP");
        assert_eq!(&d[12..14], &[0, 0x0a]);
        // Truncation.
        let (r, d) = f.read_in(&rsoc(false, 0, 0, 0, 10), 10);
        assert_good(&r);
        assert_eq!(d.len(), 10);
    }

    #[test]
    fn one_command_without_service_action() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rsoc(false, 1, 0x12, 0, 512), 512);
        assert_good(&r);
        let inq = opcodes::find(0x12, None).unwrap();
        assert_eq!(d[1] & 0x07, 0x03);
        assert_eq!(&d[2..4], &(inq.cdb_len() as u16).to_be_bytes());
        assert_eq!(&d[4..], inq.usage);
        // An opcode with service actions is refused with 001b.
        let (r, _) = f.read_in(&rsoc(false, 1, 0xa3, 0x0c, 512), 512);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // An opcode we do not have is "not supported".
        let (r, d) = f.read_in(&rsoc(false, 1, 0xff, 0, 512), 512);
        assert_good(&r);
        assert_eq!(d, vec![0, 0x01, 0, 0]);
        // RCTD appends the timeouts descriptor.
        let (r, d) = f.read_in(&rsoc(true, 1, 0x12, 0, 512), 512);
        assert_good(&r);
        assert_eq!(d[1] & 0x80, 0x80);
        assert_eq!(d.len(), 4 + inq.cdb_len() + 12);
    }

    #[test]
    fn one_command_with_service_action() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rsoc(false, 2, 0xa3, 0x0c, 512), 512);
        assert_good(&r);
        assert_eq!(d[1] & 0x07, 0x03);
        assert_eq!(d[4], 0xa3);
        assert_eq!(d[5] & 0x1f, 0x0c);
        let (r, d) = f.read_in(&rsoc(false, 2, 0xa3, 0x1f, 512), 512);
        assert_good(&r);
        assert_eq!(d[1] & 0x07, 0x01);
        // 010b on an opcode without service actions is refused.
        let (r, _) = f.read_in(&rsoc(false, 2, 0x12, 0, 512), 512);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // 011b accepts both.
        let (r, d) = f.read_in(&rsoc(false, 3, 0x12, 7, 512), 512);
        assert_good(&r);
        assert_eq!(d[4], 0x12);
        let (r, d) = f.read_in(&rsoc(false, 3, 0xa3, 0x0a, 512), 512);
        assert_good(&r);
        assert_eq!(d[5] & 0x1f, 0x0a);
        // Other reporting options are invalid.
        let (r, _) = f.read_in(&rsoc(false, 4, 0x12, 0, 512), 512);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| (p.byte, p.bit)), Some((2, Some(2))));
    }

    #[test]
    fn supported_task_management_functions() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&maint_in(0x0d, 0, 0, 64), 64);
        assert_good(&r);
        assert_eq!(d, vec![0xde, 0x07, 0, 0]);
        assert_eq!(d[0] & 0x20, 0, "CLEAR ACA is not supported");
        let (r, d) = f.read_in(&maint_in(0x0d, 0, 0x80, 64), 64);
        assert_good(&r);
        assert_eq!(d.len(), 16);
        assert_eq!(d[3], 0x0c);
        let (r, _) = f.read_in(&maint_in(0x0d, 0, 0, 3), 3);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn target_port_groups() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&maint_in(0x0a, 0, 0, 256), 256);
        assert_good(&r);
        assert_eq!(
            d,
            vec![0, 0, 0, 12, 0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        let (r, d) = f.read_in(&maint_in(0x0a, 0x20, 0, 256), 256);
        assert_good(&r);
        assert_eq!(d.len(), 20);
        assert_eq!(&d[0..4], &[0, 0, 0, 16]);
        assert_eq!(d[4], 0x10);
        let (r, _) = f.read_in(&maint_in(0x0a, 0x40, 0, 256), 256);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn unknown_maintenance_in_service_action() {
        let mut f = Fixture::ram();
        let (r, _) = f.read_in(&maint_in(0x05, 0, 0, 256), 256);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(1));
    }
}
