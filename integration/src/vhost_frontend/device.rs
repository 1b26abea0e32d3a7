//! A vhost-user-scsi or vhost-user-blk device seen from the frontend, the way
//! QEMU sets it up: one shared memfd passed as a single memory region (our "guest
//! memory"), the virtqueues laid out in it by hand (scsi: control, event, then the
//! request queues; blk: request queues only, from queue 0), and the vhost-user
//! messages in QEMU's order, ending with one synchronous round trip so that no
//! kick reaches a backend before it has enabled the rings. For blk the
//! configuration space (capacity, block size, queues) is read with GET_CONFIG, as
//! QEMU's vhost-user-blk does right after its setup messages.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::blk;
use super::ring::{RingError, RingLayout, SplitQueue};
use super::FrontendError;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// virtio-scsi's control and event queue before the request queues.
pub const FIXED_QUEUES: usize = 2;

/// Which virtio device the backend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Scsi,
    Blk,
}

impl DeviceKind {
    /// Queues before the first request queue.
    pub fn fixed_queues(self) -> usize {
        match self {
            DeviceKind::Scsi => FIXED_QUEUES,
            DeviceKind::Blk => 0,
        }
    }
}
const PAGE: u64 = 4096;

/// How to set the device up.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub kind: DeviceKind,
    /// Request queues to use (the device must have at least as many).
    pub request_queues: usize,
    /// Entries per virtqueue (QEMU's default is 128).
    pub queue_size: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX if the backend offers it (Linux does).
    pub event_idx: bool,
    /// Bytes after the rings for the driver's own buffers.
    pub buffer_bytes: u64,
}

/// One request queue: its ring and its two eventfds.
pub struct RequestQueue {
    pub ring: SplitQueue,
    pub kick: EventFd,
    pub call: EventFd,
}

/// A connected, running device.
pub struct Device {
    fe: Frontend,
    _memfd: File,
    pub mem: GuestMemoryMmap<()>,
    pub kind: DeviceKind,
    /// Request queues in device order (device queue `kind.fixed_queues() + i`).
    pub queues: Vec<RequestQueue>,
    /// The control and event queues' eventfds, kept open (nothing is posted there).
    _fixed: Vec<(EventFd, EventFd)>,
    /// Start of the buffer area (guest address), page-aligned.
    pub buffers: u64,
    pub buffer_bytes: u64,
    /// Virtio features acked.
    pub features: u64,
    /// Device queues the backend reported (GET_QUEUE_NUM).
    pub backend_queues: u64,
    /// virtio-blk's configuration space (GET_CONFIG); `None` for scsi.
    pub blk_config: Option<blk::Config>,
}

