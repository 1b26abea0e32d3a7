//! A logical unit: backend, identity, geometry and the state every transport shares
//! (task set, unit attentions, reservations, mode pages). Shared as `Arc<Lun>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use backends::Backend;

use crate::taskset::TaskSet;
use crate::ua::UnitAttentions;

static NEXT_LUN_UID: AtomicU64 = AtomicU64::new(1);

/// How a LUN presents itself. Identity fields are stable across restarts (the UUID
/// and serial live in the config file) so that multipath sees one disk over every
/// transport and every daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub name: String,
    /// Stable identity; the NAA-6 designator of VPD page 83h derives from it.
    pub uuid: [u8; 16],
    /// UNIT SERIAL NUMBER (VPD 80h).
    pub serial: String,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Logical block length in bytes (512 or 4096 typically).
    pub block_size: u32,
    /// Physical block length in bytes reported to initiators (READ CAPACITY(16)
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, VPD B0 OPTIMAL TRANSFER LENGTH
    /// GRANULARITY), so that they align their I/O to it (4096 for a "512e" LUN
    /// on 4 KiB storage): a power of two, at most 2^15 logical blocks; one
    /// logical block when smaller than one. 512 by default: one logical block.
    pub physical_block_size: u32,
    pub read_only: bool,
    /// Removable medium (RMB=1): START STOP UNIT load/eject, PREVENT ALLOW MEDIUM REMOVAL.
    pub removable: bool,
    /// Thin provisioning reported (LBPME, VPD B2): UNMAP and WRITE SAME with UNMAP.
    pub thin: bool,
    /// Initial write cache setting (WCE of the caching mode page).
    pub write_cache: bool,
    /// Where persistent reservations with APTPL are saved; `None`: APTPL refused.
    pub state_dir: Option<std::path::PathBuf>,
    /// Bytes of medium per second a SANITIZE covers at most, so that sanitizing
    /// this LUN leaves bandwidth of a shared backing store to others; `None`: as
    /// fast as the backend goes.
    pub sanitize_rate: Option<u64>,
}

impl LunConfig {
    /// Defaults for a LUN called `name` with the given identity.
    pub fn new(name: &str, uuid: [u8; 16]) -> Self {
        let serial: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
        LunConfig {
            name: name.to_string(),
            uuid,
            serial,
            vendor: "OXTARGET".into(),
            product: "oxtarget LUN".into(),
            revision: "0001".into(),
            block_size: 512,
            physical_block_size: 512,
            read_only: false,
            removable: false,
            thin: true,
            write_cache: true,
            state_dir: None,
            sanitize_rate: None,
        }
    }
}

/// One logical unit.
pub struct Lun {
    /// Unique for this process: keys the per-thread backend channels.
    pub uid: u64,
    pub config: LunConfig,
    pub backend: Arc<dyn Backend>,
    pub(crate) tasks: Mutex<TaskSet>,
    pub ua: UnitAttentions,
    /// Mode page values and medium state.
    pub(crate) mode: crate::mode::ModeParams,
    pub(crate) media: Mutex<crate::spc::MediaState>,
    /// SPC-2 reservation and persistent reservations.
    pub(crate) pr: Mutex<crate::pr::PrState>,
    /// Whether any reservation (SPC-2 or persistent) exists: read without the lock
    /// by every command's conflict check, written by `pr::lock`'s guard.
    pub(crate) pr_reserved: std::sync::atomic::AtomicBool,
    /// Counters every transport reads the same way.
    pub stats: LunStats,
    /// EXTENDED COPY bookkeeping (RECEIVE COPY RESULTS).
    pub(crate) copy: Mutex<crate::xcopy::CopyState>,
    /// SANITIZE in progress or failed (SBC-4 4.11).
    pub(crate) sanitize: crate::sbc::SanitizeState,
    /// Told of capacity changes; held weakly so a transport that goes away
    /// unsubscribes by dropping its listener.
    capacity_listeners: Mutex<Vec<Weak<dyn CapacityListener>>>,
}

/// Learns that a LUN's capacity changed, after the unit attention is set: for a
/// transport that can also tell its initiators out of band (virtio-scsi's
/// parameter-change event). Called on the thread that changed the capacity; it
/// must not block on I/O.
pub trait CapacityListener: Send + Sync {
    fn capacity_changed(&self, lun: &Lun);
}

