//! Drives reads and writes through a [`Device`]'s request queues at a fixed
//! depth and times each one: SCSI READ/WRITE commands on a virtio-scsi device,
//! IN/OUT requests on a virtio-blk one. Every request queue gets a share of the
//! depth; each outstanding command owns a slot: three descriptors (virtio-scsi:
//! header, response, data in the order it wants for the direction; virtio-blk:
//! header, data, status), a header/response block and a data buffer, all in the
//! shared memory. One thread serves every queue: it
//! refills slots as their commands come back and sleeps in `poll(2)` on the call
//! eventfds when nothing is waiting. Every response is checked.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::blk;
use super::device::{Device, DeviceKind};
use super::hist::Histogram;
use super::ring::{Descriptor, DESC_F_NEXT, DESC_F_WRITE};
use super::scsi::{self, CmdResp, CMD_REQ_LEN, CMD_RESP_LEN};
use super::FrontendError;

/// Descriptors per slot.
const DESCS: u16 = 3;
/// Header block per slot: request at 0, response at 128.
const HDR_BLOCK: u64 = 256;
const RESP_OFF: u64 = 128;
const PAGE: u64 = 4096;
/// How long the backend may go without completing anything before the run fails.
const STALL: Duration = Duration::from_secs(30);
/// What a virtio-blk status byte holds until the device writes it (no defined
/// status has this value).
const STATUS_UNSET: u8 = 0xee;
/// Error details kept for the report.
const MAX_ERROR_DETAILS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Random,
    Sequential,
}

/// One run.
#[derive(Clone, Debug)]
pub struct Job {
    pub write: bool,
    pub pattern: Pattern,
    /// Bytes per command (a multiple of the LUN's block length).
    pub block_bytes: u32,
    /// Commands outstanding over all queues.
    pub depth: usize,
    /// Stop issuing after this long...
    pub duration: Duration,
    /// ...or after this many commands, whichever comes first.
    pub max_ios: u64,
    /// Use at most this many bytes of the LUN (from LBA 0); `None`: all of it.
    pub span_bytes: Option<u64>,
    /// Always use READ(16)/WRITE(16).
    pub force16: bool,
    pub seed: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub ios: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Latency of each good command, in nanoseconds.
    pub latency: Histogram,
    pub errors: u64,
    pub error_details: Vec<String>,
    pub kicks: u64,
    pub sleeps: u64,
    /// This process's CPU time over the run (user + system).
    pub cpu: Duration,
}

impl Report {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// xorshift64*: cheap, and good enough to spread offsets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Multiply-shift: no modulo bias worth speaking of, no division.
        ((u128::from(r) * u128::from(n)) >> 64) as u64
    }
}

/// Shares `depth` out over `queues` as evenly as it goes (earlier queues get the
/// remainder).
pub fn split_depth(depth: usize, queues: usize) -> Vec<usize> {
    if queues == 0 {
        return Vec::new();
    }
    (0..queues)
        .map(|i| depth / queues + usize::from(i < depth % queues))
        .collect()
}

/// CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed value we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    started: Instant,
}

/// The data of a single virtio-blk request ([`Driver::blk_request`]).
#[derive(Clone, Copy, Debug)]
pub enum BlkData<'a> {
    None,
    /// This many bytes from the device.
    In(u32),
    /// These bytes to the device.
    Out(&'a [u8]),
}

/// What came back for one command: nothing to report, or what went wrong.
type Outcome = Option<String>;

/// The driver of a device: slots, their memory, and the LUN it talks to (scsi).
pub struct Driver {
    dev: Device,
    lun: [u8; 8],
    next_tag: u64,
    /// Slots per queue the memory was laid out for.
    slots: usize,
    data_stride: u64,
    data_base: u64,
}

