//! Rate limits (SPEC §9): GCRA per key, in this process or in Redis for several instances.
//!
//! The generic cell rate algorithm keeps one number per key, the *theoretical arrival time*
//! (TAT): when the key's requests would have arrived had they come evenly, one every
//! `interval = per / requests`. A request at `now` is allowed when `max(TAT, now) + interval`
//! is at most `burst × interval` ahead of `now`, and then moves the TAT there. A key whose TAT
//! has passed is the same as a key never seen, so it can be dropped at any time: that is what
//! keeps memory bounded however many keys clients invent.
//!
//! **Why not `governor`.** It implements the same algorithm well, but the limit must also
//! run as one atomic step inside Redis (a Lua script of the same arithmetic), the
//! `RateLimit` fields need the remaining count and reset time of either, and its keyed
//! store grows with every key until it is told to shrink. Baton's own is the forty lines
//! below (and the script), on baton's clock, with a hard bound on keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::config::runtime::RateLimit;
use crate::store::redis::{Redis, RedisError};

/// What one key may do now: the outcome of a request, and the `RateLimit` field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could go at once after this one.
    pub remaining: u64,
    /// Until the key's full burst is back.
    pub reset: Duration,
    /// Until the next request may go, when this one was refused.
    pub retry_after: Duration,
}

/// A limit in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Cell {
    interval: u64,
    tolerance: u64,
}

impl Cell {
    fn new(limit: &RateLimit) -> Cell {
        let per = u64::try_from(limit.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(limit.requests)).max(1);
        Cell {
            interval,
            tolerance: interval.saturating_mul(u64::from(limit.burst)),
        }
    }

    /// The decision for a request at `now` against a key's `tat` (0: never seen), and the
    /// key's new TAT when it is allowed. Redis runs the same steps ([`GCRA_SCRIPT`]).
    fn decide(self, tat: u64, now: u64) -> (Verdict, Option<u64>) {
        let tat = tat.max(now);
        let next = tat.saturating_add(self.interval);
        let allow_at = next.saturating_sub(self.tolerance);
        if allow_at > now {
            let verdict = Verdict {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(tat - now),
                retry_after: Duration::from_nanos(allow_at - now),
            };
            return (verdict, None);
        }
        let verdict = Verdict {
            allowed: true,
            remaining: (now + self.tolerance - next) / self.interval,
            reset: Duration::from_nanos(next - now),
            retry_after: Duration::ZERO,
        };
        (verdict, Some(next))
    }
}

/// Nanoseconds on baton's clock (tokio's, so that tests may pause it), from 1.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let now = Instant::now();
    let start = *START.get_or_init(|| now);
    u64::try_from(now.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX) + 1
}

/// One shard's TATs by key hash. The keys are hashes already (of a secret seed), so the map
/// takes them as they are rather than hashing them again.
type Tats = HashMap<u64, u64, BuildHasherDefault<KeyHash>>;

#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used, by `u64`'s `Hash`; anything else is folded in.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Shards of the key table, each with its own lock.
const SHARDS: usize = 16;
/// What one key costs in the table: its hash and TAT, the map's control byte, and room for
/// the map's growth (it doubles).
pub const KEY_BYTES: usize = 40;

/// The TATs of every limited key in this process, in at most `max_keys` entries: when a
/// shard is full, the keys whose TAT passed go (they are like keys never seen), and if
/// that is not enough, arbitrary keys until an eighth is free, each forgiven its recent
/// requests (counted in `evictions`). Keys are hashed with a secret seed, so a client
/// cannot aim collisions at another's key.
pub struct Buckets {
    shards: Box<[Mutex<Tats>]>,
    per_shard: usize,
    seed: RandomState,
    evictions: Counter,
}

