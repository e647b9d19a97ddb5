//! Choosing an endpoint (SPEC §7): smooth weighted round robin, least request and peak
//! EWMA by power of two choices, and consistent hashing. Every pick costs the same however
//! many endpoints there are (hashing adds a binary search), skips unusable endpoints and
//! the ones already tried for this request, and lets a recovering endpoint ramp up over
//! `slow_start`.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::COOKIE;
use http::HeaderMap;

use super::endpoint::Endpoint;
use crate::config::{Balance, HashKey};

/// The longest round-robin order kept; heavier weights are scaled down to fit.
const MAX_ORDER: usize = 1 << 16;
/// Points each unit of weight puts on the hash ring: enough to spread keys evenly.
const POINTS_PER_WEIGHT: u32 = 160;
/// Random draws tried before falling back to a scan for usable endpoints.
const DRAWS: usize = 8;

/// A small, fast random number per thread (xorshift), seeded once from the OS.
pub(super) fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// A random number in [0, 1).
pub fn unit_random() -> f64 {
    (random() >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finalizer to spread its bits), the
/// same in every baton process and version, so instances agree on where a key goes and on
/// what a request's fingerprint is.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = StableHasher::default();
    hasher.update(bytes);
    hasher.finish()
}

/// [`stable_hash`] over bytes that arrive in pieces.
#[derive(Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> StableHasher {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        std::hash::Hasher::finish(&self)
    }
}

/// For maps whose keys come from the configuration (the route table): looked up with a
/// request's path for every request, where SipHash cost more than the rest of the lookup.
/// Requests cannot add keys, so there is no flooding to resist.
impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }

    fn finish(&self) -> u64 {
        let h = self.0;
        let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

pub(super) enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest,
    Ewma,
    Hash(Ring),
}

impl Balancer {
    pub(super) fn new(balance: &Balance, endpoints: &[Arc<Endpoint>]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(endpoints)),
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::Ewma => Balancer::Ewma,
            Balance::Hash(_) => Balancer::Hash(Ring::new(endpoints)),
        }
    }
}

/// What a pick needs to know besides the balancer.
pub(super) struct Pick<'a> {
    pub endpoints: &'a [Arc<Endpoint>],
    pub tried: &'a [usize],
    pub now: u64,
    pub slow_start: Duration,
}

impl Pick<'_> {
    fn candidate(&self, i: usize) -> bool {
        !self.tried.contains(&i) && self.endpoints[i].is_usable(self.now)
    }

    /// Share of its weight a ramping endpoint gets now, in (0, 1].
    fn ramp(&self, i: usize) -> f64 {
        self.endpoints[i].ramp(self.now, self.slow_start)
    }

    /// Power of two choices: the cheaper of two random candidates by `cost` (lower is
    /// better), divided by weight and ramp.
    fn two_choices(&self, cost: impl Fn(&Endpoint) -> f64) -> Option<usize> {
        let n = self.endpoints.len();
        let better = |a: usize, b: usize| {
            let weighed = |i: usize| {
                let e = &self.endpoints[i];
                cost(e) / (f64::from(e.weight()) * self.ramp(i))
            };
            if weighed(b) < weighed(a) {
                b
            } else {
                a
            }
        };
        match n {
            // An upstream whose only host name never resolved has no endpoints at all.
            0 => return None,
            1 => return self.candidate(0).then_some(0),
            _ => {}
        }
        let mut first = None;
        for _ in 0..DRAWS {
            let i = (random() % n as u64) as usize;
            if !self.candidate(i) || first == Some(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(a) => return Some(better(a, i)),
            }
        }
        // Most endpoints are out (or were tried): choose among those left.
        let left = || (0..n).filter(|&i| self.candidate(i));
        match left().count() {
            0 => None,
            1 => left().next(),
            len => {
                let a = (random() % len as u64) as usize;
                let b = (a + 1 + (random() % (len as u64 - 1)) as usize) % len;
                Some(better(left().nth(a)?, left().nth(b)?))
            }
        }
    }
}

impl Balancer {
    /// The endpoint for a request; `key` is the request's hash key, for `hash`.
    pub(super) fn pick(&self, pick: &Pick<'_>, key: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(order) => order.pick(pick),
            Balancer::LeastRequest => {
                pick.two_choices(|e| e.inflight.load(Ordering::Relaxed) as f64 + 1.0)
            }
            Balancer::Ewma => pick.two_choices(|e| {
                (e.latency_estimate(pick.now) + 1.0)
                    * (e.inflight.load(Ordering::Relaxed) as f64 + 1.0)
            }),
            Balancer::Hash(ring) => match key {
                Some(key) => ring.pick(pick, key),
                // No key in this request: spread it like least-request.
                None => pick.two_choices(|e| e.inflight.load(Ordering::Relaxed) as f64 + 1.0),
            },
        }
    }
}

