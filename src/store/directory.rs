//! [`NodeDirectory`]: where the nodes of a cluster report themselves, for
//! the admin page. Not on a payment's path: a lost report costs an
//! operator a stale row, never a payment.
//!
//! In Redis everything is in one hash slot (`tidings:{admin}:...`, so it
//! works on a Redis Cluster): a hash of node id → its last report (a JSON
//! document the [`admin`](crate::admin) module writes and reads), and a
//! sorted set of the trackingIds an operator is inspecting, scored by when
//! the inspection lapses. On one node in memory the directory holds just
//! that node.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreError;

/// Where nodes report themselves and learn which trackingIds to count.
#[async_trait]
pub trait NodeDirectory: Send + Sync {
    /// Replaces this node's report.
    async fn report(&self, node_id: &str, report: &str) -> Result<(), StoreError>;
    /// Every node's last report, as `(node id, report)`: stale ones too
    /// (the reader decides by the report's time and may [`forget`](Self::forget) them).
    async fn reports(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Drops the reports of nodes gone quiet.
    async fn forget(&self, node_ids: &[String]) -> Result<(), StoreError>;
    /// Asks every node to count `tracking_id`'s subscribers in its reports
    /// until `until_ms`.
    async fn inspect(&self, tracking_id: &str, until_ms: u64) -> Result<(), StoreError>;
    /// The trackingIds being inspected at `now_ms` (lapsed ones are dropped).
    async fn inspected(&self, now_ms: u64) -> Result<Vec<String>, StoreError>;
}

/// One node, in memory.
#[derive(Default)]
pub struct MemoryDirectory {
    reports: Mutex<HashMap<String, String>>,
    inspecting: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl NodeDirectory for MemoryDirectory {
    async fn report(&self, node_id: &str, report: &str) -> Result<(), StoreError> {
        lock(&self.reports).insert(node_id.to_owned(), report.to_owned());
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(lock(&self.reports)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn forget(&self, node_ids: &[String]) -> Result<(), StoreError> {
        let mut reports = lock(&self.reports);
        for id in node_ids {
            reports.remove(id);
        }
        Ok(())
    }

    async fn inspect(&self, tracking_id: &str, until_ms: u64) -> Result<(), StoreError> {
        lock(&self.inspecting).insert(tracking_id.to_owned(), until_ms);
        Ok(())
    }

    async fn inspected(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut inspecting = lock(&self.inspecting);
        inspecting.retain(|_, until| *until > now_ms);
        Ok(inspecting.keys().cloned().collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most trackingIds inspected at once (each costs every node a lookup per
/// report).
pub const MAX_INSPECTED: usize = 100;

/// The Redis keys of the directory.
pub(super) const NODES_KEY: &str = "tidings:{admin}:nodes";
pub(super) const INSPECT_KEY: &str = "tidings:{admin}:inspect";
