//! oxtarget's SRP target (SCSI RDMA Protocol, SRP r16a with SRP-2 immediate
//! data), for the Linux ib_srp initiator over RDMA/CM. This half is sans I/O:
//! [`iu`] parses and encodes the information units, [`login`] decides a login
//! request, [`channels`] keeps one I_T nexus across the channels of one
//! initiator port, [`credits`] counts the request limit and [`exec`] maps SRP
//! commands and task management to the engine and its answers back to SRP_RSP.
//! The RDMA transport drives these from its completion queues.

pub mod channels;
pub mod credits;
pub mod exec;
pub mod iu;
pub mod login;

// The transport (srp-rdma's half).
pub mod rdma;
pub mod server;
pub use server::{Server, ServerConfig, ServerError, SessionInfo, Target};
