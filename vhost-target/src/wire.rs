//! virtio-scsi wire formats (VIRTIO 1.2, 5.6.6): the request and response headers
//! of the request queues, the control queue's TMF and asynchronous-notification
//! requests, the event queue's events, and the LUN field. Every field's offset is written once, here; all
//! integers are little-endian (VERSION_1). Nothing here touches guest memory: bytes
//! in, typed values out, and typed values to bytes.

use engine::TaskAttr;
use virtio_bindings::virtio_scsi as vs;

/// Bytes of `virtio_scsi_cmd_req` with the default 32-byte CDB.
pub const CMD_REQ_LEN: usize = 51;
/// Bytes of `virtio_scsi_cmd_resp` with the default 96-byte sense area.
pub const CMD_RESP_LEN: usize = 108;
/// Bytes of sense data a response carries at most.
pub const SENSE_LEN: usize = 96;
/// Bytes of the CDB field.
pub const CDB_LEN: usize = 32;
/// Bytes of the control queue's `type` field, which every control request starts with.
pub const CTRL_TYPE_LEN: usize = 4;
/// Bytes of `virtio_scsi_ctrl_tmf_req`.
pub const TMF_REQ_LEN: usize = 24;
/// Bytes of `virtio_scsi_ctrl_tmf_resp`.
pub const TMF_RESP_LEN: usize = 1;
/// Bytes of `virtio_scsi_ctrl_an_req`.
pub const AN_REQ_LEN: usize = 16;
/// Bytes of `virtio_scsi_ctrl_an_resp`.
pub const AN_RESP_LEN: usize = 5;
/// Bytes of `virtio_scsi_event`.
pub const EVENT_LEN: usize = 16;

/// The `response` byte of command and TMF responses (VIRTIO 1.2 5.6.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VirtioResponse {
    Ok = vs::VIRTIO_SCSI_S_OK as u8,
    Overrun = vs::VIRTIO_SCSI_S_OVERRUN as u8,
    Aborted = vs::VIRTIO_SCSI_S_ABORTED as u8,
    BadTarget = vs::VIRTIO_SCSI_S_BAD_TARGET as u8,
    Reset = vs::VIRTIO_SCSI_S_RESET as u8,
    Busy = vs::VIRTIO_SCSI_S_BUSY as u8,
    TransportFailure = vs::VIRTIO_SCSI_S_TRANSPORT_FAILURE as u8,
    TargetFailure = vs::VIRTIO_SCSI_S_TARGET_FAILURE as u8,
    NexusFailure = vs::VIRTIO_SCSI_S_NEXUS_FAILURE as u8,
    Failure = vs::VIRTIO_SCSI_S_FAILURE as u8,
    FunctionSucceeded = vs::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8,
    FunctionRejected = vs::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8,
    IncorrectLun = vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8,
}

/// Where the 8-byte LUN field points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LunAddr {
    /// Target `target`, logical unit `lun` (single-level, peripheral or flat space
    /// addressing as Linux and QEMU use it).
    Lun { target: u8, lun: u64 },
    /// Byte 0 is not 1: no target is addressed.
    BadTarget,
}

impl LunAddr {
    /// Decodes `[1, target, 0x40 | (lun >> 8), lun & 0xff, 0, 0, 0, 0]` (flat space)
    /// and `[1, target, 0, lun, 0, ...]` (peripheral, bus 0). Other address methods,
    /// and a second level, name a LUN that cannot exist (`u64::MAX`): the engine
    /// answers LOGICAL UNIT NOT SUPPORTED and REPORT LUNS/INQUIRY as SPC-4 says.
    pub fn decode(b: &[u8; 8]) -> Self {
        if b[0] != 1 {
            return LunAddr::BadTarget;
        }
        let target = b[1];
        let lun = match b[2] >> 6 {
            _ if b[4..].iter().any(|&x| x != 0) => u64::MAX,
            0b00 if b[2] == 0 => u64::from(b[3]),
            0b01 => u64::from(u16::from_be_bytes([b[2] & 0x3f, b[3]])),
            _ => u64::MAX,
        };
        LunAddr::Lun { target, lun }
    }

