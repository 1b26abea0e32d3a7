//! What a blk controller knows of its LUN and the driver's settings, shared by
//! the controller, each connection's backend and each vring thread: the virtio
//! features, the configuration space (from the LUN's geometry and the engine's
//! block limits, VPD B0h), the write cache setting, and the channel on which a
//! capacity change is announced to the frontend.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::vpd;
use engine::{CapacityListener, Lun};
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::request::Geometry;
use super::wire::{self, feature, Config, SECTOR};

/// Segments per request we tell the driver (`seg_max`): QEMU's default queue of
/// 128 descriptors minus header and status.
pub const SEG_MAX: u32 = 126;
/// Most DISCARD segments (UNMAP block descriptors) per request.
pub const MAX_DISCARD_SEG: u32 = 64;

/// vhost-user's VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, and the version bit of the
/// header's flags.
const CONFIG_CHANGE_MSG: u32 = 2;
const HEADER_VERSION: u32 = 0x1;

/// The device of one blk controller.
pub struct BlkDevice {
    lun: Arc<Lun>,
    num_queues: usize,
    /// The driver wrote `writeback` 0.
    write_through: AtomicBool,
    /// The backend request channel of the connection being served, when the
    /// frontend gave one (SET_BACKEND_REQ_FD).
    backend_req: Mutex<Option<UnixStream>>,
    /// Config-change messages sent, over all connections.
    config_changes: AtomicU64,
}

impl BlkDevice {
    pub fn new(lun: Arc<Lun>, num_queues: usize) -> Arc<Self> {
        Arc::new(BlkDevice {
            write_through: AtomicBool::new(!lun.config.write_cache),
            lun,
            num_queues,
            backend_req: Mutex::new(None),
            config_changes: AtomicU64::new(0),
        })
    }

    pub fn lun(&self) -> &Arc<Lun> {
        &self.lun
    }

    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// Most bytes one READ or WRITE moves (the engine's MAXIMUM TRANSFER LENGTH).
    fn max_transfer(&self) -> u64 {
        u64::from(vpd::max_transfer_blocks(&self.lun)) * u64::from(self.lun.block_size())
    }

    fn thin(&self) -> bool {
        vpd::provisioning(&self.lun).0
    }

    pub fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.lun.block_size(),
            write_through: self.write_through.load(Ordering::Relaxed),
            thin: self.thin(),
            max_discard_seg: MAX_DISCARD_SEG,
            max_transfer: self.max_transfer(),
        }
    }

    /// The virtio features offered.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        for b in [
            feature::SIZE_MAX,
            feature::SEG_MAX,
            feature::BLK_SIZE,
            feature::TOPOLOGY,
            feature::FLUSH,
            feature::CONFIG_WCE,
            feature::MQ,
            feature::WRITE_ZEROES,
        ] {
            f |= 1 << b;
        }
        if self.thin() {
            f |= 1 << feature::DISCARD;
        }
        if self.lun.config.read_only {
            f |= 1 << feature::RO;
        }
        f
    }

    /// The configuration space now.
    pub fn config(&self) -> Config {
        let lun = &self.lun;
        let bs = lun.block_size();
        let bs64 = u64::from(bs);
        // A segment is at most size_max bytes and a request at most seg_max of
        // them: keep a request within one command's transfer limit.
        let size_max = (self.max_transfer() / u64::from(SEG_MAX)) & !(bs64.max(4096) - 1);
        let size_max = u32::try_from(size_max.max(bs64)).unwrap_or(u32::MAX);
        let physical = lun.config.physical_block_size.max(bs);
        let exp = (physical / bs).trailing_zeros();
        let opt = lun.backend.capabilities().optimal_transfer;
        let per_block =
            |blocks: u64| u32::try_from(blocks.saturating_mul(bs64) / SECTOR).unwrap_or(u32::MAX);
        let thin = self.thin();
        Config {
            capacity: lun.backend.size() / SECTOR,
            size_max,
            seg_max: SEG_MAX,
            blk_size: bs,
            physical_block_exp: u8::try_from(exp).unwrap_or(0),
            min_io_size: u16::try_from(physical / bs).unwrap_or(1),
            opt_io_size: (opt / bs).max(1),
            writeback: u8::from(!self.write_through.load(Ordering::Relaxed)),
            num_queues: u16::try_from(self.num_queues).unwrap_or(u16::MAX),
            max_discard_sectors: if thin {
                per_block(u64::from(vpd::MAX_UNMAP_LBA_COUNT))
            } else {
                0
            },
            max_discard_seg: if thin { MAX_DISCARD_SEG } else { 0 },
            discard_sector_alignment: if thin {
                per_block(u64::from(vpd::UNMAP_GRANULARITY))
            } else {
                0
            },
            max_write_zeroes_sectors: per_block(vpd::MAX_WRITE_SAME_BLOCKS),
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: u8::from(thin),
        }
    }

    /// GET_CONFIG.
    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config().window(offset, size).unwrap_or_default()
    }

    /// SET_CONFIG: only `writeback` may change (CONFIG_WCE).
    pub fn write_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        if at == wire::WRITEBACK_OFFSET && buf.len() == 1 {
            self.write_through.store(buf[0] == 0, Ordering::Relaxed);
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "config write at {offset}, {} bytes: only writeback may change",
                buf.len()
            ),
        ))
    }

    /// A new connection: the write cache is the LUN's until its driver says
    /// otherwise.
    pub fn reset(&self) {
        self.write_through
            .store(!self.lun.config.write_cache, Ordering::Relaxed);
        self.set_backend_req(None);
    }

    /// The frontend's backend request channel for the connection now served.
    pub fn set_backend_req(&self, sock: Option<UnixStream>) {
        *self.backend_req.lock().unwrap_or_else(|e| e.into_inner()) = sock;
    }

    /// Config-change messages sent so far.
    pub fn config_changes(&self) -> u64 {
        self.config_changes.load(Ordering::Relaxed)
    }

    /// Tells the frontend that the configuration space changed
    /// (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, no reply asked); it reads it again
    /// with GET_CONFIG and interrupts the driver. False if there is no channel.
    pub fn notify_config_change(&self) -> bool {
        let mut slot = self.backend_req.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sock) = slot.as_mut() else {
            return false;
        };
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&HEADER_VERSION.to_le_bytes());
        // size 0: no payload.
        if sock.write_all(&msg).is_err() {
            *slot = None;
            return false;
        }
        self.config_changes.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl CapacityListener for BlkDevice {
    fn capacity_changed(&self, _lun: &Lun) {
        self.notify_config_change();
    }
}
