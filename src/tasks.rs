//! [`TaskSet`]: background tasks owned by whoever holds the set. They end
//! when the set is dropped or [`TaskSet::abort_all`] is called; none is
//! detached, so a part that stops takes its tasks with it.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tokio::task::JoinSet;

/// Tasks spawned on behalf of one owner.
#[derive(Default)]
pub struct TaskSet(Mutex<JoinSet<()>>);

impl TaskSet {
    fn set(&self) -> MutexGuard<'_, JoinSet<()>> {
        // A JoinSet is consistent after any panic of a caller.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `task` on the current runtime, owned by this set. Finished
    /// tasks are reaped here, so the set holds only running ones.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set();
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Ends every task of the set (at its next await).
    pub fn abort_all(&self) {
        self.set().abort_all();
    }

    /// Tasks spawned and not yet reaped.
    pub fn len(&self) -> usize {
        self.set().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
