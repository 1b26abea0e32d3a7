//! Which commands a persistent reservation lets through (SPC-4 5.13.1 table
//! "SPC commands that are allowed in the presence of various reservations",
//! SBC-3 4.17 table "SBC-3 commands that are allowed in the presence of various
//! reservations"), and which an SPC-2 reservation lets through (SPC-2 5.5.1).
//!
//! Commands fall into a few classes; [`TABLE`] says, for a command from an I_T
//! nexus that does not hold the reservation, per class, per reservation type and
//! per registered / not registered, whether it conflicts.

use crate::opcodes::{flags, OpInfo};

use super::PrType;

/// How a command behaves in the presence of a persistent reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Allowed through every type: INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT
    /// READY, READ CAPACITY, PERSISTENT RESERVE IN, LOG SENSE, REPORT TARGET PORT
    /// GROUPS and the other reports, PREVENT ALLOW MEDIUM REMOVAL with PREVENT 0,
    /// START STOP UNIT with START 1 and no power condition.
    Allowed,
    /// Reads the medium or device information: READ, VERIFY, PRE-FETCH, GET LBA
    /// STATUS, MODE SENSE, READ BUFFER, RECEIVE DIAGNOSTIC RESULTS, REPORT
    /// SUPPORTED OPERATION CODES, ... (ALLOW COMMANDS 011b: the SPC "read" rows
    /// are allowed through Write Exclusive).
    Read,
    /// Changes the medium or device state: WRITE, UNMAP, SYNCHRONIZE CACHE, MODE
    /// SELECT, FORMAT UNIT, ..., and every command not named elsewhere.
    Write,
    /// PERSISTENT RESERVE OUT: its handler applies the rules of 5.13.
    PrOut,
    /// SPC-2 RESERVE/RELEASE: their handlers apply 5.13.3 (CRH = 1).
    Spc2,
}

/// Column of [`TABLE`].
fn type_index(t: PrType) -> usize {
    match t {
        PrType::WriteExclusive => 0,
        PrType::ExclusiveAccess => 1,
        PrType::WriteExclusiveRegistrantsOnly => 2,
        PrType::ExclusiveAccessRegistrantsOnly => 3,
        PrType::WriteExclusiveAllRegistrants => 4,
        PrType::ExclusiveAccessAllRegistrants => 5,
    }
}

/// `C`: RESERVATION CONFLICT, `A`: allowed.
const C: bool = true;
const A: bool = false;

/// Conflict, for a non-holder: `TABLE[class][type] = [not registered, registered]`.
/// Types in the order WE, EA, WE-RO, EA-RO, WE-AR, EA-AR.
pub const TABLE: [(Class, [[bool; 2]; 6]); 5] = [
    //                  WE      EA      WE-RO   EA-RO   WE-AR   EA-AR
    (
        Class::Allowed,
        [[A, A], [A, A], [A, A], [A, A], [A, A], [A, A]],
    ),
    (
        Class::Read,
        [[A, A], [C, C], [A, A], [C, A], [A, A], [C, A]],
    ),
    (
        Class::Write,
        [[C, C], [C, C], [C, A], [C, A], [C, A], [C, A]],
    ),
    (
        Class::PrOut,
        [[A, A], [A, A], [A, A], [A, A], [A, A], [A, A]],
    ),
    (
        Class::Spc2,
        [[A, A], [A, A], [A, A], [A, A], [A, A], [A, A]],
    ),
];

/// Whether a command of `class` from a non-holder conflicts with a reservation
/// of type `t`.
pub fn conflicts(class: Class, t: PrType, registered: bool) -> bool {
    TABLE
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, row)| row[type_index(t)][usize::from(registered)])
        .unwrap_or(true)
}

fn sa(cdb: &[u8]) -> u8 {
    cdb.get(1).copied().unwrap_or(0) & 0x1f
}

