//! [`RedisDirectory`]: the [`NodeDirectory`] on the store's Redis (its
//! command connection), for the admin page.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::Cmd;

use super::{Conn, RedisStore, store_error};
use crate::store::StoreError;
use crate::store::directory::{INSPECT_KEY, MAX_INSPECTED, NODES_KEY, NodeDirectory};

/// The [`NodeDirectory`] on this store's Redis (its command connection).
pub struct RedisDirectory {
    commands: Conn,
}

impl RedisStore {
    /// Where this cluster's nodes report themselves.
    pub fn directory(&self) -> RedisDirectory {
        RedisDirectory {
            commands: self.commands.clone(),
        }
    }
}

impl RedisDirectory {
    async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        cmd.query_async(&mut self.commands.clone())
            .await
            .map_err(store_error)
    }
}

#[async_trait]
impl NodeDirectory for RedisDirectory {
    async fn report(&self, node_id: &str, report: &str) -> Result<(), StoreError> {
        self.run::<()>(redis::cmd("HSET").arg(NODES_KEY).arg(node_id).arg(report))
            .await
    }

    async fn reports(&self) -> Result<Vec<(String, String)>, StoreError> {
        let all: HashMap<String, String> = self.run(redis::cmd("HGETALL").arg(NODES_KEY)).await?;
        Ok(all.into_iter().collect())
    }

    async fn forget(&self, node_ids: &[String]) -> Result<(), StoreError> {
        if node_ids.is_empty() {
            return Ok(());
        }
        self.run::<()>(redis::cmd("HDEL").arg(NODES_KEY).arg(node_ids))
            .await
    }

    async fn inspect(&self, tracking_id: &str, until_ms: u64) -> Result<(), StoreError> {
        self.run::<()>(
            redis::cmd("ZADD")
                .arg(INSPECT_KEY)
                .arg(until_ms)
                .arg(tracking_id),
        )
        .await
    }

    async fn inspected(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        self.run::<()>(
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(INSPECT_KEY)
                .arg("-inf")
                .arg(now_ms),
        )
        .await?;
        self.run(
            redis::cmd("ZRANGE")
                .arg(INSPECT_KEY)
                .arg(0)
                .arg(MAX_INSPECTED as i64 - 1),
        )
        .await
    }
}