    /// The LUN field Linux sends for `target`/`lun` (flat space addressing).
    pub fn encode(target: u8, lun: u16) -> [u8; 8] {
        let [hi, lo] = lun.to_be_bytes();
        [1, target, 0x40 | (hi & 0x3f), lo, 0, 0, 0, 0]
    }

    /// The LUN field of an event: the LUN encoded as REPORT LUNS encodes it
    /// (peripheral below 256, flat space above), because Linux names a device by
    /// the number it scanned (`scsilun_to_int` of the REPORT LUNS entry) and takes
    /// an event's bytes 2-3 as that number: a removal must find the device the
    /// scan made. Numbers above [`MAX_LUN`] cannot be addressed.
    pub fn encode_reported(target: u8, lun: u16) -> Option<[u8; 8]> {
        if lun > MAX_LUN {
            return None;
        }
        let [hi, lo] = lun.to_be_bytes();
        let b2 = if lun < 256 { 0 } else { 0x40 | hi };
        Some([1, target, b2, lo, 0, 0, 0, 0])
    }
}

/// The largest LUN number the LUN field can carry (flat space addressing).
pub const MAX_LUN: u16 = 0x3fff;

/// A `virtio_scsi_event` (VIRTIO 1.2 5.6.6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiEvent {
    /// `VIRTIO_SCSI_T_*`, with `VIRTIO_SCSI_T_EVENTS_MISSED` or'ed in when events
    /// were lost before this one.
    pub event: u32,
    pub lun: [u8; 8],
    pub reason: u32,
}

impl ScsiEvent {
    const EVENT: usize = 0;
    const LUN: usize = 4;
    const REASON: usize = 12;

    /// A LUN appeared: the driver scans it (transport reset, reason RESCAN).
    pub fn lun_added(lun: [u8; 8]) -> Self {
        ScsiEvent {
            event: vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            reason: vs::VIRTIO_SCSI_EVT_RESET_RESCAN,
        }
    }

    /// A LUN went away: the driver removes its device (reason REMOVED).
    pub fn lun_removed(lun: [u8; 8]) -> Self {
        ScsiEvent {
            event: vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            reason: vs::VIRTIO_SCSI_EVT_RESET_REMOVED,
        }
    }

    /// A parameter of the LUN changed, named by the unit attention's ASC and ASCQ
    /// (reason = ASC | ASCQ << 8).
    pub fn param_change(lun: [u8; 8], asc: u8, ascq: u8) -> Self {
        ScsiEvent {
            event: vs::VIRTIO_SCSI_T_PARAM_CHANGE,
            lun,
            reason: u32::from(asc) | (u32::from(ascq) << 8),
        }
    }

    /// No event, only the news that events were lost.
    pub fn missed() -> Self {
        ScsiEvent {
            event: vs::VIRTIO_SCSI_T_NO_EVENT | vs::VIRTIO_SCSI_T_EVENTS_MISSED,
            lun: [0; 8],
            reason: 0,
        }
    }

    pub fn encode(&self) -> [u8; EVENT_LEN] {
        let mut b = [0u8; EVENT_LEN];
        b[Self::EVENT..Self::EVENT + 4].copy_from_slice(&self.event.to_le_bytes());
        b[Self::LUN..Self::LUN + 8].copy_from_slice(&self.lun);
        b[Self::REASON..Self::REASON + 4].copy_from_slice(&self.reason.to_le_bytes());
        b
    }

    /// Decodes an event (tests and host-side drivers).
    pub fn decode(b: &[u8; EVENT_LEN]) -> Self {
        ScsiEvent {
            event: u32::from_le_bytes(array(b, Self::EVENT)),
            lun: array(b, Self::LUN),
            reason: u32::from_le_bytes(array(b, Self::REASON)),
        }
    }
}

