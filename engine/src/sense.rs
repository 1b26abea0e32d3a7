//! Sense data and SCSI status. Every error the engine reports is built from the
//! named constants here, in fixed (SPC-4 4.5.3) or descriptor (4.5.2) format.

/// SCSI status byte values (SAM-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// Sense keys (SPC-4 table 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    VolumeOverflow = 0xd,
    Miscompare = 0xe,
}

/// An additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

/// The ASC/ASCQ pairs the engine uses (SPC-4 table D.2), named as the standard does.
pub mod asc {
    use super::Asc;
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x00, 0x00);
    pub const LUN_NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc(0x04, 0x00);
    pub const LUN_NOT_READY_INITIALIZING_REQUIRED: Asc = Asc(0x04, 0x02);
    pub const LUN_NOT_READY_MANUAL_INTERVENTION: Asc = Asc(0x04, 0x03);
    pub const LUN_NOT_READY_FORMAT_IN_PROGRESS: Asc = Asc(0x04, 0x04);
    pub const LUN_NOT_READY_SANITIZE_IN_PROGRESS: Asc = Asc(0x04, 0x1b);
    pub const LOGICAL_UNIT_COMMUNICATION_TIME_OUT: Asc = Asc(0x08, 0x01);
    pub const WRITE_ERROR: Asc = Asc(0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1d, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const PARAMETER_NOT_SUPPORTED: Asc = Asc(0x26, 0x01);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc(0x26, 0x04);
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x26, 0x09);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc(0x27, 0x07);
    pub const NOT_READY_TO_READY_CHANGE: Asc = Asc(0x28, 0x00);
    pub const POWER_ON_RESET_OR_BUS_DEVICE_RESET: Asc = Asc(0x29, 0x00);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x29, 0x01);
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc(0x29, 0x07);
    pub const PARAMETERS_CHANGED: Asc = Asc(0x2a, 0x00);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2a, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f, 0x00);
    pub const COMMANDS_CLEARED_BY_DEVICE_SERVER: Asc = Asc(0x2f, 0x02);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3a, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const INVALID_MESSAGE_ERROR: Asc = Asc(0x49, 0x00);
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: Asc = Asc(0x0d, 0x02);
    pub const COPY_TARGET_DEVICE_DATA_UNDERRUN: Asc = Asc(0x0d, 0x04);
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x00, 0x16);
    pub const INSUFFICIENT_RESOURCES: Asc = Asc(0x55, 0x03);
    pub const MISCOMPARE_DURING_VERIFY_OPERATION: Asc = Asc(0x1d, 0x00);
    pub const SANITIZE_COMMAND_FAILED: Asc = Asc(0x31, 0x03);
    pub const MEDIUM_FORMAT_CORRUPTED: Asc = Asc(0x31, 0x00);
}

/// The sense-key specific field pointer (SPC-4 4.5.2.4.2): which byte, and which bit
/// if known, of the CDB (`cdb: true`) or the parameter list was invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    pub cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

/// One sense datum, independent of its wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// INFORMATION field: the LBA of a medium error, the offset of a miscompare.
    pub information: Option<u64>,
    /// COMMAND-SPECIFIC INFORMATION (EXTENDED COPY segment number etc.).
    pub command_specific: Option<u64>,
    pub field: Option<FieldPointer>,
    /// Progress indication (0..=0xffff) for NOT READY, e.g. sanitize in progress.
    pub progress: Option<u16>,
}

