//! The iSCSI PDU (RFC 7143 §11): the 48-byte Basic Header Segment of every PDU
//! type, additional header segments, padding, CRC32C digests and the framing that
//! tells, from a header, how many bytes of the PDU are still to come.
//!
//! Every field is read and written through [`Bhs`]'s big-endian accessors at an
//! offset named once in [`off`]. [`Pdu::parse`] validates a header into one typed
//! struct per opcode; `to_bytes` writes it back. Reserved fields are written as
//! zero and ignored on receipt.

use thiserror::Error;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a CRC32C digest on the wire.
pub const DIGEST_LEN: usize = 4;
/// The largest DataSegmentLength the 24-bit field can carry.
pub const MAX_DATA_SEGMENT_LEN: u32 = 0x00ff_ffff;
/// The reserved Initiator Task Tag value (unsolicited target PDUs, NOP pings).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Field offsets in the BHS (RFC 7143 §11.2 and the per-PDU sections). Words that
/// different PDUs name differently have one name per meaning.
pub mod off {
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const TOTAL_AHS_LEN: usize = 4;
    pub const DATA_SEGMENT_LEN: usize = 5;
    pub const LUN: usize = 8;
    pub const ITT: usize = 16;
    pub const TTT: usize = 20;
    pub const CMD_SN: usize = 24;
    pub const EXP_STAT_SN: usize = 28;
    pub const STAT_SN: usize = 24;
    pub const EXP_CMD_SN: usize = 28;
    pub const MAX_CMD_SN: usize = 32;
    // SCSI Command
    pub const EXPECTED_DATA_LEN: usize = 20;
    pub const CDB: usize = 32;
    // SCSI Response, Task Management Response, Logout Response, Reject
    pub const RESPONSE: usize = 2;
    pub const STATUS: usize = 3;
    pub const SNACK_TAG: usize = 20;
    pub const EXP_DATA_SN: usize = 36;
    pub const BIDI_RESIDUAL: usize = 40;
    pub const RESIDUAL: usize = 44;
    // Task Management Request
    pub const REFERENCED_TAG: usize = 20;
    pub const REF_CMD_SN: usize = 32;
    pub const TMF_EXP_DATA_SN: usize = 36;
    // Login Request and Response
    pub const VERSION_MAX: usize = 2;
    pub const VERSION_MIN: usize = 3;
    pub const VERSION_ACTIVE: usize = 3;
    pub const ISID: usize = 8;
    pub const TSIH: usize = 14;
    pub const CID: usize = 20;
    pub const STATUS_CLASS: usize = 36;
    pub const STATUS_DETAIL: usize = 37;
    // Data-Out, Data-In, R2T
    pub const DATA_SN: usize = 36;
    pub const BUFFER_OFFSET: usize = 40;
    pub const R2T_SN: usize = 36;
    pub const DESIRED_LEN: usize = 44;
    // Logout Response
    pub const TIME2WAIT: usize = 40;
    pub const TIME2RETAIN: usize = 42;
    // SNACK
    pub const BEG_RUN: usize = 40;
    pub const RUN_LENGTH: usize = 44;
    // Asynchronous Message
    pub const ASYNC_EVENT: usize = 36;
    pub const ASYNC_VCODE: usize = 37;
    pub const PARAMETER1: usize = 38;
    pub const PARAMETER2: usize = 40;
    pub const PARAMETER3: usize = 42;
    // Reject
    pub const REJECT_REASON: usize = 2;
    pub const REJECT_DATA_SN: usize = 36;
}

/// Flag bits of byte 0 and byte 1.
pub mod flag {
    pub const IMMEDIATE: u8 = 0x40;
    pub const OPCODE_MASK: u8 = 0x3f;
    pub const FINAL: u8 = 0x80;
    // SCSI Command
    pub const READ: u8 = 0x40;
    pub const WRITE: u8 = 0x20;
    pub const ATTR_MASK: u8 = 0x07;
    // Text and Login
    pub const CONTINUE: u8 = 0x40;
    pub const TRANSIT: u8 = 0x80;
    // SCSI Response and Data-In residual bits
    pub const BIDI_OVERFLOW: u8 = 0x10;
    pub const BIDI_UNDERFLOW: u8 = 0x08;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    // Data-In
    pub const ACKNOWLEDGE: u8 = 0x40;
    pub const STATUS: u8 = 0x01;
}

/// A Basic Header Segment with big-endian accessors. Reads and writes are bounds
/// checked by construction: every offset used is a constant inside 48 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0u8; BHS_LEN])
    }
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Bhs {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut b = [0u8; N];
        if let Some(src) = self.0.get(at..at.saturating_add(N)) {
            b.copy_from_slice(src);
        }
        b
    }

    fn put<const N: usize>(&mut self, at: usize, v: [u8; N]) {
        if let Some(dst) = self.0.get_mut(at..at.saturating_add(N)) {
            dst.copy_from_slice(&v);
        }
    }

    pub fn u8(&self, at: usize) -> u8 {
        self.bytes::<1>(at)[0]
    }
    pub fn set_u8(&mut self, at: usize, v: u8) {
        self.put(at, [v]);
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes(self.bytes(at))
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.put(at, v.to_be_bytes());
    }
    pub fn u24(&self, at: usize) -> u32 {
        let [a, b, c] = self.bytes::<3>(at);
        u32::from_be_bytes([0, a, b, c])
    }
    /// Writes the low 24 bits of `v`.
    pub fn set_u24(&mut self, at: usize, v: u32) {
        let [_, a, b, c] = v.to_be_bytes();
        self.put(at, [a, b, c]);
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bytes(at))
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.put(at, v.to_be_bytes());
    }
    pub fn array8(&self, at: usize) -> [u8; 8] {
        self.bytes(at)
    }
    pub fn set_array8(&mut self, at: usize, v: [u8; 8]) {
        self.put(at, v);
    }

    pub fn opcode_byte(&self) -> u8 {
        self.u8(off::OPCODE) & flag::OPCODE_MASK
    }
    pub fn immediate(&self) -> bool {
        self.u8(off::OPCODE) & flag::IMMEDIATE != 0
    }
    pub fn flags(&self) -> u8 {
        self.u8(off::FLAGS)
    }
    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.u8(off::TOTAL_AHS_LEN)) * 4
    }
    pub fn data_segment_len(&self) -> u32 {
        self.u24(off::DATA_SEGMENT_LEN)
    }
    pub fn itt(&self) -> u32 {
        self.u32(off::ITT)
    }

    fn start(op: Opcode, immediate: bool, flags: u8) -> Bhs {
        let mut h = Bhs::default();
        let i = if immediate { flag::IMMEDIATE } else { 0 };
        h.set_u8(off::OPCODE, op as u8 | i);
        h.set_u8(off::FLAGS, flags);
        h
    }

    fn set_data_segment_len(&mut self, len: u32) -> Result<(), PduError> {
        if len > MAX_DATA_SEGMENT_LEN {
            return Err(PduError::DataSegmentTooLong(len));
        }
        self.set_u24(off::DATA_SEGMENT_LEN, len);
        Ok(())
    }
}