/// Why a request header was refused (after the chain's shape was accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("task attribute {0} is not one of SIMPLE, ORDERED, HEAD OF QUEUE, ACA")]
    TaskAttr(u8),
}

/// A decoded `virtio_scsi_cmd_req`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdReq {
    pub lun: LunAddr,
    pub tag: u64,
    pub attr: TaskAttr,
    pub prio: u8,
    pub crn: u8,
    pub cdb: [u8; CDB_LEN],
}

impl CmdReq {
    /// Field offsets of `virtio_scsi_cmd_req`.
    const LUN: usize = 0;
    const TAG: usize = 8;
    const TASK_ATTR: usize = 16;
    const PRIO: usize = 17;
    const CRN: usize = 18;
    const CDB: usize = 19;

    pub fn parse(b: &[u8; CMD_REQ_LEN]) -> Result<Self, HeaderError> {
        let attr = match b[Self::TASK_ATTR] {
            0 => TaskAttr::Simple,
            1 => TaskAttr::Ordered,
            2 => TaskAttr::HeadOfQueue,
            3 => TaskAttr::Aca,
            other => return Err(HeaderError::TaskAttr(other)),
        };
        Ok(CmdReq {
            lun: LunAddr::decode(&array(b, Self::LUN)),
            tag: u64::from_le_bytes(array(b, Self::TAG)),
            attr,
            prio: b[Self::PRIO],
            crn: b[Self::CRN],
            cdb: array(b, Self::CDB),
        })
    }

    /// Encodes a request (tests, fuzzing and host-side drivers).
    pub fn encode(lun: [u8; 8], tag: u64, attr: u8, cdb: &[u8]) -> [u8; CMD_REQ_LEN] {
        let mut b = [0u8; CMD_REQ_LEN];
        b[Self::LUN..Self::LUN + 8].copy_from_slice(&lun);
        b[Self::TAG..Self::TAG + 8].copy_from_slice(&tag.to_le_bytes());
        b[Self::TASK_ATTR] = attr;
        let n = cdb.len().min(CDB_LEN);
        b[Self::CDB..Self::CDB + n].copy_from_slice(&cdb[..n]);
        b
    }

    /// The CDB's own length by its group code (SPC-4 4.2.5.1), so that the engine
    /// sees a 6-, 10-, 12- or 16-byte CDB rather than the 32-byte field; variable
    /// length CDBs (7Fh) carry their length in byte 7; vendor groups get the field.
    pub fn cdb_len(&self) -> usize {
        match self.cdb[0] >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            3 if self.cdb[0] == 0x7f => (8 + usize::from(self.cdb[7])).min(CDB_LEN),
            _ => CDB_LEN,
        }
    }
}

/// A `virtio_scsi_cmd_resp` to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResp<'a> {
    pub sense: &'a [u8],
    pub resid: u32,
    pub status: u8,
    pub response: VirtioResponse,
}

impl CmdResp<'_> {
    const SENSE_LEN_OFF: usize = 0;
    const RESID: usize = 4;
    const STATUS_QUALIFIER: usize = 8;
    const STATUS: usize = 10;
    const RESPONSE: usize = 11;
    const SENSE: usize = 12;

    /// A response with no SCSI status (transport-level outcome only).
    pub fn transport(response: VirtioResponse) -> CmdResp<'static> {
        CmdResp {
            sense: &[],
            resid: 0,
            status: 0,
            response,
        }
    }

    /// The 108 bytes; sense beyond 96 bytes is cut (SENSE_LEN says how much fits).
    pub fn encode(&self) -> [u8; CMD_RESP_LEN] {
        let mut b = [0u8; CMD_RESP_LEN];
        let n = self.sense.len().min(SENSE_LEN);
        b[Self::SENSE_LEN_OFF..Self::SENSE_LEN_OFF + 4]
            .copy_from_slice(&u32::try_from(n).unwrap_or(0).to_le_bytes());
        b[Self::RESID..Self::RESID + 4].copy_from_slice(&self.resid.to_le_bytes());
        b[Self::STATUS_QUALIFIER..Self::STATUS_QUALIFIER + 2].copy_from_slice(&[0, 0]);
        b[Self::STATUS] = self.status;
        b[Self::RESPONSE] = self.response as u8;
        b[Self::SENSE..Self::SENSE + n].copy_from_slice(&self.sense[..n]);
        b
    }

    /// Field accessors over an encoded response (tests and drivers).
    pub fn decode_status(b: &[u8; CMD_RESP_LEN]) -> (u8, u8, u32, &[u8]) {
        let n = u32::from_le_bytes(array(b, Self::SENSE_LEN_OFF)) as usize;
        let n = n.min(SENSE_LEN);
        (
            b[Self::RESPONSE],
            b[Self::STATUS],
            u32::from_le_bytes(array(b, Self::RESID)),
            &b[Self::SENSE..Self::SENSE + n],
        )
    }
}

