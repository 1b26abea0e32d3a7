//! SRP_LOGIN_REQ (in its RDMA/CM private-data form and its IB CM form),
//! SRP_LOGIN_RSP and SRP_LOGIN_REJ.

use super::wire::{self, Fixed};
use super::{opcode, IuError, IuErrorKind, Tag};

/// `struct srp_login_req_rdma`: the private data of an RDMA/CM connect request.
pub const LOGIN_REQ_RDMA_LEN: usize = 56;
/// SRP_LOGIN_REQ as an IU (IB CM REQ private data).
pub const LOGIN_REQ_IB_LEN: usize = 64;
pub const LOGIN_RSP_LEN: usize = 52;
pub const LOGIN_REJ_LEN: usize = 32;

/// REQUIRED/SUPPORTED BUFFER FORMATS bits and login flags (SRP r16a 6.2-6.4).
pub mod login_flags {
    /// Buffer formats: direct and indirect data buffer descriptors.
    pub const BUF_FMT_DIRECT: u16 = 0x0002;
    pub const BUF_FMT_INDIRECT: u16 = 0x0004;
    /// REQ_FLAGS bits 0-1: MULTI-CHANNEL ACTION.
    pub const MULTICHAN_MASK: u8 = 0x03;
    pub const MULTICHAN_SINGLE: u8 = 0x00;
    pub const MULTICHAN_MULTI: u8 = 0x01;
    /// REQ_FLAGS: the initiator asks for immediate data (SRP-2).
    pub const IMMED_REQUESTED: u8 = 0x80;
    /// RSP_FLAGS bits 0-1: MULTI-CHANNEL RESULT.
    pub const RSP_NO_CHANNELS: u8 = 0x00;
    pub const RSP_TERMINATED: u8 = 0x01;
    pub const RSP_MAINTAINED: u8 = 0x02;
    /// RSP_FLAGS: immediate data supported.
    pub const RSP_IMMED_SUPPORTED: u8 = 0x80;
}

/// SRP_LOGIN_REJ REASON codes (SRP r16a table 15).
pub mod rej_reason {
    pub const UNABLE_TO_ESTABLISH: u32 = 0x0001_0000;
    pub const INSUFFICIENT_RESOURCES: u32 = 0x0001_0001;
    pub const IT_IU_LEN_TOO_LARGE: u32 = 0x0001_0002;
    pub const UNABLE_TO_ASSOCIATE: u32 = 0x0001_0003;
    pub const UNSUPPORTED_DESC_FMT: u32 = 0x0001_0004;
    pub const MULTICHANNEL_UNSUPPORTED: u32 = 0x0001_0005;
    pub const CHANNEL_LIMIT_REACHED: u32 = 0x0001_0006;
}

/// A login request, whichever form it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginReq {
    pub tag: Tag,
    pub req_it_iu_len: u32,
    pub req_buf_fmt: u16,
    pub req_flags: u8,
    pub initiator_port_id: [u8; 16],
    pub target_port_id: [u8; 16],
    pub imm_data_offset: u16,
}

fn short(tag: Option<Tag>, len: usize, need: usize) -> IuError {
    IuError::new(
        Some(opcode::LOGIN_REQ),
        tag,
        IuErrorKind::TooShort { len, need },
    )
}

