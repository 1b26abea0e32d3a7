//! The thread-pool engine: a small fixed set of threads per backend that make the
//! system calls of [`crate::op`] synchronously (`preadv`, `pwritev2`, `fdatasync`,
//! `fallocate`, block ioctls). A channel hands a job to the pool and returns at once;
//! the worker that finishes it pushes the completion onto that channel's [`Sink`] and
//! signals the channel's eventfd, so the owning thread reaps it from its epoll loop.
//! The io_uring engine uses the same pool for what io_uring cannot do (block ioctls,
//! or opcodes the kernel lacks).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::op::{run_to_end, OpState, Start, Target};
use crate::{BackendError, Completion, IoChannel, IoError, IoErrorKind, IoOp};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where one channel's finished jobs land.
pub(crate) struct Sink {
    state: Mutex<SinkState>,
    idle: Condvar,
    notify: EventFd,
}

#[derive(Default)]
struct SinkState {
    done: Vec<Completion>,
    /// Jobs of this sink being run by a worker right now.
    running: usize,
}

impl Sink {
    pub fn new(notify: EventFd) -> Arc<Self> {
        Arc::new(Sink {
            state: Mutex::new(SinkState::default()),
            idle: Condvar::new(),
            notify,
        })
    }

    /// Moves finished completions into `out`; returns how many.
    pub fn drain(&self, out: &mut Vec<Completion>) -> usize {
        let mut st = lock(&self.state);
        let n = st.done.len();
        out.append(&mut st.done);
        n
    }

    fn finish(&self, c: Completion) {
        let mut st = lock(&self.state);
        st.done.push(c);
        st.running = st.running.saturating_sub(1);
        if st.running == 0 {
            self.idle.notify_all();
        }
        drop(st);
        // Signal after the completion is visible. A failed write (counter overflow)
        // means the counter is already non-zero: the thread will wake anyway.
        let _ = self.notify.write(1);
    }

    /// Blocks until no job of this sink is running.
    fn wait_idle(&self) {
        let mut st = lock(&self.state);
        while st.running > 0 {
            st = self.idle.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct Job {
    target: Arc<Target>,
    state: OpState,
    sink: Arc<Sink>,
}

struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

struct PoolShared {
    queue: Mutex<Queue>,
    work: Condvar,
}

/// A fixed set of worker threads shared by the channels of one backend. Threads stop
/// when the last handle goes away.
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(threads: usize, name: &str) -> Result<Arc<Self>, BackendError> {
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                shutdown: false,
            }),
            work: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let shared = pool.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-io{i}"))
                .spawn(move || worker(&shared))
                .map_err(|e| BackendError::Io {
                    op: "spawn I/O thread",
                    offset: 0,
                    source: e,
                })?;
            // On error above, `pool` drops here and stops the threads already started.
            pool.threads.push(handle);
        }
        Ok(Arc::new(pool))
    }

    fn push(&self, job: Job) {
        let mut q = lock(&self.shared.queue);
        q.jobs.push_back(job);
        drop(q);
        self.shared.work.notify_one();
    }

    /// Takes back a queued (not yet started) job of `sink`.
    fn take(&self, sink: &Arc<Sink>, user_data: u64) -> Option<Job> {
        let mut q = lock(&self.shared.queue);
        let i = q
            .jobs
            .iter()
            .position(|j| Arc::ptr_eq(&j.sink, sink) && j.state.user_data == user_data)?;
        q.jobs.remove(i)
    }

    /// Drops every queued job of `sink`; returns how many.
    fn forget(&self, sink: &Arc<Sink>) -> usize {
        let mut q = lock(&self.shared.queue);
        let before = q.jobs.len();
        q.jobs.retain(|j| !Arc::ptr_eq(&j.sink, sink));
        before - q.jobs.len()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    // Counted as running while the queue lock is held, so a channel
                    // that forgets its queued jobs then waits for running ones misses
                    // none.
                    lock(&job.sink.state).running += 1;
                    break job;
                }
                if q.shutdown {
                    return;
                }
                q = shared.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Job {
            target,
            mut state,
            sink,
        } = job;
        let result = run_to_end(target.raw_fd(), &mut state);
        sink.finish(Completion {
            user_data: state.user_data,
            result,
        });
    }
}

/// Lazily started pool of one backend, shared by its channels.
pub(crate) struct PoolCell {
    threads: usize,
    name: String,
    pool: Mutex<Option<Arc<Pool>>>,
}