/// A control queue request, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlReq {
    Tmf {
        subtype: u32,
        lun: LunAddr,
        tag: u64,
    },
    /// AN query or subscribe: the events the driver asks about.
    An {
        subscribe: bool,
        lun: LunAddr,
        event_requested: u32,
    },
}

/// Why a control request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    #[error("control request of {len} bytes is shorter than its type needs ({need})")]
    Short { len: usize, need: usize },
    #[error("unknown control request type {0}")]
    Type(u32),
}

impl CtrlReq {
    /// Offsets in `virtio_scsi_ctrl_tmf_req`.
    const TMF_SUBTYPE: usize = 4;
    const TMF_LUN: usize = 8;
    const TMF_TAG: usize = 16;
    /// Offsets in `virtio_scsi_ctrl_an_req`.
    const AN_LUN: usize = 4;
    const AN_EVENT: usize = 12;

    /// The number of readable bytes a request of this `type` needs.
    pub fn needed(kind: u32) -> Option<usize> {
        match kind {
            vs::VIRTIO_SCSI_T_TMF => Some(TMF_REQ_LEN),
            vs::VIRTIO_SCSI_T_AN_QUERY | vs::VIRTIO_SCSI_T_AN_SUBSCRIBE => Some(AN_REQ_LEN),
            _ => None,
        }
    }

