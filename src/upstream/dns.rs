//! Endpoints given as host names (SPEC §7): resolved with hickory-resolver (the system's
//! configuration, or `[dns] servers`), and resolved again when their TTL runs out, clamped
//! to `min_ttl..=max_ttl`. A new address joins the upstream and ramps up over `slow_start`;
//! a vanished one leaves it (requests in flight finish, no new ones go there); a failed
//! lookup keeps the last good addresses. An upstream whose names never resolved answers
//! 502 `upstream-dns-failed`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use super::endpoint::{now_ms, Endpoint};
use super::{health, Upstream};
use crate::config::{Dns, EndpointConfig, NamedEndpoint, UpstreamConfig};
use crate::gateway::stop_requested;

/// How long one query may take, and how often it is tried, before a lookup fails.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Builds the resolver from `[dns]`.
pub fn resolver(dns: &Dns) -> std::io::Result<TokioResolver> {
    let (config, mut options) = if dns.servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(std::io::Error::other)?
    } else {
        let servers = dns
            .servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    options.timeout = QUERY_TIMEOUT;
    options.attempts = QUERY_ATTEMPTS;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // The resolver's cache must not outlive what baton decides to use.
    options.positive_max_ttl = Some(dns.max_ttl);
    options.negative_max_ttl = Some(dns.min_ttl);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(std::io::Error::other)
}

/// What is known of one host name.
struct Name {
    endpoint: NamedEndpoint,
    /// The last good addresses; `None` until the first successful lookup.
    addresses: Option<Vec<IpAddr>>,
    next: Instant,
}

/// The host names of one upstream and their addresses.
pub struct Names {
    names: Vec<Name>,
}

impl Names {
    /// The names of `config`, with the addresses `upstream` already has for them (taken
    /// over from before a reload) as their last good ones; all are looked up at once.
    pub fn new(config: &UpstreamConfig, upstream: &Upstream) -> Names {
        let members = upstream.members();
        Names {
            names: config
                .names
                .iter()
                .map(|endpoint| {
                    let mut known: Vec<IpAddr> = members
                        .endpoints
                        .iter()
                        .filter(|e| e.host.as_deref() == Some(endpoint.host.as_str()))
                        .map(|e| e.addr.ip())
                        .collect();
                    known.sort_unstable();
                    known.dedup();
                    Name {
                        endpoint: endpoint.clone(),
                        addresses: (!known.is_empty()).then_some(known),
                        next: Instant::now(),
                    }
                })
                .collect(),
        }
    }

    /// Looks up every name whose time has come; true when an address set changed.
    async fn refresh(&mut self, resolver: &TokioResolver, dns: &Dns) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for name in self.names.iter_mut().filter(|n| n.next <= now) {
            let host = name.endpoint.host.as_str();
            match resolver.lookup_ip(host).await {
                Ok(lookup) => {
                    let mut found: Vec<IpAddr> = lookup.iter().collect();
                    found.sort_unstable();
                    found.dedup();
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    name.next = Instant::now() + ttl.clamp(dns.min_ttl, dns.max_ttl);
                    if name.addresses.as_ref() != Some(&found) {
                        tracing::info!(%host, addresses = ?found, "host name resolved");
                        name.addresses = Some(found);
                        changed = true;
                    }
                }
                Err(err) => {
                    name.next = Instant::now() + dns.min_ttl;
                    match &name.addresses {
                        Some(last) => {
                            tracing::warn!(%host, error = %err, kept = ?last, "lookup failed; keeping the last good addresses")
                        }
                        None => {
                            tracing::warn!(%host, error = %err, "lookup failed; the name has no address yet")
                        }
                    }
                }
            }
        }
        changed
    }

    fn next(&self) -> Option<Instant> {
        self.names.iter().map(|n| n.next).min()
    }

    fn unresolved(&self) -> bool {
        self.names.iter().any(|n| n.addresses.is_none())
    }

    /// Every address as an endpoint: (host, config).
    fn endpoints(&self) -> Vec<(Arc<str>, EndpointConfig)> {
        let mut out = Vec::new();
        for name in &self.names {
            let host: Arc<str> = Arc::from(name.endpoint.host.as_str());
            for ip in name.addresses.iter().flatten() {
                out.push((
                    host.clone(),
                    EndpointConfig {
                        addr: SocketAddr::new(*ip, name.endpoint.port),
                        weight: name.endpoint.weight,
                    },
                ));
            }
        }
        out
    }
}

/// Makes the upstream's endpoints its IP endpoints plus the current addresses of its names,
/// keeping the state of those that stay. Returns the endpoints that joined.
fn apply(
    upstream: &Upstream,
    config: &UpstreamConfig,
    names: &Names,
    ramp: bool,
) -> Vec<Arc<Endpoint>> {
    let current = upstream.members();
    let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> = current
        .endpoints
        .iter()
        .map(|e| (e.addr, e.clone()))
        .collect();
    let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
    let mut joined = Vec::new();
    for static_endpoint in &config.endpoints {
        if let Some(existing) = by_addr.remove(&static_endpoint.addr) {
            endpoints.push(existing);
        }
    }
    let now = now_ms();
    for (host, endpoint_config) in names.endpoints() {
        if endpoints.iter().any(|e| e.addr == endpoint_config.addr) {
            continue;
        }
        let endpoint = match by_addr.remove(&endpoint_config.addr) {
            Some(existing) => existing,
            None => {
                let mut fresh = upstream.endpoint(&endpoint_config);
                fresh.host = Some(host);
                let fresh = Arc::new(fresh);
                if ramp {
                    fresh.start_ramp(now);
                }
                joined.push(fresh.clone());
                fresh
            }
        };
        endpoints.push(endpoint);
    }
    for (addr, gone) in by_addr {
        tracing::info!(upstream = %upstream.name, endpoint = %addr, "address left DNS; draining it");
        gone.retire();
    }
    upstream.set_members(endpoints, names.unresolved());
    joined
}

/// Resolves the names of an upstream once, before it serves.
pub async fn start(
    upstream: &Upstream,
    config: &UpstreamConfig,
    dns: &Dns,
    resolver: &TokioResolver,
    names: &mut Names,
) {
    names.refresh(resolver, dns).await;
    apply(upstream, config, names, false);
}

/// Keeps the names of an upstream resolved until it is retired.
pub async fn run(
    upstream: Arc<Upstream>,
    config: UpstreamConfig,
    dns: Dns,
    resolver: Arc<TokioResolver>,
    mut names: Names,
) {
    let mut retired = upstream.retired();
    loop {
        let next = names.next().unwrap_or_else(|| Instant::now() + dns.max_ttl);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop_requested(&mut retired) => return,
        }
        if names.refresh(&resolver, &dns).await {
            let joined = apply(&upstream, &config, &names, true);
            if let Some(check) = &config.health {
                for endpoint in joined {
                    tokio::spawn(health::run(endpoint, check.clone(), upstream.retired()));
                }
            }
        }
    }
}