/// The class of a command, by opcode, service action and (where the tables
/// split a command) CDB fields.
pub fn classify(info: &OpInfo, cdb: &[u8]) -> Class {
    let op = cdb.first().copied().unwrap_or(info.opcode);
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match op {
        // INQUIRY, REQUEST SENSE, REPORT LUNS, TEST UNIT READY, PERSISTENT RESERVE
        // IN, LOG SENSE, READ CAPACITY(10), ACCESS CONTROL IN/OUT.
        0x12 | 0x03 | 0xa0 | 0x00 | 0x5e | 0x4d | 0x25 | 0x86 | 0x87 => Class::Allowed,
        // SERVICE ACTION IN(16): READ CAPACITY(16) allowed; GET LBA STATUS, READ
        // LONG(16) read.
        0x9e if sa(cdb) == 0x10 => Class::Allowed,
        0x9e => Class::Read,
        // MAINTENANCE IN: REPORT IDENTIFYING INFORMATION (05h), REPORT TARGET
        // PORT GROUPS (0Ah), REPORT ALIASES (0Bh), REPORT PRIORITY (0Eh), REPORT
        // TIMESTAMP (0Fh) allowed; REPORT SUPPORTED OPERATION CODES (0Ch) and
        // TASK MANAGEMENT FUNCTIONS (0Dh) are the "read" rows.
        0xa3 => match sa(cdb) {
            0x05 | 0x0a | 0x0b | 0x0e | 0x0f => Class::Allowed,
            _ => Class::Read,
        },
        // SERVICE ACTION IN(12): READ MEDIA SERIAL NUMBER.
        0xab if sa(cdb) == 0x01 => Class::Allowed,
        // PREVENT ALLOW MEDIUM REMOVAL: allowed only with PREVENT 00b.
        0x1e if byte(4) & 0x03 == 0 => Class::Allowed,
        // START STOP UNIT: allowed with START 1 and POWER CONDITION 0.
        0x1b if byte(4) & 0x01 != 0 && byte(4) & 0xf0 == 0 => Class::Allowed,
        0x5f => Class::PrOut,
        0x16 | 0x17 | 0x56 | 0x57 => Class::Spc2,
        // READ(6/10/12/16), VERIFY(10/12/16), PRE-FETCH(10/16), READ DEFECT DATA,
        // READ LONG(10), MODE SENSE(6/10), READ BUFFER, RECEIVE DIAGNOSTIC
        // RESULTS, RECEIVE COPY RESULTS, READ ATTRIBUTE, SECURITY PROTOCOL IN.
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x37 | 0xb7 | 0x3e
        | 0x1a | 0x5a | 0x3c | 0x1c | 0x84 | 0x8c | 0xa2 => Class::Read,
        _ if info.has(flags::READS) => Class::Read,
        _ => Class::Write,
    }
}

/// PERSISTENT RESERVE IN or OUT.
pub fn is_pr_command(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x5e | 0x5f))
}

