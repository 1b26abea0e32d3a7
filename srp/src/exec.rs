//! SRP to engine and back: an SRP_CMD becomes an [`engine::ScsiCmd`], a
//! [`CmdResponse`] becomes SRP_RSP fields, an SRP_TSK_MGMT becomes an
//! [`engine::TmfRequest`] and its [`TmfResponse`] an RSP_CODE. Also the initiator's
//! SCSI name and TransportID, which the I_T nexus carries.
//!
//! Tags are opaque 8-byte strings in SRP; the engine keys commands on a u64. Both
//! directions use [`tag_u64`], so ABORT TASK's TASK TAG finds the command whose
//! tag it repeats.

use std::sync::Arc;

use engine::sense::{asc, Asc, SenseFormat};
use engine::{
    Cdb, CmdResponse, DataBuf, DataDir, LunMap, Nexus, Protocol, Residual, ScsiCmd, Sense,
    SenseKey, TargetPort, TaskAttr, TmfFunction, TmfRequest, TmfResponse,
};

use crate::iu::{tm_rsp_code, tsk_func, Cmd, DataXfer, IuError, IuErrorKind, Rsp, Tag, TskMgmt};

/// INVALID FIELD IN INFORMATION UNIT (SPC-4 table D.2): a malformed SRP IU whose
/// tag we could read.
pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e, 0x03);

/// The engine's task tag for an SRP tag.
pub fn tag_u64(tag: Tag) -> u64 {
    u64::from_be_bytes(tag)
}

/// Decodes the SAM LUN structure the way the engine's REPORT LUNS encodes it
/// (peripheral, flat, extended flat); `None` for anything else, which the engine
/// then answers as a LUN it does not have.
pub fn decode_lun(b: &[u8; 8]) -> Option<u64> {
    let rest_zero = |from: usize| b.get(from..).is_some_and(|r| r.iter().all(|&x| x == 0));
    match b[0] {
        0x00 if rest_zero(2) => Some(u64::from(b[1])),
        0x40..=0x7f if rest_zero(2) => Some((u64::from(b[0] & 0x3f) << 8) | u64::from(b[1])),
        0xd2 if rest_zero(4) => Some(u64::from_be_bytes([0, 0, 0, 0, 0, b[1], b[2], b[3]])),
        0xe2 if rest_zero(6) => Some(u64::from_be_bytes([0, 0, 0, b[1], b[2], b[3], b[4], b[5]])),
        _ => None,
    }
}

/// The length of a CDB from its operation code's group (SPC-4 4.2.5), so that the
/// zero padding of SRP's 16-byte CDB field does not reach the engine.
pub fn cdb_len(cdb: &[u8]) -> usize {
    let Some(&op) = cdb.first() else {
        return 0;
    };
    let len = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        // Variable length (7Fh): eight bytes plus the ADDITIONAL CDB LENGTH.
        3 if op == 0x7f => 8 + usize::from(cdb.get(7).copied().unwrap_or(0)),
        _ => cdb.len(),
    };
    len.min(cdb.len())
}

/// What the engine needs of an SRP_CMD, checked; the data buffer is added by
/// [`Prepared::into_scsi_cmd`] once the transport has one (for a write, filled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub tag: u64,
    /// `u64::MAX` if the LUN field named nothing we decode.
    pub lun: u64,
    pub cdb: Cdb,
    pub attr: TaskAttr,
    pub dir: DataDir,
    /// Bytes to move: the descriptors' total, or the immediate data's length.
    pub len: u32,
}

/// Checks an SRP_CMD for the engine. A CDB the engine cannot hold is an error to
/// answer with CHECK CONDITION.
pub fn prepare(cmd: &Cmd) -> Result<Prepared, Sense> {
    let cdb = Cdb::new(cmd.cdb.get(..cdb_len(cmd.cdb)).unwrap_or(cmd.cdb))
        .ok_or(Sense::invalid_cdb_field(0, None))?;
    let dir = match cmd.data {
        DataXfer::None => DataDir::None,
        DataXfer::Immediate(_) | DataXfer::Out(_) => DataDir::ToDevice,
        DataXfer::In(_) => DataDir::FromDevice,
    };
    Ok(Prepared {
        tag: tag_u64(cmd.tag),
        lun: decode_lun(&cmd.lun).unwrap_or(u64::MAX),
        cdb,
        attr: cmd.task_attr,
        dir,
        len: cmd.data.len(),
    })
}

impl Prepared {
    /// The engine command, with the transport's `token` and buffer. The buffer
    /// should be `len` bytes long (the engine reports residuals against it).
    pub fn into_scsi_cmd(self, token: u64, data: Box<dyn DataBuf>) -> ScsiCmd {
        ScsiCmd {
            lun: self.lun,
            cdb: self.cdb,
            tag: self.tag,
            attr: self.attr,
            dir: self.dir,
            token,
            data,
        }
    }
}

