//! Validating `[upstreams.NAME]`: endpoints (addresses or host names), balancing, health
//! checks, outlier detection and keep-alive.

use std::net::SocketAddr;

use toml::Spanned;

use super::Validator;
use crate::config::raw::{RawHealth, RawUpstream, RawUpstreamTls};
use crate::config::runtime::*;
use crate::tls::client::SettingError;
use crate::tls::{ClientTls, ClientTlsSettings};

/// The shortest `outlier.failure_window`: its tenths are the slots attempts are counted in.
const MIN_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) fn build_upstream(
    v: &mut Validator,
    name: &Spanned<String>,
    upstream: &RawUpstream,
) -> Option<UpstreamConfig> {
    let balance = build_balance(v, name, upstream);
    let health = upstream.health.as_ref().and_then(|h| build_health(v, h));
    // `None`: a problem was recorded; the rest is still checked.
    let tls = match &upstream.tls {
        None => Some(None),
        Some(tls) => build_tls(v, tls, upstream.protocol.as_ref()).map(Some),
    };
    let protocol = match upstream
        .protocol
        .as_ref()
        .map(|p| (p, p.get_ref().as_str()))
    {
        None | Some((_, "http1")) => Protocol::Http1,
        Some((_, "h2")) => Protocol::H2,
        Some((_, "h2c")) => Protocol::H2c,
        Some((protocol, other)) => {
            v.error(
                Some(protocol.span()),
                format!("`protocol` must be \"http1\", \"h2\" or \"h2c\", not {other:?}"),
            );
            Protocol::Http1
        }
    };
    if let Some(span) = upstream.protocol.as_ref().map(|p| p.span()) {
        match (protocol, upstream.tls.is_some()) {
            (Protocol::H2, false) => v.error(
                Some(span),
                "protocol \"h2\" is HTTP/2 over TLS: add `tls = { ... }`, or use \"h2c\" for HTTP/2 without TLS",
            ),
            (Protocol::H2c, true) => v.error(
                Some(span),
                "protocol \"h2c\" is HTTP/2 without TLS: remove `tls`, or use \"h2\" for HTTP/2 over TLS",
            ),
            _ => {}
        }
    }
    let admission = build_admission(v, upstream);
    let Some(raw_endpoints) = &upstream.endpoints else {
        v.error(
            Some(name.span()),
            format!("upstream {:?} needs `endpoints`", name.get_ref()),
        );
        return None;
    };
    if raw_endpoints.get_ref().is_empty() {
        v.error(
            Some(raw_endpoints.span()),
            format!("upstream {:?} has no endpoints", name.get_ref()),
        );
    }
    let mut endpoints = Vec::new();
    let mut names: Vec<NamedEndpoint> = Vec::new();
    for endpoint in raw_endpoints.get_ref() {
        let raw = endpoint.get_ref();
        let weight = raw.weight.unwrap_or(1);
        if weight == 0 {
            v.error(
                Some(endpoint.span()),
                "an endpoint's `weight` must be at least 1",
            );
            continue;
        }
        match raw.addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if endpoints.iter().any(|e: &EndpointConfig| e.addr == addr) {
                    v.error(Some(endpoint.span()), format!("endpoint {addr} is listed twice"));
                }
                endpoints.push(EndpointConfig { addr, weight });
            }
            Err(_) => match host_port(&raw.addr) {
                Some((host, port)) => {
                    if names.iter().any(|n| n.host == host && n.port == port) {
                        v.error(
                            Some(endpoint.span()),
                            format!("endpoint {:?} is listed twice", raw.addr),
                        );
                    }
                    names.push(NamedEndpoint { host, port, weight });
                }
                None => v.error(
                    Some(endpoint.span()),
                    format!(
                        "endpoint {:?} must be an IP address and port such as \"127.0.0.1:3000\", or a host name and port such as \"backend.internal:3000\"",
                        raw.addr
                    ),
                ),
            },
        }
    }
    let keepalive = Keepalive {
        idle: upstream
            .keepalive
            .idle
            .map_or(DEFAULT_KEEPALIVE_IDLE, |d| d.0),
        max_idle_per_endpoint: upstream
            .keepalive
            .max_idle_per_endpoint
            .unwrap_or(DEFAULT_MAX_IDLE_PER_ENDPOINT),
    };
    let raw_outlier = &upstream.outlier;
    let max_ejected_percent = v.percent(
        raw_outlier.max_ejected_percent.as_ref(),
        "outlier.max_ejected_percent",
        DEFAULT_MAX_EJECTED_PERCENT,
    );
    let failure_percent = v.percent(
        raw_outlier.failure_percent.as_ref(),
        "outlier.failure_percent",
        DEFAULT_FAILURE_PERCENT,
    );
    let failure_window = match &raw_outlier.failure_window {
        None => DEFAULT_FAILURE_WINDOW,
        Some(window) if window.get_ref().0 < MIN_FAILURE_WINDOW => {
            v.error(
                Some(window.span()),
                "`outlier.failure_window` must be at least 100ms",
            );
            DEFAULT_FAILURE_WINDOW
        }
        Some(window) => window.get_ref().0,
    };
    let min_requests = match &raw_outlier.min_requests {
        None => DEFAULT_MIN_REQUESTS,
        Some(n) if *n.get_ref() == 0 => {
            v.error(Some(n.span()), "`outlier.min_requests` must be at least 1");
            DEFAULT_MIN_REQUESTS
        }
        Some(n) => *n.get_ref(),
    };
    let outlier = Outlier {
        consecutive_failures: raw_outlier
            .consecutive_failures
            .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES),
        failure_percent,
        failure_window,
        min_requests,
        base_ejection: raw_outlier
            .base_ejection
            .map_or(DEFAULT_BASE_EJECTION, |d| d.0),
        max_ejection: raw_outlier
            .max_ejection
            .map_or(DEFAULT_MAX_EJECTION, |d| d.0),
        max_ejected_percent,
    };
    Some(UpstreamConfig {
        name: name.get_ref().clone(),
        endpoints,
        names,
        balance: balance?,
        slow_start: upstream.slow_start.map_or(DEFAULT_SLOW_START, |d| d.0),
        keepalive,
        outlier,
        health,
        tls: tls?,
        protocol,
        admission,
    })
}

