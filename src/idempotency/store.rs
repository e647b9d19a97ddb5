//! Where idempotency keys live: `memory` serves one baton instance, `redis` several.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
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

    /// For the status page: the backend, and for memory the bytes its records hold, its
    /// bound and how many records there are.
    pub fn usage(&self) -> serde_json::Value {
        match self {
            Store::Memory(store) => {
                let (bytes, records) = store.usage();
                serde_json::json!({
                    "backend": "memory",
                    "bytes": bytes,
                    "max_bytes": store.max_bytes,
                    "records": records,
                })
            }
            Store::Redis(_) => serde_json::json!({ "backend": "redis" }),
        }
    }
}

/// What a record costs besides its key and stored answer: the map entries, the record's
/// fields and the allocator's rounding, measured roughly (a generous estimate keeps the
/// bound a bound).
const RECORD_OVERHEAD: usize = 160;
/// What each stored header costs besides its name and value.
const HEADER_OVERHEAD: usize = 48;

/// Keys in this process's memory, each until its TTL runs out, all of them within
/// `max_bytes` (SPEC §8): when a new record does not fit, the oldest settled records go
/// first; records in flight are never dropped (that would let a repeat run twice), so when
/// they alone fill the store a new key is refused as `Unavailable`. A settled answer that
/// cannot fit even then is kept without its body: a repeat is refused as an unknown
/// outcome instead of replayed, but never forwarded again.
pub struct MemoryStore {
    inner: Mutex<Records>,
    max_bytes: usize,
    evictions: Counter,
}

#[derive(Default)]
struct Records {
    by_key: HashMap<String, Entry>,
    /// Settled records by when they settled, oldest first: what goes when room is needed.
    settled: BTreeMap<u64, String>,
    next_seq: u64,
    bytes: usize,
    /// The part of `bytes` that settled records hold (the rest is in flight).
    settled_bytes: usize,
}

struct Entry {
    record: Record,
    expires: Instant,
    /// What the record counts against `max_bytes`.
    size: usize,
    /// Its place in `settled`; `None` while in flight.
    seq: Option<u64>,
}

/// What `record` under `key` counts against the bound: the key twice (the map and, once
/// settled, the eviction order) and the stored answer.
fn record_size(key: &str, record: &Record) -> usize {
    let answer = match record {
        Record::Done {
            response: Some(response),
            ..
        } => {
            response.body.len()
                + response
                    .headers
                    .iter()
                    .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
                    .sum::<usize>()
        }
        Record::InFlight { .. } | Record::Done { .. } | Record::Unknown { .. } => 0,
    };
    RECORD_OVERHEAD + 2 * key.len() + answer
}

impl Records {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.by_key.remove(key)?;
        self.bytes -= entry.size;
        if let Some(seq) = entry.seq {
            self.settled.remove(&seq);
            self.settled_bytes -= entry.size;
        }
        Some(entry)
    }

    /// Whether `size` more bytes could fit if every settled record went.
    fn could_fit(&self, size: usize, max: usize) -> bool {
        self.bytes - self.settled_bytes + size <= max
    }

    /// Drops the oldest settled records until `size` more bytes fit within `max` (the
    /// caller checked that they [could](Records::could_fit)).
    fn make_room(&mut self, size: usize, max: usize, evictions: &Counter) {
        while self.bytes + size > max {
            let Some((_, key)) = self.settled.pop_first() else {
                return;
            };
            if let Some(entry) = self.by_key.remove(&key) {
                self.bytes -= entry.size;
                self.settled_bytes -= entry.size;
                evictions.inc();
            }
        }
    }

    fn insert(&mut self, key: String, record: Record, expires: Instant, size: usize) {
        let seq = match record {
            Record::InFlight { .. } => None,
            Record::Done { .. } | Record::Unknown { .. } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.settled.insert(seq, key.clone());
                self.settled_bytes += size;
                Some(seq)
            }
        };
        self.bytes += size;
        let entry = Entry {
            record,
            expires,
            size,
            seq,
        };
        self.by_key.insert(key, entry);
    }
}