impl LoginReq {
    /// Parses `struct srp_login_req_rdma` (56 bytes; the opcode sits at byte 11).
    /// Longer private data is allowed (the CM pads it); the tail is ignored.
    pub fn parse_rdma_cm(pd: &[u8]) -> Result<Self, IuError> {
        let tag = wire::bytes::<8>(pd, 0);
        let (
            Some(tag_v),
            Some(fmt),
            Some(flags),
            Some(op),
            Some(len),
            Some(ip),
            Some(tp),
            Some(imm),
        ) = (
            tag,
            wire::u16_at(pd, 8),
            wire::u8_at(pd, 10),
            wire::u8_at(pd, 11),
            wire::u32_at(pd, 12),
            wire::bytes::<16>(pd, 16),
            wire::bytes::<16>(pd, 32),
            wire::u16_at(pd, 48),
        )
        else {
            return Err(short(tag, pd.len(), LOGIN_REQ_RDMA_LEN));
        };
        if pd.len() < LOGIN_REQ_RDMA_LEN {
            return Err(short(tag, pd.len(), LOGIN_REQ_RDMA_LEN));
        }
        if op != opcode::LOGIN_REQ {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::WrongOpcode {
                    found: op,
                    expected: opcode::LOGIN_REQ,
                },
            ));
        }
        Ok(LoginReq {
            tag: tag_v,
            req_it_iu_len: len,
            req_buf_fmt: fmt,
            req_flags: flags,
            initiator_port_id: ip,
            target_port_id: tp,
            imm_data_offset: imm,
        })
    }

    /// Parses the 64-byte SRP_LOGIN_REQ IU (IB CM form).
    pub fn parse_ib(iu: &[u8]) -> Result<Self, IuError> {
        let tag = wire::tag(iu);
        let (
            Some(op),
            Some(tag_v),
            Some(len),
            Some(fmt),
            Some(flags),
            Some(imm),
            Some(ip),
            Some(tp),
        ) = (
            wire::u8_at(iu, 0),
            tag,
            wire::u32_at(iu, 16),
            wire::u16_at(iu, 24),
            wire::u8_at(iu, 26),
            wire::u16_at(iu, 28),
            wire::bytes::<16>(iu, 32),
            wire::bytes::<16>(iu, 48),
        )
        else {
            return Err(short(tag, iu.len(), LOGIN_REQ_IB_LEN));
        };
        if op != opcode::LOGIN_REQ {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::WrongOpcode {
                    found: op,
                    expected: opcode::LOGIN_REQ,
                },
            ));
        }
        Ok(LoginReq {
            tag: tag_v,
            req_it_iu_len: len,
            req_buf_fmt: fmt,
            req_flags: flags,
            initiator_port_id: ip,
            target_port_id: tp,
            imm_data_offset: imm,
        })
    }

    /// The RDMA/CM private-data form (what an initiator passes to `rdma_connect`).
    pub fn encode_rdma_cm(&self) -> [u8; LOGIN_REQ_RDMA_LEN] {
        let mut b = [0u8; LOGIN_REQ_RDMA_LEN];
        Fixed(&mut b)
            .bytes(0, &self.tag)
            .u16(8, self.req_buf_fmt)
            .u8(10, self.req_flags)
            .u8(11, opcode::LOGIN_REQ)
            .u32(12, self.req_it_iu_len)
            .bytes(16, &self.initiator_port_id)
            .bytes(32, &self.target_port_id)
            .u16(48, self.imm_data_offset);
        b
    }

    /// The 64-byte IU form.
    pub fn encode_ib(&self) -> [u8; LOGIN_REQ_IB_LEN] {
        let mut b = [0u8; LOGIN_REQ_IB_LEN];
        Fixed(&mut b)
            .u8(0, opcode::LOGIN_REQ)
            .bytes(8, &self.tag)
            .u32(16, self.req_it_iu_len)
            .u16(24, self.req_buf_fmt)
            .u8(26, self.req_flags)
            .u16(28, self.imm_data_offset)
            .bytes(32, &self.initiator_port_id)
            .bytes(48, &self.target_port_id);
        b
    }
}

/// SRP_LOGIN_RSP: the private data of the RDMA/CM accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRsp {
    pub req_lim_delta: u32,
    pub tag: Tag,
    pub max_it_iu_len: u32,
    pub max_ti_iu_len: u32,
    pub buf_fmt: u16,
    pub rsp_flags: u8,
}

impl LoginRsp {
    pub fn encode(&self) -> [u8; LOGIN_RSP_LEN] {
        let mut b = [0u8; LOGIN_RSP_LEN];
        Fixed(&mut b)
            .u8(0, opcode::LOGIN_RSP)
            .u32(4, self.req_lim_delta)
            .bytes(8, &self.tag)
            .u32(16, self.max_it_iu_len)
            .u32(20, self.max_ti_iu_len)
            .u16(24, self.buf_fmt)
            .u8(26, self.rsp_flags);
        b
    }