impl Buckets {
    /// A table that holds at most `max_bytes` (at least one key per shard).
    pub fn new(max_bytes: usize, evictions: Counter) -> Buckets {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(Tats::default())).collect(),
            per_shard: (max_bytes / KEY_BYTES / SHARDS).max(1),
            seed: RandomState::new(),
            evictions,
        }
    }

    /// Checks one request of `key` on route `route` against `limit`.
    pub fn check(&self, route: &str, key: &Key<'_>, limit: &RateLimit) -> Verdict {
        let hash = self.seed.hash_one((route, key));
        // Middle bits pick the shard: the map takes its slot from the low ones and its tag
        // from the top ones, which must vary within a shard.
        let shard = &self.shards[((hash >> 32) as usize) % SHARDS];
        let mut tats = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = now_ns();
        let (verdict, next) = Cell::new(limit).decide(tats.get(&hash).copied().unwrap_or(0), now);
        if let Some(next) = next {
            if tats.len() >= self.per_shard && !tats.contains_key(&hash) {
                self.make_room(&mut tats, now);
            }
            tats.insert(hash, next);
        }
        verdict
    }

    fn make_room(&self, tats: &mut Tats, now: u64) {
        tats.retain(|_, tat| *tat > now);
        let keep = self.per_shard - self.per_shard.div_ceil(8);
        if tats.len() > keep {
            let excess: Vec<u64> = tats.keys().take(tats.len() - keep).copied().collect();
            for key in &excess {
                tats.remove(key);
            }
            self.evictions.inc_by(excess.len() as u64);
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

/// What a request is limited by (SPEC §9 `key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    ClientIp(IpAddr),
    Header(&'a [u8]),
    Route,
}

impl Key<'_> {
    /// The key's part of a Redis key: readable when short, a digest when long (a header's
    /// value may be up to the head's size).
    fn redis_name(&self) -> String {
        /// Longer header values are replaced by their SHA-256.
        const MAX_PLAIN: usize = 64;
        match self {
            Key::ClientIp(ip) => format!("ip:{ip}"),
            Key::Header(value) if value.len() <= MAX_PLAIN && value.is_ascii() => {
                format!("h:{}", String::from_utf8_lossy(value))
            }
            Key::Header(value) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, value);
                format!("hd:{}", data_encoding::HEXLOWER.encode(digest.as_ref()))
            }
            Key::Route => "route".to_owned(),
        }
    }
}

/// GCRA as one atomic step in Redis, on Redis's clock (so that instances agree on time),
/// in microseconds: the same arithmetic as [`Cell::decide`]. (Numbers are written with
/// `%d`: Lua would print a TAT of sixteen digits in exponent form.) Returns allowed (1 or 0), then
/// the microseconds until the key's burst is back and until the next request may go, and
/// the remaining count.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next = tat + interval
local allow_at = next - tolerance
if allow_at > now then
  return {0, tat - now, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', next), 'PX',
  string.format('%d', math.ceil((next - now) / 1000) + 1))
return {1, next - now, 0, math.floor((now + tolerance - next) / interval)}
";

/// Keys are namespaced so that baton can share a Redis with other users.
const PREFIX: &str = "baton:rate:";
/// How long a limit check may wait for Redis before the request goes unchecked: a check
/// is on every limited request's path.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis failed, requests go unchecked for this long before it is tried again, so
/// that an outage does not cost every request the timeout.
const RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);

/// Limits shared through Redis by several instances (`[store] backend = "redis"`).
pub struct SharedBuckets {
    redis: std::sync::Arc<Redis>,
    script: redis::Script,
    /// Until when Redis is not asked ([`RETRY_REDIS_AFTER`] after it failed).
    resting_until: Mutex<Option<Instant>>,
}

impl SharedBuckets {
    pub fn new(redis: std::sync::Arc<Redis>) -> SharedBuckets {
        SharedBuckets {
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            resting_until: Mutex::new(None),
        }
    }