impl MemoryStore {
    /// A store whose records hold at most `max_bytes`; `evictions` counts the settled
    /// records dropped to keep it so.
    pub fn new(max_bytes: usize, evictions: Counter) -> MemoryStore {
        MemoryStore {
            inner: Mutex::default(),
            max_bytes,
            evictions,
        }
    }

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
        if let Some(entry) = records.by_key.get(key) {
            if entry.expires > now {
                return Ok(Some(entry.record.clone()));
            }
            records.remove(key);
        }
        let record = Record::InFlight { fingerprint };
        let size = record_size(key, &record);
        if !records.could_fit(size, self.max_bytes) {
            return Err(Unavailable(
                "the memory store is full of keys in flight (`store.max_bytes`)".into(),
            ));
        }
        records.make_room(size, self.max_bytes, &self.evictions);
        records.insert(key.to_owned(), record, now + ttl, size);
        Ok(None)
    }

    /// Stores the outcome of the request that holds `key`.
    pub fn put(&self, key: &str, record: Record, ttl: Duration) -> Result<(), Unavailable> {
        let mut records = self.lock()?;
        records.remove(key);
        let mut record = record;
        let mut size = record_size(key, &record);
        if !records.could_fit(size, self.max_bytes) {
            // Records in flight hold the room: keep the outcome, not the answer. It takes
            // no more than the in-flight record it replaces.
            if let Record::Done { response, .. } = &mut record {
                *response = None;
            }
            size = record_size(key, &record);
        }
        records.make_room(size, self.max_bytes, &self.evictions);
        records.insert(key.to_owned(), record, Instant::now() + ttl, size);
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
        if let Ok(mut records) = self.inner.lock() {
            let expired: Vec<String> = records
                .by_key
                .iter()
                .filter(|(_, entry)| entry.expires <= now)
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                records.remove(&key);
            }
        }
    }

    /// What the records count against `max_bytes` now, and how many there are.
    pub fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map_or((0, 0), |records| (records.bytes, records.by_key.len()))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Records>, Unavailable> {
        self.inner
            .lock()
            .map_err(|_| Unavailable("the memory store's lock is poisoned".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    const TTL: Duration = Duration::from_secs(60);

    fn done(body: usize) -> Record {
        Record::Done {
            fingerprint: 1,
            body_hash: None,
            response: Some(super::super::StoredResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from(vec![b'x'; body]),
            }),
        }
    }

    #[tokio::test]
    async fn the_oldest_settled_records_go_first_and_in_flight_ones_never() {
        let evictions = Counter::default();
        let store = MemoryStore::new(10_000, evictions.clone());
        for i in 0..100 {
            let key = format!("k{i}");
            assert!(store.claim(&key, 1, TTL).unwrap().is_none());
            store.put(&key, done(100), TTL).unwrap();
            assert!(store.usage().0 <= 10_000, "{:?}", store.usage());
        }
        assert!(evictions.get() > 50, "{}", evictions.get());
        // The newest is there, the oldest is gone.
        assert!(store.claim("k99", 1, TTL).unwrap().is_some());
        assert!(
            store.claim("k0", 1, TTL).unwrap().is_none(),
            "k0 was evicted"
        );
        // Keys in flight fill it; then a new key is refused, and none of them was dropped.
        let mut held = 0;
        while store.claim(&format!("f{held}"), 1, TTL).is_ok() {
            held += 1;
            assert!(held < 1_000);
        }
        assert!(store.usage().0 <= 10_000);
        for i in 0..held {
            let record = store.claim(&format!("f{i}"), 1, TTL).unwrap();
            assert!(matches!(record, Some(Record::InFlight { .. })), "f{i}");
        }
        // An answer settles in place, without its body when nothing else can make room.
        store.put("f0", done(5_000), TTL).unwrap();
        match store.claim("f0", 1, TTL).unwrap() {
            Some(Record::Done { response: None, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(store.usage().0 <= 10_000);
        store.release("f1").unwrap();
        assert!(store.claim("f1", 1, TTL).unwrap().is_none(), "released");
    }
}
