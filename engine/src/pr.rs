//! Reservations: SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations (being
//! written). `check_access` is the conflict check every command passes.

use std::sync::Arc;

use crate::lun::Lun;
use crate::nexus::{Nexus, NexusKey};
use crate::opcodes::OpInfo;
use crate::sense::CmdError;

/// Reservation state of one LUN.
#[derive(Debug, Default)]
pub struct PrState {}

/// RESERVATION CONFLICT if `nexus` may not run `info` now.
pub(crate) fn check_access(
    _lun: &Lun,
    _nexus: &Nexus,
    _info: &OpInfo,
    _cdb: &[u8],
) -> Result<(), CmdError> {
    Ok(())
}

/// LOGICAL UNIT RESET: the SPC-2 reservation is released.
pub(crate) fn on_lun_reset(_lun: &Arc<Lun>) {}

/// I_T nexus loss: an SPC-2 reservation it held is released.
pub(crate) fn on_nexus_loss(_lun: &Arc<Lun>, _key: &NexusKey) {}

pub(crate) const OPS: &[OpInfo] = &[];