    /// What an initiator reads from the accept (for tests and tools).
    pub fn parse(b: &[u8]) -> Result<Self, IuError> {
        let tag = wire::tag(b);
        let (Some(op), Some(delta), Some(tag_v), Some(it), Some(ti), Some(fmt), Some(flags)) = (
            wire::u8_at(b, 0),
            wire::u32_at(b, 4),
            tag,
            wire::u32_at(b, 16),
            wire::u32_at(b, 20),
            wire::u16_at(b, 24),
            wire::u8_at(b, 26),
        ) else {
            return Err(IuError::new(
                wire::u8_at(b, 0),
                tag,
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: LOGIN_RSP_LEN,
                },
            ));
        };
        if b.len() < LOGIN_RSP_LEN {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: LOGIN_RSP_LEN,
                },
            ));
        }
        if op != opcode::LOGIN_RSP {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::WrongOpcode {
                    found: op,
                    expected: opcode::LOGIN_RSP,
                },
            ));
        }
        Ok(LoginRsp {
            req_lim_delta: delta,
            tag: tag_v,
            max_it_iu_len: it,
            max_ti_iu_len: ti,
            buf_fmt: fmt,
            rsp_flags: flags,
        })
    }
}

/// SRP_LOGIN_REJ: the private data of the RDMA/CM reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRej {
    pub reason: u32,
    pub tag: Tag,
    /// The buffer formats we support, so that the initiator can retry.
    pub buf_fmt: u16,
}

