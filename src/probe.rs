//! `baton check --probe`: resolve, connect to and health-check every endpoint of every
//! upstream once, as the gateway would, and report what answered.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::runtime::Protocol;
use crate::config::runtime::DEFAULT_CONNECT_TIMEOUT;
use crate::config::{Config, HealthCheck, Keepalive};
use crate::tls::ClientTls;
use crate::upstream::pool::{ConnectError, Pool};
use crate::upstream::{dns, health};

/// What became of one endpoint address.
#[derive(Debug, Clone)]
pub struct Probe {
    pub upstream: String,
    /// The endpoint as configured: an address, or `host:port`.
    pub endpoint: String,
    pub address: Option<SocketAddr>,
    pub dns: String,
    pub connect: String,
    pub health: String,
    pub time: Duration,
    /// Connected, and passed the health check when the upstream has one.
    pub reachable: bool,
}

/// Probes every endpoint of `config`, all at once; the results in config order.
pub async fn probe(config: &Config) -> Vec<Probe> {
    let resolver = if config.upstreams.iter().any(|u| !u.names.is_empty()) {
        Some(dns::resolver(&config.dns))
    } else {
        None
    };
    let mut targets = Vec::new();
    let mut results = Vec::new();
    for upstream in &config.upstreams {
        for endpoint in &upstream.endpoints {
            targets.push(Target {
                upstream: upstream.name.clone(),
                endpoint: endpoint.addr.to_string(),
                addr: endpoint.addr,
                host: None,
                dns: "-".to_owned(),
                check: upstream.health.clone(),
                tls: upstream.tls.clone(),
                protocol: upstream.protocol,
            });
        }
        for named in &upstream.names {
            let label = format!("{}:{}", named.host, named.port);
            let lookup = match &resolver {
                Some(Ok(resolver)) => resolver
                    .lookup_ip(named.host.as_str())
                    .await
                    .map_err(|err| lookup_error(&err.to_string())),
                Some(Err(err)) => Err(format!("no resolver: {err}")),
                None => Err("no resolver".to_owned()),
            };
            match lookup {
                Ok(lookup) => {
                    let mut ips: Vec<_> = lookup.iter().collect();
                    ips.sort_unstable();
                    ips.dedup();
                    let dns = format!(
                        "{} address{}",
                        ips.len(),
                        if ips.len() == 1 { "" } else { "es" }
                    );
                    for ip in ips {
                        targets.push(Target {
                            upstream: upstream.name.clone(),
                            endpoint: label.clone(),
                            addr: SocketAddr::new(ip, named.port),
                            host: Some(named.host.clone()),
                            dns: dns.clone(),
                            check: upstream.health.clone(),
                            tls: upstream.tls.clone(),
                            protocol: upstream.protocol,
                        });
                    }
                }
                Err(err) => results.push((
                    usize::MAX,
                    Probe {
                        upstream: upstream.name.clone(),
                        endpoint: label,
                        address: None,
                        dns: format!("failed: {err}"),
                        connect: "-".to_owned(),
                        health: "-".to_owned(),
                        time: Duration::ZERO,
                        reachable: false,
                    },
                )),
            }
        }
    }
    let mut running = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        running.spawn(async move {
            let started = Instant::now();
            let (connect, health, reachable) = probe_address(&target).await;
            let Target {
                upstream,
                endpoint,
                addr,
                dns,
                ..
            } = target;
            (
                index,
                Probe {
                    upstream,
                    endpoint,
                    address: Some(addr),
                    dns,
                    connect,
                    health,
                    time: started.elapsed(),
                    reachable,
                },
            )
        });
    }
    while let Some(done) = running.join_next().await {
        if let Ok(done) = done {
            results.push(done);
        }
    }
    results.sort_by_key(|(index, probe)| {
        (
            config
                .upstreams
                .iter()
                .position(|u| u.name == probe.upstream),
            *index,
        )
    });
    results.into_iter().map(|(_, probe)| probe).collect()
}

