//! The completion queue of a backend whose operations finish inside `submit` (RAM,
//! null): results wait here until the owner reaps them. Nothing is signalled: the
//! engine's worker contract has its owner poll after each batch of submissions,
//! and `Worker::poll` reaps every channel round after round until nothing moves, so
//! an operation that completes inside `submit` is always reaped without a wake-up.
//! (One eventfd write per batch, and the read that consumes it, were two of the
//! iSCSI target's six syscalls per batch of 4K commands.)

use crate::{Completion, IoError};

#[derive(Default)]
pub(crate) struct InlineQueue {
    done: Vec<Completion>,
}

impl InlineQueue {
    pub fn new() -> Self {
        InlineQueue::default()
    }

    /// Records a finished operation.
    pub fn complete(&mut self, user_data: u64, result: Result<usize, IoError>) {
        self.done.push(Completion { user_data, result });
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

    #[test]
    fn reap_takes_all_in_order() {
        let mut q = InlineQueue::new();
        q.complete(1, Ok(512));
        q.complete(2, Ok(512));
        let mut out = Vec::new();
        q.reap(&mut out);
        assert_eq!(
            out.iter().map(|c| c.user_data).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(q.len(), 0);
        q.complete(3, Ok(0));
        q.reap(&mut out);
        assert_eq!(out.len(), 3);
    }
}
