//! The login decision (what ib_srpt does in `srpt_rdma_cm_req_recv`, notes §2):
//! IU length limits, the target port identifier, buffer formats, immediate data,
//! the credits granted and the multichannel result. Pure: the transport applies
//! the channel registry's outcome with [`Accepted::note_terminated`].

use crate::credits;
use crate::iu::{login_flags, rej_reason, ChannelParams, IuError, LoginRej, LoginReq, LoginRsp};

/// The smallest IU an initiator may ask for (an SRP_CMD with one direct
/// descriptor is 64 bytes).
pub const MIN_IT_IU_LEN: u32 = 64;
/// The Linux initiator's IU with 8 KiB of immediate data: 68 + 8192.
pub const LINUX_IMM_IT_IU_LEN: u32 = 8260;
/// What we accept by default: ib_srpt's default `srp_max_req_size`.
pub const DEFAULT_MAX_IT_IU_LEN: u32 = 8276;
/// The buffer formats we support: direct and (inline) indirect descriptors.
pub const SUPPORTED_BUF_FMT: u16 = login_flags::BUF_FMT_DIRECT | login_flags::BUF_FMT_INDIRECT;
/// Immediate data may not start inside the fixed SRP_CMD header.
const MIN_IMM_DATA_OFFSET: u16 = 48;

/// Who we are: the target port identifier is `id_ext || ioc_guid`, big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetIdentity {
    pub id_ext: u64,
    pub ioc_guid: u64,
}

impl TargetIdentity {
    /// The 16-byte TARGET PORT IDENTIFIER (SRP r16a order).
    pub fn port_id(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.id_ext.to_be_bytes());
        b[8..].copy_from_slice(&self.ioc_guid.to_be_bytes());
        b
    }
}

/// What a channel of this target can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of our receive buffers: the longest IU we accept (≥ 8260 for Linux
    /// with immediate data).
    pub max_it_iu_len: u32,
    /// Receive buffers posted per channel; one stays spare for the replies that
    /// use no credit (SRP_CRED_RSP, SRP_AER_RSP).
    pub rq_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_it_iu_len: DEFAULT_MAX_IT_IU_LEN,
            rq_size: 128,
        }
    }
}

/// Single-channel logins end the nexus's other channels; multichannel logins
/// join them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Multichannel {
    Single,
    Multi,
}

/// An accepted login: the SRP_LOGIN_RSP to send with the CM accept, and what the
/// channel negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub rsp: LoginRsp,
    pub params: ChannelParams,
    pub multichannel: Multichannel,
}

impl Accepted {
    /// Records how many existing channels a single-channel login ended: the
    /// MULTI-CHANNEL RESULT says TERMINATED if there were any (as ib_srpt does).
    pub fn note_terminated(&mut self, ended: usize) {
        if self.multichannel == Multichannel::Single && ended > 0 {
            self.rsp.rsp_flags =
                (self.rsp.rsp_flags & !login_flags::MULTICHAN_MASK) | login_flags::RSP_TERMINATED;
        }
    }
}

fn reject(req_tag: [u8; 8], reason: u32) -> LoginRej {
    LoginRej {
        reason,
        tag: req_tag,
        buf_fmt: SUPPORTED_BUF_FMT,
    }
}

/// The SRP_LOGIN_REJ for private data that is not a login request at all.
pub fn reject_malformed(e: &IuError) -> LoginRej {
    reject(e.tag.unwrap_or_default(), rej_reason::UNABLE_TO_ESTABLISH)
}