impl Driver {
    /// A driver with `slots` slots per request queue of `data_bytes` each, for LUN
    /// `lun` of `target` (scsi; a blk device has no LUN and ignores both). The
    /// device's buffer area must hold them.
    pub fn new(
        dev: Device,
        target: u8,
        lun: u16,
        slots: usize,
        data_bytes: u64,
    ) -> Result<Self, FrontendError> {
        let lun = scsi::lun_field(target, lun)?;
        let size = dev.queues.first().map_or(0, |q| q.ring.size());
        if slots == 0 || slots.saturating_mul(usize::from(DESCS)) > usize::from(size) {
            return Err(FrontendError::Config(format!(
                "{slots} slots per queue need {} descriptors; the queues have {size}",
                slots.saturating_mul(usize::from(DESCS))
            )));
        }
        let (stride, base, need) = Self::memory_for(dev.queues.len(), slots, data_bytes)
            .ok_or_else(|| FrontendError::Config("buffer area too large".into()))?;
        if need > dev.buffer_bytes {
            return Err(FrontendError::Config(format!(
                "{need} bytes of buffers needed, {} available",
                dev.buffer_bytes
            )));
        }
        Ok(Driver {
            data_base: dev.buffers + base,
            dev,
            lun,
            next_tag: 1,
            slots,
            data_stride: stride,
        })
    }

