//! SPC-4 primary commands that every device type has: TEST UNIT READY, INQUIRY
//! (with the VPD pages of `vpd.rs`), REQUEST SENSE, REPORT LUNS, MODE SENSE/SELECT
//! (`mode.rs`), the MAINTENANCE IN reports (`rsoc.rs`), and the medium state:
//! START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.25, SPC-4 6.13).
//!
//! Medium state: a non-removable LUN that receives STOP (START=0) answers medium
//! commands with NOT READY, INITIALIZING COMMAND REQUIRED until START. A removable
//! LUN (RMB=1) ejects with LOEJ=1 START=0 (NOT READY, MEDIUM NOT PRESENT until
//! LOEJ=1 START=1), unless an I_T nexus prevents removal; a plain STOP without
//! LOEJ leaves its medium accessible, as libiscsi's StartStopUnit.NoLoej expects.

use std::collections::BTreeSet;

use backends::IoOp;

use crate::cmd::{CmdResponse, ScsiCmd};
use crate::exec::{CmdCtx, Exec, ExecResult, IoBuf, SingleIo};
use crate::lun::Lun;
use crate::nexus::{Nexus, NexusKey};
use crate::opcodes::{flags, OpInfo};
use crate::sense::{asc, CmdError, Sense, SenseKey};

/// Whether the medium is started and present, and who prevents its removal.
#[derive(Debug, Default)]
pub struct MediaState {
    /// STOP (START STOP UNIT with START=0) was received on a non-removable LUN:
    /// medium commands get NOT READY, INITIALIZING COMMAND REQUIRED.
    pub stopped: bool,
    /// A removable medium was ejected (LOEJ=1, START=0): MEDIUM NOT PRESENT.
    pub ejected: bool,
    /// The I_T nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT=01b.
    pub prevent: BTreeSet<NexusKey>,
}

fn media(lun: &Lun) -> std::sync::MutexGuard<'_, MediaState> {
    lun.media.lock().unwrap_or_else(|e| e.into_inner())
}

/// The NOT READY sense of the medium state, if the medium cannot be accessed.
fn not_ready(lun: &Lun) -> Option<Sense> {
    let m = media(lun);
    if m.ejected {
        Some(Sense::new(SenseKey::NotReady, asc::MEDIUM_NOT_PRESENT))
    } else if m.stopped {
        Some(Sense::new(
            SenseKey::NotReady,
            asc::LUN_NOT_READY_INITIALIZING_REQUIRED,
        ))
    } else {
        None
    }
}

/// NOT READY if the medium was ejected or the unit stopped.
pub(crate) fn check_ready(lun: &Lun) -> Result<(), CmdError> {
    match not_ready(lun) {
        Some(s) => Err(s.into()),
        None => Ok(()),
    }
}

/// LOGICAL UNIT RESET side effects on SPC state: medium removal prevention is
/// cleared (SPC-4 6.13) and mode parameters return to their defaults.
pub(crate) fn on_lun_reset(lun: &Lun) {
    media(lun).prevent.clear();
    crate::mode::on_lun_reset(lun);
}

/// I_T nexus loss: the prevention that nexus held is cleared (SPC-4 6.13).
/// `tmf::nexus_loss` is to call it (the task management owner wires it).
#[allow(dead_code)]
pub(crate) fn on_nexus_loss(lun: &Lun, key: &NexusKey) {
    media(lun).prevent.remove(key);
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        .try_into()
        .unwrap_or(usize::MAX)
}

fn test_unit_ready(_ctx: &mut CmdCtx<'_>) -> ExecResult {
    // The worker's MEDIUM check answers NOT READY when the medium is not ready.
    Ok(Exec::Good(0))
}

