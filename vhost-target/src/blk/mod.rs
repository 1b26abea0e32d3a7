//! vhost-user-blk: one LUN of the engine as a virtio-blk device, for QEMU's
//! `vhost-user-blk-pci` and cloud-hypervisor's `--disk vhost_user=true`. A
//! [`VhostBlkController`] serves a Unix socket; each descriptor chain of a request
//! queue is checked and split ([`request::parse`]), turned into one SCSI command
//! ([`request::plan`]: READ(16), WRITE(16), SYNCHRONIZE CACHE(16), UNMAP, WRITE
//! SAME(16)) and submitted to the vring thread's engine worker with the guest's
//! data descriptors as its buffer, so data moves with no copy and the LUN's
//! reservations, statistics and write cache apply as on every other transport.
//! The configuration space comes from the LUN's geometry and the engine's block
//! limits ([`device`]); a capacity change reaches the frontend as a
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG ([`relay`] keeps the channel for it).

pub mod backend;
pub mod controller;
pub mod device;
pub mod queues;
pub mod relay;
pub mod request;
pub mod wire;

pub use controller::VhostBlkController;
pub use device::BlkDevice;
pub use queues::{BlkQueues, BlkStats};

#[cfg(test)]
mod tests;
