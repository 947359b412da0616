//! [`Registry`]: this node's topics by trackingId, sharded so that
//! subscribes of different trackingIds rarely contend. A topic is in the
//! registry from its first subscriber's arrival until it is retired (its
//! last subscriber left, or its first listen failed).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Subscriber;
use super::topic::Topic;
use crate::telemetry;

/// Independent maps over the trackingId space.
const SHARDS: usize = 64;

type Shard<S> = RwLock<HashMap<String, Arc<Topic<S>>>>;

pub(super) struct Registry<S: Subscriber> {
    shards: Box<[Shard<S>]>,
    hasher: RandomState,
}

impl<S: Subscriber> Registry<S> {
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, tracking_id: &str) -> &Shard<S> {
        &self.shards[(self.hasher.hash_one(tracking_id) as usize) % SHARDS]
    }

    // A shard's map is changed in one step: a poisoned lock is still usable.
    fn read(shard: &Shard<S>) -> RwLockReadGuard<'_, HashMap<String, Arc<Topic<S>>>> {
        shard.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(shard: &Shard<S>) -> RwLockWriteGuard<'_, HashMap<String, Arc<Topic<S>>>> {
        shard.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, tracking_id: &str) -> Option<Arc<Topic<S>>> {
        Self::read(self.shard(tracking_id))
            .get(tracking_id)
            .cloned()
    }

    pub fn get_or_create(&self, tracking_id: &str) -> Arc<Topic<S>> {
        if let Some(topic) = self.get(tracking_id) {
            return topic;
        }
        Self::write(self.shard(tracking_id))
            .entry(tracking_id.to_owned())
            .or_insert_with(|| {
                metrics::gauge!(telemetry::TOPICS).increment(1.0);
                Arc::new(Topic::new(tracking_id))
            })
            .clone()
    }

    /// Takes `topic` out of the registry (if it is still the one there) and
    /// marks it retired: the next subscriber starts afresh.
    pub fn retire(&self, topic: &Arc<Topic<S>>) {
        let mut map = Self::write(self.shard(&topic.tracking_id));
        if map
            .get(&topic.tracking_id)
            .is_some_and(|t| Arc::ptr_eq(t, topic))
        {
            map.remove(&topic.tracking_id);
            metrics::gauge!(telemetry::TOPICS).decrement(1.0);
        }
        topic.retire();
    }

    /// Every topic now.
    pub fn all(&self) -> Vec<Arc<Topic<S>>> {
        self.shards
            .iter()
            .flat_map(|s| Self::read(s).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).len()).sum()
    }
}