    /// The type field of a request.
    pub fn kind(b: &[u8]) -> Result<u32, CtrlError> {
        match b.get(..CTRL_TYPE_LEN) {
            Some(t) => Ok(u32::from_le_bytes([t[0], t[1], t[2], t[3]])),
            None => Err(CtrlError::Short {
                len: b.len(),
                need: CTRL_TYPE_LEN,
            }),
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self, CtrlError> {
        let kind = Self::kind(b)?;
        let need = Self::needed(kind).ok_or(CtrlError::Type(kind))?;
        if b.len() < need {
            return Err(CtrlError::Short { len: b.len(), need });
        }
        Ok(match kind {
            vs::VIRTIO_SCSI_T_TMF => CtrlReq::Tmf {
                subtype: u32::from_le_bytes(array(b, Self::TMF_SUBTYPE)),
                lun: LunAddr::decode(&array(b, Self::TMF_LUN)),
                tag: u64::from_le_bytes(array(b, Self::TMF_TAG)),
            },
            _ => CtrlReq::An {
                subscribe: kind == vs::VIRTIO_SCSI_T_AN_SUBSCRIBE,
                lun: LunAddr::decode(&array(b, Self::AN_LUN)),
                event_requested: u32::from_le_bytes(array(b, Self::AN_EVENT)),
            },
        })
    }

    /// Encodes a TMF request (tests and drivers).
    pub fn encode_tmf(subtype: u32, lun: [u8; 8], tag: u64) -> [u8; TMF_REQ_LEN] {
        let mut b = [0u8; TMF_REQ_LEN];
        b[..4].copy_from_slice(&vs::VIRTIO_SCSI_T_TMF.to_le_bytes());
        b[Self::TMF_SUBTYPE..Self::TMF_SUBTYPE + 4].copy_from_slice(&subtype.to_le_bytes());
        b[Self::TMF_LUN..Self::TMF_LUN + 8].copy_from_slice(&lun);
        b[Self::TMF_TAG..Self::TMF_TAG + 8].copy_from_slice(&tag.to_le_bytes());
        b
    }

    /// Encodes an AN request (tests and drivers).
    pub fn encode_an(subscribe: bool, lun: [u8; 8], events: u32) -> [u8; AN_REQ_LEN] {
        let kind = if subscribe {
            vs::VIRTIO_SCSI_T_AN_SUBSCRIBE
        } else {
            vs::VIRTIO_SCSI_T_AN_QUERY
        };
        let mut b = [0u8; AN_REQ_LEN];
        b[..4].copy_from_slice(&kind.to_le_bytes());
        b[Self::AN_LUN..Self::AN_LUN + 8].copy_from_slice(&lun);
        b[Self::AN_EVENT..Self::AN_EVENT + 4].copy_from_slice(&events.to_le_bytes());
        b
    }
}

/// `virtio_scsi_ctrl_an_resp`: the events supported (none) and the response.
pub fn encode_an_resp(event_actual: u32, response: VirtioResponse) -> [u8; AN_RESP_LEN] {
    let e = event_actual.to_le_bytes();
    [e[0], e[1], e[2], e[3], response as u8]
}

/// `N` bytes of `b` from `at`; the callers' offsets are constants inside the
/// fixed-size headers they index (a short slice gives zeroes, never a panic).
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at.saturating_add(N)) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_field_as_linux_sends_it() {
        for lun in [0u16, 1, 255, 256, 0x3fff] {
            let b = LunAddr::encode(0, lun);
            assert_eq!(
                LunAddr::decode(&b),
                LunAddr::Lun {
                    target: 0,
                    lun: u64::from(lun)
                }
            );
        }
        assert_eq!(LunAddr::encode(3, 0x102), [1, 3, 0x41, 2, 0, 0, 0, 0]);
        assert_eq!(
            LunAddr::decode(&[1, 0, 0, 5, 0, 0, 0, 0]),
            LunAddr::Lun { target: 0, lun: 5 }
        );
        assert_eq!(
            LunAddr::decode(&[0, 0, 0x40, 0, 0, 0, 0, 0]),
            LunAddr::BadTarget
        );
        // Peripheral addressing with a bus, extended and logical methods, two levels.
        for b in [
            [1, 0, 0x01, 0, 0, 0, 0, 0],
            [1, 0, 0xc0, 0, 0, 0, 0, 0],
            [1, 0, 0x80, 0, 0, 0, 0, 0],
            [1, 0, 0x40, 0, 0x40, 1, 0, 0],
        ] {
            assert_eq!(
                LunAddr::decode(&b),
                LunAddr::Lun {
                    target: 0,
                    lun: u64::MAX
                }
            );
        }
    }

    #[test]
    fn request_header_fields() {
        let b = CmdReq::encode(
            LunAddr::encode(0, 2),
            0x1122_3344_5566_7788,
            1,
            &[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0],
        );
        let r = CmdReq::parse(&b).unwrap();
        assert_eq!(r.lun, LunAddr::Lun { target: 0, lun: 2 });
        assert_eq!(r.tag, 0x1122_3344_5566_7788);
        assert_eq!(r.attr, TaskAttr::Ordered);
        assert_eq!(r.cdb_len(), 10);
        assert_eq!(r.cdb[..10], [0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0]);
        let mut bad = b;
        bad[16] = 4;
        assert_eq!(CmdReq::parse(&bad), Err(HeaderError::TaskAttr(4)));
    }

