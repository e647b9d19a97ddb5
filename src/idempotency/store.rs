//! Where idempotency keys live: `memory` serves one baton instance, `redis` several.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Record;

/// The store could not be reached: nothing may be forwarded unguarded.
#[derive(Debug, thiserror::Error)]
#[error("the idempotency store is unavailable: {0}")]
pub struct Unavailable(pub String);

/// The configured store.
pub enum Store {
    Memory(MemoryStore),
    Redis(super::redis::RedisStore),
}

impl Store {
    /// Marks `key` in flight unless a live record exists; returns that record when there is.
    pub async fn claim(
        &self,
        key: &str,
        fingerprint: u64,
        ttl: Duration,
    ) -> Result<Option<Record>, Unavailable> {
        match self {
            Store::Memory(store) => store.claim(key, fingerprint, ttl),
            Store::Redis(store) => store.claim(key, fingerprint, ttl).await,
        }
    }

    pub async fn put(&self, key: &str, record: Record, ttl: Duration) -> Result<(), Unavailable> {
        match self {
            Store::Memory(store) => store.put(key, record, ttl),
            Store::Redis(store) => store.put(key, &record, ttl).await,
        }
    }

    pub async fn release(&self, key: &str) -> Result<(), Unavailable> {
        match self {
            Store::Memory(store) => store.release(key),
            Store::Redis(store) => store.release(key).await,
        }
    }

    pub fn purge(&self) {
        if let Store::Memory(store) = self {
            store.purge();
        }
    }
}

/// Each key's record and when it expires.
type Records = HashMap<String, (Record, Instant)>;

/// Keys in this process's memory, each until its TTL runs out.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

impl MemoryStore {
    /// Marks `key` in flight with `fingerprint` unless a live record exists; returns that
    /// record (and claims nothing) when there is one.
    pub fn claim(
        &self,
        key: &str,
        fingerprint: u64,
        ttl: Duration,
    ) -> Result<Option<Record>, Unavailable> {
        let mut records = self.lock()?;
        let now = Instant::now();
        if let Some((record, expires)) = records.get(key) {
            if *expires > now {
                return Ok(Some(record.clone()));
            }
        }
        records.insert(
            key.to_owned(),
            (Record::InFlight { fingerprint }, now + ttl),
        );
        Ok(None)
    }

    /// Stores the outcome of the request that holds `key`.
    pub fn put(&self, key: &str, record: Record, ttl: Duration) -> Result<(), Unavailable> {
        self.lock()?
            .insert(key.to_owned(), (record, Instant::now() + ttl));
        Ok(())
    }

    /// Forgets `key` (nothing was sent: a repeat may go ahead).
    pub fn release(&self, key: &str) -> Result<(), Unavailable> {
        self.lock()?.remove(key);
        Ok(())
    }

    /// Drops expired keys.
    pub fn purge(&self) {
        let now = Instant::now();
        if let Ok(mut records) = self.records.lock() {
            records.retain(|_, (_, expires)| *expires > now);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Records>, Unavailable> {
        self.records
            .lock()
            .map_err(|_| Unavailable("the memory store's lock is poisoned".into()))
    }
}