/// One address to probe, and what its upstream says about it.
struct Target {
    upstream: String,
    endpoint: String,
    addr: SocketAddr,
    /// The host name the address was found under.
    host: Option<String>,
    dns: String,
    check: Option<HealthCheck>,
    tls: Option<ClientTls>,
    protocol: Protocol,
}

/// (connect, health, reachable) for one address: connected (with the TLS handshake when
/// the upstream has `tls`) as requests would be.
async fn probe_address(target: &Target) -> (String, String, bool) {
    let Target { addr, check, .. } = target;
    let pool = Pool::new(Keepalive {
        idle: Duration::ZERO,
        max_idle_per_endpoint: 0,
    });
    pool.set_transport(target.tls.clone(), target.protocol);
    let started = Instant::now();
    let host = target.host.as_deref();
    let connected = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, pool.connect(*addr, host)).await;
    let connect = match connected {
        Ok(Ok(stream)) => {
            drop(stream);
            format!("ok ({:.1} ms)", started.elapsed().as_secs_f64() * 1e3)
        }
        Ok(Err(ConnectError::Tcp(err))) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return ("refused".to_owned(), "-".to_owned(), false)
        }
        Ok(Err(err)) => return (format!("failed: {err}"), "-".to_owned(), false),
        Err(_) => {
            return (
                format!(
                    "timed out ({})",
                    humantime::format_duration(DEFAULT_CONNECT_TIMEOUT)
                ),
                "-".to_owned(),
                false,
            )
        }
    };
    let Some(check) = check else {
        return (connect, "no check configured".to_owned(), true);
    };
    let host_header =
        HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
    match health::request(&pool, *addr, host, &host_header, check).await {
        Ok(status) if check.expects(status) => {
            (connect, format!("{status} on {}", check.path), true)
        }
        Ok(status) => (
            connect,
            format!("{status} on {} (not expected)", check.path),
            false,
        ),
        Err(err) => (connect, format!("failed: {err}"), false),
    }
}

/// The probes as a table, then one line per upstream; and whether every upstream has a
/// reachable endpoint.
pub fn report(config: &Config, probes: &[Probe]) -> (String, bool) {
    let header = [
        "upstream", "endpoint", "address", "dns", "connect", "health", "time",
    ];
    let rows: Vec<[String; 7]> = probes
        .iter()
        .map(|p| {
            [
                p.upstream.clone(),
                p.endpoint.clone(),
                p.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                p.dns.clone(),
                p.connect.clone(),
                p.health.clone(),
                format!("{:.1} ms", p.time.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:width$}  "));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push('\n');
    let mut all_reachable = true;
    for upstream in &config.upstreams {
        let mine: Vec<&Probe> = probes
            .iter()
            .filter(|p| p.upstream == upstream.name)
            .collect();
        let reachable = mine.iter().filter(|p| p.reachable).count();
        if reachable == 0 {
            all_reachable = false;
            out.push_str(&format!(
                "upstream {}: NO reachable endpoint ({} probed)\n",
                upstream.name,
                mine.len()
            ));
        } else {
            out.push_str(&format!(
                "upstream {}: {reachable} of {} endpoints reachable\n",
                upstream.name,
                mine.len()
            ));
        }
        for dead in mine.iter().filter(|p| !p.reachable) {
            let why = if dead.address.is_none() {
                &dead.dns
            } else if dead.health == "-" {
                &dead.connect
            } else {
                &dead.health
            };
            let address = dead
                .address
                .map(|a| a.to_string())
                .filter(|a| *a != dead.endpoint)
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  unreachable: {}{address}: {why}\n",
                dead.endpoint
            ));
        }
    }
    (out, all_reachable)
}

/// A resolver error in a few words: hickory's messages quote the whole query.
fn lookup_error(message: &str) -> String {
    if message.contains("no records found") {
        "no address for this name".to_owned()
    } else {
        message.to_owned()
    }
}