    #[test]
    fn cdb_lengths_by_group() {
        let len = |op: u8, b7: u8| {
            let mut cdb = [0u8; 32];
            cdb[0] = op;
            cdb[7] = b7;
            CmdReq::parse(&CmdReq::encode([1, 0, 0x40, 0, 0, 0, 0, 0], 0, 0, &cdb))
                .unwrap()
                .cdb_len()
        };
        assert_eq!(len(0x12, 0), 6);
        assert_eq!(len(0x2a, 0), 10);
        assert_eq!(len(0x9e, 0), 16);
        assert_eq!(len(0xa0, 0), 12);
        assert_eq!(len(0x7f, 24), 32);
        assert_eq!(len(0x7f, 200), 32);
        assert_eq!(len(0xc0, 0), 32);
    }

    #[test]
    fn response_layout() {
        let sense = [0x70u8; 120];
        let r = CmdResp {
            sense: &sense,
            resid: 7,
            status: 2,
            response: VirtioResponse::Ok,
        }
        .encode();
        assert_eq!(&r[0..4], &96u32.to_le_bytes());
        assert_eq!(&r[4..8], &7u32.to_le_bytes());
        assert_eq!(r[10], 2);
        assert_eq!(r[11], 0);
        let (resp, status, resid, s) = CmdResp::decode_status(&r);
        assert_eq!((resp, status, resid, s.len()), (0, 2, 7, 96));
    }

    #[test]
    fn control_requests() {
        let t = CtrlReq::encode_tmf(vs::VIRTIO_SCSI_T_TMF_ABORT_TASK, LunAddr::encode(0, 1), 9);
        assert_eq!(
            CtrlReq::parse(&t),
            Ok(CtrlReq::Tmf {
                subtype: 0,
                lun: LunAddr::Lun { target: 0, lun: 1 },
                tag: 9
            })
        );
        assert_eq!(
            CtrlReq::parse(&t[..20]),
            Err(CtrlError::Short { len: 20, need: 24 })
        );
        assert_eq!(CtrlReq::parse(&[9, 0, 0, 0]), Err(CtrlError::Type(9)));
        assert_eq!(
            CtrlReq::parse(&[0, 0]),
            Err(CtrlError::Short { len: 2, need: 4 })
        );
        let a = CtrlReq::encode_an(true, LunAddr::encode(0, 0), 0x10);
        assert_eq!(
            CtrlReq::parse(&a),
            Ok(CtrlReq::An {
                subscribe: true,
                lun: LunAddr::Lun { target: 0, lun: 0 },
                event_requested: 0x10
            })
        );
        assert_eq!(encode_an_resp(0, VirtioResponse::Ok), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn event_layout() {
        let lun = LunAddr::encode_reported(0, 3).unwrap();
        assert_eq!(lun, [1, 0, 0, 3, 0, 0, 0, 0]);
        assert_eq!(
            LunAddr::encode_reported(0, 0x123),
            Some([1, 0, 0x41, 0x23, 0, 0, 0, 0])
        );
        assert_eq!(LunAddr::encode_reported(0, MAX_LUN + 1), None);
        // Both forms address the same LUN when the driver sends commands.
        for n in [0u16, 3, 255, 256, 0x123, MAX_LUN] {
            let b = LunAddr::encode_reported(0, n).unwrap();
            assert_eq!(
                LunAddr::decode(&b),
                LunAddr::Lun {
                    target: 0,
                    lun: u64::from(n)
                }
            );
        }
        let e = ScsiEvent::param_change(lun, 0x2a, 0x09).encode();
        assert_eq!(
            e,
            [3, 0, 0, 0, 1, 0, 0, 3, 0, 0, 0, 0, 0x2a, 0x09, 0, 0],
            "PARAM_CHANGE, asc in the low byte, ascq above"
        );
        let a = ScsiEvent::lun_added(lun);
        assert_eq!(ScsiEvent::decode(&a.encode()), a);
        assert_eq!(&a.encode()[..4], &[1, 0, 0, 0]);
        assert_eq!(&a.encode()[12..], &[1, 0, 0, 0]);
        assert_eq!(&ScsiEvent::lun_removed(lun).encode()[12..], &[2, 0, 0, 0]);
        assert_eq!(&ScsiEvent::missed().encode()[..4], &[0, 0, 0, 0x80]);
    }
}