impl PoolCell {
    pub fn new(threads: usize, name: &str) -> Self {
        PoolCell {
            threads,
            name: name.to_string(),
            pool: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Result<Arc<Pool>, BackendError> {
        let mut p = lock(&self.pool);
        if let Some(pool) = p.as_ref() {
            return Ok(pool.clone());
        }
        let pool = Pool::new(self.threads, &self.name)?;
        *p = Some(pool.clone());
        Ok(pool)
    }

    /// Whether the pool's threads have been started.
    #[cfg(test)]
    pub fn started(&self) -> bool {
        lock(&self.pool).is_some()
    }
}

/// One channel's connection to a pool: its sink and what it has handed over.
pub(crate) struct Lane {
    pool: Arc<Pool>,
    sink: Arc<Sink>,
}

impl Lane {
    pub fn new(pool: Arc<Pool>, notify: EventFd) -> Self {
        Lane {
            pool,
            sink: Sink::new(notify),
        }
    }

    /// Hands a prepared operation to the pool.
    pub fn submit(&self, target: &Arc<Target>, state: OpState) {
        self.pool.push(Job {
            target: target.clone(),
            state,
            sink: self.sink.clone(),
        });
    }

    /// Takes back a job that no worker has started; it is then complete as canceled.
    pub fn cancel(&self, user_data: u64) -> Option<Completion> {
        let job = self.pool.take(&self.sink, user_data)?;
        let err = IoError::new(IoErrorKind::Canceled, libc::ECANCELED, job.state.offset());
        Some(Completion {
            user_data,
            result: Err(err),
        })
    }

    pub fn drain(&self, out: &mut Vec<Completion>) -> usize {
        self.sink.drain(out)
    }

    pub fn notify(&self) {
        let _ = self.sink.notify.write(1);
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Jobs not started are dropped; jobs running still use the submitter's memory,
        // which stays valid only until the channel is dropped: wait for them.
        self.pool.forget(&self.sink);
        self.sink.wait_idle();
    }
}

/// A channel of the thread-pool engine.
pub(crate) struct ThreadChannel {
    target: Arc<Target>,
    lane: Lane,
    ready: Vec<Completion>,
    in_flight: usize,
}

impl ThreadChannel {
    pub fn new(
        target: Arc<Target>,
        pool: Arc<Pool>,
        notify: &EventFd,
    ) -> Result<Self, BackendError> {
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        Ok(ThreadChannel {
            target,
            lane: Lane::new(pool, notify),
            ready: Vec::new(),
            in_flight: 0,
        })
    }
}

impl IoChannel for ThreadChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        match OpState::start(&self.target, op, iovecs, user_data) {
            Start::Done(result) => {
                self.ready.push(Completion { user_data, result });
                self.lane.notify();
            }
            Start::Run(state) => self.lane.submit(&self.target, state),
        }
        self.in_flight += 1;
        Ok(())
    }

    fn cancel(&mut self, user_data: u64) -> bool {
        match self.lane.cancel(user_data) {
            Some(c) => {
                self.ready.push(c);
                self.lane.notify();
                true
            }
            None => false,
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let n = self.ready.len();
        out.append(&mut self.ready);
        let m = self.lane.drain(out);
        self.in_flight = self.in_flight.saturating_sub(n + m);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::tests::wait_for;
    use crate::op::TargetKind;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn queued_job_cancel_wins_and_never_reaches_the_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(32 << 20).unwrap();
        let check = f.try_clone().unwrap();
        let t = Arc::new(Target {
            nowait_reads: false,
            fd: OwnedFd::from(f),
            kind: TargetKind::File,
            read_only: false,
            size: AtomicU64::new(32 << 20),
        });
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // One thread: the big writes keep it busy while the small one waits in the queue.
        let mut ch = ThreadChannel::new(t, Pool::new(1, "t").unwrap(), &e).unwrap();
        let mut big = vec![1u8; 16 << 20];
        let mut small = vec![2u8; 4096];
        let big_iov = [libc::iovec {
            iov_base: big.as_mut_ptr().cast(),
            iov_len: big.len(),
        }];
        let small_iov = [libc::iovec {
            iov_base: small.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        // SAFETY: both buffers outlive the waits below (the big writes only read
        // theirs, so sharing it between them is harmless).
        unsafe {
            for ud in 1..=4 {
                ch.submit(
                    IoOp::Write {
                        offset: 0,
                        fua: true,
                    },
                    &big_iov,
                    ud,
                )
                .unwrap();
            }
            ch.submit(
                IoOp::Write {
                    offset: 20 << 20,
                    fua: false,
                },
                &small_iov,
                10,
            )
            .unwrap();
        }
        // Four 16 MiB synchronous writes stand between the worker and the small one.
        assert!(ch.cancel(10));
        assert!(!ch.cancel(99));
        let c = wait_for(&mut ch, &e, 10);
        assert_eq!(c.result.unwrap_err().kind, IoErrorKind::Canceled);
        for ud in 1..=4 {
            let c = wait_for(&mut ch, &e, ud);
            assert_eq!(c.result, Ok(16 << 20));
        }
        assert_eq!(ch.in_flight(), 0);
        let mut got = [0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&check, &mut got, 20 << 20).unwrap();
        assert!(got.iter().all(|&x| x == 0));
    }
}
