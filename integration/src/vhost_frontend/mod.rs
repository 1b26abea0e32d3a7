//! A vhost-user-scsi and vhost-user-blk frontend on the host, with no guest: it
//! connects to a backend's socket as QEMU would ([`device`]), lays out split
//! virtqueues in one shared memfd by hand ([`ring`]), and drives virtio-scsi
//! READ/WRITE commands ([`scsi`]) or virtio-blk IN/OUT requests ([`blk`]) at a
//! chosen depth ([`load`]), timing each one ([`hist`]). Under TCG a
//! benchmark inside a guest measures the emulator; this measures the backend.
//! It waits on the call eventfds and never polls the used rings in a loop, so on a
//! small machine it leaves the CPU to the backend it measures.

pub mod blk;
pub mod device;
pub mod hist;
pub mod load;
#[cfg(test)]
mod qsd_tests;
pub mod ring;
pub mod scsi;

pub use device::{Device, DeviceConfig, DeviceKind};
pub use load::{BlkData, Driver, Job, Pattern, Report};

/// Why the frontend could not set up or finish a run.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("vhost-user {what}: {source}")]
    Vhost {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("shared memory: {0}")]
    Memory(String),
    #[error("the backend: {0}")]
    Backend(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ring(#[from] ring::RingError),
    #[error(transparent)]
    Scsi(#[from] scsi::ScsiError),
    #[error(transparent)]
    Blk(#[from] blk::BlkError),
    #[error("no completion for {secs} s with {outstanding} commands outstanding")]
    Stalled { secs: u64, outstanding: usize },
    #[error("setup command {what}: {detail}")]
    Setup { what: &'static str, detail: String },
}
