//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (being written).

use crate::opcodes::OpInfo;

/// Copy operations of one LUN, for RECEIVE COPY RESULTS.
#[derive(Debug, Default)]
pub struct CopyState {}

pub(crate) const OPS: &[OpInfo] = &[];
