//! CDB builders for the SBC tests.

pub fn rw6(op: u8, lba: u32, blocks: u8) -> Vec<u8> {
    let l = lba.to_be_bytes();
    vec![op, l[1] & 0x1f, l[2], l[3], blocks, 0]
}

pub fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    vec![op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

pub fn rw12(op: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn watomic(lba: u64, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9c;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

/// UNMAP parameter data with these (lba, blocks) descriptors.
pub fn unmap_params(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for (lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let bd = (p.len() - 8) as u16;
    p[0..2].copy_from_slice(&(bd + 6).to_be_bytes());
    p[2..4].copy_from_slice(&bd.to_be_bytes());
    p
}

pub fn unmap_cdb(len: u16) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

/// Submits every command at once (so the task set and write ranges interleave
/// them) and collects the responses and buffers, in submission order.
pub fn run_batch(
    f: &mut crate::testutil::Fixture,
    cmds: Vec<(Vec<u8>, crate::cmd::DataDir, Vec<u8>)>,
) -> Vec<(crate::cmd::CmdResponse, Vec<u8>)> {
    use crate::worker::Event;
    let mut tokens = Vec::new();
    let nexus = f.nexus.clone();
    for (cdb, dir, data) in cmds {
        let c = f.cmd(&cdb, dir, data);
        tokens.push(c.token);
        f.worker.submit(&nexus, c);
    }
    let mut done = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut events = Vec::new();
    while done.len() < tokens.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "batch did not complete"
        );
        f.worker.wait(50, &mut events);
        for e in events.drain(..) {
            if let Event::Cmd(c) = e {
                let mut buf = vec![0u8; c.data.len()];
                c.data.read_at(0, &mut buf);
                done.insert(c.token, (c.response.expect("not aborted"), buf));
            }
        }
    }
    tokens
        .iter()
        .map(|t| done.remove(t).expect("token"))
        .collect()
}

/// A RAM backend whose completions arrive one reap late, so that commands really
/// overlap in the task set (the plain RAM backend completes inside `submit`). The
/// operation itself takes effect when submitted.
pub struct DeferredRam(pub backends::ram::RamBackend);

struct DeferredChannel {
    inner: Box<dyn backends::IoChannel>,
    held: Vec<backends::Completion>,
    notify: vmm_sys_util::eventfd::EventFd,
}

impl backends::IoChannel for DeferredChannel {
    unsafe fn submit(
        &mut self,
        op: backends::IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), backends::BackendError> {
        // SAFETY: forwarded unchanged; our caller upholds `submit`'s contract.
        unsafe { self.inner.submit(op, iovecs, user_data) }
    }
    fn cancel(&mut self, _user_data: u64) -> bool {
        false
    }
    fn reap(&mut self, out: &mut Vec<backends::Completion>) {
        let mut fresh = Vec::new();
        self.inner.reap(&mut fresh);
        out.append(&mut self.held);
        self.held = fresh;
        if !self.held.is_empty() {
            let _ = self.notify.write(1);
        }
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.inner.in_flight()
    }
}

impl backends::Backend for DeferredRam {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn capabilities(&self) -> backends::Capabilities {
        self.0.capabilities()
    }
    fn open_channel(
        &self,
        notify: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
        let n = notify.try_clone().map_err(|e| backends::BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        Ok(Box::new(DeferredChannel {
            inner: self.0.open_channel(notify)?,
            held: Vec::new(),
            notify: n,
        }))
    }
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<backends::Extent, backends::BackendError> {
        self.0.block_status(offset, len)
    }
    fn resize(&self, s: u64) -> Result<(), backends::BackendError> {
        self.0.resize(s)
    }
    fn describe(&self) -> String {
        "deferred-ram".into()
    }
}

/// A fixture on a deferred RAM LUN of `size` bytes.
pub fn deferred_fixture(size: u64) -> crate::testutil::Fixture {
    let cfg = crate::lun::LunConfig::new("deferred", crate::testutil::uuid_for("deferred"));
    crate::testutil::Fixture::with(
        cfg,
        std::sync::Arc::new(DeferredRam(backends::ram::RamBackend::new(size))),
    )
}