/// Decides a login request.
pub fn decide(req: &LoginReq, me: &TargetIdentity, lim: &Limits) -> Result<Accepted, LoginRej> {
    if req.req_it_iu_len < MIN_IT_IU_LEN || req.req_it_iu_len > lim.max_it_iu_len {
        return Err(reject(req.tag, rej_reason::IT_IU_LEN_TOO_LARGE));
    }
    if req.target_port_id != me.port_id() {
        return Err(reject(req.tag, rej_reason::UNABLE_TO_ASSOCIATE));
    }
    // REQUIRED BUFFER FORMATS: the initiator will use these; any we do not know
    // (an unknown bit) we cannot serve.
    if req.req_buf_fmt & !SUPPORTED_BUF_FMT != 0 {
        return Err(reject(req.tag, rej_reason::UNSUPPORTED_DESC_FMT));
    }
    let Some(grant) = credits::initial_grant(lim.rq_size) else {
        return Err(reject(req.tag, rej_reason::INSUFFICIENT_RESOURCES));
    };
    let mut rsp_flags = 0u8;
    let imm_ok = req.req_flags & login_flags::IMMED_REQUESTED != 0
        && req.imm_data_offset >= MIN_IMM_DATA_OFFSET
        && u32::from(req.imm_data_offset) < req.req_it_iu_len;
    let imm_data_offset = if imm_ok {
        rsp_flags |= login_flags::RSP_IMMED_SUPPORTED;
        Some(req.imm_data_offset)
    } else {
        None
    };
    // Reserved MULTI-CHANNEL ACTION values are taken as "multiple", as ib_srpt
    // does: only an explicit single-channel login ends other channels.
    let multichannel =
        if req.req_flags & login_flags::MULTICHAN_MASK == login_flags::MULTICHAN_SINGLE {
            rsp_flags |= login_flags::RSP_NO_CHANNELS;
            Multichannel::Single
        } else {
            rsp_flags |= login_flags::RSP_MAINTAINED;
            Multichannel::Multi
        };
    // The initiator sizes its receive buffers by MAX_TI_IU_LEN; echoing its own
    // IU length (as ib_srpt does) always leaves room for an SRP_RSP with sense.
    let max_ti_iu_len = req.req_it_iu_len;
    Ok(Accepted {
        rsp: LoginRsp {
            req_lim_delta: grant,
            tag: req.tag,
            max_it_iu_len: lim.max_it_iu_len,
            max_ti_iu_len,
            buf_fmt: SUPPORTED_BUF_FMT,
            rsp_flags,
        },
        params: ChannelParams {
            max_it_iu_len: lim.max_it_iu_len,
            max_ti_iu_len,
            imm_data_offset,
        },
        multichannel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iu::IuErrorKind;

    const ME: TargetIdentity = TargetIdentity {
        id_ext: 0x0002_c903_00a1_b2c3,
        ioc_guid: 0x0002_c903_00a1_b2c4,
    };

    /// What Linux ib_srp sends by default with immediate data, as bytes from the
    /// notes' layout, parsed.
    fn linux_req(flags: u8) -> LoginReq {
        let mut b = [0u8; 56];
        b[0..8].copy_from_slice(b"loginTAG");
        b[8..10].copy_from_slice(&[0, 6]);
        b[10] = flags;
        b[12..16].copy_from_slice(&8260u32.to_be_bytes());
        b[16..32].copy_from_slice(&[0x11; 16]);
        b[32..40].copy_from_slice(&ME.id_ext.to_be_bytes());
        b[40..48].copy_from_slice(&ME.ioc_guid.to_be_bytes());
        b[48..50].copy_from_slice(&68u16.to_be_bytes());
        LoginReq::parse_rdma_cm(&b).unwrap()
    }

    #[test]
    fn accepts_linux_default_login_with_immediate_data() {
        let a = decide(&linux_req(0x80), &ME, &Limits::default()).unwrap();
        assert_eq!(a.multichannel, Multichannel::Single);
        assert_eq!(
            a.rsp,
            LoginRsp {
                req_lim_delta: 127,
                tag: *b"loginTAG",
                max_it_iu_len: 8276,
                max_ti_iu_len: 8260,
                buf_fmt: 6,
                rsp_flags: 0x80,
            }
        );
        assert_eq!(
            a.params,
            ChannelParams {
                max_it_iu_len: 8276,
                max_ti_iu_len: 8260,
                imm_data_offset: Some(68),
            }
        );
        // Exactly 8260 is enough.
        let lim = Limits {
            max_it_iu_len: LINUX_IMM_IT_IU_LEN,
            rq_size: 64,
        };
        let a = decide(&linux_req(0x80), &ME, &lim).unwrap();
        assert_eq!(a.rsp.req_lim_delta, 63);
        assert_eq!(a.rsp.max_it_iu_len, 8260);
    }

    #[test]
    fn multichannel_result() {
        let mut a = decide(&linux_req(0x81), &ME, &Limits::default()).unwrap();
        assert_eq!(a.multichannel, Multichannel::Multi);
        assert_eq!(a.rsp.rsp_flags, 0x82);
        a.note_terminated(3);
        assert_eq!(a.rsp.rsp_flags, 0x82, "multi never terminates");
        let mut a = decide(&linux_req(0x00), &ME, &Limits::default()).unwrap();
        assert_eq!(a.rsp.rsp_flags, 0x00);
        a.note_terminated(0);
        assert_eq!(a.rsp.rsp_flags, 0x00);
        a.note_terminated(1);
        assert_eq!(a.rsp.rsp_flags, 0x01);
        assert_eq!(a.params.imm_data_offset, None);
        // Reserved action values behave as multi.
        let a = decide(&linux_req(0x03), &ME, &Limits::default()).unwrap();
        assert_eq!(a.multichannel, Multichannel::Multi);
    }

    #[test]
    fn rejections() {
        let lim = Limits::default();
        let reason = |r: LoginReq, lim: &Limits| decide(&r, &ME, lim).unwrap_err();
        let mut r = linux_req(0x80);
        r.req_it_iu_len = 8277;
        let rej = reason(r, &lim);
        assert_eq!(rej.reason, rej_reason::IT_IU_LEN_TOO_LARGE);
        assert_eq!(rej.tag, *b"loginTAG");
        assert_eq!(rej.buf_fmt, 6);
        r.req_it_iu_len = 63;
        assert_eq!(reason(r, &lim).reason, rej_reason::IT_IU_LEN_TOO_LARGE);
        // A Linux initiator asking for 8260 against a target that takes less.
        let small = Limits {
            max_it_iu_len: 4096,
            rq_size: 16,
        };
        assert_eq!(
            reason(linux_req(0x80), &small).reason,
            rej_reason::IT_IU_LEN_TOO_LARGE
        );
        // Either half of the target port id wrong.
        for i in [0, 15] {
            let mut r = linux_req(0x80);
            r.target_port_id[i] ^= 1;
            assert_eq!(reason(r, &lim).reason, rej_reason::UNABLE_TO_ASSOCIATE);
        }
        // The halves swapped (the io_class=ff00 order) do not match either.
        let mut r = linux_req(0x80);
        r.target_port_id = {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&ME.ioc_guid.to_be_bytes());
            b[8..].copy_from_slice(&ME.id_ext.to_be_bytes());
            b
        };
        assert_eq!(reason(r, &lim).reason, rej_reason::UNABLE_TO_ASSOCIATE);
        let mut r = linux_req(0x80);
        r.req_buf_fmt = 0x0008;
        assert_eq!(reason(r, &lim).reason, rej_reason::UNSUPPORTED_DESC_FMT);
        let one = Limits {
            max_it_iu_len: 8260,
            rq_size: 1,
        };
        assert_eq!(
            reason(linux_req(0x80), &one).reason,
            rej_reason::INSUFFICIENT_RESOURCES
        );
    }

    #[test]
    fn immediate_data_needs_a_sane_offset() {
        for (off, granted) in [
            (68, true),
            (48, true),
            (47, false),
            (0, false),
            (8260, false),
        ] {
            let mut r = linux_req(0x80);
            r.imm_data_offset = off;
            let a = decide(&r, &ME, &Limits::default()).unwrap();
            assert_eq!(a.params.imm_data_offset.is_some(), granted, "{off}");
            assert_eq!(a.rsp.rsp_flags & 0x80 != 0, granted, "{off}");
        }
        // Not requested: not granted, whatever the offset.
        let a = decide(&linux_req(0x00), &ME, &Limits::default()).unwrap();
        assert_eq!(a.params.imm_data_offset, None);
    }

    #[test]
    fn malformed_private_data_is_rejected_with_its_tag() {
        let e = LoginReq::parse_rdma_cm(b"tagtag12 too short").unwrap_err();
        assert!(matches!(e.kind, IuErrorKind::TooShort { .. }));
        let rej = reject_malformed(&e);
        assert_eq!(rej.tag, *b"tagtag12");
        assert_eq!(rej.reason, rej_reason::UNABLE_TO_ESTABLISH);
        assert_eq!(
            reject_malformed(&LoginReq::parse_rdma_cm(&[]).unwrap_err()).tag,
            [0; 8]
        );
    }

    #[test]
    fn port_id_order() {
        let id = TargetIdentity {
            id_ext: 0x0102_0304_0506_0708,
            ioc_guid: 0x1112_1314_1516_1718,
        };
        assert_eq!(
            id.port_id(),
            [1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
    }
}
