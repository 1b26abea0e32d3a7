//! Reservations: SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations.
//!
//! One [`PrState`] per LUN, behind `Lun::pr`, holds the SPC-2 reservation, the
//! registrations, the persistent reservation and the PRgeneration counter.
//! [`check_access`] is the conflict check every command passes before its handler
//! (SPC-4 5.13 and SBC-3 4.17, as a table in [`conflict`]); the handlers of
//! RESERVE/RELEASE ([`reserve6`]), PERSISTENT RESERVE IN ([`in_`]) and OUT ([`out`])
//! change or report the state; [`aptpl`] saves it to the LUN's state directory
//! while the initiator asked for persistence through power loss.

use std::sync::Arc;

use crate::lun::Lun;
use crate::nexus::{Nexus, NexusKey};
use crate::opcodes::OpInfo;
use crate::sense::CmdError;

pub mod aptpl;
pub mod conflict;
pub mod in_;
pub mod out;
pub mod reserve6;

#[cfg(test)]
mod tests;

pub use aptpl::{load_aptpl, PrError};
pub use out::{parse_prout_params, ProutParams};

/// Persistent reservation types (SPC-4 table 210).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE field value; `None` for reserved or obsolete codes.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0x1 => PrType::WriteExclusive,
            0x3 => PrType::ExclusiveAccess,
            0x5 => PrType::WriteExclusiveRegistrantsOnly,
            0x6 => PrType::ExclusiveAccessRegistrantsOnly,
            0x7 => PrType::WriteExclusiveAllRegistrants,
            0x8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registrant is a reservation holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only types.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }
}

/// One registration: an I_T nexus (or, with ALL_TG_PT, an initiator port on every
/// target port) and its reservation key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Unique within the LUN; the reservation names its holder by it.
    pub id: u64,
    pub key: u64,
    /// The initiator port name (`NexusKey::initiator`); `None` when the
    /// registration was made for a TransportID we cannot name (REGISTER AND MOVE
    /// to a non-iSCSI port): then it matches by TransportID.
    pub initiator: Option<Arc<str>>,
    /// Relative target port identifier of the I_T nexus.
    pub rel_port: u16,
    pub all_tg_pt: bool,
    /// The initiator's TransportID, for READ FULL STATUS.
    pub transport_id: Vec<u8>,
}

impl Registration {
    /// Whether this registration is the one of `nexus`.
    pub fn matches(&self, initiator: &str, rel_port: u16, transport_id: &[u8]) -> bool {
        let who = match &self.initiator {
            Some(i) => &**i == initiator,
            None => !self.transport_id.is_empty() && self.transport_id == transport_id,
        };
        who && (self.all_tg_pt || self.rel_port == rel_port)
    }
}

/// The persistent reservation (LU_SCOPE is the only scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ptype: PrType,
    /// The holder's registration id (ignored for all-registrants types).
    pub holder: u64,
}

/// Reservation state of one LUN.
#[derive(Clone, Debug, Default)]
pub struct PrState {
    /// SPC-2 RESERVE(6)/(10) holder.
    pub(crate) spc2: Option<NexusKey>,
    /// PRgeneration (SPC-4 6.16.2).
    pub(crate) generation: u32,
    pub(crate) regs: Vec<Registration>,
    pub(crate) res: Option<Reservation>,
    /// Activate persist through power loss: the last valid APTPL bit received.
    pub(crate) aptpl: bool,
    pub(crate) next_id: u64,
}

impl PrState {
    /// The registration of the I_T nexus `n`, if any.
    pub(crate) fn reg_of(&self, n: &Nexus) -> Option<&Registration> {
        self.regs
            .iter()
            .find(|r| r.matches(&n.key.initiator, n.key.relative_port, &n.transport_id))
    }

    pub(crate) fn reg_index(&self, n: &Nexus) -> Option<usize> {
        self.regs
            .iter()
            .position(|r| r.matches(&n.key.initiator, n.key.relative_port, &n.transport_id))
    }

    /// Whether registration `r` holds the persistent reservation.
    pub(crate) fn is_holder(&self, r: &Registration) -> bool {
        match self.res {
            Some(res) if res.ptype.all_registrants() => true,
            Some(res) => res.holder == r.id,
            None => false,
        }
    }