fn inquiry(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(be16(cdb, 3));
    if cdb[1] & 0x02 != 0 {
        // CmdDt is obsolete since SPC-3.
        return Err(Sense::invalid_cdb_field(1, Some(1)).into());
    }
    let mut d = if cdb[1] & 0x01 == 0 {
        if cdb[2] != 0 {
            return Err(Sense::invalid_cdb_field(2, None).into());
        }
        crate::vpd::standard_inquiry(ctx.lun, ctx.nexus)
    } else {
        crate::vpd::page(ctx.lun, ctx.nexus, cdb[2]).ok_or(Sense::invalid_cdb_field(2, None))?
    };
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// REPORT LUNS parameter data for a CDB, or the CDB field at fault.
fn report_luns_data(nexus: &Nexus, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    let alloc = be32(cdb, 6);
    // SELECT REPORT (SPC-4 6.33, SPC-5 table 330): 00h all LUNs but well-known
    // ones, 02h all; 01h well-known LUNs only, 10h-12h administrative LUNs and
    // their subsidiaries: we have none of those, so the list is empty.
    let nums = match cdb[2] {
        0x00 | 0x02 => nexus.luns.numbers(),
        0x01 | 0x10 | 0x11 | 0x12 => Vec::new(),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    let mut d = vec![0u8; 8];
    let len = u32::try_from(nums.len().saturating_mul(8)).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&len.to_be_bytes());
    for n in nums {
        d.extend_from_slice(&encode_lun(n));
    }
    d.truncate(alloc);
    Ok(d)
}

/// SAM-5 LUN encoding: peripheral addressing below 256, flat space below 16384,
/// extended flat space below 2^24, long extended flat space above.
pub fn encode_lun(n: u64) -> [u8; 8] {
    let b = n.to_be_bytes();
    if n < 256 {
        [0, b[7], 0, 0, 0, 0, 0, 0]
    } else if n < 0x4000 {
        [0x40 | (b[6] & 0x3f), b[7], 0, 0, 0, 0, 0, 0]
    } else if n < 0x100_0000 {
        [0xd2, b[5], b[6], b[7], 0, 0, 0, 0]
    } else {
        [0xe2, b[3], b[4], b[5], b[6], b[7], 0, 0]
    }
}

fn report_luns(ctx: &mut CmdCtx<'_>) -> ExecResult {
    Ok(Exec::Data(report_luns_data(ctx.nexus, ctx.cdb)?))
}

fn request_sense(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(cdb[4]);
    let s = match ctx.lun.ua.pop(&ctx.nexus.key) {
        Some(a) => Sense::unit_attention(a),
        None => {
            not_ready(ctx.lun).unwrap_or(Sense::new(SenseKey::NoSense, asc::NO_ADDITIONAL_SENSE))
        }
    };
    let mut d = if cdb[1] & 0x01 != 0 {
        s.to_descriptor()
    } else {
        s.to_fixed()
    };
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// A flush of the write cache as a job (START STOP UNIT without NO_FLUSH).
fn flush_job() -> ExecResult {
    Ok(Exec::Job(Box::new(SingleIo {
        op: IoOp::Flush,
        buf: IoBuf::None,
        wanted: 0,
        range: None,
        write: true,
    })))
}

fn start_stop_unit(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let power_condition = cdb[4] >> 4;
    let no_flush = cdb[4] & 0x04 != 0;
    let loej = cdb[4] & 0x02 != 0;
    let start = cdb[4] & 0x01 != 0;
    // IMMED (byte 1 bit 0): everything here completes at once anyway.
    if power_condition != 0 {
        // SBC-3 5.25: START and LOEJ are ignored. We have no power conditions
        // to enter; libiscsi expects GOOD for every value.
        return Ok(Exec::Good(0));
    }
    let lun = ctx.lun;
    let removable = lun.config.removable;
    if loej && !removable {
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    {
        let mut m = media(lun);
        match (start, loej) {
            (true, true) => {
                m.ejected = false;
                m.stopped = false;
            }
            (true, false) => m.stopped = false,
            (false, true) => {
                if !m.prevent.is_empty() {
                    return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED).into());
                }
                m.ejected = true;
            }
            (false, false) => {
                if !removable {
                    m.stopped = true;
                }
            }
        }
    }
    if !start && !no_flush {
        return flush_job();
    }
    Ok(Exec::Good(0))
}

fn prevent_allow(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let prevent = ctx.cdb[4] & 0x03;
    if prevent > 1 {
        // 10b and 11b are obsolete.
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    if !ctx.lun.config.removable {
        // Nothing to prevent: allowing is harmless, preventing is refused.
        return if prevent == 0 {
            Ok(Exec::Good(0))
        } else {
            Err(Sense::invalid_cdb_field(4, Some(0)).into())
        };
    }
    let mut m = media(ctx.lun);
    if prevent == 1 {
        m.prevent.insert(ctx.nexus.key.clone());
    } else {
        m.prevent.remove(&ctx.nexus.key);
    }
    Ok(Exec::Good(0))
}

/// The answer for a command addressed to a LUN the target port does not map
/// (SPC-4 6.6.2: INQUIRY reports peripheral qualifier 011b; 6.33: REPORT LUNS works
/// whatever LUN it is sent to; 6.39: REQUEST SENSE reports LOGICAL UNIT NOT
/// SUPPORTED as its data; anything else fails with that sense).
pub(crate) fn no_such_lun(nexus: &Nexus, cmd: &mut ScsiCmd) -> CmdResponse {
    let cdb = cmd.cdb;
    let cdb = cdb.as_slice();
    let unsupported = Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED);
    let data: Result<Vec<u8>, Sense> = match cdb[0] {
        0x12 if cdb.len() >= 6 => {
            let d = if cdb[1] & 0x01 != 0 {
                // A VPD page header with nothing in it.
                Ok(vec![0x7f, cdb[2], 0, 0])
            } else if cdb[2] != 0 {
                Err(Sense::invalid_cdb_field(2, None))
            } else {
                let mut d = vec![0u8; 36];
                d[0] = 0x7f;
                d[2] = 0x06;
                d[3] = 0x12;
                d[4] = 31;
                Ok(d)
            };
            d.map(|mut d| {
                d.truncate(usize::from(be16(cdb, 3)));
                d
            })
        }
        0xa0 if cdb.len() >= 12 => report_luns_data(nexus, cdb),
        0x03 if cdb.len() >= 6 => {
            let mut d = if cdb[1] & 0x01 != 0 {
                unsupported.to_descriptor()
            } else {
                unsupported.to_fixed()
            };
            d.truncate(usize::from(cdb[4]));
            Ok(d)
        }
        _ => Err(unsupported),
    };
    match data {
        Ok(d) => crate::worker::data_response(&d, cmd),
        Err(s) => crate::worker::check_response(s, cmd),
    }
}

pub(crate) const OPS: &[OpInfo] = &[
    OpInfo {
        opcode: 0x00,
        service_action: None,
        name: "TEST UNIT READY",
        usage: &[0x00, 0, 0, 0, 0, 0x07],
        handler: test_unit_ready,
        flags: flags::MEDIUM,
    },
    OpInfo {
        opcode: 0x03,
        service_action: None,
        name: "REQUEST SENSE",
        usage: &[0x03, 0x01, 0, 0, 0xff, 0x07],
        handler: request_sense,
        flags: flags::UA_EXEMPT,
    },
    OpInfo {
        opcode: 0x12,
        service_action: None,
        name: "INQUIRY",
        usage: &[0x12, 0x03, 0xff, 0xff, 0xff, 0x07],
        handler: inquiry,
        flags: flags::UA_EXEMPT,
    },
    OpInfo {
        opcode: 0x15,
        service_action: None,
        name: "MODE SELECT(6)",
        usage: &[0x15, 0x11, 0, 0, 0xff, 0x07],
        handler: crate::mode::mode_select6,
        flags: 0,
    },
    OpInfo {
        opcode: 0x1a,
        service_action: None,
        name: "MODE SENSE(6)",
        usage: &[0x1a, 0x08, 0xff, 0xff, 0xff, 0x07],
        handler: crate::mode::mode_sense6,
        flags: 0,
    },
    OpInfo {
        opcode: 0x1b,
        service_action: None,
        name: "START STOP UNIT",
        usage: &[0x1b, 0x01, 0, 0x0f, 0xf7, 0x07],
        handler: start_stop_unit,
        flags: 0,
    },
    OpInfo {
        opcode: 0x1e,
        service_action: None,
        name: "PREVENT ALLOW MEDIUM REMOVAL",
        usage: &[0x1e, 0, 0, 0, 0x03, 0x07],
        handler: prevent_allow,
        flags: 0,
    },
    OpInfo {
        opcode: 0x55,
        service_action: None,
        name: "MODE SELECT(10)",
        usage: &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
        handler: crate::mode::mode_select10,
        flags: 0,
    },
    OpInfo {
        opcode: 0x5a,
        service_action: None,
        name: "MODE SENSE(10)",
        usage: &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07],
        handler: crate::mode::mode_sense10,
        flags: 0,
    },
    OpInfo {
        opcode: 0xa0,
        service_action: None,
        name: "REPORT LUNS",
        usage: &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
        handler: report_luns,
        flags: flags::UA_EXEMPT,
    },
    OpInfo {
        opcode: 0xa3,
        service_action: Some(0x0a),
        name: "REPORT TARGET PORT GROUPS",
        usage: &[0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
        handler: crate::rsoc::report_target_port_groups,
        flags: 0,
    },
    OpInfo {
        opcode: 0xa3,
        service_action: Some(0x0c),
        name: "REPORT SUPPORTED OPERATION CODES",
        usage: &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
        handler: crate::rsoc::report_supported_opcodes,
        flags: 0,
    },
    OpInfo {
        opcode: 0xa3,
        service_action: Some(0x0d),
        name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        usage: &[0xa3, 0x0d, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
        handler: crate::rsoc::report_supported_tmfs,
        flags: 0,
    },
];