/// Per-LUN statistics.
#[derive(Debug, Default)]
pub struct LunStats {
    /// Operations that went through an aligned bounce copy instead of the
    /// caller's memory (zero copy was not possible).
    pub bounce_copies: AtomicU64,
    /// Commands that read the medium, that wrote it, and all others.
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub other_ops: AtomicU64,
    /// Bytes moved by those reads and writes.
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Commands that ended in a status other than GOOD.
    pub errors: AtomicU64,
    /// Commands aborted by task management or a lost nexus.
    pub aborted: AtomicU64,
    /// Commands accepted and not yet completed.
    pub in_flight: AtomicU64,
    /// Command latency: bucket `i` counts commands that took less than
    /// 2^i microseconds (the last bucket: everything longer).
    pub latency_us: [AtomicU64; LATENCY_BUCKETS],
    /// The sum of all latencies, for the mean.
    pub latency_sum_us: AtomicU64,
}

/// Latency histogram buckets: up to 2^24 µs (16.7 s) and beyond.
pub const LATENCY_BUCKETS: usize = 26;

impl LunStats {
    /// Counts one completed command.
    pub fn record(
        &self,
        flags: u32,
        bytes: u64,
        good: bool,
        aborted: bool,
        latency: std::time::Duration,
    ) {
        use crate::opcodes::flags::{READS, WRITES};
        let (ops, moved) = if flags & WRITES != 0 {
            (&self.write_ops, Some(&self.write_bytes))
        } else if flags & READS != 0 {
            (&self.read_ops, Some(&self.read_bytes))
        } else {
            (&self.other_ops, None)
        };
        ops.fetch_add(1, Ordering::Relaxed);
        if aborted {
            self.aborted.fetch_add(1, Ordering::Relaxed);
        } else if !good {
            self.errors.fetch_add(1, Ordering::Relaxed);
        } else if let Some(m) = moved {
            m.fetch_add(bytes, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.latency_us[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lun")
            .field("name", &self.config.name)
            .field("uid", &self.uid)
            .finish()
    }
}

/// Why a LUN could not be resized.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("size {size} is not a positive multiple of the block size {block_size}")]
    Unaligned { size: u64, block_size: u32 },
    #[error("backend: {0}")]
    Backend(backends::BackendError),
}

/// Why a LUN could not be created.
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error("LUN {name}: block size {block_size} is not a power of two between 512 and 65536")]
    BlockSize { name: String, block_size: u32 },
    #[error("LUN {name}: backend size {size} is not a multiple of the block size {block_size}")]
    Unaligned {
        name: String,
        size: u64,
        block_size: u32,
    },
    #[error(
        "LUN {name}: physical block size {physical} is not a power of two of at most \
         2^15 logical blocks of {block_size} bytes"
    )]
    PhysicalBlockSize {
        name: String,
        physical: u32,
        block_size: u32,
    },
    #[error("LUN {name}: backend is read-only but the LUN is not")]
    ReadOnlyBackend { name: String },
    #[error("LUN {name}: {source}")]
    Reservations {
        name: String,
        source: crate::pr::aptpl::PrError,
    },
    #[error("LUN {name}: {source}")]
    ModePages {
        name: String,
        source: crate::mode::ModeLoadError,
    },
}