impl LoginRej {
    pub fn encode(&self) -> [u8; LOGIN_REJ_LEN] {
        let mut b = [0u8; LOGIN_REJ_LEN];
        Fixed(&mut b)
            .u8(0, opcode::LOGIN_REJ)
            .u32(4, self.reason)
            .bytes(8, &self.tag)
            .u16(24, self.buf_fmt);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, IuError> {
        let tag = wire::tag(b);
        let (Some(op), Some(reason), Some(tag_v), Some(fmt)) = (
            wire::u8_at(b, 0),
            wire::u32_at(b, 4),
            tag,
            wire::u16_at(b, 24),
        ) else {
            return Err(IuError::new(
                wire::u8_at(b, 0),
                tag,
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: LOGIN_REJ_LEN,
                },
            ));
        };
        if b.len() < LOGIN_REJ_LEN {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::TooShort {
                    len: b.len(),
                    need: LOGIN_REJ_LEN,
                },
            ));
        }
        if op != opcode::LOGIN_REJ {
            return Err(IuError::new(
                Some(op),
                tag,
                IuErrorKind::WrongOpcode {
                    found: op,
                    expected: opcode::LOGIN_REJ,
                },
            ));
        }
        Ok(LoginRej {
            reason,
            tag: tag_v,
            buf_fmt: fmt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = [0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4];

    fn ids() -> ([u8; 16], [u8; 16]) {
        let mut ip = [0u8; 16];
        let mut tp = [0u8; 16];
        for i in 0..16u8 {
            ip[usize::from(i)] = 0x10 + i;
            tp[usize::from(i)] = 0xa0 + i;
        }
        (ip, tp)
    }

    /// `struct srp_login_req_rdma` as Linux ib_srp fills it, byte by byte from the
    /// offsets in notes §3 (not from our encoder).
    fn linux_rdma_cm_req() -> Vec<u8> {
        let (ip, tp) = ids();
        let mut b = vec![0u8; 56];
        b[0..8].copy_from_slice(&TAG);
        b[8] = 0x00; // req_buf_fmt = DIRECT | INDIRECT
        b[9] = 0x06;
        b[10] = 0x81; // IMMED_REQUESTED | MULTICHAN multi
        b[11] = 0x00; // opcode
        b[12..16].copy_from_slice(&[0, 0, 0x20, 0x44]); // 8260
        b[16..32].copy_from_slice(&ip);
        b[32..48].copy_from_slice(&tp);
        b[48] = 0;
        b[49] = 68; // imm_data_offset
        b
    }

    #[test]
    fn rdma_cm_login_req_layout() {
        let b = linux_rdma_cm_req();
        let r = LoginReq::parse_rdma_cm(&b).unwrap();
        let (ip, tp) = ids();
        assert_eq!(
            r,
            LoginReq {
                tag: TAG,
                req_it_iu_len: 8260,
                req_buf_fmt: 6,
                req_flags: 0x81,
                initiator_port_id: ip,
                target_port_id: tp,
                imm_data_offset: 68,
            }
        );
        assert_eq!(r.encode_rdma_cm().as_slice(), b.as_slice());
        // The CM may hand over more private data than the 56 bytes: ignored.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 36]);
        assert_eq!(LoginReq::parse_rdma_cm(&longer).unwrap(), r);
    }

    #[test]
    fn rdma_cm_login_req_malformed() {
        let b = linux_rdma_cm_req();
        for n in [0, 7, 8, 11, 12, 49, 55] {
            let e = LoginReq::parse_rdma_cm(&b[..n]).unwrap_err();
            assert_eq!(e.kind, IuErrorKind::TooShort { len: n, need: 56 }, "{n}");
            assert_eq!(e.tag.is_some(), n >= 8, "{n}");
        }
        let mut bad = b.clone();
        bad[11] = opcode::CMD;
        let e = LoginReq::parse_rdma_cm(&bad).unwrap_err();
        assert_eq!(
            e.kind,
            IuErrorKind::WrongOpcode {
                found: opcode::CMD,
                expected: opcode::LOGIN_REQ
            }
        );
        assert_eq!(e.tag, Some(TAG));
    }

    #[test]
    fn ib_login_req_layout() {
        let (ip, tp) = ids();
        let mut b = vec![0u8; 64];
        b[0] = 0x00;
        b[8..16].copy_from_slice(&TAG);
        b[16..20].copy_from_slice(&[0, 0, 0x20, 0x44]);
        b[24..26].copy_from_slice(&[0, 4]);
        b[26] = 0x80;
        b[28..30].copy_from_slice(&[0, 68]);
        b[32..48].copy_from_slice(&ip);
        b[48..64].copy_from_slice(&tp);
        let r = LoginReq::parse_ib(&b).unwrap();
        assert_eq!(r.req_it_iu_len, 8260);
        assert_eq!(r.req_buf_fmt, 4);
        assert_eq!(r.req_flags, 0x80);
        assert_eq!(r.imm_data_offset, 68);
        assert_eq!(r.initiator_port_id, ip);
        assert_eq!(r.target_port_id, tp);
        assert_eq!(r.tag, TAG);
        assert_eq!(r.encode_ib().as_slice(), b.as_slice());
        // The same request in both forms.
        assert_eq!(LoginReq::parse_rdma_cm(&r.encode_rdma_cm()).unwrap(), r);
        let e = LoginReq::parse_ib(&b[..63]).unwrap_err();
        assert_eq!(e.kind, IuErrorKind::TooShort { len: 63, need: 64 });
        assert_eq!(e.tag, Some(TAG));
        b[0] = 0xc0;
        assert!(matches!(
            LoginReq::parse_ib(&b).unwrap_err().kind,
            IuErrorKind::WrongOpcode { found: 0xc0, .. }
        ));
    }

    #[test]
    fn login_rsp_layout() {
        let r = LoginRsp {
            req_lim_delta: 128,
            tag: TAG,
            max_it_iu_len: 8260,
            max_ti_iu_len: 8260,
            buf_fmt: 6,
            rsp_flags: 0x81,
        };
        let b = r.encode();
        let mut want = [0u8; 52];
        want[0] = 0xc0;
        want[4..8].copy_from_slice(&[0, 0, 0, 128]);
        want[8..16].copy_from_slice(&TAG);
        want[16..20].copy_from_slice(&[0, 0, 0x20, 0x44]);
        want[20..24].copy_from_slice(&[0, 0, 0x20, 0x44]);
        want[24..26].copy_from_slice(&[0, 6]);
        want[26] = 0x81;
        assert_eq!(b, want);
        assert_eq!(LoginRsp::parse(&b), Ok(r));
        assert!(LoginRsp::parse(&b[..51]).is_err());
        let mut w = want;
        w[0] = 0xc2;
        assert!(LoginRsp::parse(&w).is_err());
    }

    #[test]
    fn login_rej_layout() {
        let r = LoginRej {
            reason: rej_reason::UNABLE_TO_ASSOCIATE,
            tag: TAG,
            buf_fmt: 6,
        };
        let b = r.encode();
        let mut want = [0u8; 32];
        want[0] = 0xc2;
        want[4..8].copy_from_slice(&[0, 1, 0, 3]);
        want[8..16].copy_from_slice(&TAG);
        want[24..26].copy_from_slice(&[0, 6]);
        assert_eq!(b, want);
        assert_eq!(LoginRej::parse(&b), Ok(r));
        assert!(LoginRej::parse(&b[..31]).is_err());
        assert!(LoginRej::parse(&[]).is_err());
    }
}
