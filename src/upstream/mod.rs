//! Upstreams and their endpoints: where requests go, and the state baton keeps about each.

pub mod endpoint;
pub mod pool;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::UpstreamConfig;
pub use endpoint::Endpoint;
use endpoint::{now_ms, OutlierPolicy};

/// A named group of endpoints, balanced by smooth weighted round robin.
pub struct Upstream {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The current weights of smooth weighted round robin (as in nginx): each pick adds
    /// every endpoint's weight to its current weight, takes the largest, and subtracts the
    /// total from it, which spreads an endpoint's turns evenly over the cycle.
    current: Mutex<Vec<i64>>,
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
            current: Mutex::new(vec![0; endpoints.len()]),
            endpoints,
        }
    }

    /// The next usable endpoint, skipping those in `tried`; `None` when none is left.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let Ok(mut current) = self.current.lock() else {
            return None;
        };
        let candidate = |i: usize| !tried.contains(&i) && self.endpoints[i].is_usable(now);
        let total: i64 = (0..self.endpoints.len())
            .filter(|&i| candidate(i))
            .map(|i| i64::from(self.endpoints[i].weight))
            .sum();
        let mut best: Option<usize> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !candidate(i) {
                continue;
            }
            current[i] += i64::from(endpoint.weight);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
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
    use crate::config::{EndpointConfig, Keepalive, Outlier};
    use std::net::SocketAddr;

    fn upstream(weights: &[u32]) -> Upstream {
        Upstream::new(&UpstreamConfig {
            name: "u".into(),
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
        })
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_spread() {
        let u = upstream(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| u.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let u = upstream(&[1, 1, 1]);
        let first = u.pick(&[]).unwrap();
        let second = u.pick(&[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(u.pick(&[0, 1, 2]), None);
    }
}