/// Commands another I_T nexus may send while an SPC-2 reservation is held
/// (SPC-2 5.5.1): INQUIRY, REQUEST SENSE, REPORT LUNS, and RELEASE (which then
/// does nothing).
pub fn spc2_allowed(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x12 | 0x03 | 0xa0 | 0x17 | 0x57))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{CmdCtx, ExecResult};

    fn nop(_: &mut CmdCtx<'_>) -> ExecResult {
        Ok(crate::exec::Exec::Good(0))
    }

    fn info(opcode: u8, flags: u32) -> OpInfo {
        OpInfo {
            opcode,
            service_action: None,
            name: "test",
            usage: &[0],
            handler: nop,
            flags,
        }
    }

    /// SPC-4 / SBC-3 rows, as the standard lists them: (CDB, allowed through WE,
    /// EA, registered RR, not-registered WE-RR, not-registered EA-RR).
    #[test]
    fn standard_rows() {
        type Row = (&'static str, &'static [u8], u32, [bool; 5]);
        let y = true;
        let n = false;
        let rows: &[Row] = &[
            ("INQUIRY", &[0x12, 0, 0, 0, 36, 0], 0, [y, y, y, y, y]),
            ("REPORT LUNS", &[0xa0; 12], 0, [y, y, y, y, y]),
            ("REQUEST SENSE", &[0x03, 0, 0, 0, 18, 0], 0, [y, y, y, y, y]),
            ("TEST UNIT READY", &[0, 0, 0, 0, 0, 0], 0, [y, y, y, y, y]),
            (
                "PRIN",
                &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0],
                0,
                [y, y, y, y, y],
            ),
            (
                "LOG SENSE",
                &[0x4d, 0, 0, 0, 0, 0, 0, 0, 8, 0],
                0,
                [y, y, y, y, y],
            ),
            (
                "READ CAPACITY(10)",
                &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                0,
                [y, y, y, y, y],
            ),
            (
                "READ CAPACITY(16)",
                &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                0,
                [y, y, y, y, y],
            ),
            (
                "RTPG",
                &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
                0,
                [y, y, y, y, y],
            ),
            ("PREVENT 0", &[0x1e, 0, 0, 0, 0, 0], 0, [y, y, y, y, y]),
            ("PREVENT 1", &[0x1e, 0, 0, 0, 1, 0], 0, [n, n, y, n, n]),
            ("START", &[0x1b, 0, 0, 0, 1, 0], 0, [y, y, y, y, y]),
            ("STOP", &[0x1b, 0, 0, 0, 0, 0], 0, [n, n, y, n, n]),
            (
                "READ(10)",
                &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                flags::READS,
                [y, n, y, y, n],
            ),
            ("READ(16)", &[0x88; 16], flags::READS, [y, n, y, y, n]),
            (
                "VERIFY(10)",
                &[0x2f, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                0,
                [y, n, y, y, n],
            ),
            (
                "GET LBA STATUS",
                &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                0,
                [y, n, y, y, n],
            ),
            (
                "MODE SENSE(6)",
                &[0x1a, 0, 0x3f, 0, 255, 0],
                0,
                [y, n, y, y, n],
            ),
            (
                "RSOC",
                &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
                0,
                [y, n, y, y, n],
            ),
            (
                "WRITE(10)",
                &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                flags::WRITES,
                [n, n, y, n, n],
            ),
            (
                "WRITE SAME(16)",
                &[0x93; 16],
                flags::WRITES,
                [n, n, y, n, n],
            ),
            (
                "UNMAP",
                &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
                flags::WRITES,
                [n, n, y, n, n],
            ),
            (
                "SYNCHRONIZE CACHE",
                &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                0,
                [n, n, y, n, n],
            ),
            (
                "MODE SELECT(6)",
                &[0x15, 0x10, 0, 0, 12, 0],
                0,
                [n, n, y, n, n],
            ),
            ("EXTENDED COPY", &[0x83; 16], 0, [n, n, y, n, n]),
            ("FORMAT UNIT", &[0x04, 0, 0, 0, 0, 0], 0, [n, n, y, n, n]),
        ];
        for (name, cdb, fl, [we, ea, reg_rr, unreg_we_rr, unreg_ea_rr]) in rows {
            let i = info(cdb[0], *fl);
            let class = classify(&i, cdb);
            for reg in [false, true] {
                assert_eq!(
                    !conflicts(class, PrType::WriteExclusive, reg),
                    *we,
                    "{name} WE reg={reg}"
                );
                assert_eq!(
                    !conflicts(class, PrType::ExclusiveAccess, reg),
                    *ea,
                    "{name} EA reg={reg}"
                );
            }
            for t in [
                PrType::WriteExclusiveRegistrantsOnly,
                PrType::ExclusiveAccessRegistrantsOnly,
                PrType::WriteExclusiveAllRegistrants,
                PrType::ExclusiveAccessAllRegistrants,
            ] {
                assert_eq!(
                    !conflicts(class, t, true),
                    *reg_rr,
                    "{name} {t:?} registered"
                );
                let unreg = if matches!(
                    t,
                    PrType::WriteExclusiveRegistrantsOnly | PrType::WriteExclusiveAllRegistrants
                ) {
                    *unreg_we_rr
                } else {
                    *unreg_ea_rr
                };
                assert_eq!(
                    !conflicts(class, t, false),
                    unreg,
                    "{name} {t:?} not registered"
                );
            }
        }
    }

    #[test]
    fn prout_and_spc2_reach_their_handlers() {
        for t in PrType::ALL {
            for reg in [false, true] {
                assert!(!conflicts(Class::PrOut, t, reg));
                assert!(!conflicts(Class::Spc2, t, reg));
            }
        }
        assert_eq!(classify(&info(0x5f, 0), &[0x5f, 0]), Class::PrOut);
        assert_eq!(classify(&info(0x16, 0), &[0x16, 0]), Class::Spc2);
    }

    #[test]
    fn spc2_lets_through_only_the_listed_commands() {
        assert!(spc2_allowed(&[0x12]));
        assert!(spc2_allowed(&[0x17]));
        assert!(spc2_allowed(&[0xa0]));
        assert!(!spc2_allowed(&[0x1a]));
        assert!(!spc2_allowed(&[0x00]));
        assert!(!spc2_allowed(&[0x16]));
        assert!(!spc2_allowed(&[]));
    }
}
