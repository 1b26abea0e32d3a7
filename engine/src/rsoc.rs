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
