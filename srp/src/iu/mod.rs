//! The SRP information unit codec (SRP r16a, plus SRP-2 immediate data): every IU
//! parsed from and encoded into plain byte slices, with no I/O. Multi-byte fields
//! are big-endian; the tag is opaque and echoed byte for byte.
//!
//! Parsers check every length before they read and never panic; an error carries
//! the IU's tag when the bytes reached that far, so that the transport can answer a
//! malformed SRP_CMD with an SRP_RSP (CHECK CONDITION) instead of dropping the
//! channel. Encoders exist for both directions: the target's IUs for the
//! transport, the initiator's for tests and the fuzzer's round trips.

mod cmd;
mod login;
#[cfg(test)]
mod proptests;
mod rsp;
mod small;
mod wire;

pub use cmd::{buf_fmt, Cmd, DataXfer, RemoteBuf, RemoteBufs, DIRECT_DESC_LEN, INDIRECT_HDR_LEN};
pub use login::{
    login_flags, rej_reason, LoginRej, LoginReq, LoginRsp, LOGIN_REJ_LEN, LOGIN_REQ_IB_LEN,
    LOGIN_REQ_RDMA_LEN, LOGIN_RSP_LEN,
};
pub use rsp::{encode_rsp, encode_tm_rsp, rsp_flags, tm_rsp_code, Rsp, RSP_HDR_LEN};
pub use small::{
    encode_tag_only, tsk_func, AerReq, CredReq, TLogout, TskMgmt, AER_REQ_HDR_LEN, SHORT_IU_LEN,
    TSK_MGMT_LEN,
};

/// IU opcodes (SRP r16a table 9 and following).
pub mod opcode {
    pub const LOGIN_REQ: u8 = 0x00;
    pub const TSK_MGMT: u8 = 0x01;
    pub const CMD: u8 = 0x02;
    pub const I_LOGOUT: u8 = 0x03;
    pub const CRED_RSP: u8 = 0x41;
    pub const AER_RSP: u8 = 0x42;
    pub const T_LOGOUT: u8 = 0x80;
    pub const CRED_REQ: u8 = 0x81;
    pub const AER_REQ: u8 = 0x82;
    pub const LOGIN_RSP: u8 = 0xc0;
    pub const RSP: u8 = 0xc1;
    pub const LOGIN_REJ: u8 = 0xc2;
}

/// An IU's 8-byte tag, opaque to the target.
pub type Tag = [u8; 8];

/// What a channel negotiated at login, which parsing depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelParams {
    /// The longest IU the initiator may send (our receive buffers' size).
    pub max_it_iu_len: u32,
    /// The longest IU we may send (the initiator's receive buffers' size).
    pub max_ti_iu_len: u32,
    /// Where immediate data starts in an SRP_CMD, if immediate data was granted.
    pub imm_data_offset: Option<u16>,
}

/// A malformed or unexpected IU: what was wrong, and the opcode and tag when the
/// IU was long enough to carry them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SRP IU (opcode {opcode:?}, tag {tag:02x?}): {kind}")]
pub struct IuError {
    pub opcode: Option<u8>,
    pub tag: Option<Tag>,
    pub kind: IuErrorKind,
}

/// The ways an IU can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IuErrorKind {
    #[error("IU of {len} bytes is shorter than the {need} bytes it needs")]
    TooShort { len: usize, need: usize },
    #[error("IU of {len} bytes is longer than max_it_iu_len {max}")]
    TooLong { len: usize, max: u32 },
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("opcode {0:#04x} is not one an initiator sends on a live channel")]
    Unexpected(u8),
    #[error("opcode {found:#04x} where {expected:#04x} belongs")]
    WrongOpcode { found: u8, expected: u8 },
    #[error("unknown data buffer descriptor format {0}")]
    BadDescFormat(u8),
    #[error("immediate data descriptor for data-in")]
    ImmediateDataIn,
    #[error("immediate data was not negotiated on this channel")]
    ImmediateNotGranted,
    #[error("immediate data at {offset}+{len} lies outside the {iu_len}-byte IU")]
    ImmediateOutside {
        offset: usize,
        len: u32,
        iu_len: usize,
    },
    #[error("bidirectional commands are not supported")]
    Bidirectional,
    #[error("data descriptors end at byte {end}, past the {iu_len}-byte IU")]
    DescriptorsOutside { end: usize, iu_len: usize },
    #[error("indirect table of {table} bytes is not a whole number of descriptors")]
    TableLength { table: u32 },
    #[error(
        "indirect table of {table} descriptors, {inline} inline: external tables are not fetched"
    )]
    ExternalTable { table: u32, inline: u8 },
    #[error("indirect total length {total} differs from the descriptors' sum {sum}")]
    TotalLength { total: u32, sum: u64 },
    #[error("task attribute {0}")]
    BadTaskAttr(u8),
    #[error("sense data length {len} exceeds the IU")]
    SenseOutside { len: u32 },
    #[error("output buffer of {len} bytes, {need} needed")]
    OutputTooSmall { len: usize, need: usize },
}

