//! oxtarget's vhost-user devices. A [`VhostScsiController`] listens on a Unix
//! socket for QEMU's `vhost-user-scsi-pci`, maps guest memory, and serves the
//! virtio-scsi queues on rust-vmm's `vhost-user-backend`: each descriptor chain of a
//! request queue is checked ([`request`]), its header decoded ([`wire`]) and its data
//! descriptors handed to the engine as a [`request::GuestBuf`] whose iovecs point
//! straight into guest memory, so the backend reads and writes the guest's buffers
//! with no copy. Completions come back on the same thread's engine worker and go to
//! the used ring with the response; the control queue carries task management
//! functions to the engine. vhost-user-blk comes later.

pub mod backend;
pub mod controller;
pub mod queues;
pub mod request;
pub mod wire;

pub use controller::{ControllerError, StopHandle, VhostScsiController};
pub use queues::{ScsiQueues, UsedEntry};
pub use request::{GuestBuf, GuestMem, RequestError};

#[cfg(test)]
mod tests;
