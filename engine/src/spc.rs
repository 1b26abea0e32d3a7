//! SPC-4 primary commands that every device type has: TEST UNIT READY, INQUIRY,
//! REQUEST SENSE, REPORT LUNS, and the medium state (START STOP UNIT, PREVENT
//! ALLOW MEDIUM REMOVAL). (Being completed: VPD pages, MODE, RSOC, RSTMF, RTPG.)

use crate::cmd::{CmdResponse, ScsiCmd};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::Lun;
use crate::nexus::Nexus;
use crate::opcodes::{flags, OpInfo};
use crate::sense::{asc, CmdError, Sense, SenseKey};

/// Whether the medium is started, and who prevents its removal.
#[derive(Debug, Default)]
pub struct MediaState {
    /// STOP (START STOP UNIT with START=0) was received: medium commands get NOT READY.
    pub stopped: bool,
}

/// NOT READY if the unit was stopped.
pub(crate) fn check_ready(lun: &Lun) -> Result<(), CmdError> {
    let m = lun.media.lock().unwrap_or_else(|e| e.into_inner());
    if m.stopped {
        return Err(
            Sense::new(SenseKey::NotReady, asc::LUN_NOT_READY_INITIALIZING_REQUIRED).into(),
        );
    }
    Ok(())
}

/// LOGICAL UNIT RESET side effects on SPC state.
pub(crate) fn on_lun_reset(_lun: &Lun) {}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(n).collect();
    v.resize(n, b' ');
    v
}

fn test_unit_ready(_ctx: &mut CmdCtx<'_>) -> ExecResult {
    Ok(Exec::Good(0))
}

/// Standard INQUIRY data (SPC-4 6.6.2).
pub(crate) fn standard_inquiry(lun: &Lun) -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = 0x00; // connected, direct access block device
    d[1] = if lun.config.removable { 0x80 } else { 0 };
    d[2] = 0x06; // SPC-4
    d[3] = 0x02; // response data format 2
    d[4] = 31;
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(&pad(&lun.config.vendor, 8));
    d[16..32].copy_from_slice(&pad(&lun.config.product, 16));
    d[32..36].copy_from_slice(&pad(&lun.config.revision, 4));
    d
}

fn inquiry(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(be16(cdb, 3));
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    if cdb[2] != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let mut d = standard_inquiry(ctx.lun);
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

fn report_luns_data(nexus: &Nexus) -> Vec<u8> {
    let nums = nexus.luns.numbers();
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&((nums.len() * 8) as u32).to_be_bytes());
    for n in nums {
        d.extend_from_slice(&encode_lun(n));
    }
    d
}

/// SAM-5 LUN encoding: peripheral addressing below 256, flat addressing below 16384.
pub fn encode_lun(n: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if n < 256 {
        b[1] = n as u8;
    } else {
        b[0] = 0x40 | ((n >> 8) & 0x3f) as u8;
        b[1] = n as u8;
    }
    b
}

fn report_luns(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let alloc = be32(ctx.cdb, 6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None).into());
    }
    let mut d = report_luns_data(ctx.nexus);
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

fn request_sense(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let alloc = usize::from(ctx.cdb[4]);
    let s = match ctx.lun.ua.pop(&ctx.nexus.key) {
        Some(a) => Sense::unit_attention(a),
        None => Sense::new(SenseKey::NoSense, asc::NO_ADDITIONAL_SENSE),
    };
    let desc = ctx.cdb[1] & 0x01 != 0;
    let mut d = if desc {
        s.to_descriptor()
    } else {
        s.to_fixed()
    };
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// The answer for a command addressed to a LUN the target port does not map
/// (SPC-4 6.6.2: INQUIRY reports peripheral qualifier 011b; 6.33: REPORT LUNS works
/// whatever LUN it is sent to; 6.39: REQUEST SENSE reports LOGICAL UNIT NOT
/// SUPPORTED as its data; anything else fails with that sense).
pub(crate) fn no_such_lun(nexus: &Nexus, cmd: &mut ScsiCmd) -> CmdResponse {
    let cdb = cmd.cdb;
    let cdb = cdb.as_slice();
    let unsupported = Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED);
    let data: Option<Vec<u8>> = match cdb[0] {
        0x12 if cdb.len() >= 6 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            d.truncate(usize::from(be16(cdb, 3)));
            Some(d)
        }
        0xa0 if cdb.len() >= 12 => {
            let mut d = report_luns_data(nexus);
            d.truncate(be32(cdb, 6) as usize);
            Some(d)
        }
        0x03 if cdb.len() >= 6 => {
            let mut d = unsupported.to_fixed();
            d.truncate(usize::from(cdb[4]));
            Some(d)
        }
        _ => None,
    };
    match data {
        Some(d) => crate::worker::data_response(&d, cmd),
        None => crate::worker::check_response(unsupported, cmd),
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
        usage: &[0x12, 0x01, 0xff, 0xff, 0xff, 0x07],
        handler: inquiry,
        flags: flags::UA_EXEMPT,
    },
    OpInfo {
        opcode: 0xa0,
        service_action: None,
        name: "REPORT LUNS",
        usage: &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
        handler: report_luns,
        flags: flags::UA_EXEMPT,
    },
];