impl IuError {
    pub(crate) fn new(opcode: Option<u8>, tag: Option<Tag>, kind: IuErrorKind) -> Self {
        IuError { opcode, tag, kind }
    }
}

/// An IU an initiator sends on a live channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Iu<'a> {
    Cmd(Cmd<'a>),
    TskMgmt(TskMgmt),
    ILogout { tag: Tag },
    CredRsp { tag: Tag },
    AerRsp { tag: Tag },
}

impl Iu<'_> {
    pub fn tag(&self) -> Tag {
        match self {
            Iu::Cmd(c) => c.tag,
            Iu::TskMgmt(t) => t.tag,
            Iu::ILogout { tag } | Iu::CredRsp { tag } | Iu::AerRsp { tag } => *tag,
        }
    }
}

/// Parses one received IU of a live channel.
pub fn parse<'a>(iu: &'a [u8], p: &ChannelParams) -> Result<Iu<'a>, IuError> {
    let Some(&op) = iu.first() else {
        return Err(IuError::new(
            None,
            None,
            IuErrorKind::TooShort { len: 0, need: 1 },
        ));
    };
    let tag = wire::tag(iu);
    let too_long = usize::try_from(p.max_it_iu_len).is_ok_and(|max| iu.len() > max);
    if too_long {
        return Err(IuError::new(
            Some(op),
            tag,
            IuErrorKind::TooLong {
                len: iu.len(),
                max: p.max_it_iu_len,
            },
        ));
    }
    match op {
        opcode::CMD => Cmd::parse(iu, p.imm_data_offset).map(Iu::Cmd),
        opcode::TSK_MGMT => TskMgmt::parse(iu).map(Iu::TskMgmt),
        opcode::I_LOGOUT => small::parse_tag_only(iu, op).map(|tag| Iu::ILogout { tag }),
        opcode::CRED_RSP => small::parse_tag_only(iu, op).map(|tag| Iu::CredRsp { tag }),
        opcode::AER_RSP => small::parse_tag_only(iu, op).map(|tag| Iu::AerRsp { tag }),
        opcode::LOGIN_REQ
        | opcode::T_LOGOUT
        | opcode::CRED_REQ
        | opcode::AER_REQ
        | opcode::LOGIN_RSP
        | opcode::RSP
        | opcode::LOGIN_REJ => Err(IuError::new(Some(op), tag, IuErrorKind::Unexpected(op))),
        _ => Err(IuError::new(Some(op), tag, IuErrorKind::UnknownOpcode(op))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChannelParams {
        ChannelParams {
            max_it_iu_len: 8260,
            max_ti_iu_len: 8260,
            imm_data_offset: Some(68),
        }
    }

    #[test]
    fn dispatches_each_initiator_iu() {
        let mut b = [0u8; 16];
        b[8..16].copy_from_slice(b"TAGTAG01");
        for (op, want) in [
            (opcode::I_LOGOUT, Iu::ILogout { tag: *b"TAGTAG01" }),
            (opcode::CRED_RSP, Iu::CredRsp { tag: *b"TAGTAG01" }),
            (opcode::AER_RSP, Iu::AerRsp { tag: *b"TAGTAG01" }),
        ] {
            b[0] = op;
            assert_eq!(parse(&b, &params()), Ok(want.clone()));
            assert_eq!(want.tag(), *b"TAGTAG01");
        }
    }

    #[test]
    fn rejects_empty_long_target_and_unknown_ius() {
        let e = parse(&[], &params()).unwrap_err();
        assert_eq!((e.opcode, e.tag), (None, None));
        let mut big = vec![0u8; 8261];
        big[0] = opcode::CMD;
        big[8] = 7;
        let e = parse(&big, &params()).unwrap_err();
        assert!(matches!(
            e.kind,
            IuErrorKind::TooLong {
                len: 8261,
                max: 8260
            }
        ));
        assert_eq!(e.tag, Some([7, 0, 0, 0, 0, 0, 0, 0]));
        for op in [
            opcode::LOGIN_REQ,
            opcode::RSP,
            opcode::T_LOGOUT,
            opcode::CRED_REQ,
        ] {
            let mut b = [0u8; 16];
            b[0] = op;
            assert_eq!(
                parse(&b, &params()).unwrap_err().kind,
                IuErrorKind::Unexpected(op)
            );
        }
        let e = parse(&[0x77; 16], &params()).unwrap_err();
        assert_eq!(e.kind, IuErrorKind::UnknownOpcode(0x77));
        assert_eq!(e.tag, Some([0x77; 8]));
        // Too short for a tag: the error says so and carries none.
        let e = parse(&[opcode::I_LOGOUT, 0, 0], &params()).unwrap_err();
        assert_eq!(e.tag, None);
        assert!(matches!(e.kind, IuErrorKind::TooShort { len: 3, need: 16 }));
    }
}