fn vhost_err<E>(what: &'static str) -> impl FnOnce(E) -> FrontendError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| FrontendError::Vhost {
        what,
        source: Box::new(source),
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> FrontendError {
    move |source| FrontendError::Io { what, source }
}

/// An anonymous shared memory file of `len` bytes.
fn memfd(len: u64) -> Result<File, FrontendError> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create only reads it.
    let fd = unsafe { libc::memfd_create(c"oxtarget-loadgen".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FrontendError::Io {
            what: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).map_err(io_err("sizing the memfd"))?;
    Ok(file)
}

fn round_page(v: u64) -> Option<u64> {
    v.checked_add(PAGE - 1).map(|x| x & !(PAGE - 1))
}

impl Device {
    /// Connects to the vhost-user socket at `socket` and brings up the fixed
    /// queues of `cfg.kind` and `cfg.request_queues` request queues.
    pub fn connect(socket: &Path, cfg: &DeviceConfig) -> Result<Device, FrontendError> {
        let fixed_queues = cfg.kind.fixed_queues();
        let total = fixed_queues + cfg.request_queues;
        // Layout: each ring on its own pages, then the buffers.
        let mut layouts = Vec::with_capacity(total);
        let mut at = 0u64;
        for _ in 0..total {
            let l = RingLayout::new(at, cfg.queue_size)?;
            at = round_page(l.end).ok_or(RingError::Overflow {
                base: at,
                size: cfg.queue_size,
            })?;
            layouts.push(l);
        }
        let buffers = at;
        let len = buffers
            .checked_add(
                round_page(cfg.buffer_bytes)
                    .ok_or(FrontendError::Config("buffer area too large".into()))?,
            )
            .ok_or(FrontendError::Config("memory too large".into()))?;
        let len_usize =
            usize::try_from(len).map_err(|_| FrontendError::Config("memory too large".into()))?;
        let file = memfd(len)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            len_usize,
            Some(FileOffset::new(
                file.try_clone().map_err(io_err("dup of the memfd"))?,
                0,
            )),
        )])
        .map_err(|e| FrontendError::Memory(e.to_string()))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| FrontendError::Memory(e.to_string()))? as u64;
        // Touch every page now so the run does not take the faults.
        let zero = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(zero.len() as u64) as usize;
            mem.write_slice(&zero[..n], GuestAddress(off))
                .map_err(|e| FrontendError::Memory(e.to_string()))?;
            off += n as u64;
        }

        let fe = Frontend::connect(socket, total as u64).map_err(vhost_err("connecting"))?;
        let mut fe = fe;
        // QEMU 7.2's order: GET_FEATURES, GET_PROTOCOL_FEATURES,
        // SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER, GET_FEATURES.
        let offered = fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        if offered & PROTOCOL_FEATURES == 0 {
            return Err(FrontendError::Backend(format!(
                "no VHOST_USER_F_PROTOCOL_FEATURES in {offered:#x}"
            )));
        }
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::Backend(format!(
                "no VIRTIO_F_VERSION_1 in {offered:#x}"
            )));
        }
        let proto = fe
            .get_protocol_features()
            .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
        // QEMU negotiates only MQ for vhost-user-scsi; for vhost-user-blk it needs
        // CONFIG too (the capacity comes from there) and takes MQ when offered.
        let want = match cfg.kind {
            DeviceKind::Scsi => proto & VhostUserProtocolFeatures::MQ,
            DeviceKind::Blk => {
                if !proto.contains(VhostUserProtocolFeatures::CONFIG) {
                    return Err(FrontendError::Backend(format!(
                        "vhost-user-blk without the CONFIG protocol feature ({:#x})",
                        proto.bits()
                    )));
                }
                proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
            }
        };
        fe.set_protocol_features(want)
            .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        let backend_queues = if want.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num().map_err(vhost_err("GET_QUEUE_NUM"))?
        } else {
            1
        };
        if backend_queues < total as u64 {
            return Err(FrontendError::Backend(format!(
                "{} request queues asked, the device has {backend_queues} queues in all \
                 ({fixed_queues} fixed and {} request)",
                cfg.request_queues,
                backend_queues.saturating_sub(fixed_queues as u64)
            )));
        }
        fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let blk_config = match cfg.kind {
            DeviceKind::Scsi => None,
            DeviceKind::Blk => {
                let buf = [0u8; blk::CONFIG_LEN as usize];
                let (_, payload) = fe
                    .get_config(0, blk::CONFIG_LEN, VhostUserConfigFlags::empty(), &buf)
                    .map_err(vhost_err("GET_CONFIG"))?;
                let c = blk::Config::decode(&payload)?;
                if cfg.request_queues > 1 && offered & blk::F_MQ == 0 {
                    return Err(FrontendError::Backend(format!(
                        "{} request queues asked; the device does not offer VIRTIO_BLK_F_MQ",
                        cfg.request_queues
                    )));
                }
                if offered & blk::F_MQ != 0 && usize::from(c.num_queues) < cfg.request_queues {
                    return Err(FrontendError::Backend(format!(
                        "{} request queues asked, the configuration space says {}",
                        cfg.request_queues, c.num_queues
                    )));
                }
                Some(c)
            }
        };
        // Per queue SET_VRING_CALL and SET_VRING_ERR, then SET_FEATURES and
        // SET_MEM_TABLE.
        let mut calls = Vec::with_capacity(total);
        for q in 0..total {
            let call = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
            let err = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
            fe.set_vring_call(q, &call)
                .map_err(vhost_err("SET_VRING_CALL"))?;
            fe.set_vring_err(q, &err)
                .map_err(vhost_err("SET_VRING_ERR"))?;
            calls.push(call);
        }
        let mut features = VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES;
        if cfg.kind == DeviceKind::Blk {
            features |= offered & blk::DRIVER_FEATURES;
        }
        if cfg.event_idx {
            features |= offered & VIRTIO_RING_F_EVENT_IDX;
        }
        fe.set_features(features)
            .map_err(vhost_err("SET_FEATURES"))?;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: len,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .map_err(vhost_err("SET_MEM_TABLE"))?;
        // Per queue SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK.
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut rings = Vec::with_capacity(total);
        let mut kicks = Vec::with_capacity(total);
        for (q, l) in layouts.iter().enumerate() {
            let ring = SplitQueue::new(&mem, *l, event_idx)?;
            let kick = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
            fe.set_vring_num(q, cfg.queue_size)
                .map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_base(q, 0)
                .map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: cfg.queue_size,
                    queue_size: cfg.queue_size,
                    flags: 0,
                    desc_table_addr: host + l.desc,
                    used_ring_addr: host + l.used,
                    avail_ring_addr: host + l.avail,
                    log_addr: None,
                },
            )
            .map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_kick(q, &kick)
                .map_err(vhost_err("SET_VRING_KICK"))?;
            rings.push(ring);
            kicks.push(kick);
        }
        for q in 0..total {
            fe.set_vring_enable(q, true)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        // A backend without REPLY_ACK may still be enabling the rings: one round trip
        // before the first kick.
        fe.get_features().map_err(vhost_err("GET_FEATURES"))?;

        let mut fixed = Vec::new();
        let mut queues = Vec::new();
        for (q, ((ring, kick), call)) in rings.into_iter().zip(kicks).zip(calls).enumerate() {
            if q < fixed_queues {
                fixed.push((kick, call));
            } else {
                queues.push(RequestQueue { ring, kick, call });
            }
        }
        Ok(Device {
            fe,
            kind: cfg.kind,
            _memfd: file,
            mem,
            queues,
            _fixed: fixed,
            buffers,
            buffer_bytes: len - buffers,
            features,
            backend_queues,
            blk_config,
        })
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// Stops every queue as QEMU does at VM stop (GET_VRING_BASE), which a backend
    /// answers once its commands are done, and reports the next available index.
    pub fn stop(&self) -> Result<Vec<u32>, FrontendError> {
        let total = self.kind.fixed_queues() + self.queues.len();
        (0..total)
            .map(|q| {
                self.fe
                    .get_vring_base(q)
                    .map_err(vhost_err("GET_VRING_BASE"))
            })
            .collect()
    }
}