impl Lun {
    pub fn new(config: LunConfig, backend: Arc<dyn Backend>) -> Result<Arc<Self>, LunError> {
        let bs = config.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(LunError::BlockSize {
                name: config.name,
                block_size: bs,
            });
        }
        let pbs = config.physical_block_size;
        if !pbs.is_power_of_two() || u64::from(pbs) > u64::from(bs) << 15 {
            return Err(LunError::PhysicalBlockSize {
                name: config.name,
                physical: pbs,
                block_size: bs,
            });
        }
        if backend.capabilities().read_only && !config.read_only {
            return Err(LunError::ReadOnlyBackend { name: config.name });
        }
        let mode = crate::mode::ModeParams::load(&config).map_err(|e| LunError::ModePages {
            name: config.name.clone(),
            source: e,
        })?;
        let lun = Arc::new(Lun {
            uid: NEXT_LUN_UID.fetch_add(1, Ordering::Relaxed),
            config,
            backend,
            tasks: Mutex::new(TaskSet::default()),
            ua: UnitAttentions::default(),
            mode,
            media: Mutex::new(crate::spc::MediaState::default()),
            pr: Mutex::new(crate::pr::PrState::default()),
            pr_reserved: std::sync::atomic::AtomicBool::new(false),
            stats: LunStats::default(),
            copy: Mutex::new(crate::xcopy::CopyState::default()),
            sanitize: crate::sbc::SanitizeState::default(),
            capacity_listeners: Mutex::new(Vec::new()),
        });
        // Persistent reservations saved with APTPL come back before any command.
        crate::pr::load_aptpl(&lun).map_err(|source| LunError::Reservations {
            name: lun.config.name.clone(),
            source,
        })?;
        // A shared store resized by another client (an RBD image) is a capacity
        // change like our own resize. Weak: the backend outlives no LUN by this.
        let weak = Arc::downgrade(&lun);
        lun.backend.watch_resize(Arc::new(move || {
            if let Some(l) = weak.upgrade() {
                l.capacity_changed();
            }
        }));
        Ok(lun)
    }

    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// Number of logical blocks now (the backend may have been resized).
    pub fn num_blocks(&self) -> u64 {
        self.backend.size() / u64::from(self.config.block_size)
    }

    /// Whether blocks `[lba, lba + blocks)` are inside the LUN, for the range check
    /// of every read and write: against the size the backend last learned first
    /// (no system call), then, before refusing, against its size now (a file that
    /// grew). A file shrunk by another process is noticed at the next fresh size
    /// query (READ CAPACITY, or a range past the old end); until then a read past
    /// the new end returns zeroes, as it would have had the shrink come a moment
    /// after the check.
    pub fn range_ok(&self, lba: u64, blocks: u64) -> bool {
        let Some(end) = lba.checked_add(blocks) else {
            return false;
        };
        let bs = u64::from(self.config.block_size);
        end <= self.backend.size_cached() / bs || end <= self.num_blocks()
    }

    /// Changes the capacity to `new_size` bytes (a multiple of the block size) and
    /// tells every initiator CAPACITY DATA HAS CHANGED (SBC-3 4.7).
    pub fn resize(&self, new_size: u64) -> Result<(), ResizeError> {
        let bs = u64::from(self.config.block_size);
        if new_size == 0 || !new_size.is_multiple_of(bs) {
            return Err(ResizeError::Unaligned {
                size: new_size,
                block_size: self.config.block_size,
            });
        }
        self.backend
            .resize(new_size)
            .map_err(ResizeError::Backend)?;
        self.capacity_changed();
        Ok(())
    }

    /// The store changed size by itself (another client resized it): initiators
    /// are told CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {
        self.ua
            .establish_all(crate::sense::asc::CAPACITY_DATA_HAS_CHANGED, None);
        let listeners: Vec<Arc<dyn CapacityListener>> = {
            let mut list = self
                .capacity_listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        // Called without the lock: a listener may subscribe to other LUNs.
        for l in listeners {
            l.capacity_changed(self);
        }
    }

    /// Subscribes `listener` to capacity changes. It is held weakly: dropping its
    /// last `Arc` unsubscribes it. Subscribing the same listener twice adds it once.
    pub fn subscribe_capacity<L: CapacityListener + 'static>(&self, listener: &Arc<L>) {
        let listener: Arc<dyn CapacityListener> = listener.clone();
        let weak = Arc::downgrade(&listener);
        let mut list = self
            .capacity_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        if !list.iter().any(|w| Weak::ptr_eq(w, &weak)) {
            list.push(weak);
        }
    }

    /// The NAA-6 (IEEE registered extended) designator: 16 bytes derived from the
    /// UUID so every transport and every daemon exporting this LUN report the same.
    pub fn naa(&self) -> [u8; 16] {
        naa_from_uuid(&self.config.uuid)
    }
}

/// OUI placed in the NAA designator. 0x001405 is the one the Linux target stack uses
/// for software targets; we use a locally chosen one so we never collide with it.
const NAA_OUI: u32 = 0x00_15_0e;

/// NAA 6h designator: 4 bits NAA, 24 bits IEEE company id, then 100 bits derived from
/// the UUID.
pub fn naa_from_uuid(uuid: &[u8; 16]) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = 0x60 | ((NAA_OUI >> 20) & 0x0f) as u8;
    d[1] = (NAA_OUI >> 12) as u8;
    d[2] = (NAA_OUI >> 4) as u8;
    d[3] = ((NAA_OUI & 0x0f) << 4) as u8 | (uuid[0] & 0x0f);
    d[4..16].copy_from_slice(&uuid[1..13]);
    d
}

