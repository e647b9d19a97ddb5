//! Upstreams and their endpoints: where requests go, and the state baton keeps about each.

pub mod balance;
pub mod client;
pub mod dns;
pub mod endpoint;
pub mod h1;
pub mod h2;
pub mod health;
pub mod outlier;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::runtime::Protocol;
use crate::config::{Balance, EndpointConfig, HashKey, Keepalive, UpstreamConfig};
use crate::limit::admission::Admission;
use crate::observe::history::History;
use crate::tls::ClientTls;
use balance::{Balancer, Pick};
pub use endpoint::Endpoint;
use endpoint::{now_ms, OutlierPolicy};

/// A named group of endpoints and the balancer that spreads requests over them. The
/// endpoints can change while baton runs (DNS), so requests work on a snapshot
/// ([`Members`]), swapped whole when the set changes.
pub struct Upstream {
    pub name: Arc<str>,
    members: ArcSwap<Members>,
    /// Turns true when the upstream leaves the config (reload) or baton stops: its health
    /// checks and DNS lookups end.
    retired: watch::Sender<bool>,
    balance: Balance,
    slow_start: Duration,
    keepalive: Keepalive,
    /// TLS to the endpoints, and their protocol, for the endpoints this upstream makes.
    tls: Option<ClientTls>,
    protocol: Protocol,
    outlier: Arc<OutlierPolicy>,
    /// `max_inflight` and its queue, when the upstream has a limit; carried over by a
    /// reload that keeps the limit, with what it learned and the requests it holds.
    pub admission: Option<Arc<Admission>>,
    /// Its last fifteen minutes, for the status page; kept by a reload.
    pub history: Arc<History>,
}