/// The sense data for an IU that failed to parse but carried a tag: INVALID
/// FIELD IN CDB for an oversized CDB, INVALID FIELD IN INFORMATION UNIT for the
/// rest (descriptors, formats, attributes, lengths).
pub fn iu_error_sense(e: &IuError) -> Sense {
    match e.kind {
        IuErrorKind::BadTaskAttr(_) => Sense::illegal(asc::INVALID_FIELD_IN_CDB),
        _ => Sense::new(SenseKey::IllegalRequest, INVALID_FIELD_IN_INFORMATION_UNIT),
    }
}

/// Fixed-format sense bytes, as the engine encodes them by default.
pub fn sense_bytes(s: &Sense) -> Vec<u8> {
    s.encode(SenseFormat::Fixed)
}

/// The SRP_RSP fields for an engine response. The residual goes to the data-in
/// or data-out counts by the command's direction; a command with no data phase
/// reports none.
pub fn rsp_for<'a>(tag: Tag, req_lim_delta: u32, dir: DataDir, r: &'a CmdResponse) -> Rsp<'a> {
    let (data_in, data_out) = match dir {
        DataDir::FromDevice => (r.residual, Residual::None),
        DataDir::ToDevice => (Residual::None, r.residual),
        DataDir::None => (Residual::None, Residual::None),
    };
    Rsp {
        tag,
        sol_not: 0,
        req_lim_delta,
        status: r.status as u8,
        data_in,
        data_out,
        resp_data: &[],
        sense: r.sense.as_deref().unwrap_or_default(),
    }
}

/// The SRP_RSP fields of a CHECK CONDITION the transport raises itself (a bad
/// IU, a CDB too long). `sense` is from [`sense_bytes`].
pub fn check_condition(tag: Tag, req_lim_delta: u32, sense: &[u8]) -> Rsp<'_> {
    Rsp {
        tag,
        req_lim_delta,
        status: engine::ScsiStatus::CheckCondition as u8,
        sense,
        ..Rsp::default()
    }
}

/// The engine function of an SRP_TSK_MGMT, or the RSP_CODE to answer at once.
pub fn tmf_function(t: &TskMgmt) -> Result<TmfFunction, u8> {
    match t.func {
        tsk_func::ABORT_TASK => Ok(TmfFunction::AbortTask {
            tag: tag_u64(t.task_tag),
        }),
        tsk_func::ABORT_TASK_SET => Ok(TmfFunction::AbortTaskSet),
        tsk_func::CLEAR_TASK_SET => Ok(TmfFunction::ClearTaskSet),
        tsk_func::LUN_RESET => Ok(TmfFunction::LogicalUnitReset),
        tsk_func::CLEAR_ACA => Ok(TmfFunction::ClearAca),
        _ => Err(tm_rsp_code::NOT_SUPPORTED),
    }
}

/// The engine request for an SRP_TSK_MGMT on `nexus`, or the RSP_CODE to answer
/// at once.
pub fn tmf_request(t: &TskMgmt, nexus: &Arc<Nexus>, token: u64) -> Result<TmfRequest, u8> {
    Ok(TmfRequest {
        nexus: nexus.clone(),
        lun: decode_lun(&t.lun).unwrap_or(u64::MAX),
        function: tmf_function(t)?,
        token,
    })
}

/// The RSP_CODE for an engine answer: complete (0), not supported (4) for a
/// rejected function (CLEAR ACA without NormACA), failed (5) for a LUN we do not
/// have. ABORT TASK of a task that is gone (its response crossed the request)
/// is complete, as SAM-5 7.2 says; ib_srp then only frees its request.
pub fn tmf_rsp_code(r: TmfResponse) -> u8 {
    match r {
        TmfResponse::FunctionComplete
        | TmfResponse::FunctionSucceeded { .. }
        | TmfResponse::TaskNotFound => tm_rsp_code::COMPLETE,
        TmfResponse::FunctionRejected => tm_rsp_code::NOT_SUPPORTED,
        TmfResponse::IncorrectLun => tm_rsp_code::FAILED,
    }
}

/// The initiator port's SCSI name: `0x` and the 32 hex digits of its port id
/// (the form LIO's srpt ACLs use).
pub fn initiator_name(i_port_id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(34);
    s.push_str("0x");
    for b in i_port_id {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The SCSI RDMA TransportID (SPC-4 7.6.4.5): format 00b, protocol 4, the
/// 16-byte initiator port identifier at byte 8; 24 bytes.
pub fn transport_id(i_port_id: &[u8; 16]) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    t[0] = Protocol::Srp as u8;
    t[8..24].copy_from_slice(i_port_id);
    t
}

/// A new I_T nexus for an initiator port on one of our target ports.
pub fn make_nexus(
    i_port_id: &[u8; 16],
    target: &Arc<TargetPort>,
    luns: &Arc<LunMap>,
) -> Arc<Nexus> {
    Nexus::new(
        &initiator_name(i_port_id),
        transport_id(i_port_id),
        target.clone(),
        luns.clone(),
    )
}

#[cfg(test)]
mod tests;