/// The opcodes of RFC 7143 §11.2.1.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    /// Sent by initiators (the ones a target receives).
    pub fn is_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

/// What is wrong with a header.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PduError {
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("{opcode:?} must not carry a data segment (DataSegmentLength {len})")]
    UnexpectedDataSegment { opcode: Opcode, len: u32 },
    #[error("{opcode:?} must not carry additional header segments (TotalAHSLength {len})")]
    UnexpectedAhs { opcode: Opcode, len: usize },
    #[error("invalid task attribute {0}")]
    InvalidTaskAttribute(u8),
    #[error("invalid login stage {0}")]
    InvalidStage(u8),
    #[error("login stage transition from {from:?} to {to:?} goes backwards")]
    StageNotForward { from: Stage, to: Stage },
    #[error("Continue and Transit bits both set")]
    ContinueAndTransit,
    #[error("Continue and Final bits both set")]
    ContinueAndFinal,
    #[error("invalid logout reason code {0}")]
    InvalidLogoutReason(u8),
    #[error("invalid SNACK type {0}")]
    InvalidSnackType(u8),
    #[error("overflow and underflow bits both set")]
    OverflowAndUnderflow,
    #[error("status bit set without the final bit")]
    StatusWithoutFinal,
    #[error("DataSegmentLength {0} does not fit in 24 bits")]
    DataSegmentTooLong(u32),
    #[error("AHS truncated at byte {0}")]
    AhsTruncated(usize),
    #[error("AHS of type {ahs_type} has invalid length {len}")]
    AhsBadLength { ahs_type: u8, len: usize },
    #[error("additional header segments too long ({0} bytes)")]
    AhsTooLong(usize),
    #[error("CDB of {0} bytes is too long")]
    CdbTooLong(usize),
    #[error("more than one extended CDB AHS")]
    ExtendedCdbTwice,
}

/// The six-byte initiator session identifier (RFC 7143 §11.12.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Isid(pub [u8; 6]);

impl std::fmt::Display for Isid {
    /// As in the SCSI initiator port name `iqn...,i,0x<isid>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Isid {
    fn read(h: &Bhs) -> Isid {
        let l = h.array8(off::ISID);
        Isid([l[0], l[1], l[2], l[3], l[4], l[5]])
    }
}

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    pub fn from_bits(v: u8) -> Result<Stage, PduError> {
        match v {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(PduError::InvalidStage(v)),
        }
    }
}

/// Task attributes as the SCSI Command PDU carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttribute {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

impl TaskAttribute {
    fn from_bits(v: u8) -> Result<Self, PduError> {
        Ok(match v {
            0 => TaskAttribute::Untagged,
            1 => TaskAttribute::Simple,
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            _ => return Err(PduError::InvalidTaskAttribute(v)),
        })
    }

    /// The engine's attribute (untagged tasks are simple ones, RFC 7143 §11.3.1.4).
    pub fn to_engine(self) -> engine::TaskAttr {
        match self {
            TaskAttribute::Untagged | TaskAttribute::Simple => engine::TaskAttr::Simple,
            TaskAttribute::Ordered => engine::TaskAttr::Ordered,
            TaskAttribute::HeadOfQueue => engine::TaskAttr::HeadOfQueue,
            TaskAttribute::Aca => engine::TaskAttr::Aca,
        }
    }
}

/// Residual bits and count of a SCSI Response or final Data-In.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResidualFlag {
    #[default]
    None,
    Overflow,
    Underflow,
}

fn residual_flag(flags: u8, over: u8, under: u8) -> Result<ResidualFlag, PduError> {
    match (flags & over != 0, flags & under != 0) {
        (true, true) => Err(PduError::OverflowAndUnderflow),
        (true, false) => Ok(ResidualFlag::Overflow),
        (false, true) => Ok(ResidualFlag::Underflow),
        (false, false) => Ok(ResidualFlag::None),
    }
}

fn residual_bits(r: ResidualFlag, over: u8, under: u8) -> u8 {
    match r {
        ResidualFlag::None => 0,
        ResidualFlag::Overflow => over,
        ResidualFlag::Underflow => under,
    }
}