    /// Data stride, offset of the data area, and bytes needed for `queues` ×
    /// `slots` slots of `data_bytes`: headers first, then page-aligned data.
    pub fn memory_for(queues: usize, slots: usize, data_bytes: u64) -> Option<(u64, u64, u64)> {
        let n = u64::try_from(queues.checked_mul(slots)?).ok()?;
        let stride = data_bytes.max(1).checked_add(PAGE - 1)? & !(PAGE - 1);
        let hdrs = n.checked_mul(HDR_BLOCK)?.checked_add(PAGE - 1)? & !(PAGE - 1);
        Some((stride, hdrs, hdrs.checked_add(n.checked_mul(stride)?)?))
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn index(&self, q: usize, s: usize) -> u64 {
        (q * self.slots + s) as u64
    }

    fn hdr_addr(&self, q: usize, s: usize) -> u64 {
        self.dev.buffers + self.index(q, s) * HDR_BLOCK
    }

    fn data_addr(&self, q: usize, s: usize) -> u64 {
        self.data_base + self.index(q, s) * self.data_stride
    }

    fn mem_err(e: impl std::fmt::Display) -> FrontendError {
        FrontendError::Memory(e.to_string())
    }

    /// Writes slot `s` of queue `q`'s chain: header, then data-out for a write;
    /// response, then data-in for a read; no data descriptor when `data_len` is 0.
    fn write_chain(
        &self,
        q: usize,
        s: usize,
        write: bool,
        data_len: u32,
    ) -> Result<(), FrontendError> {
        let head =
            u16::try_from(s).map_err(|_| FrontendError::Config("slot index".into()))? * DESCS;
        let hdr = self.hdr_addr(q, s);
        let resp = hdr + RESP_OFF;
        let data = self.data_addr(q, s);
        let req = Descriptor {
            addr: hdr,
            len: CMD_REQ_LEN as u32,
            flags: DESC_F_NEXT,
            next: head + 1,
        };
        let resp_d = |last: bool| Descriptor {
            addr: resp,
            len: CMD_RESP_LEN as u32,
            flags: DESC_F_WRITE | if last { 0 } else { DESC_F_NEXT },
            next: if last { 0 } else { head + 2 },
        };
        let ring = &self.dev.queues[q].ring;
        let mem = &self.dev.mem;
        if self.dev.kind == DeviceKind::Blk {
            // Header, data (device-writable for a read), status; the status is
            // written last by the device, so it goes last in the chain.
            let status = Descriptor {
                addr: resp,
                len: blk::STATUS_LEN as u32,
                flags: DESC_F_WRITE,
                next: 0,
            };
            let hdr_d = |next: u16| Descriptor {
                addr: hdr,
                len: blk::REQ_LEN as u32,
                flags: DESC_F_NEXT,
                next,
            };
            if data_len == 0 {
                ring.write_desc(mem, head, &hdr_d(head + 1))?;
                ring.write_desc(mem, head + 1, &status)?;
            } else {
                ring.write_desc(mem, head, &hdr_d(head + 1))?;
                ring.write_desc(
                    mem,
                    head + 1,
                    &Descriptor {
                        addr: data,
                        len: data_len,
                        flags: DESC_F_NEXT | if write { 0 } else { DESC_F_WRITE },
                        next: head + 2,
                    },
                )?;
                ring.write_desc(mem, head + 2, &status)?;
            }
            return Ok(());
        }
        ring.write_desc(mem, head, &req)?;
        if data_len == 0 {
            ring.write_desc(mem, head + 1, &resp_d(true))?;
        } else if write {
            ring.write_desc(
                mem,
                head + 1,
                &Descriptor {
                    addr: data,
                    len: data_len,
                    flags: DESC_F_NEXT,
                    next: head + 2,
                },
            )?;
            ring.write_desc(mem, head + 2, &resp_d(true))?;
        } else {
            ring.write_desc(mem, head + 1, &resp_d(false))?;
            ring.write_desc(
                mem,
                head + 2,
                &Descriptor {
                    addr: data,
                    len: data_len,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            )?;
        }
        Ok(())
    }

    /// Writes slot `s`'s request header with a fresh tag.
    fn write_header(&mut self, q: usize, s: usize, cdb: &[u8]) -> Result<(), FrontendError> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let b = scsi::encode_cmd_req(self.lun, tag, cdb)?;
        self.dev
            .mem
            .write_slice(&b, GuestAddress(self.hdr_addr(q, s)))
            .map_err(Self::mem_err)
    }

    /// Writes slot `s`'s virtio-blk request header and sets its status byte to a
    /// value no device sends, so that a status the device never wrote is caught.
    fn write_blk_header(
        &mut self,
        q: usize,
        s: usize,
        hdr: &[u8; blk::REQ_LEN],
    ) -> Result<(), FrontendError> {
        let at = self.hdr_addr(q, s);
        self.dev
            .mem
            .write_slice(hdr, GuestAddress(at))
            .map_err(Self::mem_err)?;
        self.dev
            .mem
            .write_slice(&[STATUS_UNSET], GuestAddress(at + RESP_OFF))
            .map_err(Self::mem_err)
    }

    fn read_blk_status(&self, q: usize, s: usize) -> Result<blk::Status, FrontendError> {
        let mut b = [0u8; 1];
        self.dev
            .mem
            .read_slice(&mut b, GuestAddress(self.hdr_addr(q, s) + RESP_OFF))
            .map_err(Self::mem_err)?;
        Ok(blk::Status::decode(b[0]))
    }

    /// Whether slot `s`'s command completed as asked, for either device.
    fn outcome(&self, q: usize, s: usize) -> Result<Outcome, FrontendError> {
        match self.dev.kind {
            DeviceKind::Blk => {
                let st = self.read_blk_status(q, s)?;
                Ok((!st.is_ok()).then(|| format!("status {st}")))
            }
            DeviceKind::Scsi => {
                let r = self.read_response(q, s)?;
                Ok((!(r.is_good() && r.resid == 0)).then(|| describe(Some(&r))))
            }
        }
    }

    fn read_response(&self, q: usize, s: usize) -> Result<CmdResp, FrontendError> {
        let at = GuestAddress(self.hdr_addr(q, s) + RESP_OFF);
        let mut fixed = [0u8; scsi::RESP_FIXED_LEN];
        self.dev
            .mem
            .read_slice(&mut fixed, at)
            .map_err(Self::mem_err)?;
        let r = CmdResp::decode(&fixed)?;
        if r.is_good() {
            return Ok(r);
        }
        // Not GOOD: read the sense bytes too.
        let mut all = [0u8; CMD_RESP_LEN];
        self.dev
            .mem
            .read_slice(&mut all, at)
            .map_err(Self::mem_err)?;
        Ok(CmdResp::decode(&all)?)
    }

    fn kick(&self, q: usize) -> Result<(), FrontendError> {
        self.dev.queues[q]
            .kick
            .write(1)
            .map_err(|source| FrontendError::Io {
                what: "kick",
                source,
            })
    }

    /// Sleeps until a call eventfd of a request queue fires or `timeout` passes;
    /// clears the ones that fired.
    fn wait_calls(&self, timeout: Duration) -> Result<(), FrontendError> {
        let mut fds: Vec<libc::pollfd> = self
            .dev
            .queues
            .iter()
            .map(|q| libc::pollfd {
                fd: q.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a valid array of `n` pollfds that outlives the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(FrontendError::Io {
                what: "poll on the call eventfds",
                source: e,
            });
        }
        for (pfd, q) in fds.iter().zip(&self.dev.queues) {
            if pfd.revents & libc::POLLIN != 0 {
                // Non-blocking; a zero count (already read) is not an error here.
                let _ = q.call.read();
            }
        }
        Ok(())
    }

    /// One SCSI command on request queue 0, slot 0, waited for (at most 10 s).
    /// Returns the response and the data-in bytes.
    pub fn command(
        &mut self,
        cdb: &[u8],
        data_in: u32,
    ) -> Result<(CmdResp, Vec<u8>), FrontendError> {
        if self.dev.kind != DeviceKind::Scsi {
            return Err(FrontendError::Config(
                "a SCSI command to a blk device".into(),
            ));
        }
        self.write_chain(0, 0, false, data_in)?;
        self.write_header(0, 0, cdb)?;
        self.submit_and_wait()?;
        let r = self.read_response(0, 0)?;
        Ok((r, self.slot0_data(data_in)?))
    }

    /// One virtio-blk request on request queue 0, slot 0, waited for (at most
    /// 10 s): `hdr`, then the data of `data`. Returns the status and the data
    /// read (empty unless `data` is [`BlkData::In`]).
    pub fn blk_request(
        &mut self,
        hdr: &[u8; blk::REQ_LEN],
        data: BlkData<'_>,
    ) -> Result<(blk::Status, Vec<u8>), FrontendError> {
        if self.dev.kind != DeviceKind::Blk {
            return Err(FrontendError::Config(
                "a blk request to a SCSI device".into(),
            ));
        }
        let (write, data_len) = match data {
            BlkData::None => (false, 0),
            BlkData::In(n) => (false, n),
            BlkData::Out(b) => (
                true,
                u32::try_from(b.len())
                    .map_err(|_| FrontendError::Config("data too large".into()))?,
            ),
        };
        if u64::from(data_len) > self.data_stride {
            return Err(FrontendError::Config(format!(
                "{data_len} bytes; the slots hold {}",
                self.data_stride
            )));
        }
        if let BlkData::Out(b) = data {
            self.dev
                .mem
                .write_slice(b, GuestAddress(self.data_addr(0, 0)))
                .map_err(Self::mem_err)?;
        }
        self.write_chain(0, 0, write, data_len)?;
        self.write_blk_header(0, 0, hdr)?;
        self.submit_and_wait()?;
        let st = self.read_blk_status(0, 0)?;
        let data = if write {
            Vec::new()
        } else {
            self.slot0_data(data_len)?
        };
        Ok((st, data))
    }

    /// FLUSH on a blk device, if VIRTIO_BLK_F_FLUSH was negotiated (else there is
    /// no volatile cache to flush). Returns whether one was sent.
    pub fn flush(&mut self) -> Result<bool, FrontendError> {
        if self.dev.kind != DeviceKind::Blk || self.dev.features & blk::F_FLUSH == 0 {
            return Ok(false);
        }
        let (st, _) = self.blk_request(&blk::encode_req(blk::T_FLUSH, 0), BlkData::None)?;
        if !st.is_ok() {
            return Err(FrontendError::Setup {
                what: "FLUSH",
                detail: format!("status {st}"),
            });
        }
        Ok(true)
    }

    fn slot0_data(&self, len: u32) -> Result<Vec<u8>, FrontendError> {
        let mut data = vec![0u8; len as usize];
        self.dev
            .mem
            .read_slice(&mut data, GuestAddress(self.data_addr(0, 0)))
            .map_err(Self::mem_err)?;
        Ok(data)
    }

    /// Publishes the chain in slot 0 of queue 0 and waits for it to come back.
    fn submit_and_wait(&mut self) -> Result<(), FrontendError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mem = &self.dev.mem;
        if self.dev.queues[0].ring.publish(mem, &[0])? {
            self.kick(0)?;
        }
        loop {
            let got = self.dev.queues[0].ring.pop_used(&self.dev.mem)?;
            if let Some(u) = got {
                if u.id != 0 {
                    return Err(FrontendError::Backend(format!(
                        "used element names descriptor {} for a chain at 0",
                        u.id
                    )));
                }
                return Ok(());
            }
            if self.dev.queues[0].ring.arm(&self.dev.mem)? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FrontendError::Stalled {
                    secs: 10,
                    outstanding: 1,
                });
            }
            self.wait_calls(deadline - now)?;
        }
    }

    /// What a driver does first. SCSI: TEST UNIT READY until the unit attentions
    /// (power on, nexus loss) are reported, then READ CAPACITY. Blk: the capacity
    /// and block size from the configuration space, then one read of block 0 to
    /// see the queue work. Returns the device's blocks and block length.
    pub fn prepare(&mut self) -> Result<(u64, u32), FrontendError> {
        if self.dev.kind == DeviceKind::Blk {
            return self.prepare_blk();
        }
        let mut last = None;
        let mut ready = false;
        for _ in 0..8 {
            let (r, _) = self.command(&scsi::TEST_UNIT_READY, 0)?;
            if r.is_good() {
                ready = true;
                break;
            }
            last = Some(r);
        }
        if !ready {
            return Err(FrontendError::Setup {
                what: "TEST UNIT READY",
                detail: describe(last.as_ref()),
            });
        }
        let (r, d) = self.command(&scsi::READ_CAPACITY_10, 8)?;
        if !r.is_good() {
            return Err(FrontendError::Setup {
                what: "READ CAPACITY(10)",
                detail: describe(Some(&r)),
            });
        }
        if let Some(c) = scsi::parse_read_capacity10(&d) {
            return Ok(c);
        }
        let (r, d) = self.command(&scsi::READ_CAPACITY_16, scsi::READ_CAPACITY_16_LEN)?;
        if !r.is_good() {
            return Err(FrontendError::Setup {
                what: "READ CAPACITY(16)",
                detail: describe(Some(&r)),
            });
        }
        scsi::parse_read_capacity16(&d).ok_or(FrontendError::Setup {
            what: "READ CAPACITY(16)",
            detail: "short data".into(),
        })
    }

    fn prepare_blk(&mut self) -> Result<(u64, u32), FrontendError> {
        let c = self.dev.blk_config.clone().ok_or(FrontendError::Setup {
            what: "GET_CONFIG",
            detail: "no configuration space".into(),
        })?;
        let block_len = c.block_len(self.dev.features)?;
        let blocks = c.blocks(block_len);
        if blocks == 0 {
            return Err(FrontendError::Setup {
                what: "GET_CONFIG",
                detail: format!("capacity {} sectors: not one block", c.capacity),
            });
        }
        let (st, _) = self.blk_request(
            &blk::rw_req(false, 0, 1, block_len)?,
            BlkData::In(block_len),
        )?;
        if !st.is_ok() {
            return Err(FrontendError::Setup {
                what: "reading block 0",
                detail: format!("status {st}"),
            });
        }
        Ok((blocks, block_len))
    }

    /// Runs `job` against a device of `blocks` blocks of `block_len` bytes.
    pub fn run(&mut self, job: &Job, blocks: u64, block_len: u32) -> Result<Report, FrontendError> {
        if block_len == 0 || job.block_bytes == 0 || !job.block_bytes.is_multiple_of(block_len) {
            return Err(FrontendError::Config(format!(
                "{} bytes per command is not a multiple of the {block_len}-byte block",
                job.block_bytes
            )));
        }
        let per_io = job.block_bytes / block_len;
        if job.write && self.dev.kind == DeviceKind::Blk && self.dev.features & blk::F_RO != 0 {
            return Err(FrontendError::Config(
                "writes to a read-only device (VIRTIO_BLK_F_RO)".into(),
            ));
        }
        let span_blocks = match job.span_bytes {
            Some(s) => (s / u64::from(block_len)).min(blocks),
            None => blocks,
        };
        // Commands start on multiples of their own size.
        let positions = span_blocks / u64::from(per_io);
        if positions == 0 {
            return Err(FrontendError::Config(format!(
                "the LUN ({blocks} blocks of {block_len}) is smaller than one command"
            )));
        }
        if u64::from(job.block_bytes) > self.data_stride {
            return Err(FrontendError::Config(format!(
                "{} bytes per command; the slots hold {}",
                job.block_bytes, self.data_stride
            )));
        }
        let depths = split_depth(job.depth, self.dev.queues.len());
        if depths.iter().any(|&d| d > self.slots) {
            return Err(FrontendError::Config(format!(
                "depth {} over {} queues needs more than the {} slots per queue",
                job.depth,
                self.dev.queues.len(),
                self.slots
            )));
        }
        // Data to write: not zeroes, so that a backend cannot take a shortcut.
        let fill: Vec<u8> = (0..job.block_bytes)
            .map(|i| (i % 251) as u8 ^ 0xa5)
            .collect();
        for (q, &d) in depths.iter().enumerate() {
            for s in 0..d {
                self.write_chain(q, s, job.write, job.block_bytes)?;
                if job.write {
                    self.dev
                        .mem
                        .write_slice(&fill, GuestAddress(self.data_addr(q, s)))
                        .map_err(Self::mem_err)?;
                }
            }
        }

        let mut rng = Rng::new(job.seed);
        let mut cursor = 0u64;
        let mut next_lba = |rng: &mut Rng| -> u64 {
            let pos = match job.pattern {
                Pattern::Random => rng.below(positions),
                Pattern::Sequential => {
                    let p = cursor;
                    cursor = (cursor + 1) % positions;
                    p
                }
            };
            pos * u64::from(per_io)
        };

        let nq = self.dev.queues.len();
        let mut slots: Vec<Vec<Slot>> = depths
            .iter()
            .map(|&d| {
                vec![
                    Slot {
                        busy: false,
                        started: Instant::now(),
                    };
                    d
                ]
            })
            .collect();
        let mut report = Report {
            ios: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new(),
            errors: 0,
            error_details: Vec::new(),
            kicks: 0,
            sleeps: 0,
            cpu: Duration::ZERO,
        };
        let mut pending: Vec<Vec<u16>> = vec![Vec::new(); nq];
        let mut issued = 0u64;
        let mut outstanding = 0usize;
        let cpu0 = cpu_time();
        let start = Instant::now();
        let deadline = start + job.duration;
        let mut last_progress = start;

        // Fills slot (q, s) with the next command; false when the run is over.
        let mut issue = |this: &mut Self,
                         q: usize,
                         s: usize,
                         now: Instant,
                         issued: &mut u64,
                         slot: &mut Slot,
                         pending: &mut Vec<u16>,
                         rng: &mut Rng|
         -> Result<bool, FrontendError> {
            if *issued >= job.max_ios || now >= deadline {
                return Ok(false);
            }
            let lba = next_lba(rng);
            match this.dev.kind {
                DeviceKind::Scsi => {
                    let (cdb, n) = scsi::rw_cdb(job.write, lba, per_io, job.force16)?;
                    this.write_header(q, s, &cdb[..n])?;
                }
                DeviceKind::Blk => {
                    let hdr = blk::rw_req(job.write, lba, per_io, block_len)?;
                    this.write_blk_header(q, s, &hdr)?;
                }
            }
            *issued += 1;
            slot.busy = true;
            slot.started = Instant::now();
            pending.push(u16::try_from(s).unwrap_or(0) * DESCS);
            Ok(true)
        };

        for (q, (qslots, qpending)) in slots.iter_mut().zip(pending.iter_mut()).enumerate() {
            for (s, slot) in qslots.iter_mut().enumerate() {
                if issue(self, q, s, start, &mut issued, slot, qpending, &mut rng)? {
                    outstanding += 1;
                }
            }
        }
        loop {
            // Publish what was filled, kick where the device asks.
            for (q, p) in pending.iter_mut().enumerate() {
                if p.is_empty() {
                    continue;
                }
                if self.dev.queues[q].ring.publish(&self.dev.mem, p)? {
                    self.kick(q)?;
                    report.kicks += 1;
                }
                p.clear();
            }
            if outstanding == 0 {
                break;
            }
            // Reap every queue.
            let mut got = 0usize;
            for q in 0..nq {
                while let Some(u) = self.dev.queues[q].ring.pop_used(&self.dev.mem)? {
                    let now = Instant::now();
                    got += 1;
                    let s = usize::from(u.id / DESCS);
                    let valid = u.id % DESCS == 0 && slots[q].get(s).is_some_and(|x| x.busy);
                    if !valid {
                        return Err(FrontendError::Backend(format!(
                            "queue {q}: used element for descriptor {} that heads no outstanding chain",
                            u.id
                        )));
                    }
                    outstanding -= 1;
                    slots[q][s].busy = false;
                    let bad = self.outcome(q, s)?;
                    if bad.is_none() {
                        report.ios += 1;
                        report.bytes += u64::from(job.block_bytes);
                        let ns = now.duration_since(slots[q][s].started).as_nanos();
                        report.latency.record(u64::try_from(ns).unwrap_or(u64::MAX));
                    } else if let Some(why) = bad {
                        report.errors += 1;
                        if report.error_details.len() < MAX_ERROR_DETAILS {
                            report
                                .error_details
                                .push(format!("queue {q} slot {s}: {why}"));
                        }
                    }
                    if issue(
                        self,
                        q,
                        s,
                        now,
                        &mut issued,
                        &mut slots[q][s],
                        &mut pending[q],
                        &mut rng,
                    )? {
                        outstanding += 1;
                    }
                }
            }
            let now = Instant::now();
            if got > 0 {
                last_progress = now;
                continue;
            }
            if pending.iter().any(|p| !p.is_empty()) {
                continue;
            }
            // Nothing came back: ask for a call on every queue, look once more, sleep.
            let mut waiting = false;
            for q in &self.dev.queues {
                waiting |= q.ring.arm(&self.dev.mem)?;
            }
            if waiting {
                continue;
            }
            if now.duration_since(last_progress) >= STALL {
                return Err(FrontendError::Stalled {
                    secs: STALL.as_secs(),
                    outstanding,
                });
            }
            report.sleeps += 1;
            self.wait_calls(Duration::from_secs(1))?;
        }
        report.elapsed = start.elapsed();
        report.cpu = cpu_time().saturating_sub(cpu0);
        Ok(report)
    }
}