    fn resting(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.resting_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks one request in Redis: one round trip. An error means the request could not
    /// be checked (Redis unreachable, or resting after it failed).
    pub async fn check(
        &self,
        route: &str,
        key: &Key<'_>,
        limit: &RateLimit,
    ) -> Result<Verdict, RedisError> {
        {
            let mut resting = self.resting();
            match *resting {
                Some(until) if Instant::now() < until => {
                    self.redis.errors.inc();
                    return Err(RedisError("Redis failed a moment ago".into()));
                }
                Some(_) => *resting = None,
                None => {}
            }
        }
        let cell = Cell::new(limit);
        let micros = |ns: u64| ns.div_ceil(1000).max(1);
        let mut invocation = self
            .script
            .key(format!("{PREFIX}{route}:{}", key.redis_name()));
        invocation
            .arg(micros(cell.interval))
            .arg(micros(cell.interval).saturating_mul(u64::from(limit.burst)));
        let result: Result<(u8, u64, u64, u64), RedisError> =
            self.redis.run_script(&invocation, CHECK_TIMEOUT).await;
        match result {
            Ok((allowed, reset, retry_after, remaining)) => Ok(Verdict {
                allowed: allowed == 1,
                remaining,
                reset: Duration::from_micros(reset),
                retry_after: Duration::from_micros(retry_after),
            }),
            Err(err) => {
                *self.resting() = Some(Instant::now() + RETRY_REDIS_AFTER);
                Err(err)
            }
        }
    }
}

/// Where a gateway's rate limits are kept: the `[store]` backend.
pub enum Rates {
    Local(Buckets),
    Shared(SharedBuckets),
}

impl Rates {
    /// Checks one request of `key` on `route`; an error when the shared store could not
    /// be asked (the request then goes unchecked).
    pub async fn check(
        &self,
        route: &str,
        key: &Key<'_>,
        limit: &RateLimit,
    ) -> Result<Verdict, RedisError> {
        match self {
            Rates::Local(buckets) => Ok(buckets.check(route, key, limit)),
            // Boxed: the Redis call's state would make every limited request's future larger.
            Rates::Shared(shared) => Box::pin(shared.check(route, key, limit)).await,
        }
    }

    /// For the status page: the keys held in memory and the most it holds.
    pub fn usage(&self) -> Option<(usize, usize)> {
        match self {
            Rates::Local(buckets) => Some((buckets.len(), buckets.capacity())),
            Rates::Shared(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::runtime::RateKey;

    fn limit(requests: u32, per: Duration, burst: u32) -> RateLimit {
        RateLimit::new(requests, per, burst, RateKey::Route)
    }

    #[test]
    fn a_burst_goes_at_once_then_one_per_interval() {
        let cell = Cell::new(&limit(10, Duration::from_secs(1), 5));
        let mut tat = 0;
        let now = 1_000_000_000;
        for remaining in (0..5).rev() {
            let (verdict, next) = cell.decide(tat, now);
            assert!(verdict.allowed);
            assert_eq!(verdict.remaining, remaining);
            tat = next.unwrap();
        }
        let (refused, next) = cell.decide(tat, now);
        assert!(!refused.allowed && next.is_none());
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.reset, Duration::from_millis(500));
        // One interval later, one more.
        let (verdict, _) = cell.decide(tat, now + 100_000_000);
        assert!(verdict.allowed);
        assert_eq!(verdict.remaining, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_apart_and_the_table_stays_within_its_bound() {
        let evictions = Counter::default();
        let buckets = Buckets::new(SHARDS * KEY_BYTES * 8, evictions.clone());
        let limit = limit(1, Duration::from_secs(60), 1);
        let a = Key::Header(b"a");
        assert!(buckets.check("r", &a, &limit).allowed);
        assert!(!buckets.check("r", &a, &limit).allowed);
        assert!(buckets.check("r", &Key::Header(b"b"), &limit).allowed);
        assert!(
            buckets.check("other", &a, &limit).allowed,
            "routes are apart"
        );
        for i in 0..10_000u32 {
            buckets.check("r", &Key::Header(&i.to_be_bytes()), &limit);
        }
        assert!(buckets.len() <= buckets.capacity());
        assert!(evictions.get() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_whose_time_passed_go_first() {
        let evictions = Counter::default();
        let buckets = Buckets::new(SHARDS * KEY_BYTES * 8, evictions.clone());
        let limit = limit(100, Duration::from_secs(1), 1);
        for i in 0..10_000u32 {
            buckets.check("r", &Key::Header(&i.to_be_bytes()), &limit);
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert_eq!(evictions.get(), 0, "every key's time had passed");
    }

    #[test]
    fn long_header_keys_are_digested_for_redis() {
        assert_eq!(Key::Header(b"user-1").redis_name(), "h:user-1");
        let long = Key::Header(&[b'x'; 1000]).redis_name();
        assert!(long.starts_with("hd:") && long.len() == 67, "{long}");
        assert_eq!(Key::ClientIp("::1".parse().unwrap()).redis_name(), "ip:::1");
    }
}
