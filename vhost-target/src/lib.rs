//! oxtarget's vhost-user devices. A [`VhostScsiController`] listens on a Unix
//! socket for QEMU's `vhost-user-scsi-pci`, maps guest memory, and serves the
//! virtio-scsi queues on rust-vmm's `vhost-user-backend`: each descriptor chain of a
//! request queue is checked ([`request`]), its header decoded ([`wire`]) and its data
//! descriptors handed to the engine as a [`request::GuestBuf`] whose iovecs point
//! straight into guest memory, so the backend reads and writes the guest's buffers
//! with no copy. Completions come back on the same thread's engine worker and go to
//! the used ring with the response; the control queue carries task management
//! functions to the engine; the event queue tells the driver of LUNs attached,
//! detached or resized at run time ([`events`]). A [`VhostBlkController`] serves
//! one LUN as a vhost-user-blk device ([`blk`]) on the same engine.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backends::RamBackend;
//! use engine::{Lun, LunConfig, LunMap, LunRegistry};
//! use vhost_target::VhostScsiController;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lun = Lun::new(LunConfig::new("disk0", [1; 16]), Arc::new(RamBackend::new(1 << 30)))?;
//! let registry = LunRegistry::new();
//! registry.add(lun.clone());
//! let luns = LunMap::new();
//! luns.insert(0, lun);
//! let vm0 = VhostScsiController::new("vm0", "/run/oxtarget/vm0.sock", luns, registry, 2)?;
//! vm0.serve()?; // until vm0.stop_handle().stop() from another thread
//! # Ok(())
//! # }
//! ```
//!
//! QEMU attaches with shared guest memory, the socket, and as many request queues
//! as the controller has (QEMU does not check GET_QUEUE_NUM):
//! `-object memory-backend-memfd,id=mem0,size=1G,share=on -machine q35,memory-backend=mem0
//! -chardev socket,id=c0,path=/run/oxtarget/vm0.sock
//! -device vhost-user-scsi-pci,chardev=c0,num_queues=2`.

pub mod backend;
pub mod blk;
pub mod controller;
pub mod events;
pub mod queues;
pub mod request;
pub mod wire;

pub use blk::VhostBlkController;
pub use controller::{ControllerError, LunMapError, StopHandle, VhostScsiController};
pub use events::{EventStats, Posted};
pub use queues::{ScsiQueues, UsedEntry};
pub use request::{GuestBuf, GuestMem, RequestError};

#[cfg(test)]
mod tests;
