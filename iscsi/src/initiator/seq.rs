//! CmdSN, ExpStatSN and the command window, in serial number arithmetic.

use crate::pdu::RESERVED_TAG;

/// Sequence numbers and tags of the session.
#[derive(Debug)]
pub(super) struct Seq {
    pub(super) cmd_sn: u32,
    pub(super) exp_stat_sn: u32,
    pub(super) exp_cmd_sn: u32,
    pub(super) max_cmd_sn: u32,
    itt: u32,
}

impl Seq {
    pub(super) fn new() -> Seq {
        Seq {
            cmd_sn: 1,
            exp_stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            itt: 0,
        }
    }

    pub(super) fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        if self.itt == RESERVED_TAG {
            self.itt = 0;
        }
        self.itt
    }

    /// Takes in a response that carries status (StatSN counts).
    pub(super) fn on_status(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
        self.exp_stat_sn = stat_sn.wrapping_add(1);
        self.on_window(exp_cmd_sn, max_cmd_sn);
    }

    /// ExpCmdSN and MaxCmdSN, ignored when MaxCmdSN < ExpCmdSN - 1 (RFC 7143 §4.2.2.1).
    pub(super) fn on_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        if serial_lt(max_cmd_sn, exp_cmd_sn.wrapping_sub(1)) {
            return;
        }
        if serial_lt(self.exp_cmd_sn, exp_cmd_sn) {
            self.exp_cmd_sn = exp_cmd_sn;
        }
        if serial_lt(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    pub(super) fn window_open(&self) -> bool {
        !serial_lt(self.max_cmd_sn, self.cmd_sn)
    }
}

/// Serial number arithmetic (RFC 1982) on 32 bits.
pub(super) fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}