/// Smooth weighted round robin (as in nginx), laid out once as an order of picks: each
/// step adds every endpoint's weight to its current weight, takes the largest and
/// subtracts the total from it, which spreads an endpoint's turns evenly over the cycle.
/// Walking the order with an atomic cursor keeps every pick O(1) and lock-free.
pub(super) struct RoundRobin {
    order: Vec<u32>,
    cursor: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl RoundRobin {
    fn new(endpoints: &[Arc<Endpoint>]) -> RoundRobin {
        let mut weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight())).collect();
        let common = weights.iter().copied().fold(0, gcd).max(1);
        weights.iter_mut().for_each(|w| *w /= common);
        let total: u64 = weights.iter().sum();
        if total > MAX_ORDER as u64 {
            let scale = total as f64 / MAX_ORDER as f64;
            weights
                .iter_mut()
                .for_each(|w| *w = ((*w as f64 / scale) as u64).max(1));
        }
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        RoundRobin {
            order,
            cursor: AtomicUsize::new(0),
        }
    }

    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        for _ in 0..len {
            let i = self.order[self.cursor.fetch_add(1, Ordering::Relaxed) % len] as usize;
            if pick.candidate(i) {
                let ramp = pick.ramp(i);
                // A ramping endpoint takes its turn with a probability of its ramp.
                if ramp >= 1.0 || (random() % 1024) as f64 / 1024.0 < ramp {
                    return Some(i);
                }
            }
        }
        (0..pick.endpoints.len()).find(|&i| pick.candidate(i))
    }
}

