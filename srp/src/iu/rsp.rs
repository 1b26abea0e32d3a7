//! SRP_RSP: the answer to an SRP_CMD (status, sense, residuals) and to an
//! SRP_TSK_MGMT (a 4-byte response data field with the RSP_CODE).

use engine::Residual;

use super::wire::{self, Fixed};
use super::{opcode, IuError, IuErrorKind, Tag};

/// The header before the response and sense data.
pub const RSP_HDR_LEN: usize = 36;

/// SRP_RSP FLAGS bits.
pub mod rsp_flags {
    pub const RSPVALID: u8 = 0x01;
    pub const SNSVALID: u8 = 0x02;
    pub const DOOVER: u8 = 0x04;
    pub const DOUNDER: u8 = 0x08;
    pub const DIOVER: u8 = 0x10;
    pub const DIUNDER: u8 = 0x20;
}

/// RSP_CODE values of a task management answer (SRP r16a table 24).
pub mod tm_rsp_code {
    pub const COMPLETE: u8 = 0x00;
    pub const INVALID_FIELDS: u8 = 0x02;
    pub const NOT_SUPPORTED: u8 = 0x04;
    pub const FAILED: u8 = 0x05;
}

/// An SRP_RSP's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rsp<'a> {
    pub tag: Tag,
    pub sol_not: u8,
    /// Credits returned with this response.
    pub req_lim_delta: u32,
    /// SCSI status byte.
    pub status: u8,
    pub data_in: Residual,
    pub data_out: Residual,
    /// Response data (task management answers: 4 bytes).
    pub resp_data: &'a [u8],
    pub sense: &'a [u8],
}

fn residual_bits(r: Residual, over: u8, under: u8) -> (u8, u32) {
    match r {
        Residual::None => (0, 0),
        Residual::Over(n) => (over, n),
        Residual::Under(n) => (under, n),
    }
}

/// Encodes `r` into `out`; returns the IU's length. Sense data is cut to what
/// fits in `max_ti_iu_len` (the initiator's receive buffer) and in `out`, as
/// ib_srpt does; the response data must fit whole.
pub fn encode_rsp(r: &Rsp, max_ti_iu_len: u32, out: &mut [u8]) -> Result<usize, IuError> {
    let room = usize::try_from(max_ti_iu_len)
        .unwrap_or(usize::MAX)
        .min(out.len());
    let need = RSP_HDR_LEN.saturating_add(r.resp_data.len());
    if room < need {
        return Err(IuError::new(
            Some(opcode::RSP),
            Some(r.tag),
            IuErrorKind::OutputTooSmall { len: room, need },
        ));
    }
    let sense_len = r.sense.len().min(room - need);
    let sense = r.sense.get(..sense_len).unwrap_or_default();
    let (o, out_res) = residual_bits(r.data_out, rsp_flags::DOOVER, rsp_flags::DOUNDER);
    let (i, in_res) = residual_bits(r.data_in, rsp_flags::DIOVER, rsp_flags::DIUNDER);
    let mut flags = o | i;
    if !r.resp_data.is_empty() {
        flags |= rsp_flags::RSPVALID;
    }
    if !sense.is_empty() {
        flags |= rsp_flags::SNSVALID;
    }
    let total = need + sense_len;
    let iu = out.get_mut(..total).unwrap_or_default();
    iu.fill(0);
    Fixed(iu)
        .u8(0, opcode::RSP)
        .u8(1, r.sol_not)
        .u32(4, r.req_lim_delta)
        .bytes(8, &r.tag)
        .u8(18, flags)
        .u8(19, r.status)
        .u32(20, out_res)
        .u32(24, in_res)
        // Both lengths are bounded by `room`, itself a u32.
        .u32(28, u32::try_from(sense_len).unwrap_or(0))
        .u32(32, u32::try_from(r.resp_data.len()).unwrap_or(0))
        .bytes(RSP_HDR_LEN, r.resp_data)
        .bytes(need, sense);
    Ok(total)
}

