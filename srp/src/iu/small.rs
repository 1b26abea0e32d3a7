//! The short IUs: SRP_TSK_MGMT, SRP_I_LOGOUT, SRP_T_LOGOUT, SRP_CRED_REQ/RSP and
//! SRP_AER_REQ/RSP.

use super::wire::{self, Fixed};
use super::{opcode, IuError, IuErrorKind, Tag};

/// SRP_I_LOGOUT, SRP_T_LOGOUT, SRP_CRED_REQ/RSP and SRP_AER_RSP are 16 bytes.
pub const SHORT_IU_LEN: usize = 16;
pub const TSK_MGMT_LEN: usize = 48;
/// SRP_AER_REQ before its sense data.
pub const AER_REQ_HDR_LEN: usize = 36;

/// TASK MANAGEMENT FUNCTION codes of SRP_TSK_MGMT.
pub mod tsk_func {
    pub const ABORT_TASK: u8 = 0x01;
    pub const ABORT_TASK_SET: u8 = 0x02;
    pub const CLEAR_TASK_SET: u8 = 0x04;
    pub const LUN_RESET: u8 = 0x08;
    pub const CLEAR_ACA: u8 = 0x40;
}

fn check(b: &[u8], expected: u8, need: usize) -> Result<(u8, Tag), IuError> {
    let op = wire::u8_at(b, 0);
    let tag = wire::tag(b);
    let (Some(op_v), Some(tag_v), true) = (op, tag, b.len() >= need) else {
        return Err(IuError::new(
            op,
            tag,
            IuErrorKind::TooShort { len: b.len(), need },
        ));
    };
    if op_v != expected {
        return Err(IuError::new(
            op,
            tag,
            IuErrorKind::WrongOpcode {
                found: op_v,
                expected,
            },
        ));
    }
    Ok((op_v, tag_v))
}

/// Reads the tag of a 16-byte IU whose other fields are reserved.
pub(crate) fn parse_tag_only(b: &[u8], expected: u8) -> Result<Tag, IuError> {
    check(b, expected, SHORT_IU_LEN).map(|(_, t)| t)
}

/// Encodes a 16-byte IU with an opcode and a tag only (SRP_I_LOGOUT,
/// SRP_CRED_RSP, SRP_AER_RSP).
pub fn encode_tag_only(op: u8, tag: Tag) -> [u8; SHORT_IU_LEN] {
    let mut b = [0u8; SHORT_IU_LEN];
    Fixed(&mut b).u8(0, op).bytes(8, &tag);
    b
}

/// SRP_TSK_MGMT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TskMgmt {
    pub tag: Tag,
    pub sol_not: u8,
    pub lun: [u8; 8],
    pub func: u8,
    /// The tag of the command ABORT TASK names.
    pub task_tag: Tag,
}

impl TskMgmt {
    pub fn parse(b: &[u8]) -> Result<Self, IuError> {
        let (_, tag) = check(b, opcode::TSK_MGMT, TSK_MGMT_LEN)?;
        let (Some(sol_not), Some(lun), Some(func), Some(task_tag)) = (
            wire::u8_at(b, 1),
            wire::bytes::<8>(b, 20),
            wire::u8_at(b, 30),
            wire::bytes::<8>(b, 32),
        ) else {
            return Err(IuError::new(
                Some(opcode::TSK_MGMT),
                Some(tag),
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: TSK_MGMT_LEN,
                },
            ));
        };
        Ok(TskMgmt {
            tag,
            sol_not,
            lun,
            func,
            task_tag,
        })
    }

    pub fn encode(&self) -> [u8; TSK_MGMT_LEN] {
        let mut b = [0u8; TSK_MGMT_LEN];
        Fixed(&mut b)
            .u8(0, opcode::TSK_MGMT)
            .u8(1, self.sol_not)
            .bytes(8, &self.tag)
            .bytes(20, &self.lun)
            .u8(30, self.func)
            .bytes(32, &self.task_tag);
        b
    }
}

