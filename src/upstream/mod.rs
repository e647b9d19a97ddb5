//! Upstreams and their endpoints: where requests go, and the state baton keeps about each.

pub mod balance;
pub mod endpoint;
pub mod health;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{HashKey, UpstreamConfig};
use balance::{Balancer, Pick};
pub use endpoint::Endpoint;
use endpoint::{now_ms, OutlierPolicy};

/// A named group of endpoints and the balancer that spreads requests over them.
pub struct Upstream {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    slow_start: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let outlier = Arc::new(OutlierPolicy::new(config.outlier, config.endpoints.len()));
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Arc::new(Endpoint::new(e, config.keepalive, outlier.clone())))
            .collect::<Vec<_>>();
        Upstream {
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::new(&config.balance, &endpoints),
            slow_start: config.slow_start,
            endpoints,
        }
    }

    /// The next usable endpoint, skipping those in `tried`; `None` when none is left.
    /// `key` is the request's hash key when the upstream balances by hash.
    pub fn pick(&self, tried: &[usize], key: Option<u64>) -> Option<usize> {
        let pick = Pick {
            endpoints: &self.endpoints,
            tried,
            now: now_ms(),
            slow_start: self.slow_start,
        };
        self.balancer.pick(&pick, key)
    }

    /// What a request is hashed by, when the upstream balances by hash.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.balancer {
            Balancer::Hash(_, key) => Some(key),
            _ => None,
        }
    }

    /// The balancer's name, as in the config.
    pub fn balance(&self) -> &'static str {
        self.balancer.name()
    }
}

impl Upstream {
    /// How long until some endpoint may be used again, when only ejections keep them all
    /// out: the `Retry-After` of a `no-healthy-upstream` answer.
    pub fn usable_in(&self) -> Option<Duration> {
        let now = now_ms();
        self.endpoints.iter().filter_map(|e| e.usable_in(now)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, EndpointConfig, Keepalive, Outlier};
    use std::net::SocketAddr;

    fn upstream(weights: &[u32]) -> Upstream {
        Upstream::new(&UpstreamConfig {
            name: "u".into(),
            balance: Balance::RoundRobin,
            slow_start: Duration::from_secs(10),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| EndpointConfig {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight,
                })
                .collect(),
            keepalive: Keepalive {
                idle: Duration::from_secs(1),
                max_idle_per_endpoint: 1,
            },
            outlier: Outlier::default(),
            health: None,
        })
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_spread() {
        let u = upstream(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| u.pick(&[], None).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let u = upstream(&[1, 1, 1]);
        let first = u.pick(&[], None).unwrap();
        let second = u.pick(&[first], None).unwrap();
        assert_ne!(first, second);
        assert_eq!(u.pick(&[0, 1, 2], None), None);
    }
}