/// Encodes the SRP_RSP answering a task management request.
pub fn encode_tm_rsp(
    tag: Tag,
    req_lim_delta: u32,
    rsp_code: u8,
    out: &mut [u8],
) -> Result<usize, IuError> {
    let resp = [0, 0, 0, rsp_code];
    let r = Rsp {
        tag,
        req_lim_delta,
        resp_data: &resp,
        ..Rsp::default()
    };
    encode_rsp(&r, u32::MAX, out)
}

impl<'a> Rsp<'a> {
    /// Parses an SRP_RSP (what an initiator does; for tests and the fuzzer).
    /// Response and sense data are present only when their VALID flags say so.
    pub fn parse(b: &'a [u8]) -> Result<Self, IuError> {
        let tag = wire::tag(b);
        let op = wire::u8_at(b, 0);
        let err = |kind| IuError::new(op, tag, kind);
        let (Some(op), Some(tag), Some(sol_not), Some(delta), Some(flags), Some(status)) = (
            op,
            tag,
            wire::u8_at(b, 1),
            wire::u32_at(b, 4),
            wire::u8_at(b, 18),
            wire::u8_at(b, 19),
        ) else {
            return Err(err(IuErrorKind::TooShort {
                len: b.len(),
                need: RSP_HDR_LEN,
            }));
        };
        let (Some(out_res), Some(in_res), Some(sense_len), Some(resp_len)) = (
            wire::u32_at(b, 20),
            wire::u32_at(b, 24),
            wire::u32_at(b, 28),
            wire::u32_at(b, 32),
        ) else {
            return Err(err(IuErrorKind::TooShort {
                len: b.len(),
                need: RSP_HDR_LEN,
            }));
        };
        if op != opcode::RSP {
            return Err(err(IuErrorKind::WrongOpcode {
                found: op,
                expected: opcode::RSP,
            }));
        }
        let resp_len = if flags & rsp_flags::RSPVALID != 0 {
            resp_len
        } else {
            0
        };
        let sense_len = if flags & rsp_flags::SNSVALID != 0 {
            sense_len
        } else {
            0
        };
        let slice = |off: usize, len: u32| {
            let end = usize::try_from(len).ok().and_then(|l| off.checked_add(l))?;
            b.get(off..end).map(|s| (s, end))
        };
        let Some((resp_data, resp_end)) = slice(RSP_HDR_LEN, resp_len) else {
            return Err(err(IuErrorKind::TooShort {
                len: b.len(),
                need: RSP_HDR_LEN.saturating_add(usize::try_from(resp_len).unwrap_or(usize::MAX)),
            }));
        };
        let Some((sense, _)) = slice(resp_end, sense_len) else {
            return Err(err(IuErrorKind::SenseOutside { len: sense_len }));
        };
        let residual = |f: u8, over: u8, under: u8, n: u32| {
            if f & over != 0 {
                Residual::Over(n)
            } else if f & under != 0 {
                Residual::Under(n)
            } else {
                Residual::None
            }
        };
        Ok(Rsp {
            tag,
            sol_not,
            req_lim_delta: delta,
            status,
            data_in: residual(flags, rsp_flags::DIOVER, rsp_flags::DIUNDER, in_res),
            data_out: residual(flags, rsp_flags::DOOVER, rsp_flags::DOUNDER, out_res),
            resp_data,
            sense,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = *b"\x80\0\0\x01abcd";

    #[test]
    fn check_condition_with_sense_and_underflow() {
        let sense = [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0];
        let r = Rsp {
            tag: TAG,
            sol_not: 0,
            req_lim_delta: 1,
            status: 2,
            data_in: Residual::Under(512),
            data_out: Residual::None,
            resp_data: &[],
            sense: &sense,
        };
        let mut out = [0xeeu8; 256];
        let n = encode_rsp(&r, 8260, &mut out).unwrap();
        assert_eq!(n, 36 + 18);
        let mut want = vec![0u8; 54];
        want[0] = 0xc1;
        want[4..8].copy_from_slice(&[0, 0, 0, 1]);
        want[8..16].copy_from_slice(&TAG);
        want[18] = 0x20 | 0x02; // DIUNDER | SNSVALID
        want[19] = 2;
        want[24..28].copy_from_slice(&[0, 0, 2, 0]);
        want[28..32].copy_from_slice(&[0, 0, 0, 18]);
        want[36..].copy_from_slice(&sense);
        assert_eq!(&out[..n], want.as_slice());
        assert_eq!(Rsp::parse(&out[..n]), Ok(r));
    }

    #[test]
    fn residual_flags_each() {
        for (din, dout, flag, off, cnt) in [
            (Residual::Over(7), Residual::None, 0x10, 24, 7),
            (Residual::Under(9), Residual::None, 0x20, 24, 9),
            (Residual::None, Residual::Over(3), 0x04, 20, 3),
            (Residual::None, Residual::Under(4), 0x08, 20, 4),
        ] {
            let r = Rsp {
                tag: TAG,
                data_in: din,
                data_out: dout,
                ..Rsp::default()
            };
            let mut out = [0u8; 36];
            assert_eq!(encode_rsp(&r, 36, &mut out), Ok(36));
            assert_eq!(out[18], flag);
            assert_eq!(
                u32::from_be_bytes(out[off..off + 4].try_into().unwrap()),
                cnt
            );
            assert_eq!(Rsp::parse(&out), Ok(r));
        }
    }

    #[test]
    fn sense_is_capped_to_max_ti_iu_len() {
        let sense = [0x72u8; 96];
        let r = Rsp {
            tag: TAG,
            status: 2,
            sense: &sense,
            ..Rsp::default()
        };
        let mut out = [0u8; 200];
        let n = encode_rsp(&r, 36 + 20, &mut out).unwrap();
        assert_eq!(n, 56);
        assert_eq!(out[28..32], [0, 0, 0, 20]);
        assert_eq!(Rsp::parse(&out[..n]).unwrap().sense, &sense[..20]);
        // Capped by the output buffer too.
        let mut small = [0u8; 40];
        assert_eq!(encode_rsp(&r, 8260, &mut small), Ok(40));
        // No room for sense at all: SNSVALID stays clear.
        let mut hdr = [0u8; 36];
        assert_eq!(encode_rsp(&r, 8260, &mut hdr), Ok(36));
        assert_eq!(hdr[18] & rsp_flags::SNSVALID, 0);
        // No room for the header: an error, not a panic.
        let e = encode_rsp(&r, 35, &mut out).unwrap_err();
        assert_eq!(e.kind, IuErrorKind::OutputTooSmall { len: 35, need: 36 });
        assert_eq!(e.tag, Some(TAG));
    }

    #[test]
    fn task_management_answer_layout() {
        let mut out = [0u8; 64];
        let n = encode_tm_rsp(TAG, 1, tm_rsp_code::NOT_SUPPORTED, &mut out).unwrap();
        let mut want = [0u8; 40];
        want[0] = 0xc1;
        want[4..8].copy_from_slice(&[0, 0, 0, 1]);
        want[8..16].copy_from_slice(&TAG);
        want[18] = 0x01; // RSPVALID
        want[32..36].copy_from_slice(&[0, 0, 0, 4]);
        want[39] = 4;
        assert_eq!(&out[..n], &want);
        let r = Rsp::parse(&out[..n]).unwrap();
        assert_eq!(r.resp_data, &[0, 0, 0, 4]);
        assert!(encode_tm_rsp(TAG, 1, 0, &mut out[..39]).is_err());
    }

    #[test]
    fn parse_rejects_lengths_past_the_end() {
        let mut b = [0u8; 40];
        b[0] = 0xc1;
        b[18] = rsp_flags::SNSVALID;
        b[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Rsp::parse(&b).unwrap_err().kind,
            IuErrorKind::SenseOutside { len: u32::MAX }
        ));
        b[18] = rsp_flags::RSPVALID;
        b[32..36].copy_from_slice(&5u32.to_be_bytes());
        assert!(matches!(
            Rsp::parse(&b).unwrap_err().kind,
            IuErrorKind::TooShort { len: 40, need: 41 }
        ));
        assert!(Rsp::parse(&b[..35]).is_err());
        b[0] = 0xc0;
        assert!(Rsp::parse(&b).is_err());
    }
}