    pub(crate) fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Removes registration `idx`, releasing the reservation if it goes with it
    /// (SPC-4 5.13.11.2.2). Returns the type of a reservation so released.
    pub(crate) fn remove_reg(&mut self, idx: usize) -> Option<PrType> {
        let r = self.regs.remove(idx);
        let res = self.res?;
        let gone = if res.ptype.all_registrants() {
            self.regs.is_empty()
        } else {
            res.holder == r.id
        };
        if gone {
            self.res = None;
            Some(res.ptype)
        } else {
            None
        }
    }

    /// Anything persistent (registrations or a reservation) exists.
    pub(crate) fn has_pr(&self) -> bool {
        !self.regs.is_empty() || self.res.is_some()
    }
}

/// The reservation state, locked. When the guard drops it publishes whether any
/// reservation exists, so that `check_access` takes no lock on a LUN without one.
pub(crate) struct PrGuard<'a> {
    lun: &'a Lun,
    st: std::sync::MutexGuard<'a, PrState>,
}

impl std::ops::Deref for PrGuard<'_> {
    type Target = PrState;
    fn deref(&self) -> &PrState {
        &self.st
    }
}

impl std::ops::DerefMut for PrGuard<'_> {
    fn deref_mut(&mut self) -> &mut PrState {
        &mut self.st
    }
}

impl Drop for PrGuard<'_> {
    fn drop(&mut self) {
        let any = self.st.spc2.is_some() || self.st.res.is_some();
        self.lun
            .pr_reserved
            .store(any, std::sync::atomic::Ordering::Release);
    }
}

pub(crate) fn lock(lun: &Lun) -> PrGuard<'_> {
    PrGuard {
        lun,
        st: lun.pr.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// RESERVATION CONFLICT if `nexus` may not run `info` now.
pub(crate) fn check_access(
    lun: &Lun,
    nexus: &Nexus,
    info: &OpInfo,
    cdb: &[u8],
) -> Result<(), CmdError> {
    // The hot path: no reservation of either kind, nothing can conflict.
    if !lun.pr_reserved.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    let st = lock(lun);
    if let Some(holder) = &st.spc2 {
        if *holder != nexus.key && !conflict::spc2_allowed(cdb) {
            return Err(CmdError::ReservationConflict);
        }
        if conflict::is_pr_command(cdb) {
            // SPC-4 5.13.3: while an SPC-2 reservation exists, every PERSISTENT
            // RESERVE IN/OUT conflicts, whoever sends it.
            return Err(CmdError::ReservationConflict);
        }
    }
    let Some(res) = st.res else {
        return Ok(());
    };
    let reg = st.reg_of(nexus);
    if reg.is_some_and(|r| st.is_holder(r)) {
        return Ok(());
    }
    let class = conflict::classify(info, cdb);
    if conflict::conflicts(class, res.ptype, reg.is_some()) {
        return Err(CmdError::ReservationConflict);
    }
    Ok(())
}

/// LOGICAL UNIT RESET: the SPC-2 reservation is released (persistent ones stay).
pub(crate) fn on_lun_reset(lun: &Arc<Lun>) {
    lock(lun).spc2 = None;
}

/// I_T nexus loss: an SPC-2 reservation it held is released.
pub(crate) fn on_nexus_loss(lun: &Arc<Lun>, key: &NexusKey) {
    let mut st = lock(lun);
    if st.spc2.as_ref() == Some(key) {
        st.spc2 = None;
    }
}

pub(crate) const OPS: &[OpInfo] = &[
    reserve6::RESERVE6,
    reserve6::RELEASE6,
    reserve6::RESERVE10,
    reserve6::RELEASE10,
    in_::READ_KEYS,
    in_::READ_RESERVATION,
    in_::REPORT_CAPABILITIES,
    in_::READ_FULL_STATUS,
    out::REGISTER,
    out::RESERVE,
    out::RELEASE,
    out::CLEAR,
    out::PREEMPT,
    out::PREEMPT_AND_ABORT,
    out::REGISTER_AND_IGNORE,
    out::REGISTER_AND_MOVE,
];
