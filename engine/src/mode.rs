//! MODE SENSE / MODE SELECT state: the mode pages of one LUN (being completed).

use crate::lun::{Lun, LunConfig};
use crate::sense::SenseFormat;

/// Current values of the changeable mode parameters.
#[derive(Clone, Debug)]
pub struct ModeState {
    /// Caching page WCE.
    pub wce: bool,
    /// Control page D_SENSE: sense data in descriptor format.
    pub d_sense: bool,
}

impl ModeState {
    pub fn new(config: &LunConfig) -> Self {
        ModeState {
            wce: config.write_cache,
            d_sense: false,
        }
    }
}

/// The sense data format the control mode page selects.
pub(crate) fn sense_format(lun: &Lun) -> SenseFormat {
    if lun.mode.lock().unwrap_or_else(|e| e.into_inner()).d_sense {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    }
}
