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
        None => crate::sbc::sanitize_sense(ctx.lun)
            .or_else(|| not_ready(ctx.lun))
            .unwrap_or(Sense::new(SenseKey::NoSense, asc::NO_ADDITIONAL_SENSE)),
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
        // A prevention locks the loading mechanism both ways (libiscsi's
        // PreventAllow.Eject expects a load refused too, as MMC drives do).
        if loej && !m.prevent.is_empty() {
            return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED).into());
        }
        match (start, loej) {
            (true, true) => {
                m.ejected = false;
                m.stopped = false;
            }
            (true, false) => m.stopped = false,
            (false, true) => m.ejected = true,
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
        usage: &[0x12, 0x01, 0xff, 0xff, 0xff, 0x07],
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
        usage: &[0x1b, 0x01, 0, 0, 0xf7, 0x07],
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::ram::RamBackend;

    use super::*;
    use crate::cmd::DataDir;
    use crate::lun::LunConfig;
    use crate::sense::FieldPointer;
    use crate::testutil::{assert_check, assert_good, uuid_for, Fixture};

    const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];

    fn fixture(edit: impl FnOnce(&mut LunConfig)) -> Fixture {
        let mut c = LunConfig::new("lunx", uuid_for("lunx"));
        edit(&mut c);
        Fixture::with(c, Arc::new(RamBackend::new(16 << 20)))
    }

    fn removable() -> Fixture {
        fixture(|c| c.removable = true)
    }

    fn ssu(start: bool, loej: bool, pc: u8) -> [u8; 6] {
        [
            0x1b,
            0,
            0,
            0,
            (pc << 4) | (u8::from(loej) << 1) | u8::from(start),
            0,
        ]
    }

    fn prevent(p: u8) -> [u8; 6] {
        [0x1e, 0, 0, 0, p, 0]
    }

    fn field(r: &CmdResponse) -> Option<FieldPointer> {
        r.sense_data.and_then(|s| s.field)
    }

    #[test]
    fn test_unit_ready_is_good_then_not_ready_after_stop() {
        let mut f = Fixture::ram();
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
        assert_good(&f.run(&ssu(false, false, 0), DataDir::None, vec![]).0);
        let (r, _) = f.run(&TUR, DataDir::None, vec![]);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_INITIALIZING_REQUIRED,
        );
        // Medium commands are refused too, INQUIRY is not.
        let (r, _) = f.read_in(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_INITIALIZING_REQUIRED,
        );
        assert_good(&f.read_in(&[0x12, 0, 0, 0, 96, 0], 96).0);
        assert_good(&f.run(&ssu(true, false, 0), DataDir::None, vec![]).0);
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
    }

    #[test]
    fn inquiry_standard_data() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&[0x12, 0, 0, 1, 0, 0], 256);
        assert_good(&r);
        assert_eq!(d.len(), 96);
        assert_eq!(d[0], 0x00);
        assert_eq!(d[1], 0x00, "not removable");
        assert_eq!(d[2], 0x06, "SPC-4");
        assert_eq!(d[3] & 0x0f, 0x02);
        assert_eq!(usize::from(d[4]) + 5, d.len());
        assert_eq!(d[5] & 0x30, 0x10, "TPGS implicit");
        assert_eq!(d[5] & 0x08, 0x08, "3PC");
        assert_eq!(d[5] & 0x01, 0x00, "PROTECT");
        assert_eq!(d[7] & 0x02, 0x02, "CmdQue");
        assert_eq!(&d[8..16], b"OXTARGET");
        let descs: Vec<u16> = (0..8)
            .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
            .collect();
        assert!(descs.contains(&0x0460) && descs.contains(&0x04c0));
        assert!(descs.contains(&0x0960), "iSCSI port");
        // Removable LUNs set RMB.
        let mut f = removable();
        let (_, d) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 36);
        assert_eq!(d[1], 0x80);
    }

    #[test]
    fn inquiry_allocation_length_truncates_and_is_16_bits() {
        let mut f = Fixture::ram();
        for n in [0u16, 5, 35, 255, 511, 512] {
            let l = n.to_be_bytes();
            let (r, d) = f.read_in(&[0x12, 0, 0, l[0], l[1], 0], 600);
            assert_good(&r);
            assert_eq!(d.len(), usize::from(n).min(96));
        }
    }

    #[test]
    fn inquiry_field_errors() {
        let mut f = Fixture::ram();
        let (r, _) = f.read_in(&[0x12, 0, 0x80, 0, 255, 0], 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(2));
        let (r, _) = f.read_in(&[0x12, 0x02, 0, 0, 255, 0], 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| (p.byte, p.bit)), Some((1, Some(1))));
        let (r, _) = f.read_in(&[0x12, 0x01, 0xc7, 0, 255, 0], 255);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, d) = f.read_in(&[0x12, 0x01, 0x80, 0, 255, 0], 255);
        assert_good(&r);
        assert_eq!(d[1], 0x80);
    }

    #[test]
    fn request_sense_reports_and_clears_unit_attention() {
        let mut f = Fixture::ram();
        let n2 = f.second_nexus("iqn.x:two,i,0x1");
        f.lun.ua.establish(&n2.key, asc::CAPACITY_DATA_HAS_CHANGED);
        let (r, d) = f.run_on(
            &n2,
            &[0x03, 0, 0, 0, 18, 0],
            DataDir::FromDevice,
            vec![0; 18],
        );
        assert_good(&r);
        assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0x06, 0x2a, 0x09));
        let (r, d) = f.run_on(
            &n2,
            &[0x03, 0x01, 0, 0, 252, 0],
            DataDir::FromDevice,
            vec![0; 252],
        );
        assert_good(&r);
        assert_eq!(r.transferred, 8);
        assert_eq!(&d[..4], &[0x72, 0x00, 0x00, 0x00], "NO SENSE, descriptor");
        // Truncated to the allocation length.
        let (r, d) = f.read_in(&[0x03, 0, 0, 0, 4, 0], 18);
        assert_good(&r);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn request_sense_reports_not_ready_when_stopped() {
        let mut f = Fixture::ram();
        assert_good(&f.run(&ssu(false, false, 0), DataDir::None, vec![]).0);
        let (r, d) = f.read_in(&[0x03, 0, 0, 0, 18, 0], 18);
        assert_good(&r);
        assert_eq!((d[2], d[12], d[13]), (0x02, 0x04, 0x02));
    }

    #[test]
    fn report_luns_lists_mapped_luns() {
        let mut f = Fixture::ram();
        let other = f.lun.clone();
        f.map.insert(300, other);
        let (r, d) = f.read_in(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
        assert_good(&r);
        assert_eq!(&d[0..4], &[0, 0, 0, 16]);
        assert_eq!(&d[8..16], &[0; 8]);
        assert_eq!(&d[16..18], &[0x41, 0x2c]);
        // SELECT REPORT 01h: well-known LUNs only: none.
        let (r, d) = f.read_in(&[0xa0, 0, 0x01, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
        assert_good(&r);
        assert_eq!(d, vec![0u8; 8]);
        let (r, d) = f.read_in(&[0xa0, 0, 0x02, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
        assert_good(&r);
        assert_eq!(d.len(), 24);
        for sr in [0x10u8, 0x11, 0x12] {
            let (r, d) = f.read_in(&[0xa0, 0, sr, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
            assert_good(&r);
            assert_eq!(&d[0..4], &[0; 4]);
        }
    }

    #[test]
    fn report_luns_errors() {
        let mut f = Fixture::ram();
        let (r, _) = f.read_in(&[0xa0, 0, 0x03, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(2));
        let (r, _) = f.read_in(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], 15);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(6));
    }

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x3fff), [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x12345), [0xd2, 0x01, 0x23, 0x45, 0, 0, 0, 0]);
        assert_eq!(
            encode_lun(0x12_3456_789a),
            [0xe2, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 0]
        );
    }

    #[test]
    fn unmapped_lun_inquiry_and_report_luns() {
        let mut f = Fixture::ram();
        let n = f.nexus.clone();
        let run = |f: &mut Fixture, cdb: &[u8]| {
            let mut c = f.cmd(cdb, DataDir::FromDevice, vec![0; 64]);
            c.lun = 9;
            let t = c.token;
            f.worker.submit(&n, c);
            let done = f.wait_token(t);
            let mut b = vec![0u8; 64];
            done.data.read_at(0, &mut b);
            (done.response.unwrap(), b)
        };
        let (r, d) = run(&mut f, &[0x12, 0, 0, 0, 36, 0]);
        assert_good(&r);
        assert_eq!(d[0], 0x7f);
        let (r, d) = run(&mut f, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]);
        assert_good(&r);
        assert_eq!(&d[0..4], &[0, 0, 0, 8]);
        let (r, _) = run(&mut f, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn removable_eject_and_load() {
        let mut f = removable();
        assert_good(&f.run(&ssu(false, true, 0), DataDir::None, vec![]).0);
        let (r, _) = f.run(&TUR, DataDir::None, vec![]);
        assert_check(&r, SenseKey::NotReady, asc::MEDIUM_NOT_PRESENT);
        let (r, d) = f.read_in(&[0x03, 0, 0, 0, 18, 0], 18);
        assert_good(&r);
        assert_eq!((d[2], d[12]), (0x02, 0x3a));
        assert_good(&f.run(&ssu(true, true, 0), DataDir::None, vec![]).0);
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
    }

    #[test]
    fn removable_stop_without_loej_keeps_medium_ready() {
        let mut f = removable();
        assert_good(&f.run(&ssu(false, false, 0), DataDir::None, vec![]).0);
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
    }

    #[test]
    fn power_condition_ignores_start_and_loej() {
        let mut f = removable();
        for pc in 1..16u8 {
            assert_good(&f.run(&ssu(false, true, pc), DataDir::None, vec![]).0);
            assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
        }
    }

    #[test]
    fn loej_on_non_removable_is_invalid_field() {
        let mut f = Fixture::ram();
        let (r, _) = f.run(&ssu(false, true, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| (p.byte, p.bit)), Some((4, Some(1))));
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
    }

    #[test]
    fn prevent_blocks_eject_from_every_nexus_until_allowed() {
        let mut f = removable();
        let n2 = f.second_nexus("iqn.x:two,i,0x1");
        assert_good(&f.run(&prevent(1), DataDir::None, vec![]).0);
        let (r, _) = f.run(&ssu(false, true, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::MEDIUM_REMOVAL_PREVENTED);
        let (r, _) = f.run_on(&n2, &ssu(false, true, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::MEDIUM_REMOVAL_PREVENTED);
        // Another nexus's ALLOW does not lift this nexus's PREVENT.
        assert_good(&f.run_on(&n2, &prevent(0), DataDir::None, vec![]).0);
        let (r, _) = f.run(&ssu(false, true, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::MEDIUM_REMOVAL_PREVENTED);
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
        assert_good(&f.run(&prevent(0), DataDir::None, vec![]).0);
        assert_good(&f.run(&ssu(false, true, 0), DataDir::None, vec![]).0);
        // Ejected, then prevented: loading is refused as well, until allowed.
        assert_good(&f.run(&prevent(1), DataDir::None, vec![]).0);
        let (r, _) = f.run(&ssu(true, true, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::MEDIUM_REMOVAL_PREVENTED);
        assert_good(&f.run(&prevent(0), DataDir::None, vec![]).0);
        assert_good(&f.run(&ssu(true, true, 0), DataDir::None, vec![]).0);
        assert_good(&f.run(&TUR, DataDir::None, vec![]).0);
    }

    #[test]
    fn prevent_is_cleared_by_lun_reset_and_nexus_loss() {
        let mut f = removable();
        assert_good(&f.run(&prevent(1), DataDir::None, vec![]).0);
        on_lun_reset(&f.lun);
        assert!(media(&f.lun).prevent.is_empty());
        assert_good(&f.run(&prevent(1), DataDir::None, vec![]).0);
        on_nexus_loss(&f.lun, &f.nexus.key.clone());
        assert_good(&f.run(&ssu(false, true, 0), DataDir::None, vec![]).0);
    }

    #[test]
    fn prevent_field_errors() {
        let mut f = removable();
        let (r, _) = f.run(&prevent(2), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let mut f = Fixture::ram();
        assert_good(&f.run(&prevent(0), DataDir::None, vec![]).0);
        let (r, _) = f.run(&prevent(1), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&r).map(|p| p.byte), Some(4));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random CDBs of this module's commands answer with a status, never a
        /// panic, and never more data than the allocation length allows.
        #[test]
        fn random_cdbs_never_panic(
            pick in 0usize..OPS.len(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 16),
            alloc in 0usize..600,
        ) {
            let op = &OPS[pick];
            let mut cdb = tail[..op.cdb_len()].to_vec();
            cdb[0] = op.opcode;
            if let Some(sa) = op.service_action {
                cdb[1] = (cdb[1] & 0xe0) | sa as u8;
            }
            let last = cdb.len() - 1;
            cdb[last] = 0; // no NACA
            let mut f = removable();
            let (r, _) = f.run(&cdb, DataDir::FromDevice, vec![0; alloc]);
            proptest::prop_assert!(r.transferred as usize <= alloc);
        }
    }
}