fn bit(set: bool, b: u8) -> u8 {
    if set {
        b
    } else {
        0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// No unsolicited Data-Out follows.
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttribute,
    /// TotalAHSLength in 4-byte words.
    pub total_ahs_words: u8,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub expected_data_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    /// The engine's data direction; `None` for a bidirectional command (R and
    /// W both set), which the engine does not support.
    pub fn data_dir(&self) -> Option<engine::DataDir> {
        match (self.read, self.write) {
            (false, false) => Some(engine::DataDir::None),
            (true, false) => Some(engine::DataDir::FromDevice),
            (false, true) => Some(engine::DataDir::ToDevice),
            (true, true) => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    /// The function code (RFC 7143 §11.5.1); see [`TmfCode`].
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    /// The engine's function for this request; `None` for TASK REASSIGN (needs
    /// ErrorRecoveryLevel 2) and unknown codes, which the target answers "not
    /// supported" or "rejected". Both target resets map to TARGET RESET; a cold
    /// reset also drops the connections, which is the session layer's part.
    pub fn engine_function(&self) -> Option<engine::TmfFunction> {
        use engine::TmfFunction as F;
        Some(match self.function {
            tmf_code::ABORT_TASK => F::AbortTask {
                tag: u64::from(self.referenced_task_tag),
            },
            tmf_code::ABORT_TASK_SET => F::AbortTaskSet,
            tmf_code::CLEAR_ACA => F::ClearAca,
            tmf_code::CLEAR_TASK_SET => F::ClearTaskSet,
            tmf_code::LOGICAL_UNIT_RESET => F::LogicalUnitReset,
            tmf_code::TARGET_WARM_RESET | tmf_code::TARGET_COLD_RESET => F::TargetReset,
            _ => return None,
        })
    }
}

/// Task management function codes (RFC 7143 §11.5.1).
pub mod tmf_code {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Task management response codes (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    /// Some(NSG) when the Transit bit is set.
    pub transit: Option<Stage>,
    pub continue_: bool,
    pub csg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub data_segment_len: u32,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout reasons (RFC 7143 §11.14.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogoutReason {
    CloseSession = 0,
    CloseConnection = 1,
    RemoveConnectionForRecovery = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK types (RFC 7143 §11.16.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnackType {
    DataR2t = 0,
    Status = 1,
    DataAck = 2,
    RData = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snack {
    pub snack_type: SnackType,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopIn {
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_residual: ResidualFlag,
    pub residual: ResidualFlag,
    /// iSCSI service response: 0 command completed at target, 1 target failure.
    pub response: u8,
    pub status: u8,
    pub data_segment_len: u32,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual_count: u32,
    pub residual_count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login status class and detail (RFC 7143 §11.13.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus::new(0, 0);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus::new(1, 1);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus::new(1, 2);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus::new(2, 0);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus::new(2, 1);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus::new(2, 2);
    pub const NOT_FOUND: LoginStatus = LoginStatus::new(2, 3);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus::new(2, 4);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus::new(2, 5);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus::new(2, 6);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus::new(2, 7);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus::new(2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus::new(2, 9);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus::new(2, 0x0a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus::new(2, 0x0b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus::new(3, 0);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus::new(3, 1);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus::new(3, 2);

    pub const fn new(class: u8, detail: u8) -> Self {
        LoginStatus { class, detail }
    }

    pub fn is_success(self) -> bool {
        self.class == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: Option<Stage>,
    pub continue_: bool,
    pub csg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub data_segment_len: u32,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status: LoginStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub acknowledge: bool,
    pub residual: ResidualFlag,
    /// The SCSI status when the S bit is set (phase collapse).
    pub status: Option<u8>,
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
}

/// Logout response codes (RFC 7143 §11.15.1).
pub mod logout_response {
    pub const CLOSED: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct R2t {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsyncMessage {
    pub data_segment_len: u32,
    pub lun: [u8; 8],
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// A Reject; its data segment is the header of the rejected PDU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub data_segment_len: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// One parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

fn no_ahs(h: &Bhs, opcode: Opcode) -> Result<(), PduError> {
    let len = h.total_ahs_len();
    if len != 0 {
        return Err(PduError::UnexpectedAhs { opcode, len });
    }
    Ok(())
}

fn no_data(h: &Bhs, opcode: Opcode) -> Result<(), PduError> {
    let len = h.data_segment_len();
    if len != 0 {
        return Err(PduError::UnexpectedDataSegment { opcode, len });
    }
    Ok(())
}

fn login_stages(flags: u8) -> Result<(Stage, Option<Stage>, bool), PduError> {
    let transit = flags & flag::TRANSIT != 0;
    let cont = flags & flag::CONTINUE != 0;
    if transit && cont {
        return Err(PduError::ContinueAndTransit);
    }
    let csg = Stage::from_bits((flags >> 2) & 3)?;
    let nsg = if transit {
        let nsg = Stage::from_bits(flags & 3)?;
        if nsg <= csg {
            return Err(PduError::StageNotForward { from: csg, to: nsg });
        }
        Some(nsg)
    } else {
        None
    };
    Ok((csg, nsg, cont))
}

fn login_flags(csg: Stage, transit: Option<Stage>, cont: bool) -> u8 {
    let mut f = (csg as u8) << 2;
    if let Some(n) = transit {
        f |= flag::TRANSIT | n as u8;
    }
    f | bit(cont, flag::CONTINUE)
}

fn text_flags(flags: u8) -> Result<(bool, bool), PduError> {
    let f = flags & flag::FINAL != 0;
    let c = flags & flag::CONTINUE != 0;
    if f && c {
        return Err(PduError::ContinueAndFinal);
    }
    Ok((f, c))
}

impl Pdu {
    /// Validates a header into its typed PDU.
    pub fn parse(header: &[u8; BHS_LEN]) -> Result<Pdu, PduError> {
        let h = Bhs(*header);
        let op =
            Opcode::from_u8(h.opcode_byte()).ok_or(PduError::UnknownOpcode(h.opcode_byte()))?;
        if op != Opcode::ScsiCommand {
            no_ahs(&h, op)?;
        }
        let imm = h.immediate();
        let fl = h.flags();
        let dsl = h.data_segment_len();
        Ok(match op {
            Opcode::NopOut => Pdu::NopOut(NopOut {
                immediate: imm,
                data_segment_len: dsl,
                lun: h.array8(off::LUN),
                itt: h.itt(),
                ttt: h.u32(off::TTT),
                cmd_sn: h.u32(off::CMD_SN),
                exp_stat_sn: h.u32(off::EXP_STAT_SN),
            }),
            Opcode::ScsiCommand => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&header[off::CDB..off::CDB + 16]);
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: fl & flag::FINAL != 0,
                    read: fl & flag::READ != 0,
                    write: fl & flag::WRITE != 0,
                    attr: TaskAttribute::from_bits(fl & flag::ATTR_MASK)?,
                    total_ahs_words: h.u8(off::TOTAL_AHS_LEN),
                    data_segment_len: dsl,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    expected_data_len: h.u32(off::EXPECTED_DATA_LEN),
                    cmd_sn: h.u32(off::CMD_SN),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                    cdb,
                })
            }
            Opcode::TaskMgmtRequest => {
                no_data(&h, op)?;
                Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: imm,
                    function: fl & 0x7f,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    referenced_task_tag: h.u32(off::REFERENCED_TAG),
                    cmd_sn: h.u32(off::CMD_SN),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                    ref_cmd_sn: h.u32(off::REF_CMD_SN),
                    exp_data_sn: h.u32(off::TMF_EXP_DATA_SN),
                })
            }
            Opcode::LoginRequest => {
                let (csg, transit, continue_) = login_stages(fl)?;
                Pdu::LoginRequest(LoginRequest {
                    transit,
                    continue_,
                    csg,
                    version_max: h.u8(off::VERSION_MAX),
                    version_min: h.u8(off::VERSION_MIN),
                    data_segment_len: dsl,
                    isid: Isid::read(&h),
                    tsih: h.u16(off::TSIH),
                    itt: h.itt(),
                    cid: h.u16(off::CID),
                    cmd_sn: h.u32(off::CMD_SN),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                })
            }
            Opcode::TextRequest => {
                let (final_, continue_) = text_flags(fl)?;
                Pdu::TextRequest(TextRequest {
                    immediate: imm,
                    final_,
                    continue_,
                    data_segment_len: dsl,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    ttt: h.u32(off::TTT),
                    cmd_sn: h.u32(off::CMD_SN),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                })
            }
            Opcode::DataOut => Pdu::DataOut(DataOut {
                final_: fl & flag::FINAL != 0,
                data_segment_len: dsl,
                lun: h.array8(off::LUN),
                itt: h.itt(),
                ttt: h.u32(off::TTT),
                exp_stat_sn: h.u32(off::EXP_STAT_SN),
                data_sn: h.u32(off::DATA_SN),
                buffer_offset: h.u32(off::BUFFER_OFFSET),
            }),
            Opcode::LogoutRequest => {
                no_data(&h, op)?;
                let reason = match fl & 0x7f {
                    0 => LogoutReason::CloseSession,
                    1 => LogoutReason::CloseConnection,
                    2 => LogoutReason::RemoveConnectionForRecovery,
                    r => return Err(PduError::InvalidLogoutReason(r)),
                };
                Pdu::LogoutRequest(LogoutRequest {
                    immediate: imm,
                    reason,
                    itt: h.itt(),
                    cid: h.u16(off::CID),
                    cmd_sn: h.u32(off::CMD_SN),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                })
            }
            Opcode::Snack => {
                no_data(&h, op)?;
                let snack_type = match fl & 0x0f {
                    0 => SnackType::DataR2t,
                    1 => SnackType::Status,
                    2 => SnackType::DataAck,
                    3 => SnackType::RData,
                    t => return Err(PduError::InvalidSnackType(t)),
                };
                Pdu::Snack(Snack {
                    snack_type,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    ttt: h.u32(off::TTT),
                    exp_stat_sn: h.u32(off::EXP_STAT_SN),
                    beg_run: h.u32(off::BEG_RUN),
                    run_length: h.u32(off::RUN_LENGTH),
                })
            }
            Opcode::NopIn => Pdu::NopIn(NopIn {
                data_segment_len: dsl,
                lun: h.array8(off::LUN),
                itt: h.itt(),
                ttt: h.u32(off::TTT),
                stat_sn: h.u32(off::STAT_SN),
                exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                max_cmd_sn: h.u32(off::MAX_CMD_SN),
            }),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse {
                bidi_residual: residual_flag(fl, flag::BIDI_OVERFLOW, flag::BIDI_UNDERFLOW)?,
                residual: residual_flag(fl, flag::OVERFLOW, flag::UNDERFLOW)?,
                response: h.u8(off::RESPONSE),
                status: h.u8(off::STATUS),
                data_segment_len: dsl,
                itt: h.itt(),
                snack_tag: h.u32(off::SNACK_TAG),
                stat_sn: h.u32(off::STAT_SN),
                exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                max_cmd_sn: h.u32(off::MAX_CMD_SN),
                exp_data_sn: h.u32(off::EXP_DATA_SN),
                bidi_residual_count: h.u32(off::BIDI_RESIDUAL),
                residual_count: h.u32(off::RESIDUAL),
            }),
            Opcode::TaskMgmtResponse => {
                no_data(&h, op)?;
                Pdu::TaskMgmtResponse(TaskMgmtResponse {
                    response: h.u8(off::RESPONSE),
                    itt: h.itt(),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                })
            }
            Opcode::LoginResponse => {
                let (csg, transit, continue_) = login_stages(fl)?;
                Pdu::LoginResponse(LoginResponse {
                    transit,
                    continue_,
                    csg,
                    version_max: h.u8(off::VERSION_MAX),
                    version_active: h.u8(off::VERSION_ACTIVE),
                    data_segment_len: dsl,
                    isid: Isid::read(&h),
                    tsih: h.u16(off::TSIH),
                    itt: h.itt(),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                    status: LoginStatus::new(h.u8(off::STATUS_CLASS), h.u8(off::STATUS_DETAIL)),
                })
            }
            Opcode::TextResponse => {
                let (final_, continue_) = text_flags(fl)?;
                Pdu::TextResponse(TextResponse {
                    final_,
                    continue_,
                    data_segment_len: dsl,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    ttt: h.u32(off::TTT),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                })
            }
            Opcode::DataIn => {
                let final_ = fl & flag::FINAL != 0;
                let has_status = fl & flag::STATUS != 0;
                if has_status && !final_ {
                    return Err(PduError::StatusWithoutFinal);
                }
                Pdu::DataIn(DataIn {
                    final_,
                    acknowledge: fl & flag::ACKNOWLEDGE != 0,
                    residual: residual_flag(fl, flag::OVERFLOW, flag::UNDERFLOW)?,
                    status: has_status.then(|| h.u8(off::STATUS)),
                    data_segment_len: dsl,
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    ttt: h.u32(off::TTT),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                    data_sn: h.u32(off::DATA_SN),
                    buffer_offset: h.u32(off::BUFFER_OFFSET),
                    residual_count: h.u32(off::RESIDUAL),
                })
            }
            Opcode::LogoutResponse => {
                no_data(&h, op)?;
                Pdu::LogoutResponse(LogoutResponse {
                    response: h.u8(off::RESPONSE),
                    itt: h.itt(),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                    time2wait: h.u16(off::TIME2WAIT),
                    time2retain: h.u16(off::TIME2RETAIN),
                })
            }
            Opcode::R2t => {
                no_data(&h, op)?;
                Pdu::R2t(R2t {
                    lun: h.array8(off::LUN),
                    itt: h.itt(),
                    ttt: h.u32(off::TTT),
                    stat_sn: h.u32(off::STAT_SN),
                    exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                    max_cmd_sn: h.u32(off::MAX_CMD_SN),
                    r2t_sn: h.u32(off::R2T_SN),
                    buffer_offset: h.u32(off::BUFFER_OFFSET),
                    desired_len: h.u32(off::DESIRED_LEN),
                })
            }
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage {
                data_segment_len: dsl,
                lun: h.array8(off::LUN),
                stat_sn: h.u32(off::STAT_SN),
                exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                max_cmd_sn: h.u32(off::MAX_CMD_SN),
                event: h.u8(off::ASYNC_EVENT),
                vcode: h.u8(off::ASYNC_VCODE),
                parameter1: h.u16(off::PARAMETER1),
                parameter2: h.u16(off::PARAMETER2),
                parameter3: h.u16(off::PARAMETER3),
            }),
            Opcode::Reject => Pdu::Reject(Reject {
                reason: h.u8(off::REJECT_REASON),
                data_segment_len: dsl,
                stat_sn: h.u32(off::STAT_SN),
                exp_cmd_sn: h.u32(off::EXP_CMD_SN),
                max_cmd_sn: h.u32(off::MAX_CMD_SN),
                data_sn: h.u32(off::REJECT_DATA_SN),
            }),
        })
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NopOut,
            Pdu::ScsiCommand(_) => Opcode::ScsiCommand,
            Pdu::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Pdu::LoginRequest(_) => Opcode::LoginRequest,
            Pdu::TextRequest(_) => Opcode::TextRequest,
            Pdu::DataOut(_) => Opcode::DataOut,
            Pdu::LogoutRequest(_) => Opcode::LogoutRequest,
            Pdu::Snack(_) => Opcode::Snack,
            Pdu::NopIn(_) => Opcode::NopIn,
            Pdu::ScsiResponse(_) => Opcode::ScsiResponse,
            Pdu::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Pdu::LoginResponse(_) => Opcode::LoginResponse,
            Pdu::TextResponse(_) => Opcode::TextResponse,
            Pdu::DataIn(_) => Opcode::DataIn,
            Pdu::LogoutResponse(_) => Opcode::LogoutResponse,
            Pdu::R2t(_) => Opcode::R2t,
            Pdu::AsyncMessage(_) => Opcode::AsyncMessage,
            Pdu::Reject(_) => Opcode::Reject,
        }
    }

    /// Encodes the header. Fails only on a DataSegmentLength beyond 24 bits.
    pub fn to_bytes(&self) -> Result<[u8; BHS_LEN], PduError> {
        let h = match self {
            Pdu::NopOut(p) => {
                let mut h = Bhs::start(Opcode::NopOut, p.immediate, flag::FINAL);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h
            }
            Pdu::ScsiCommand(p) => {
                let fl = bit(p.final_, flag::FINAL)
                    | bit(p.read, flag::READ)
                    | bit(p.write, flag::WRITE)
                    | p.attr as u8;
                let mut h = Bhs::start(Opcode::ScsiCommand, p.immediate, fl);
                h.set_u8(off::TOTAL_AHS_LEN, p.total_ahs_words);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::EXPECTED_DATA_LEN, p.expected_data_len);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h.0[off::CDB..off::CDB + 16].copy_from_slice(&p.cdb);
                h
            }
            Pdu::TaskMgmtRequest(p) => {
                let mut h = Bhs::start(
                    Opcode::TaskMgmtRequest,
                    p.immediate,
                    flag::FINAL | (p.function & 0x7f),
                );
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::REFERENCED_TAG, p.referenced_task_tag);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h.set_u32(off::REF_CMD_SN, p.ref_cmd_sn);
                h.set_u32(off::TMF_EXP_DATA_SN, p.exp_data_sn);
                h
            }
            Pdu::LoginRequest(p) => {
                // Login requests are always immediate (RFC 7143 §11.12).
                let fl = login_flags(p.csg, p.transit, p.continue_);
                let mut h = Bhs::start(Opcode::LoginRequest, true, fl);
                h.set_u8(off::VERSION_MAX, p.version_max);
                h.set_u8(off::VERSION_MIN, p.version_min);
                h.set_data_segment_len(p.data_segment_len)?;
                h.0[off::ISID..off::ISID + 6].copy_from_slice(&p.isid.0);
                h.set_u16(off::TSIH, p.tsih);
                h.set_u32(off::ITT, p.itt);
                h.set_u16(off::CID, p.cid);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h
            }
            Pdu::TextRequest(p) => {
                let fl = bit(p.final_, flag::FINAL) | bit(p.continue_, flag::CONTINUE);
                let mut h = Bhs::start(Opcode::TextRequest, p.immediate, fl);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h
            }
            Pdu::DataOut(p) => {
                let mut h = Bhs::start(Opcode::DataOut, false, bit(p.final_, flag::FINAL));
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h.set_u32(off::DATA_SN, p.data_sn);
                h.set_u32(off::BUFFER_OFFSET, p.buffer_offset);
                h
            }
            Pdu::LogoutRequest(p) => {
                let mut h = Bhs::start(
                    Opcode::LogoutRequest,
                    p.immediate,
                    flag::FINAL | p.reason as u8,
                );
                h.set_u32(off::ITT, p.itt);
                h.set_u16(off::CID, p.cid);
                h.set_u32(off::CMD_SN, p.cmd_sn);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h
            }
            Pdu::Snack(p) => {
                let mut h = Bhs::start(Opcode::Snack, false, flag::FINAL | p.snack_type as u8);
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::EXP_STAT_SN, p.exp_stat_sn);
                h.set_u32(off::BEG_RUN, p.beg_run);
                h.set_u32(off::RUN_LENGTH, p.run_length);
                h
            }
            Pdu::NopIn(p) => {
                let mut h = Bhs::start(Opcode::NopIn, false, flag::FINAL);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h
            }
            Pdu::ScsiResponse(p) => {
                let fl = flag::FINAL
                    | residual_bits(p.bidi_residual, flag::BIDI_OVERFLOW, flag::BIDI_UNDERFLOW)
                    | residual_bits(p.residual, flag::OVERFLOW, flag::UNDERFLOW);
                let mut h = Bhs::start(Opcode::ScsiResponse, false, fl);
                h.set_u8(off::RESPONSE, p.response);
                h.set_u8(off::STATUS, p.status);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::SNACK_TAG, p.snack_tag);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u32(off::EXP_DATA_SN, p.exp_data_sn);
                h.set_u32(off::BIDI_RESIDUAL, p.bidi_residual_count);
                h.set_u32(off::RESIDUAL, p.residual_count);
                h
            }
            Pdu::TaskMgmtResponse(p) => {
                let mut h = Bhs::start(Opcode::TaskMgmtResponse, false, flag::FINAL);
                h.set_u8(off::RESPONSE, p.response);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h
            }
            Pdu::LoginResponse(p) => {
                let fl = login_flags(p.csg, p.transit, p.continue_);
                let mut h = Bhs::start(Opcode::LoginResponse, false, fl);
                h.set_u8(off::VERSION_MAX, p.version_max);
                h.set_u8(off::VERSION_ACTIVE, p.version_active);
                h.set_data_segment_len(p.data_segment_len)?;
                h.0[off::ISID..off::ISID + 6].copy_from_slice(&p.isid.0);
                h.set_u16(off::TSIH, p.tsih);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u8(off::STATUS_CLASS, p.status.class);
                h.set_u8(off::STATUS_DETAIL, p.status.detail);
                h
            }
            Pdu::TextResponse(p) => {
                let fl = bit(p.final_, flag::FINAL) | bit(p.continue_, flag::CONTINUE);
                let mut h = Bhs::start(Opcode::TextResponse, false, fl);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h
            }
            Pdu::DataIn(p) => {
                let fl = bit(p.final_, flag::FINAL)
                    | bit(p.acknowledge, flag::ACKNOWLEDGE)
                    | residual_bits(p.residual, flag::OVERFLOW, flag::UNDERFLOW)
                    | bit(p.status.is_some(), flag::STATUS);
                let mut h = Bhs::start(Opcode::DataIn, false, fl);
                if let Some(s) = p.status {
                    h.set_u8(off::STATUS, s);
                }
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u32(off::DATA_SN, p.data_sn);
                h.set_u32(off::BUFFER_OFFSET, p.buffer_offset);
                h.set_u32(off::RESIDUAL, p.residual_count);
                h
            }
            Pdu::LogoutResponse(p) => {
                let mut h = Bhs::start(Opcode::LogoutResponse, false, flag::FINAL);
                h.set_u8(off::RESPONSE, p.response);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u16(off::TIME2WAIT, p.time2wait);
                h.set_u16(off::TIME2RETAIN, p.time2retain);
                h
            }
            Pdu::R2t(p) => {
                let mut h = Bhs::start(Opcode::R2t, false, flag::FINAL);
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, p.itt);
                h.set_u32(off::TTT, p.ttt);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u32(off::R2T_SN, p.r2t_sn);
                h.set_u32(off::BUFFER_OFFSET, p.buffer_offset);
                h.set_u32(off::DESIRED_LEN, p.desired_len);
                h
            }
            Pdu::AsyncMessage(p) => {
                let mut h = Bhs::start(Opcode::AsyncMessage, false, flag::FINAL);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_array8(off::LUN, p.lun);
                h.set_u32(off::ITT, RESERVED_TAG);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u8(off::ASYNC_EVENT, p.event);
                h.set_u8(off::ASYNC_VCODE, p.vcode);
                h.set_u16(off::PARAMETER1, p.parameter1);
                h.set_u16(off::PARAMETER2, p.parameter2);
                h.set_u16(off::PARAMETER3, p.parameter3);
                h
            }
            Pdu::Reject(p) => {
                let mut h = Bhs::start(Opcode::Reject, false, flag::FINAL);
                h.set_u8(off::REJECT_REASON, p.reason);
                h.set_data_segment_len(p.data_segment_len)?;
                h.set_u32(off::ITT, RESERVED_TAG);
                h.set_u32(off::STAT_SN, p.stat_sn);
                h.set_u32(off::EXP_CMD_SN, p.exp_cmd_sn);
                h.set_u32(off::MAX_CMD_SN, p.max_cmd_sn);
                h.set_u32(off::REJECT_DATA_SN, p.data_sn);
                h
            }
        };
        Ok(h.0)
    }
}

/// Bytes of padding that bring `len` to a multiple of 4.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

// ---------------------------------------------------------------------------
// Additional header segments (RFC 7143 §11.2.2)

/// AHS types.
pub mod ahs_type {
    pub const EXTENDED_CDB: u8 = 1;
    pub const BIDI_READ_LENGTH: u8 = 2;
}

/// One additional header segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ahs {
    /// The CDB bytes beyond the first 16.
    ExtendedCdb(Vec<u8>),
    /// Expected Bidirectional Read Data Length.
    BidiReadLength(u32),
    /// A type this target does not use, kept for Reject.
    Other {
        ahs_type: u8,
        specific: u8,
        data: Vec<u8>,
    },
}

/// Parses the AHS area (TotalAHSLength bytes, each segment padded to 4).
pub fn parse_ahs(mut bytes: &[u8]) -> Result<Vec<Ahs>, PduError> {
    let total = bytes.len();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let at = total - bytes.len();
        let [l0, l1, ty, specific, ..] = *bytes else {
            return Err(PduError::AhsTruncated(at));
        };
        // AHSLength counts the bytes after AHSType, so it includes the
        // type-specific byte.
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let body_end = 3usize.checked_add(len).ok_or(PduError::AhsTruncated(at))?;
        let seg_end = body_end
            .checked_add(pad4(body_end))
            .ok_or(PduError::AhsTruncated(at))?;
        if len == 0 {
            return Err(PduError::AhsBadLength { ahs_type: ty, len });
        }
        if seg_end > bytes.len() {
            return Err(PduError::AhsTruncated(at));
        }
        let body = bytes.get(4..body_end).ok_or(PduError::AhsTruncated(at))?;
        out.push(match ty {
            ahs_type::EXTENDED_CDB => {
                if body.is_empty() {
                    return Err(PduError::AhsBadLength { ahs_type: ty, len });
                }
                Ahs::ExtendedCdb(body.to_vec())
            }
            ahs_type::BIDI_READ_LENGTH => {
                let b: [u8; 4] = body
                    .try_into()
                    .map_err(|_| PduError::AhsBadLength { ahs_type: ty, len })?;
                Ahs::BidiReadLength(u32::from_be_bytes(b))
            }
            _ => Ahs::Other {
                ahs_type: ty,
                specific,
                data: body.to_vec(),
            },
        });
        bytes = &bytes[seg_end..];
    }
    Ok(out)
}

/// Encodes segments, each padded to 4 bytes. TotalAHSLength is `len / 4`.
pub fn encode_ahs(segs: &[Ahs]) -> Result<Vec<u8>, PduError> {
    let mut out = Vec::new();
    for s in segs {
        let (ty, specific, body): (u8, u8, &[u8]) = match s {
            Ahs::ExtendedCdb(b) => (ahs_type::EXTENDED_CDB, 0, b),
            Ahs::BidiReadLength(_) => (ahs_type::BIDI_READ_LENGTH, 0, &[]),
            Ahs::Other {
                ahs_type,
                specific,
                data,
            } => (*ahs_type, *specific, data),
        };
        let bidi;
        let body = if let Ahs::BidiReadLength(v) = s {
            bidi = v.to_be_bytes();
            &bidi[..]
        } else {
            body
        };
        let len = u16::try_from(body.len() + 1).map_err(|_| PduError::AhsTooLong(body.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.push(ty);
        out.push(specific);
        out.extend_from_slice(body);
        out.resize(out.len() + pad4(body.len()), 0);
    }
    if out.len() > 255 * 4 {
        return Err(PduError::AhsTooLong(out.len()));
    }
    Ok(out)
}

/// The whole CDB of a SCSI Command: the header's 16 bytes plus any extended CDB.
pub fn full_cdb(cmd: &ScsiCommand, ahs: &[Ahs]) -> Result<Vec<u8>, PduError> {
    let mut cdb = cmd.cdb.to_vec();
    let mut seen = false;
    for a in ahs {
        if let Ahs::ExtendedCdb(ext) = a {
            if seen {
                return Err(PduError::ExtendedCdbTwice);
            }
            seen = true;
            cdb.extend_from_slice(ext);
        }
    }
    if cdb.len() > engine::cmd::MAX_CDB_LEN {
        return Err(PduError::CdbTooLong(cdb.len()));
    }
    Ok(cdb)
}

// ---------------------------------------------------------------------------
// LUN field (SAM-5 §4.7: peripheral and flat space addressing)

/// The largest LUN the flat space addressing method reaches.
pub const MAX_FLAT_LUN: u64 = 0x3fff;

/// Encodes a LUN as the engine's REPORT LUNS does; `None` beyond 16383.
pub fn encode_lun(n: u64) -> Option<[u8; 8]> {
    (n <= MAX_FLAT_LUN).then(|| engine::spc::encode_lun(n))
}

/// Decodes a single-level peripheral (bus 0) or flat space LUN; `None` for other
/// addressing methods or a non-zero second level, which name no LUN of ours.
pub fn decode_lun(b: &[u8; 8]) -> Option<u64> {
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0 if b[0] & 0x3f == 0 => Some(u64::from(b[1])),
        1 => Some((u64::from(b[0] & 0x3f) << 8) | u64::from(b[1])),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Digests and framing

/// CRC32C (Castagnoli) as iSCSI uses it for header and data digests.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The four digest bytes on the wire: the CRC's least significant byte first
/// (RFC 7143 Appendix B's examples).
pub fn digest_bytes(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// Negotiated framing of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment this side accepts (our MaxRecvDataSegmentLength).
    pub max_recv_data_segment_len: u32,
}

impl Default for Framing {
    /// Login phase: no digests, 8192-byte data segments.
    fn default() -> Self {
        Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_len: 8192,
        }
    }
}

/// What goes wrong when delimiting a PDU.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong { len: u32, max: u32 },
    #[error("header digest mismatch: got {got:#010x}, computed {want:#010x}")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch: got {got:#010x}, computed {want:#010x}")]
    DataDigest { got: u32, want: u32 },
    #[error("PDU body is {got} bytes, the header announces {want}")]
    WrongLength { got: usize, want: usize },
    #[error("frame buffer limit of {0} bytes reached")]
    BufferFull(usize),
}

/// How the bytes after a 48-byte header are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameLayout {
    pub ahs_len: usize,
    pub header_digest_len: usize,
    pub data_len: usize,
    pub padding: usize,
    pub data_digest_len: usize,
}

impl FrameLayout {
    /// Bytes that follow the header.
    pub fn remaining(&self) -> usize {
        // Bounded: ahs ≤ 1020, data ≤ 2^24 — no overflow on any usize ≥ 32 bits.
        self.ahs_len + self.header_digest_len + self.data_len + self.padding + self.data_digest_len
    }
}

/// The parts of a PDU body after digests are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameParts<'a> {
    pub ahs: &'a [u8],
    pub data: &'a [u8],
}

impl Framing {
    /// How many bytes follow `header` on the wire.
    pub fn layout(&self, header: &[u8; BHS_LEN]) -> Result<FrameLayout, FramingError> {
        let h = Bhs(*header);
        let dsl = h.data_segment_len();
        if dsl > self.max_recv_data_segment_len {
            return Err(FramingError::DataSegmentTooLong {
                len: dsl,
                max: self.max_recv_data_segment_len,
            });
        }
        let data_len = usize::try_from(dsl).map_err(|_| FramingError::DataSegmentTooLong {
            len: dsl,
            max: self.max_recv_data_segment_len,
        })?;
        Ok(FrameLayout {
            ahs_len: h.total_ahs_len(),
            header_digest_len: if self.header_digest { DIGEST_LEN } else { 0 },
            data_len,
            padding: pad4(data_len),
            data_digest_len: if self.data_digest && data_len > 0 {
                DIGEST_LEN
            } else {
                0
            },
        })
    }

    /// Splits `body` (exactly the bytes after the header) into AHS and data,
    /// checking the digests that are on.
    pub fn split<'a>(
        &self,
        header: &[u8; BHS_LEN],
        body: &'a [u8],
    ) -> Result<FrameParts<'a>, FramingError> {
        let l = self.layout(header)?;
        if body.len() != l.remaining() {
            return Err(FramingError::WrongLength {
                got: body.len(),
                want: l.remaining(),
            });
        }
        let (ahs, rest) = body.split_at(l.ahs_len);
        let (hd, rest) = rest.split_at(l.header_digest_len);
        if self.header_digest {
            let mut c = crc32c::crc32c(header);
            c = crc32c::crc32c_append(c, ahs);
            check(hd, c, |got, want| FramingError::HeaderDigest { got, want })?;
        }
        let (padded, dd) = rest.split_at(l.data_len + l.padding);
        if l.data_digest_len > 0 {
            check(dd, crc32c(padded), |got, want| FramingError::DataDigest {
                got,
                want,
            })?;
        }
        Ok(FrameParts {
            ahs,
            data: &padded[..l.data_len],
        })
    }

    /// Serialises a PDU: header, AHS, header digest, data, padding, data digest.
    pub fn encode(&self, header: &[u8; BHS_LEN], ahs: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(BHS_LEN + ahs.len() + data.len() + 12);
        out.extend_from_slice(header);
        out.extend_from_slice(ahs);
        if self.header_digest {
            out.extend_from_slice(&digest_bytes(crc32c(&out)));
        }
        let start = out.len();
        out.extend_from_slice(data);
        out.resize(out.len() + pad4(data.len()), 0);
        if self.data_digest && !data.is_empty() {
            let c = crc32c(&out[start..]);
            out.extend_from_slice(&digest_bytes(c));
        }
        out
    }
}