/// `max_inflight` and `queue` (SPEC §9). A `queue` without a limit is accepted and
/// unused, as SPEC §2 has it: the defaults may be written out.
fn build_admission(v: &mut Validator, upstream: &RawUpstream) -> Option<AdmissionConfig> {
    let (queue_size, queue_timeout) = match &upstream.queue {
        None => (DEFAULT_QUEUE_SIZE, DEFAULT_QUEUE_TIMEOUT),
        Some(queue) => {
            let queue = queue.get_ref();
            let size = match &queue.size {
                None => DEFAULT_QUEUE_SIZE,
                Some(size) => match usize::try_from(*size.get_ref()) {
                    Ok(n) if n <= MAX_QUEUE_SIZE => n,
                    _ => {
                        v.error(
                            Some(size.span()),
                            format!("`queue.size` must be 0 to {MAX_QUEUE_SIZE}"),
                        );
                        DEFAULT_QUEUE_SIZE
                    }
                },
            };
            (size, queue.timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.0))
        }
    };
    let raw = upstream.max_inflight.as_ref()?;
    let limit = match raw.get_ref() {
        toml::Value::Integer(0) => return None,
        toml::Value::Integer(n) if (1..=i64::from(MAX_INFLIGHT)).contains(n) => {
            InflightLimit::Fixed(*n as u32)
        }
        toml::Value::String(text) if text == "auto" => InflightLimit::Auto,
        _ => {
            v.error(
                Some(raw.span()),
                format!("`max_inflight` must be a number of requests (0 to {MAX_INFLIGHT}; 0 = unlimited) or \"auto\""),
            );
            return None;
        }
    };
    Some(AdmissionConfig {
        limit,
        queue_size,
        queue_timeout,
    })
}

fn build_health(v: &mut Validator, raw: &Spanned<RawHealth>) -> Option<HealthCheck> {
    let health = raw.get_ref();
    let path_text = health
        .path
        .as_ref()
        .map_or(DEFAULT_HEALTH_PATH, |p| p.get_ref().as_str());
    let path = match path_text.parse::<http::uri::PathAndQuery>() {
        Ok(path) if path_text.starts_with('/') => Some(path),
        _ => {
            v.error(
                health.path.as_ref().map(|p| p.span()),
                format!("`health.path` must be a path such as \"/healthz\", not {path_text:?}"),
            );
            None
        }
    };
    let positive =
        |v: &mut Validator, key: &str, value: &Option<Spanned<u32>>, default: u32| match value {
            Some(n) if *n.get_ref() == 0 => {
                v.error(Some(n.span()), format!("`health.{key}` must be at least 1"));
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        };
    let healthy = positive(v, "healthy", &health.healthy, DEFAULT_HEALTHY);
    let unhealthy = positive(v, "unhealthy", &health.unhealthy, DEFAULT_UNHEALTHY);
    let interval = health
        .interval
        .as_ref()
        .map_or(DEFAULT_HEALTH_INTERVAL, |d| d.get_ref().0);
    let timeout = health
        .timeout
        .as_ref()
        .map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.get_ref().0);
    if interval.is_zero() {
        v.error(
            health.interval.as_ref().map(|d| d.span()),
            "`health.interval` must be more than 0s",
        );
    }
    if timeout.is_zero() {
        v.error(
            health.timeout.as_ref().map(|d| d.span()),
            "`health.timeout` must be more than 0s",
        );
    }
    let expect_text = health
        .expect
        .as_ref()
        .map_or(DEFAULT_HEALTH_EXPECT, |e| e.get_ref().as_str());
    let expect = parse_expect(expect_text);
    if expect.is_none() {
        v.error(
            health.expect.as_ref().map(|e| e.span()),
            format!("`health.expect` must be statuses or ranges such as \"200-399\" or \"200,204\", not {expect_text:?}"),
        );
    }
    Some(HealthCheck {
        path: path?,
        interval,
        timeout,
        healthy,
        unhealthy,
        expect: expect?,
    })
}