/// SRP_T_LOGOUT: the target ends the channel (ib_srp only logs it; a CM
/// disconnect is what actually ends a Linux session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TLogout {
    pub sol_not: u8,
    pub reason: u32,
    pub tag: Tag,
}

impl TLogout {
    pub fn encode(&self) -> [u8; SHORT_IU_LEN] {
        let mut b = [0u8; SHORT_IU_LEN];
        Fixed(&mut b)
            .u8(0, opcode::T_LOGOUT)
            .u8(1, self.sol_not)
            .u32(4, self.reason)
            .bytes(8, &self.tag);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, IuError> {
        let (_, tag) = check(b, opcode::T_LOGOUT, SHORT_IU_LEN)?;
        Ok(TLogout {
            sol_not: wire::u8_at(b, 1).unwrap_or(0),
            reason: wire::u32_at(b, 4).unwrap_or(0),
            tag,
        })
    }
}

/// SRP_CRED_REQ: credits granted outside a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredReq {
    pub sol_not: u8,
    pub req_lim_delta: u32,
    pub tag: Tag,
}

impl CredReq {
    pub fn encode(&self) -> [u8; SHORT_IU_LEN] {
        let mut b = [0u8; SHORT_IU_LEN];
        Fixed(&mut b)
            .u8(0, opcode::CRED_REQ)
            .u8(1, self.sol_not)
            .u32(4, self.req_lim_delta)
            .bytes(8, &self.tag);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, IuError> {
        let (_, tag) = check(b, opcode::CRED_REQ, SHORT_IU_LEN)?;
        Ok(CredReq {
            sol_not: wire::u8_at(b, 1).unwrap_or(0),
            req_lim_delta: wire::u32_at(b, 4).unwrap_or(0),
            tag,
        })
    }
}

/// SRP_AER_REQ: an asynchronous event (sense data) for a LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AerReq<'a> {
    pub sol_not: u8,
    pub req_lim_delta: u32,
    pub tag: Tag,
    pub lun: [u8; 8],
    pub sense: &'a [u8],
}

