//! Upstreams and their endpoints: where requests go, and the state baton keeps about each.

pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::config::UpstreamConfig;
use pool::Pool;

/// One address of an upstream.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as text: the metrics label and the `Host` sent when the route does not
    /// preserve the client's.
    pub label: Arc<str>,
    pub host_header: HeaderValue,
    pub weight: u32,
    pub pool: Pool,
    /// Exchanges in progress, from the first byte sent until the response body ended.
    pub inflight: AtomicU64,
    /// Attempts that got a response head.
    pub ok: AtomicU64,
    /// Attempts that failed, by any cause.
    pub failed: AtomicU64,
}

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
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let label = e.addr.to_string();
                Arc::new(Endpoint {
                    addr: e.addr,
                    host_header: HeaderValue::from_str(&label)
                        .unwrap_or(HeaderValue::from_static("localhost")),
                    label: Arc::from(label),
                    weight: e.weight,
                    pool: Pool::new(config.keepalive),
                    inflight: AtomicU64::new(0),
                    ok: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
            })
            .collect::<Vec<_>>();
        Upstream {
            name: Arc::from(config.name.as_str()),
            current: Mutex::new(vec![0; endpoints.len()]),
            endpoints,
        }
    }

    /// The next endpoint, skipping those in `tried`; `None` when every endpoint was tried.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let Ok(mut current) = self.current.lock() else {
            return None;
        };
        let total: i64 = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried.contains(i))
            .map(|(_, e)| i64::from(e.weight))
            .sum();
        let mut best: Option<usize> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if tried.contains(&i) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, Keepalive};
    use std::time::Duration;

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
