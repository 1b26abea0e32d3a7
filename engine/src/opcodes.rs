//! The one opcode table: every command the engine supports, with its CDB usage
//! data, its handler and the checks that apply to it. Decoding and REPORT
//! SUPPORTED OPERATION CODES both read it, so they cannot disagree.
//! Each command family keeps its rows beside its handlers (`spc::OPS`, `sbc::OPS`,
//! ...); this module joins them into one index.

use std::sync::OnceLock;

use crate::exec::Handler;
use crate::sense::{CmdError, Sense};

/// Properties of a command that decide the checks before its handler runs.
pub mod flags {
    /// Served even while a unit attention is pending (INQUIRY, REPORT LUNS, REQUEST
    /// SENSE: SAM-5 5.14).
    pub const UA_EXEMPT: u32 = 1 << 0;
    /// Writes the medium or its metadata: refused on a read-only LUN.
    pub const WRITES: u32 = 1 << 1;
    /// Touches the medium: refused with NOT READY while the unit is stopped.
    pub const MEDIUM: u32 = 1 << 2;
    /// Reads the medium (reservation conflict class "read").
    pub const READS: u32 = 1 << 3;
}

/// One supported command (one service action of it, where it has them).
pub struct OpInfo {
    pub opcode: u8,
    /// The service action, for opcodes that have them (in CDB byte 1, bits 4..0).
    pub service_action: Option<u16>,
    pub name: &'static str,
    /// CDB usage data for REPORT SUPPORTED OPERATION CODES (SPC-4 6.35.3): its length
    /// is the CDB length; byte 0 is the opcode, each other byte has a bit set for each
    /// bit the device server looks at.
    pub usage: &'static [u8],
    pub handler: Handler,
    pub flags: u32,
}

impl OpInfo {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }

    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// Every row, in family order.
pub fn all() -> impl Iterator<Item = &'static OpInfo> {
    crate::spc::OPS
        .iter()
        .chain(crate::sbc::OPS.iter())
        .chain(crate::pr::OPS.iter())
        .chain(crate::xcopy::OPS.iter())
}

/// Opcodes whose CDB carries a service action in byte 1 bits 4..0.
fn has_service_action(opcode: u8) -> bool {
    index()[opcode as usize]
        .iter()
        .any(|o| o.service_action.is_some())
}

fn index() -> &'static [Vec<&'static OpInfo>; 256] {
    static INDEX: OnceLock<[Vec<&'static OpInfo>; 256]> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx: [Vec<&'static OpInfo>; 256] = std::array::from_fn(|_| Vec::new());
        for op in all() {
            idx[op.opcode as usize].push(op);
        }
        idx
    })
}

/// Looks up a command: INVALID COMMAND OPERATION CODE for an unknown opcode, INVALID
/// FIELD IN CDB (pointing at the service action) for an unknown service action, and
/// INVALID FIELD IN CDB for a CDB shorter than the command's.
pub fn lookup(cdb: &[u8]) -> Result<&'static OpInfo, CmdError> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::illegal(crate::sense::asc::INVALID_COMMAND_OPERATION_CODE).into());
    };
    let rows = &index()[opcode as usize];
    if rows.is_empty() {
        return Err(Sense::illegal(crate::sense::asc::INVALID_COMMAND_OPERATION_CODE).into());
    }
    let op = if has_service_action(opcode) {
        let sa = u16::from(cdb.get(1).copied().unwrap_or(0) & 0x1f);
        match rows.iter().find(|o| o.service_action == Some(sa)) {
            Some(o) => *o,
            None => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
    } else {
        rows[0]
    };
    if cdb.len() < op.cdb_len() {
        return Err(Sense::illegal(crate::sense::asc::INVALID_COMMAND_OPERATION_CODE).into());
    }
    Ok(op)
}

/// The row for `opcode` and `service_action` exactly (REPORT SUPPORTED OPERATION
/// CODES' one-command formats).
pub fn find(opcode: u8, service_action: Option<u16>) -> Option<&'static OpInfo> {
    index()[opcode as usize]
        .iter()
        .copied()
        .find(|o| o.service_action == service_action)
}

/// Whether `opcode` is an opcode whose commands have service actions.
pub fn opcode_has_service_actions(opcode: u8) -> bool {
    has_service_action(opcode)
}

/// CONTROL byte check shared by all handlers: NACA (bit 2) is not supported
/// (NormACA = 0), so a CDB that sets it is refused (SAM-5 5.9.1.2).
pub fn check_control(cdb: &[u8], len: usize) -> Result<(), CmdError> {
    match cdb.get(len.saturating_sub(1)) {
        Some(c) if c & 0x04 != 0 => Err(Sense::invalid_cdb_field((len - 1) as u16, Some(2)).into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_consistent_usage_data() {
        for op in all() {
            assert!(!op.usage.is_empty(), "{} has no usage data", op.name);
            assert_eq!(
                op.usage[0], op.opcode,
                "{}: usage byte 0 must be the opcode",
                op.name
            );
            if let Some(sa) = op.service_action {
                assert_eq!(
                    u16::from(op.usage[1] & 0x1f),
                    sa,
                    "{}: usage byte 1 must hold the SA",
                    op.name
                );
            }
        }
    }

    #[test]
    fn no_duplicate_rows() {
        let mut seen = std::collections::HashSet::new();
        for op in all() {
            assert!(
                seen.insert((op.opcode, op.service_action)),
                "duplicate row {}",
                op.name
            );
        }
    }

    #[test]
    fn unknown_opcode_is_invalid_command_operation_code() {
        let e = lookup(&[0xff, 0, 0, 0, 0, 0]).err();
        match e {
            Some(CmdError::Check(s)) => {
                assert_eq!(s.asc, crate::sense::asc::INVALID_COMMAND_OPERATION_CODE)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