/// The endpoints of an upstream at one moment, with a balancer built for them.
pub struct Members {
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    slow_start: Duration,
    /// Some host name of the upstream has never resolved.
    pub unresolved: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        Upstream::after(config, None)
    }

    /// The upstream `config` describes, taking over the endpoints of `old` (the upstream of
    /// that name before a reload) that it still has, with their health: the same address
    /// and, for an endpoint found by DNS, the same host name. Endpoints start afresh when
    /// the outlier or keep-alive settings changed.
    pub fn after(config: &UpstreamConfig, old: Option<(&Upstream, &UpstreamConfig)>) -> Upstream {
        let admission = config.admission.map(|settings| {
            match old.and_then(|(old, _)| old.admission.as_ref()) {
                Some(admission) => {
                    admission.configure(settings);
                    admission.clone()
                }
                None => Arc::new(Admission::new(settings)),
            }
        });
        let history = old.map_or_else(Arc::default, |(old, _)| old.history.clone());
        let old = old.filter(|(_, old_config)| {
            old_config.outlier == config.outlier
                && old_config.keepalive == config.keepalive
                && old_config.tls == config.tls
                && old_config.protocol == config.protocol
        });
        let outlier = match old {
            Some((old, _)) => old.outlier.clone(),
            None => Arc::new(OutlierPolicy::new(config.outlier)),
        };
        let previous = old.map(|(old, _)| old.members());
        let kept = |addr: SocketAddr, host: Option<&str>| {
            previous
                .as_ref()
                .and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|e| e.addr == addr && e.host.as_deref() == host)
                })
                .cloned()
        };
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            match kept(endpoint.addr, None) {
                Some(existing) => {
                    existing.set_weight(endpoint.weight);
                    endpoints.push(existing);
                }
                None => endpoints.push(Arc::new(Endpoint::new(
                    endpoint,
                    config.keepalive,
                    outlier.clone(),
                ))),
            }
        }
        // Addresses found by DNS stay until the names are looked up again.
        for named in &config.names {
            for existing in previous.iter().flat_map(|p| &p.endpoints) {
                if existing.host.as_deref() == Some(named.host.as_str())
                    && existing.addr.port() == named.port
                {
                    existing.set_weight(named.weight);
                    endpoints.push(existing.clone());
                }
            }
        }
        for endpoint in &endpoints {
            endpoint
                .pool
                .set_transport(config.tls.clone(), config.protocol);
        }
        outlier.set_endpoints(&endpoints);
        let unresolved = config.names.iter().any(|n| {
            !endpoints
                .iter()
                .any(|e| e.host.as_deref() == Some(n.host.as_str()))
        });
        Upstream {
            name: Arc::from(config.name.as_str()),
            members: ArcSwap::from_pointee(Members {
                balancer: Balancer::new(&config.balance, &endpoints),
                slow_start: config.slow_start,
                unresolved,
                endpoints,
            }),
            retired: watch::Sender::new(false),
            balance: config.balance.clone(),
            slow_start: config.slow_start,
            keepalive: config.keepalive,
            tls: config.tls.clone(),
            protocol: config.protocol,
            outlier,
            admission,
            history,
        }
    }

    /// Takes the figures of the slots completed since the last call into its history.
    pub fn sample_history(&self, now_ms: u64) {
        let members = self.members();
        let queued = self.admission.as_ref().map(|a| a.take_peak_queued());
        self.history
            .sample(members.endpoints.iter().map(|e| &e.recent), queued, now_ms);
    }

    /// Resolves when the upstream is retired.
    pub fn retired(&self) -> watch::Receiver<bool> {
        self.retired.subscribe()
    }

    /// Ends the upstream's health checks and lookups; endpoints that no upstream took over
    /// are retired by the caller.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// The endpoints now.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replaces the endpoints, with a balancer rebuilt for them.
    pub fn set_members(&self, endpoints: Vec<Arc<Endpoint>>, unresolved: bool) {
        self.outlier.set_endpoints(&endpoints);
        self.members.store(Arc::new(Members {
            balancer: Balancer::new(&self.balance, &endpoints),
            slow_start: self.slow_start,
            unresolved,
            endpoints,
        }));
    }

    /// A new endpoint for this upstream, sharing its pool settings and outlier policy.
    pub fn endpoint(&self, config: &EndpointConfig) -> Endpoint {
        let endpoint = Endpoint::new(config, self.keepalive, self.outlier.clone());
        endpoint.pool.set_transport(self.tls.clone(), self.protocol);
        endpoint
    }

    /// What a request is hashed by, when the upstream balances by hash.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.balance {
            Balance::Hash(key) => Some(key),
            _ => None,
        }
    }

    /// The balancer's name, as in the config.
    pub fn balance(&self) -> &'static str {
        match self.balance {
            Balance::RoundRobin => "round-robin",
            Balance::LeastRequest => "least-request",
            Balance::Ewma => "ewma",
            Balance::Hash(_) => "hash",
        }
    }

    /// The endpoint with this address, if the upstream has it now.
    pub fn find(&self, label: &str) -> Option<Arc<Endpoint>> {
        self.members()
            .endpoints
            .iter()
            .find(|e| &*e.label == label)
            .cloned()
    }
}

impl Members {
    /// The next usable endpoint, skipping those in `tried`; `None` when none is left.
    /// `key` is the request's hash key when the upstream balances by hash.
    pub fn pick(&self, tried: &[usize], key: Option<u64>) -> Option<usize> {
        self.pick_at(tried, key, now_ms())
    }

    /// [`Members::pick`] at `now` (see [`now_ms`]), for a caller that read the clock.
    pub fn pick_at(&self, tried: &[usize], key: Option<u64>, now: u64) -> Option<usize> {
        let pick = Pick {
            endpoints: &self.endpoints,
            tried,
            now,
            slow_start: self.slow_start,
        };
        self.balancer.pick(&pick, key)
    }

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
    use crate::config::Outlier;
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
            names: Vec::new(),
            tls: None,
            protocol: Protocol::Http1,
            admission: None,
        })
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_spread() {
        let u = upstream(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7)
            .map(|_| u.members().pick(&[], None).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let u = upstream(&[1, 1, 1]);
        let first = u.members().pick(&[], None).unwrap();
        let second = u.members().pick(&[first], None).unwrap();
        assert_ne!(first, second);
        assert_eq!(u.members().pick(&[0, 1, 2], None), None);
    }
}