fn build_balance(
    v: &mut Validator,
    name: &Spanned<String>,
    upstream: &RawUpstream,
) -> Option<Balance> {
    let balance = match upstream.balance.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("ewma") => Balance::Ewma,
        Some("round-robin") => Balance::RoundRobin,
        Some("least-request") => Balance::LeastRequest,
        Some("hash") => {
            let Some(key) = &upstream.hash_key else {
                v.error(
                    upstream.balance.as_ref().map(|b| b.span()),
                    format!(
                        "upstream {:?} balances by hash but has no `hash_key` (\"header:NAME\", \"cookie:NAME\", \"client-ip\" or \"path\")",
                        name.get_ref()
                    ),
                );
                return None;
            };
            return build_hash_key(v, key).map(Balance::Hash);
        }
        Some(other) => {
            v.error(
                upstream.balance.as_ref().map(|b| b.span()),
                format!("`balance` must be \"round-robin\", \"least-request\", \"ewma\" or \"hash\", not {other:?}"),
            );
            return None;
        }
    };
    if let Some(key) = &upstream.hash_key {
        v.error(
            Some(key.span()),
            "`hash_key` only applies with balance = \"hash\"",
        );
    }
    Some(balance)
}

fn build_hash_key(v: &mut Validator, key: &Spanned<String>) -> Option<HashKey> {
    let text = key.get_ref().as_str();
    let parsed = match text.split_once(':') {
        _ if text == "client-ip" => Some(HashKey::ClientIp),
        _ if text == "path" => Some(HashKey::Path),
        Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
            .ok()
            .map(HashKey::Header),
        Some(("cookie", name)) if !name.trim().is_empty() => {
            Some(HashKey::Cookie(name.trim().to_owned()))
        }
        _ => None,
    };
    if parsed.is_none() {
        v.error(
            Some(key.span()),
            format!("`hash_key` must be \"header:NAME\", \"cookie:NAME\", \"client-ip\" or \"path\", not {text:?}"),
        );
    }
    parsed
}

/// `host:port` with a host name of letters, digits, `-` and `.` (lowercased).
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// HTTP/1.1 by ALPN, for upstreams that insist on a protocol being named.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// HTTP/2 over TLS is agreed by ALPN (RFC 9113 §3.2).
const ALPN_H2: &[u8] = b"h2";

/// An upstream's `tls`, its files read now.
fn build_tls(
    v: &mut Validator,
    raw: &Spanned<RawUpstreamTls>,
    protocol: Option<&Spanned<String>>,
) -> Option<ClientTls> {
    let tls = raw.get_ref();
    let path =
        |value: &Option<Spanned<String>>| value.as_ref().map(|p| v.base_dir.join(p.get_ref()));
    let settings = ClientTlsSettings {
        sni: tls.sni.as_ref().map(|s| s.get_ref().clone()),
        ca: path(&tls.ca),
        verify: tls.verify.unwrap_or(true),
        cert: path(&tls.cert),
        key: path(&tls.key),
        alpn: vec![if protocol.is_some_and(|p| p.get_ref() == "h2") {
            ALPN_H2.to_vec()
        } else {
            ALPN_HTTP1.to_vec()
        }],
    };
    match ClientTls::new(settings) {
        Ok(client) => Some(client),
        Err(err) => {
            let (key, span, message) = match err {
                SettingError::Sni(m) => ("sni", tls.sni.as_ref().map(|s| s.span()), m),
                SettingError::Ca(m) => ("ca", tls.ca.as_ref().map(|s| s.span()), m),
                SettingError::Cert(m) => ("cert", tls.cert.as_ref().map(|s| s.span()), m),
                SettingError::Key(m) => ("key", tls.key.as_ref().map(|s| s.span()), m),
            };
            v.error(span.or(Some(raw.span())), format!("`tls.{key}`: {message}"));
            None
        }
    }
}