/// A response in a line: virtio response, status, sense key/ASC/ASCQ, residual.
pub fn describe(r: Option<&CmdResp>) -> String {
    let Some(r) = r else {
        return "no response".into();
    };
    let mut s = format!(
        "response {} status {:#04x} resid {}",
        r.response, r.status, r.resid
    );
    if let Some((k, asc, ascq)) = r.sense_key() {
        s.push_str(&format!(" sense {k:x}/{asc:02x}/{ascq:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_shared_out_evenly() {
        assert_eq!(split_depth(32, 1), vec![32]);
        assert_eq!(split_depth(32, 2), vec![16, 16]);
        assert_eq!(split_depth(5, 2), vec![3, 2]);
        assert_eq!(split_depth(1, 2), vec![1, 0]);
        assert!(split_depth(4, 0).is_empty());
    }

    #[test]
    fn random_positions_stay_in_range_and_spread() {
        let mut r = Rng::new(42);
        let mut seen = [0u32; 16];
        for _ in 0..16_000 {
            let v = r.below(16);
            assert!(v < 16);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(Rng::new(0).below(1), 0);
    }

    #[test]
    fn memory_layout_is_page_aligned_and_checked() {
        let (stride, base, need) = Driver::memory_for(2, 32, 4096).unwrap();
        assert_eq!((stride, base), (4096, 16384));
        assert_eq!(need, 16384 + 64 * 4096);
        let (stride, _, _) = Driver::memory_for(1, 1, 512).unwrap();
        assert_eq!(stride, 4096);
        assert_eq!(Driver::memory_for(usize::MAX, 2, 4096), None);
        assert_eq!(Driver::memory_for(1, 1, u64::MAX), None);
    }
}
