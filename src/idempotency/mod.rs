//! Idempotency keys (SPEC §8): a POST or PATCH with the route's key header is forwarded
//! once; a repeat with the same fingerprint gets the stored answer (or 409 while the first
//! is in flight), a repeat with another fingerprint 422.
//!
//! The fingerprint of the head (method, host, path) is checked when the key is claimed; the
//! hash of the body is taken as the body streams upstream, and checked on a repeat against
//! the hash of the repeat's body, so no body needs to be held in memory.

pub mod redis;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::cause::Cause;
use crate::config::runtime::Idempotency;
use crate::upstream::balance::StableHasher;
use store::{Store, Unavailable};

/// The most of a response body that is stored for replay.
pub const MAX_STORED_BODY: usize = 1 << 20;
/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// A stored answer.
#[derive(Clone, Debug)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the store knows of a key.
#[derive(Clone, Debug)]
pub enum Record {
    InFlight {
        fingerprint: u64,
    },
    Done {
        fingerprint: u64,
        /// The hash of the first request's body, when all of it was sent.
        body_hash: Option<u64>,
        /// `None` when the answer was too large to store.
        response: Option<StoredResponse>,
    },
    /// Sent, and no complete answer came back.
    Unknown {
        fingerprint: u64,
    },
}

impl Record {
    fn fingerprint(&self) -> u64 {
        match self {
            Record::InFlight { fingerprint }
            | Record::Done { fingerprint, .. }
            | Record::Unknown { fingerprint } => *fingerprint,
        }
    }
}

/// The hash of a request body, filled in as the body streams.
#[derive(Default)]
pub struct BodyHash {
    value: AtomicU64,
    complete: AtomicBool,
}

impl BodyHash {
    pub fn set(&self, hash: u64) {
        self.value.store(hash, Ordering::Relaxed);
        self.complete.store(true, Ordering::Release);
    }

    pub fn get(&self) -> Option<u64> {
        self.complete
            .load(Ordering::Acquire)
            .then(|| self.value.load(Ordering::Relaxed))
    }
}

/// What to do with a keyed request.
pub enum Decision {
    /// Forward it; the claim settles the key when the exchange ends.
    Forward(Claim),
    /// Answer with the stored response if the body hashes to `body_hash` (when known).
    Replay {
        body_hash: Option<u64>,
        response: StoredResponse,
    },
}

/// Why a keyed request is answered by baton.
pub struct Refused(pub Cause);

/// The store shared by every route.
pub struct Keys {
    store: Arc<Store>,
}

impl Keys {
    pub fn new(store: Store) -> Keys {
        Keys {
            store: Arc::new(store),
        }
    }

    pub fn purge(&self) {
        self.store.purge();
    }

    /// What the store holds, for the status page.
    pub fn usage(&self) -> serde_json::Value {
        self.store.usage()
    }

    /// Checks a request against its key. `None` when the request carries no key or its
    /// method is not keyed (only POST and PATCH are).
    pub async fn check(
        &self,
        policy: &Idempotency,
        route: &str,
        method: &Method,
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Result<Decision, Refused>> {
        if *method != Method::POST && *method != Method::PATCH {
            return None;
        }
        let bytes = headers.get(&policy.header)?.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(u8::is_ascii_graphic)
        {
            return Some(Err(Refused(Cause::BadRequest)));
        }
        let store_key = format!("{route}\u{0}{}", String::from_utf8_lossy(bytes));
        let mut head = StableHasher::default();
        for part in [method.as_str(), "\u{0}", host, "\u{0}", path] {
            head.update(part.as_bytes());
        }
        Some(self.decide(policy, store_key, head.finish()).await)
    }

    /// Claims `store_key` for a request with this head `fingerprint`, or says why not.
    async fn decide(
        &self,
        policy: &Idempotency,
        store_key: String,
        fingerprint: u64,
    ) -> Result<Decision, Refused> {
        let unavailable = |err: Unavailable| {
            tracing::warn!(error = %err, "idempotency store unavailable; refusing keyed request");
            Refused(Cause::IdempotencyStoreUnavailable)
        };
        let claim = |store_key: String| Claim {
            store: self.store.clone(),
            key: store_key,
            fingerprint,
            ttl: policy.ttl,
            body_hash: Arc::default(),
            settled: false,
        };
        let existing = self
            .store
            .claim(&store_key, fingerprint, policy.ttl)
            .await
            .map_err(unavailable)?;
        match existing {
            None => Ok(Decision::Forward(claim(store_key))),
            Some(record) if record.fingerprint() != fingerprint => {
                Err(Refused(Cause::IdempotencyKeyReused))
            }
            Some(Record::InFlight { .. }) => Err(Refused(Cause::IdempotencyKeyInFlight)),
            Some(Record::Unknown { .. }) if policy.forward_unknown => {
                self.store
                    .put(&store_key, Record::InFlight { fingerprint }, policy.ttl)
                    .await
                    .map_err(unavailable)?;
                Ok(Decision::Forward(claim(store_key)))
            }
            Some(Record::Unknown { .. }) | Some(Record::Done { response: None, .. }) => {
                Err(Refused(Cause::IdempotencyOutcomeUnknown))
            }
            Some(Record::Done {
                body_hash,
                response: Some(response),
                ..
            }) => Ok(Decision::Replay {
                body_hash,
                response,
            }),
        }
    }
}

/// A key this request holds while it is forwarded. It settles the key once: with the
/// answer ([`Claim::complete`]), by releasing it when nothing was sent
/// ([`Claim::release`]), or — when dropped unsettled — as an unknown outcome.
pub struct Claim {
    store: Arc<Store>,
    key: String,
    fingerprint: u64,
    ttl: Duration,
    /// Filled in by the request body as it streams.
    pub body_hash: Arc<BodyHash>,
    settled: bool,
}

impl Claim {
    /// The answer came back whole: store it (or, too large, only that it happened).
    pub fn complete(mut self, response: Option<StoredResponse>) {
        let record = Record::Done {
            fingerprint: self.fingerprint,
            body_hash: self.body_hash.get(),
            response,
        };
        self.settle(Some(record));
    }

    /// Nothing reached an upstream: a repeat may go ahead.
    pub fn release(mut self) {
        self.settle(None);
    }

    /// Writes the outcome: at once in memory; for Redis in a task of its own, since the
    /// exchange ends in code that cannot wait.
    fn settle(&mut self, record: Option<Record>) {
        self.settled = true;
        let (key, ttl) = (std::mem::take(&mut self.key), self.ttl);
        let report = |result: Result<(), Unavailable>| {
            if let Err(err) = result {
                tracing::warn!(error = %err, "could not settle an idempotency key");
            }
        };
        match &*self.store {
            Store::Memory(memory) => report(match record {
                Some(record) => memory.put(&key, record, ttl),
                None => memory.release(&key),
            }),
            Store::Redis(_) => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    report(match record {
                        Some(record) => store.put(&key, record, ttl).await,
                        None => store.release(&key).await,
                    });
                });
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            let record = Record::Unknown {
                fingerprint: self.fingerprint,
            };
            self.settle(Some(record));
        }
    }
}