impl<'a> AerReq<'a> {
    /// Encodes into `out`; returns the IU's length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, IuError> {
        let need = AER_REQ_HDR_LEN.saturating_add(self.sense.len());
        let sense_len = u32::try_from(self.sense.len()).ok();
        let (Some(iu), Some(sense_len)) = (out.get_mut(..need), sense_len) else {
            return Err(IuError::new(
                Some(opcode::AER_REQ),
                Some(self.tag),
                IuErrorKind::OutputTooSmall {
                    len: out.len(),
                    need,
                },
            ));
        };
        iu.fill(0);
        Fixed(iu)
            .u8(0, opcode::AER_REQ)
            .u8(1, self.sol_not)
            .u32(4, self.req_lim_delta)
            .bytes(8, &self.tag)
            .bytes(20, &self.lun)
            .u32(28, sense_len)
            .bytes(AER_REQ_HDR_LEN, self.sense);
        Ok(need)
    }

    pub fn parse(b: &'a [u8]) -> Result<Self, IuError> {
        let (_, tag) = check(b, opcode::AER_REQ, AER_REQ_HDR_LEN)?;
        let (Some(sol_not), Some(delta), Some(lun), Some(len)) = (
            wire::u8_at(b, 1),
            wire::u32_at(b, 4),
            wire::bytes::<8>(b, 20),
            wire::u32_at(b, 28),
        ) else {
            return Err(IuError::new(
                Some(opcode::AER_REQ),
                Some(tag),
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: AER_REQ_HDR_LEN,
                },
            ));
        };
        let sense = usize::try_from(len)
            .ok()
            .and_then(|l| AER_REQ_HDR_LEN.checked_add(l))
            .and_then(|end| b.get(AER_REQ_HDR_LEN..end));
        let Some(sense) = sense else {
            return Err(IuError::new(
                Some(opcode::AER_REQ),
                Some(tag),
                IuErrorKind::SenseOutside { len },
            ));
        };
        Ok(AerReq {
            sol_not,
            req_lim_delta: delta,
            tag,
            lun,
            sense,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = [9, 8, 7, 6, 5, 4, 3, 2];

    #[test]
    fn tsk_mgmt_layout() {
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0x02;
        b[8..16].copy_from_slice(&TAG);
        b[20..28].copy_from_slice(&[0, 3, 0, 0, 0, 0, 0, 0]);
        b[30] = 0x01;
        b[32..40].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 42]);
        let t = TskMgmt::parse(&b).unwrap();
        assert_eq!(
            t,
            TskMgmt {
                tag: TAG,
                sol_not: 2,
                lun: [0, 3, 0, 0, 0, 0, 0, 0],
                func: tsk_func::ABORT_TASK,
                task_tag: [0, 0, 0, 0, 0, 0, 0, 42],
            }
        );
        assert_eq!(t.encode(), b);
        let e = TskMgmt::parse(&b[..47]).unwrap_err();
        assert_eq!(e.kind, IuErrorKind::TooShort { len: 47, need: 48 });
        assert_eq!(e.tag, Some(TAG));
        let e = TskMgmt::parse(&b[..10]).unwrap_err();
        assert_eq!(e.tag, None);
        b[0] = 0x02;
        assert!(matches!(
            TskMgmt::parse(&b).unwrap_err().kind,
            IuErrorKind::WrongOpcode {
                found: 2,
                expected: 1
            }
        ));
    }

    #[test]
    fn tag_only_ius() {
        for op in [opcode::I_LOGOUT, opcode::CRED_RSP, opcode::AER_RSP] {
            let b = encode_tag_only(op, TAG);
            let mut want = [0u8; 16];
            want[0] = op;
            want[8..].copy_from_slice(&TAG);
            assert_eq!(b, want);
            assert_eq!(parse_tag_only(&b, op), Ok(TAG));
            assert!(parse_tag_only(&b[..15], op).is_err());
        }
    }

    #[test]
    fn t_logout_and_cred_req_layout() {
        let t = TLogout {
            sol_not: 1,
            reason: 0x0102_0304,
            tag: TAG,
        };
        let mut want = [0u8; 16];
        want[0] = 0x80;
        want[1] = 1;
        want[4..8].copy_from_slice(&[1, 2, 3, 4]);
        want[8..].copy_from_slice(&TAG);
        assert_eq!(t.encode(), want);
        assert_eq!(TLogout::parse(&want), Ok(t));
        let c = CredReq {
            sol_not: 0,
            req_lim_delta: 5,
            tag: TAG,
        };
        let mut want = [0u8; 16];
        want[0] = 0x81;
        want[4..8].copy_from_slice(&[0, 0, 0, 5]);
        want[8..].copy_from_slice(&TAG);
        assert_eq!(c.encode(), want);
        assert_eq!(CredReq::parse(&want), Ok(c));
        assert!(CredReq::parse(&want[..12]).is_err());
        assert!(TLogout::parse(&want).is_err());
    }

    #[test]
    fn aer_req_layout() {
        let sense = [0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0];
        let a = AerReq {
            sol_not: 0,
            req_lim_delta: 1,
            tag: TAG,
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            sense: &sense,
        };
        let mut out = [0u8; 64];
        let n = a.encode(&mut out).unwrap();
        assert_eq!(n, 54);
        let mut want = [0u8; 54];
        want[0] = 0x82;
        want[4..8].copy_from_slice(&[0, 0, 0, 1]);
        want[8..16].copy_from_slice(&TAG);
        want[20..28].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        want[28..32].copy_from_slice(&[0, 0, 0, 18]);
        want[36..].copy_from_slice(&sense);
        assert_eq!(&out[..n], &want);
        assert_eq!(AerReq::parse(&want), Ok(a));
        assert!(matches!(
            AerReq::parse(&want[..53]).unwrap_err().kind,
            IuErrorKind::SenseOutside { len: 18 }
        ));
        assert!(a.encode(&mut out[..53]).is_err());
    }
}
