//! Where a route's responses are kept: in memory, bounded by `max_bytes`, evicted by
//! moka's size-aware TinyLFU (a new object displaces old ones only when it is likely to be
//! asked for more often than they are).
//!
//! Each request URI (host and target) keeps its variants together (RFC 9111 §4.1): a list
//! of stored responses that differ by the request headers their `Vary` names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::policy::Rules;

/// The most variants kept for one URI; a new one displaces the oldest.
const MAX_VARIANTS: usize = 16;

/// What a stored field costs besides its name and value: its slot in the header map and
/// the allocator's rounding, about.
const FIELD_OVERHEAD: usize = 112;

/// What an entry costs besides its fields and body: moka's nodes, the key, the head's
/// struct, the variant list and the allocator's share, about. Measured (see the README's
/// Cache section): 100-byte responses with six fields take 2.4 KiB of resident memory
/// each, which these two constants reproduce, so that `max_bytes` bounds what the process
/// holds rather than the bodies alone.
const ENTRY_OVERHEAD: u64 = 1400;

/// A request URI as the cache knows it: the host (lower case, as routed) and the target,
/// in one shared string (a target starts with `/`, which no host holds), so that a key
/// costs one allocation and its copies none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl Key {
    pub fn new(host: &str, target: &str) -> Key {
        let mut text = String::with_capacity(host.len() + target.len());
        text.push_str(host);
        text.push_str(target);
        Key(Arc::from(text))
    }

    pub fn host(&self) -> &str {
        self.0.find('/').map_or(&self.0, |slash| &self.0[..slash])
    }

    /// The target: the path and the query.
    pub fn target(&self) -> &str {
        self.0.find('/').map_or("", |slash| &self.0[slash..])
    }

    /// The target's path, without the query.
    pub fn path(&self) -> &str {
        self.target().split('?').next().unwrap_or("")
    }
}

/// A stored response's head and the rules for serving it; replaced whole when a 304
/// refreshes it.
#[derive(Debug)]
pub struct Meta {
    pub status: StatusCode,
    /// As sent to clients, less `Age` (set on each answer) and the request's own fields.
    pub headers: HeaderMap,
    /// The request fields of `Vary`, and this variant's values of them.
    pub vary: Vec<(HeaderName, Option<String>)>,
    pub rules: Rules,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
}

impl Meta {
    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(name, value)| {
                name.as_str().len() + value.as_ref().map_or(0, String::len) + FIELD_OVERHEAD
            })
            .sum();
        (headers + vary) as u64
    }

    /// Whether this variant was stored for a request with the same values of the fields
    /// it varies on.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        if self.vary.is_empty() {
            return true;
        }
        let names: Vec<HeaderName> = self.vary.iter().map(|(name, _)| name.clone()).collect();
        let values = super::policy::vary_values(&names, request);
        self.vary
            .iter()
            .zip(values)
            .all(|((_, stored), value)| *stored == value)
    }
}

/// A stored response: its head and its whole body.
#[derive(Debug)]
pub struct Object {
    pub meta: Arc<Meta>,
    pub body: Arc<[Bytes]>,
    pub body_len: u64,
}

impl Object {
    /// What it counts for against `max_bytes`.
    pub fn weight(&self) -> u64 {
        self.meta.weight() + self.body_len
    }

    /// The same body under a refreshed head.
    pub fn with_meta(&self, meta: Arc<Meta>) -> Object {
        Object {
            meta,
            body: self.body.clone(),
            body_len: self.body_len,
        }
    }
}

/// What is stored for one URI: its variants, newest first, and until when requests for
/// it go upstream each on its own, the last answer having been one nobody could share
/// (Varnish's hit-for-miss): waiting for each other's answer would only make them queue.
#[derive(Debug, Default)]
pub struct Entry {
    pub variants: Vec<Arc<Object>>,
    pub pass_until: Option<Instant>,
}

impl Entry {
    /// Whether requests for the URI should not wait for each other now.
    pub fn passing(&self, now: Instant) -> bool {
        self.pass_until.is_some_and(|until| until > now)
    }
}

/// How long an answer that could not be shared keeps requests for its URI apart.
pub const PASS: Duration = Duration::from_secs(60);

/// One route's stored responses.
pub struct Store {
    objects: moka::sync::Cache<Key, Arc<Entry>>,
}

impl Store {
    pub fn new(max_bytes: u64) -> Store {
        // Sized at the start for the entries `max_bytes` holds of small responses: growing
        // the table as it fills rehashes it again and again (2 µs a miss, measured).
        let entries = (max_bytes / 2048).clamp(1024, 1 << 21) as usize;
        let objects = moka::sync::Cache::builder()
            .initial_capacity(entries)
            .max_capacity(max_bytes)
            .weigher(|key: &Key, entry: &Arc<Entry>| {
                let bytes = entry.variants.iter().map(|o| o.weight()).sum::<u64>()
                    + key.0.len() as u64
                    + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Store { objects }
    }

    /// What is stored for `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.objects.get(key)
    }

    /// Stores `object` as the variant of `key` for its `Vary` values, replacing one with
    /// the same values. A response without `Vary` is the only variant there is.
    pub fn insert(&self, key: Key, object: Arc<Object>) {
        if object.meta.vary.is_empty() {
            let entry = Entry {
                variants: vec![object],
                pass_until: None,
            };
            self.objects.insert(key, Arc::new(entry));
            return;
        }
        self.objects.entry(key).and_compute_with(|existing| {
            let mut variants: Vec<Arc<Object>> = vec![object.clone()];
            if let Some(existing) = existing {
                variants.extend(
                    existing
                        .value()
                        .variants
                        .iter()
                        .filter(|o| o.meta.vary != object.meta.vary)
                        .take(MAX_VARIANTS - 1)
                        .cloned(),
                );
            }
            let entry = Entry {
                variants,
                pass_until: None,
            };
            moka::ops::compute::Op::Put(Arc::new(entry))
        });
    }

    /// Keeps requests for `key` apart for [`PASS`], keeping its variants.
    pub fn pass(&self, key: Key) {
        let until = Instant::now() + PASS;
        self.objects.entry(key).and_compute_with(|existing| {
            let variants = existing.map_or_else(Vec::new, |e| e.value().variants.clone());
            moka::ops::compute::Op::Put(Arc::new(Entry {
                variants,
                pass_until: Some(until),
            }))
        });
    }

    /// Drops every variant of `key`.
    pub fn remove(&self, key: &Key) {
        self.objects.invalidate(key);
    }

    /// Drops the variants of every URI whose path is `path`, or that starts with `path`
    /// less its `*`; returns how many URIs were dropped.
    pub fn purge(&self, path: &str) -> usize {
        let keys: Vec<Arc<Key>> = match path.strip_suffix('*') {
            Some(prefix) => self
                .objects
                .iter()
                .filter(|(key, _)| key.target().starts_with(prefix))
                .map(|(key, _)| key)
                .collect(),
            None => self
                .objects
                .iter()
                .filter(|(key, _)| key.path() == path || key.target() == path)
                .map(|(key, _)| key)
                .collect(),
        };
        for key in &keys {
            self.objects.invalidate(&**key);
        }
        keys.len()
    }

    /// URIs stored and the bytes they count for, as of moka's last housekeeping.
    pub fn usage(&self) -> (u64, u64) {
        (self.objects.entry_count(), self.objects.weighted_size())
    }

    /// Lets moka apply what it has queued (evictions, counts): for tests and the status page.
    pub fn settle(&self) {
        self.objects.run_pending_tasks();
    }
}
