//! The completion queue of a backend whose operations finish inside `submit` (RAM,
//! null): results wait here until the owner reaps them, and each one signals the
//! thread's eventfd. (One signal per batch would save a syscall per operation; the
//! owners' wake-up contract has to be settled first.)

use vmm_sys_util::eventfd::EventFd;

use crate::{BackendError, Completion, IoError};

pub(crate) struct InlineQueue {
    done: Vec<Completion>,
    notify: EventFd,
}

impl InlineQueue {
    /// A queue that signals a clone of the thread's `notify`.
    pub fn new(notify: &EventFd) -> Result<Self, BackendError> {
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        Ok(InlineQueue {
            done: Vec::new(),
            notify,
        })
    }

    /// Records a finished operation.
    pub fn complete(&mut self, user_data: u64, result: Result<usize, IoError>) {
        self.done.push(Completion { user_data, result });
        let _ = self.notify.write(1);
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    pub fn len(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn each_completion_signals_and_reap_takes_all() {
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut q = InlineQueue::new(&efd).unwrap();
        q.complete(1, Ok(512));
        q.complete(2, Ok(512));
        assert_eq!(efd.read().unwrap(), 2, "one signal per completion");
        let mut out = Vec::new();
        q.reap(&mut out);
        assert_eq!(
            out.iter().map(|c| c.user_data).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(q.len(), 0);
        q.complete(3, Ok(0));
        assert_eq!(efd.read().unwrap(), 1);
    }
}
