//! The config file as written: serde structs that mirror the TOML, with spans.
//!
//! Every table denies unknown keys, and every key is optional here: defaults are applied by
//! [`super::runtime`], which validates and builds the runtime types. Keys that a later
//! version of baton implements are kept as raw values so that validation can refuse them at
//! their location instead of accepting and ignoring them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::units::{Dur, Size};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub admin: RawAdmin,
    pub log: RawLog,
    pub store: RawStore,
    pub dns: RawDns,
    pub listeners: Vec<Spanned<RawListener>>,
    pub routes: Vec<Spanned<RawRoute>>,
    pub upstreams: BTreeMap<Spanned<String>, RawUpstream>,
    pub error_pages: BTreeMap<Spanned<String>, Spanned<String>>,
    pub status_page: Option<Spanned<RawStatusPage>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStatusPage {
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<Size>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    pub servers: Option<Vec<Spanned<String>>>,
    pub min_ttl: Option<Dur>,
    pub max_ttl: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub access: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListener {
    pub name: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawCertFiles>>,
    pub certs: Vec<Spanned<RawSniCert>>,
    pub trusted_proxies: Vec<Spanned<String>>,
    pub header_read_timeout: Option<Dur>,
    pub max_header_bytes: Option<Spanned<Size>>,
    pub idle_timeout: Option<Dur>,
    pub max_concurrent_streams: Option<Spanned<u32>>,
}

/// A certificate chain and its key, PEM files: a listener's `tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCertFiles {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// One of `[[listeners.certs]]`: a certificate served to clients that ask for `sni`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSniCert {
    pub sni: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub max_body_bytes: Option<Size>,
    pub preserve_host: Option<bool>,
    pub maintenance: Option<bool>,
    pub maintenance_retry_after: Option<Dur>,
    pub timeouts: RawTimeouts,
    pub retry: RawRetry,
    pub cache: Option<Spanned<RawCache>>,
    pub idempotency: Option<Spanned<RawIdempotency>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// A route's `cache`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub max_bytes: Option<Spanned<Size>>,
    pub max_object_bytes: Option<Spanned<Size>>,
    pub default_ttl: Option<Dur>,
    pub stale_if_error: Option<Dur>,
    pub stale_while_revalidate: Option<Dur>,
}

/// A route's `rate_limit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub requests: Option<Spanned<u64>>,
    pub per: Option<Spanned<Dur>>,
    pub burst: Option<Spanned<u64>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdempotency {
    pub header: Option<Spanned<String>>,
    pub ttl: Option<Dur>,
    pub on_unknown: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect: Option<Dur>,
    pub response_header: Option<Dur>,
    pub idle: Option<Dur>,
    pub total: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub buffer_bytes: Option<Size>,
    pub non_idempotent: Option<bool>,
    pub budget_percent: Option<Spanned<u32>>,
    pub min_per_second: Option<u32>,
    pub backoff: Option<Dur>,
    pub max_backoff: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub endpoints: Option<Spanned<Vec<Spanned<RawEndpoint>>>>,
    pub balance: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub keepalive: RawKeepalive,
    /// A number, or `"auto"`.
    pub max_inflight: Option<Spanned<toml::Value>>,
    pub hash_key: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub queue: Option<Spanned<RawQueue>>,
    pub slow_start: Option<Dur>,
    pub health: Option<Spanned<RawHealth>>,
    pub outlier: RawOutlier,
}

/// An upstream's `queue`: where requests wait while `max_inflight` are in flight.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    pub size: Option<Spanned<u64>>,
    pub timeout: Option<Dur>,
}

/// An upstream's `tls`: how its connections are secured.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    pub sni: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub verify: Option<bool>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub healthy: Option<Spanned<u32>>,
    pub unhealthy: Option<Spanned<u32>>,
    pub expect: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub failure_percent: Option<Spanned<u32>>,
    pub failure_window: Option<Spanned<Dur>>,
    pub min_requests: Option<Spanned<u32>>,
    pub base_ejection: Option<Dur>,
    pub max_ejection: Option<Dur>,
    pub max_ejected_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeepalive {
    pub idle: Option<Dur>,
    pub max_idle_per_endpoint: Option<usize>,
}

/// An endpoint: `"IP:port"` or `{ addr = "IP:port", weight = N }`.
#[derive(Debug)]
pub struct RawEndpoint {
    pub addr: String,
    pub weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointTable {
    addr: String,
    weight: Option<u32>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;
        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint: \"IP:port\" or { addr = \"IP:port\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    addr: v.to_owned(),
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEndpoint, A::Error> {
                let table =
                    RawEndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEndpoint {
                    addr: table.addr,
                    weight: table.weight,
                })
            }
        }
        deserializer.deserialize_any(EndpointVisitor)
    }
}