/// Every LUN of this daemon, by name: EXTENDED COPY finds its targets here.
#[derive(Default)]
pub struct LunRegistry {
    luns: RwLock<HashMap<String, Arc<Lun>>>,
}

impl LunRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(LunRegistry::default())
    }

    /// Adds a LUN; `false` if the name is taken.
    pub fn add(&self, lun: Arc<Lun>) -> bool {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&lun.config.name) {
            return false;
        }
        map.insert(lun.config.name.clone(), lun);
        true
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Lun>> {
        self.luns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Lun>> {
        self.luns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The LUN whose NAA designator is `naa` (EXTENDED COPY target descriptors).
    pub fn by_naa(&self, naa: &[u8]) -> Option<Arc<Lun>> {
        let map = self.luns.read().unwrap_or_else(|e| e.into_inner());
        map.values().find(|l| l.naa().as_slice() == naa).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Lun>> {
        self.luns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::RamBackend;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count {
        calls: AtomicUsize,
        blocks: AtomicU64,
    }

    impl CapacityListener for Count {
        fn capacity_changed(&self, lun: &Lun) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.blocks.store(lun.num_blocks(), Ordering::SeqCst);
        }
    }

    #[test]
    fn resize_tells_listeners_once_each_until_dropped() {
        let lun = Lun::new(
            LunConfig::new("l", [3; 16]),
            Arc::new(RamBackend::new(1 << 20)),
        )
        .unwrap();
        let a = Arc::new(Count::default());
        let b = Arc::new(Count::default());
        lun.subscribe_capacity(&a);
        lun.subscribe_capacity(&a);
        lun.subscribe_capacity(&b);
        lun.resize(2 << 20).unwrap();
        assert_eq!(a.calls.load(Ordering::SeqCst), 1, "subscribed once");
        assert_eq!(
            a.blocks.load(Ordering::SeqCst),
            (2 << 20) / 512,
            "after the resize"
        );
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
        // A refused resize tells no one.
        assert!(lun.resize(1000).is_err());
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        drop(b);
        lun.resize(3 << 20).unwrap();
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            lun.capacity_listeners.lock().unwrap().len(),
            1,
            "dropped listener pruned"
        );
    }

    /// A RAM store that another client can resize behind the LUN's back, and
    /// that tells whoever watches (as an RBD image's header watch does).
    struct Shared {
        ram: RamBackend,
        notify: Mutex<Option<backends::ResizeNotifier>>,
    }

    impl Backend for Shared {
        fn size(&self) -> u64 {
            self.ram.size()
        }
        fn capabilities(&self) -> backends::Capabilities {
            self.ram.capabilities()
        }
        fn open_channel(
            &self,
            n: &vmm_sys_util::eventfd::EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            self.ram.open_channel(n)
        }
        fn block_status(
            &self,
            offset: u64,
            len: u64,
        ) -> Result<backends::Extent, backends::BackendError> {
            self.ram.block_status(offset, len)
        }
        fn resize(&self, new_size: u64) -> Result<(), backends::BackendError> {
            self.ram.resize(new_size)
        }
        fn describe(&self) -> String {
            "shared".into()
        }
        fn watch_resize(&self, notify: backends::ResizeNotifier) {
            *self.notify.lock().unwrap() = Some(notify);
        }
    }

    #[test]
    fn a_resize_by_another_client_is_a_capacity_change() {
        let store = Arc::new(Shared {
            ram: RamBackend::new(1 << 20),
            notify: Mutex::new(None),
        });
        let lun = Lun::new(LunConfig::new("l", [4; 16]), store.clone()).unwrap();
        let a = Arc::new(Count::default());
        lun.subscribe_capacity(&a);
        // The other client grows the store; the backend's watch fires.
        store.ram.resize(4 << 20).unwrap();
        let notify = store
            .notify
            .lock()
            .unwrap()
            .clone()
            .expect("the LUN watches");
        notify();
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        assert_eq!(a.blocks.load(Ordering::SeqCst), (4 << 20) / 512);
        // Once the LUN is gone the watch does nothing (and keeps nothing alive).
        drop(lun);
        notify();
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
    }
}