/// Sense data formats (SPC-4 4.5.1): chosen by the control mode page's D_SENSE bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SenseFormat {
    #[default]
    Fixed,
    Descriptor,
}

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Self {
        Sense {
            key,
            asc,
            information: None,
            command_specific: None,
            field: None,
            progress: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and `bit`).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        let mut s = Sense::new(SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        s.field = Some(FieldPointer {
            cdb: true,
            byte,
            bit,
        });
        s
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte`.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        let mut s = Sense::new(
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        s.field = Some(FieldPointer {
            cdb: false,
            byte,
            bit,
        });
        s
    }

    pub const fn illegal(asc: Asc) -> Self {
        Sense::new(SenseKey::IllegalRequest, asc)
    }

    pub const fn unit_attention(asc: Asc) -> Self {
        Sense::new(SenseKey::UnitAttention, asc)
    }

    pub const fn with_information(mut self, info: u64) -> Self {
        self.information = Some(info);
        self
    }

    /// The sense-key specific bytes (3 bytes, SKSV set) if any.
    fn sks(&self) -> Option<[u8; 3]> {
        if let Some(f) = self.field {
            let mut b = [0x80u8, 0, 0];
            if f.cdb {
                b[0] |= 0x40;
            }
            if let Some(bit) = f.bit {
                b[0] |= 0x08 | (bit & 7);
            }
            b[1..3].copy_from_slice(&f.byte.to_be_bytes());
            return Some(b);
        }
        self.progress.map(|p| {
            let p = p.to_be_bytes();
            [0x80, p[0], p[1]]
        })
    }

    /// Encodes fixed-format sense data (response code 70h), 18 bytes or more.
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = self.key as u8;
        if let Some(info) = self.information {
            // The fixed format holds only 32 bits; set VALID only if it fits.
            if let Ok(v) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        b[7] = 10; // additional sense length
        if let Some(csi) = self.command_specific {
            b[8..12].copy_from_slice(&(csi as u32).to_be_bytes());
        }
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some(sks) = self.sks() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Encodes descriptor-format sense data (response code 72h) with information,
    /// command-specific and sense-key specific descriptors as needed.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key as u8, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(csi) = self.command_specific {
            b.extend_from_slice(&[0x01, 0x0a, 0, 0]);
            b.extend_from_slice(&csi.to_be_bytes());
        }
        if let Some(sks) = self.sks() {
            b.extend_from_slice(&[0x02, 0x06, 0, 0]);
            b.extend_from_slice(&sks);
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    pub fn encode(&self, format: SenseFormat) -> Vec<u8> {
        match format {
            SenseFormat::Fixed => self.to_fixed(),
            SenseFormat::Descriptor => self.to_descriptor(),
        }
    }
}

/// How a command failed, as the initiator sees it. SCSI errors are data, not Rust
/// errors: the engine turns each into a status (and sense data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdError {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    ReservationConflict,
    Busy,
    TaskSetFull,
}

impl From<Sense> for CmdError {
    fn from(s: Sense) -> Self {
        CmdError::Check(s)
    }
}

impl CmdError {
    pub fn status(&self) -> ScsiStatus {
        match self {
            CmdError::Check(_) => ScsiStatus::CheckCondition,
            CmdError::ReservationConflict => ScsiStatus::ReservationConflict,
            CmdError::Busy => ScsiStatus::Busy,
            CmdError::TaskSetFull => ScsiStatus::TaskSetFull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_carries_key_asc_and_field_pointer() {
        let s = Sense::invalid_cdb_field(2, Some(3));
        let b = s.to_fixed();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(&b[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 2]);
    }

    #[test]
    fn fixed_format_information_sets_valid_only_when_it_fits() {
        let b = Sense::new(SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR)
            .with_information(0x1234)
            .to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        let big = Sense::new(SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR)
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(big[0], 0x70);
    }

    #[test]
    fn descriptor_format_lists_descriptors() {
        let s =
            Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY).with_information(513);
        let b = s.to_descriptor();
        assert_eq!(&b[..4], &[0x72, 0x0e, 0x1d, 0x00]);
        assert_eq!(b[7] as usize, b.len() - 8);
        assert_eq!(&b[8..12], &[0x00, 0x0a, 0x80, 0]);
        assert_eq!(u64::from_be_bytes(b[12..20].try_into().unwrap()), 513);
    }
}