/// A consistent-hash ring: each endpoint owns `POINTS_PER_WEIGHT` × weight points, and a
/// key goes to the first usable endpoint at or after its hash, so an endpoint that leaves
/// hands only its own keys to its neighbours.
pub(super) struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    fn new(endpoints: &[Arc<Endpoint>]) -> Ring {
        let mut points = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            for v in 0..POINTS_PER_WEIGHT * endpoint.weight() {
                let point = stable_hash(format!("{}#{v}", endpoint.label).as_bytes());
                points.push((point, i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    fn pick(&self, pick: &Pick<'_>, key: u64) -> Option<usize> {
        let len = self.points.len();
        let start = self.points.partition_point(|&(point, _)| point < key);
        (0..len)
            .map(|step| self.points[(start + step) % len].1 as usize)
            .find(|&i| pick.candidate(i))
    }
}

impl HashKey {
    /// Whether the key is read from the request's fields (else from its path or client).
    pub fn reads_fields(&self) -> bool {
        matches!(self, HashKey::Header(_) | HashKey::Cookie(_))
    }

    /// The request's key for the ring, or `None` when it has none (no such header or
    /// cookie).
    pub fn of(&self, headers: &HeaderMap, path: &str, client: IpAddr) -> Option<u64> {
        match self {
            HashKey::Header(name) => headers.get(name).map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, value)| stable_hash(value.as_bytes())),
            HashKey::ClientIp => Some(match client {
                IpAddr::V4(ip) => stable_hash(&ip.octets()),
                IpAddr::V6(ip) => stable_hash(&ip.octets()),
            }),
            HashKey::Path => Some(stable_hash(path.as_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, Keepalive, Outlier};
    use crate::upstream::endpoint::OutlierPolicy;
    use std::net::SocketAddr;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        let policy = Arc::new(OutlierPolicy::new(Outlier::default()));
        (0..n)
            .map(|i| {
                let config = EndpointConfig {
                    addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 80)),
                    weight: 1,
                };
                let keepalive = Keepalive {
                    idle: Duration::from_secs(1),
                    max_idle_per_endpoint: 1,
                };
                Arc::new(Endpoint::new(&config, keepalive, policy.clone()))
            })
            .collect()
    }

    fn owner(ring: &Ring, endpoints: &[Arc<Endpoint>], key: u64) -> std::net::SocketAddr {
        let pick = Pick {
            endpoints,
            tried: &[],
            now: 1,
            slow_start: Duration::ZERO,
        };
        endpoints[ring.pick(&pick, key).unwrap()].addr
    }

    /// Removing one of N endpoints from the ring moves only about 1/N of the keys, and
    /// only keys that were on the removed one.
    #[test]
    fn removing_an_endpoint_moves_about_one_nth_of_the_keys() {
        let all = endpoints(10);
        let fewer = all[..9].to_vec();
        let (ring_all, ring_fewer) = (Ring::new(&all), Ring::new(&fewer));
        let keys = 10_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = stable_hash(format!("key-{k}").as_bytes());
            let (before, after) = (owner(&ring_all, &all, key), owner(&ring_fewer, &fewer, key));
            if before != after {
                assert_eq!(before, all[9].addr);
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.05..0.15).contains(&share), "moved {share}");
    }

    #[test]
    fn round_robin_orders_are_short_and_fair() {
        let order = RoundRobin::new(&endpoints(1000));
        assert_eq!(order.order.len(), 1000);
        let mut seen = order.order.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn stable_hash_is_stable() {
        // Instances (and versions) must agree on where a key goes: this value may never
        // change.
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
        assert_eq!(stable_hash(b"user-1"), 14_166_554_182_431_137_624);
    }
}

/// Property tests: whatever the endpoints, their weights and states, and whatever was
/// tried already, a pick never panics, returns only a usable endpoint not yet tried, and
/// returns none exactly when none is left.
#[cfg(test)]
mod props {
    use super::*;
    use crate::cause::Cause;
    use crate::config::{EndpointConfig, Keepalive, Outlier};
    use crate::upstream::endpoint::OutlierPolicy;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    const NOW: u64 = 1_000_000;

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Healthy,
        Draining,
        Unhealthy,
        Ejected,
        /// Back from an ejection `ago` ms before `NOW`, ramping up over slow start.
        Ramping(u64),
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            4 => Just(Kind::Healthy),
            1 => Just(Kind::Draining),
            1 => Just(Kind::Unhealthy),
            1 => Just(Kind::Ejected),
            1 => (0u64..20_000).prop_map(Kind::Ramping),
        ]
    }

    /// Endpoints with these weights, states and latency estimates.
    fn build(specs: &[(u32, Kind, u16)]) -> Vec<Arc<Endpoint>> {
        let outlier = Outlier {
            consecutive_failures: 1,
            max_ejected_percent: 100,
            ..Outlier::default()
        };
        let policy = Arc::new(OutlierPolicy::new(outlier));
        let all: Vec<Arc<Endpoint>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(weight, _, _))| {
                let config = EndpointConfig {
                    addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)),
                    weight,
                };
                let keepalive = Keepalive {
                    idle: Duration::from_secs(1),
                    max_idle_per_endpoint: 1,
                };
                Arc::new(Endpoint::new(&config, keepalive, policy.clone()))
            })
            .collect();
        policy.set_endpoints(&all);
        for (e, &(_, kind, latency)) in all.iter().zip(specs) {
            e.observe_latency(Duration::from_millis(latency.into()), NOW);
            match kind {
                Kind::Healthy => {}
                Kind::Draining => e.set_draining(true),
                Kind::Unhealthy => e.record_check(false, 1, 1, NOW),
                Kind::Ejected => e.record_failure(Cause::UpstreamReset, NOW),
                Kind::Ramping(ago) => e.start_ramp(NOW - ago),
            }
        }
        all
    }

    /// Checks one pick of `balancer` against the contract.
    fn check(balancer: &Balancer, endpoints: &[Arc<Endpoint>], tried: &[usize], key: Option<u64>) {
        let pick = Pick {
            endpoints,
            tried,
            now: NOW,
            slow_start: Duration::from_secs(10),
        };
        let left = (0..endpoints.len())
            .filter(|i| !tried.contains(i) && endpoints[*i].is_usable(NOW))
            .count();
        match balancer.pick(&pick, key) {
            Some(i) => {
                assert!(i < endpoints.len(), "index {i} of {}", endpoints.len());
                assert!(!tried.contains(&i), "picked {i}, which was tried");
                assert!(
                    endpoints[i].is_usable(NOW),
                    "picked {i}, which is not usable"
                );
            }
            None => assert_eq!(left, 0, "none picked while {left} were left"),
        }
    }

    /// Up to `max` endpoints, often none or a few: the sets where edge cases hide.
    fn specs(max: usize, max_weight: u32) -> impl Strategy<Value = Vec<(u32, Kind, u16)>> {
        prop_oneof![0usize..4, 0..=max].prop_flat_map(move |len| {
            prop::collection::vec((1..=max_weight, kind(), any::<u16>()), len)
        })
    }

    fn tried(max: usize) -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0..max.max(1), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn power_of_two_and_round_robin_picks_keep_the_contract(
            specs in specs(1000, 10),
            tried in tried(1000),
            all_tried in any::<bool>(),
        ) {
            let endpoints = build(&specs);
            let tried: Vec<usize> = if all_tried {
                (0..endpoints.len()).collect()
            } else {
                tried.into_iter().filter(|&i| i < endpoints.len()).collect()
            };
            for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Ewma] {
                let balancer = Balancer::new(&balance, &endpoints);
                for _ in 0..4 {
                    check(&balancer, &endpoints, &tried, None);
                }
            }
        }

        #[test]
        fn hash_ring_picks_keep_the_contract(
            specs in specs(200, 4),
            tried in tried(200),
            key in any::<Option<u64>>(),
        ) {
            let endpoints = build(&specs);
            let tried: Vec<usize> = tried.into_iter().filter(|&i| i < endpoints.len()).collect();
            let balancer = Balancer::new(&Balance::Hash(HashKey::Path), &endpoints);
            check(&balancer, &endpoints, &tried, key);
        }
    }
}