fn check(
    got: &[u8],
    want: u32,
    err: impl FnOnce(u32, u32) -> FramingError,
) -> Result<(), FramingError> {
    let got = <[u8; 4]>::try_from(got)
        .map(u32::from_le_bytes)
        .unwrap_or(0);
    if got != want {
        return Err(err(got, want));
    }
    Ok(())
}

/// One delimited PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

/// Cuts a byte stream into PDUs. Feed it what the socket gave; take frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    pub framing: Framing,
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new(framing: Framing) -> Self {
        FrameDecoder {
            framing,
            buf: Vec::new(),
        }
    }

    /// Appends bytes; refuses to hold more than one maximal PDU's worth.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FramingError> {
        let limit = self.limit();
        if self.buf.len().saturating_add(bytes.len()) > limit.saturating_mul(2) {
            return Err(FramingError::BufferFull(limit.saturating_mul(2)));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn limit(&self) -> usize {
        let data = usize::try_from(self.framing.max_recv_data_segment_len).unwrap_or(usize::MAX);
        data.saturating_add(BHS_LEN + 255 * 4 + 3 + 2 * DIGEST_LEN)
    }

    /// The next complete PDU, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        let Some(h) = self.buf.get(..BHS_LEN) else {
            return Ok(None);
        };
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(h);
        let l = self.framing.layout(&header)?;
        let total = BHS_LEN + l.remaining();
        let Some(body) = self.buf.get(BHS_LEN..total) else {
            return Ok(None);
        };
        let parts = self.framing.split(&header, body)?;
        let frame = Frame {
            header,
            ahs: parts.ahs.to_vec(),
            data: parts.data.to_vec(),
        };
        self.buf.drain(..total);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests;
