//! oxtarget's SCSI target core. A transport (iSCSI, vhost-user-scsi, SRP) hands a
//! [`Worker`] a [`ScsiCmd`] — LUN, CDB, tag, task attribute and a [`DataBuf`] —
//! from an I_T [`Nexus`]; the engine decodes the CDB through one opcode table,
//! checks unit attentions, reservations and the task set, emulates SPC-4/SBC-3, and
//! drives block I/O on the worker thread's backend channels straight from the
//! command's buffer. What comes back is a [`CmdResponse`]: status, sense data and
//! residual. The engine never sees a transport's wire format.

pub(crate) mod bounce;
pub mod cmd;
pub mod exec;
pub mod lun;
pub mod mode;
pub mod nexus;
pub mod opcodes;
pub mod pr;
pub mod rsoc;
pub mod sbc;
pub mod sense;
pub mod spc;
pub(crate) mod statefile;
pub(crate) mod taskset;
pub mod tmf;
pub mod ua;
pub mod vpd;
pub mod worker;
pub mod xcopy;

#[cfg(test)]
pub(crate) mod testutil;

pub use cmd::{Cdb, CmdResponse, Completed, DataBuf, DataDir, Residual, ScsiCmd, TaskAttr, VecBuf};
pub use lun::{CapacityListener, Lun, LunConfig, LunRegistry};
pub use nexus::{LunMap, Nexus, NexusKey, Protocol, TargetPort};
pub use sense::{CmdError, ScsiStatus, Sense, SenseKey};
pub use tmf::{TmfFunction, TmfRequest, TmfResponse};
pub use worker::{Event, Worker};
#[cfg(test)]
mod matrix_tests;
#[cfg(test)]
mod tmf_tests;
#[cfg(test)]
mod worker_tests;
