//! The validated runtime config, built from `RawConfig` with every default applied.
//!
//! The types here are what the rest of baton uses; `validate` builds them from the
//! file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::tls::{Certificates, ClientTls};

/// Defaults of SPEC §2, named so that the reference in the README and the code agree.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_STATUS_PAGE_PATH: &str = "/.baton/status";
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 << 10;
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
pub const DEFAULT_MAINTENANCE_RETRY_AFTER: Duration = Duration::from_secs(300);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_ATTEMPTS: u32 = 3;
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 3;
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(250);
pub const DEFAULT_BUFFER_BYTES: u64 = 64 << 10;
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 64;
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(10);
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY: u32 = 2;
pub const DEFAULT_UNHEALTHY: u32 = 3;
pub const DEFAULT_HEALTH_EXPECT: &str = "200-399";
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
pub const DEFAULT_FAILURE_PERCENT: u32 = 5;
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_QUEUE_SIZE: usize = 1024;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most a fixed `max_inflight` or a queue may be: beyond, a limit protects nothing.
pub const MAX_INFLIGHT: u32 = 1_000_000;
pub const MAX_QUEUE_SIZE: usize = 1_000_000;
/// The most `requests` or `burst` of a rate limit may be.
pub const MAX_RATE_REQUESTS: u64 = 1_000_000_000;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;
pub const DEFAULT_CACHE_MAX_OBJECT_BYTES: u64 = 8 << 20;
pub const DEFAULT_RATE_PER: Duration = Duration::from_secs(1);
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// hyper refuses a read buffer below 8 KiB, so no smaller head limit can be enforced.
pub const MIN_MAX_HEADER_BYTES: u64 = 8 << 10;

/// A problem in the config, at a byte range of the file when it has one.
#[derive(Debug, Clone)]
pub struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Admin,
    pub log: Log,
    pub store: StoreConfig,
    pub dns: Dns,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Error page templates by status code ("502") or cause code, already read from disk.
    pub error_pages: HashMap<String, String>,
    pub status_page: Option<StatusPage>,
    /// The file the config was read from, read again on reload; `None` for config text.
    pub source: Option<PathBuf>,
}

/// Where idempotency keys are kept (SPEC §2 `[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process: one baton instance; its records hold at most `max_bytes`.
    Memory { max_bytes: u64 },
    /// In Redis, shared by several instances.
    Redis { url: String },
}

/// How host names in endpoints are resolved (SPEC §2 `[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers; empty means the system's resolver configuration.
    pub servers: Vec<SocketAddr>,
    /// Record TTLs are clamped to `min_ttl..=max_ttl` to decide when to resolve again.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The secret every admin POST must present (and every request, off loopback), as
    /// `Authorization: Bearer TOKEN` or as the password of Basic authentication.
    pub token: Option<String>,
}

/// The public, sanitized status page (SPEC §2 `[status_page]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub access: AccessLogTarget,
    pub level: tracing::Level,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    /// HTTPS: the certificates, read when the config was loaded.
    pub tls: Option<Certificates>,
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// A client connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// HTTP/2: streams a client may have open at once.
    pub max_concurrent_streams: u32,
}

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// `*.example.com`: stored as `.example.com`, matches any subdomain but not the apex.
    Suffix(String),
    Exact(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: HostPattern,
    pub path_prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub max_body_bytes: u64,
    pub preserve_host: bool,
    pub maintenance: bool,
    pub maintenance_retry_after: Duration,
    pub timeouts: Timeouts,
    pub retry: Retry,
    /// Idempotency keys, when the route has `idempotency`.
    pub idempotency: Option<Idempotency>,
    /// The route's rate limit, when it has `rate_limit`.
    pub rate_limit: Option<RateLimit>,
    /// The route's shared cache, when it has `cache`.
    pub cache: Option<CacheConfig>,
    /// How much of a request body baton reads before it forwards the request; a body that
    /// fits is kept, so that a request can be sent again.
    pub buffer_bytes: usize,
}

/// A route's cache (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most the route's stored responses may hold, headers and bodies.
    pub max_bytes: u64,
    /// A larger response is streamed to the client and not stored.
    pub max_object_bytes: u64,
    /// How long a response without explicit freshness (`max-age`, `s-maxage`, `Expires`)
    /// stays fresh, when its status may be cached by default; zero: the RFC 9111 §4.2.2
    /// heuristic (a tenth of the time since `Last-Modified`).
    pub default_ttl: Duration,
    /// How long past its freshness a stored response may answer instead of a 5xx, or while
    /// it is refreshed, when the response itself does not say (RFC 5861).
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
}

/// A route's rate limit (SPEC §9): `requests` per `per` for each key, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateKey,
    /// The `RateLimit-Policy` field every answer of the route carries: the burst as the
    /// quota, in the time the whole burst takes to come back.
    pub policy: http::HeaderValue,
}

impl RateLimit {
    pub fn new(requests: u32, per: Duration, burst: u32, key: RateKey) -> RateLimit {
        let window = per.as_secs_f64() * f64::from(burst) / f64::from(requests);
        let policy = format!("\"default\";q={burst};w={}", window.ceil().max(1.0) as u64);
        RateLimit {
            requests,
            per,
            burst,
            key,
            policy: http::HeaderValue::try_from(policy)
                .unwrap_or(http::HeaderValue::from_static("\"default\"")),
        }
    }
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's address, after `trusted_proxies`.
    ClientIp,
    /// A request header's value; requests without it are not limited.
    Header(http::HeaderName),
    /// One limit for the whole route.
    Route,
}

/// Idempotency keys on a route (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub header: http::HeaderName,
    /// How long a key and its stored response are kept.
    pub ttl: Duration,
    /// What a repeat gets when an earlier request with the key was sent and never answered:
    /// `true` forwards it again (the upstream deduplicates), `false` answers 409.
    pub forward_unknown: bool,
}

/// The retry policy of a route (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// Retry requests of any method after they were sent (for upstreams that deduplicate).
    pub non_idempotent: bool,
    /// Retries allowed as a share of the route's recent requests ...
    pub budget_percent: u32,
    /// ... plus this many per second.
    pub min_per_second: u32,
    /// The n-th retry waits a random time up to `backoff` × 2^n, at most `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// Route timeouts; `None` where the file says `"0s"` (no limit).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub response_header: Option<Duration>,
    pub idle: Option<Duration>,
    pub total: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    /// Endpoints given as IP addresses.
    pub endpoints: Vec<EndpointConfig>,
    /// Endpoints given as host names, resolved while baton runs.
    pub names: Vec<NamedEndpoint>,
    pub balance: Balance,
    pub slow_start: Duration,
    pub keepalive: Keepalive,
    pub outlier: Outlier,
    /// Active health checks, when the upstream has `health`.
    pub health: Option<HealthCheck>,
    /// TLS to the endpoints, when the upstream has `tls`.
    pub tls: Option<ClientTls>,
    pub protocol: Protocol,
    /// Admission (SPEC §9): `None` when requests are not limited.
    pub admission: Option<AdmissionConfig>,
}

/// How many requests an upstream takes at once, and where the rest wait (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub limit: InflightLimit,
    /// Requests that may wait for a place (0: none wait, the overflow is refused at once) ...
    pub queue_size: usize,
    /// ... each for at most this long.
    pub queue_timeout: Duration,
}

/// `max_inflight`: a number, or found by baton from the latency it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightLimit {
    Fixed(u32),
    Auto,
}

/// The HTTP version spoken to an upstream's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 over TLS, agreed by ALPN.
    H2,
    /// HTTP/2 over plain TCP, by prior knowledge.
    H2c,
}

/// Active health checks (SPEC §7): `GET path` every `interval`, each within `timeout`;
/// `unhealthy` failures in a row take the endpoint out, `healthy` passes bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
    /// Accepted statuses, as inclusive ranges.
    pub expect: Vec<(u16, u16)>,
}

impl HealthCheck {
    pub fn expects(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// Parses `"200-399"`, `"200"` or a comma-separated list of those.
pub(super) fn parse_expect(text: &str) -> Option<Vec<(u16, u16)>> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            let (low, high) = (
                low.trim().parse::<u16>().ok()?,
                high.trim().parse::<u16>().ok()?,
            );
            ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some((low, high))
        })
        .collect()
}

/// How an upstream spreads requests over its endpoints (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Ewma,
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

/// Passive outlier detection (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject an endpoint; 0 turns this rule off.
    pub consecutive_failures: u32,
    /// The failed share of attempts, in percent, that ejects an endpoint ...; 0 turns this
    /// rule off.
    pub failure_percent: u32,
    /// ... within this window ...
    pub failure_window: Duration,
    /// ... once it had at least this many attempts in it.
    pub min_requests: u32,
    /// The first ejection's length; the n-th lasts n times as long ...
    pub base_ejection: Duration,
    /// ... up to this.
    pub max_ejection: Duration,
    /// The share of the upstream's endpoints that may be ejected at once (at least one).
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Outlier {
        Outlier {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            failure_percent: DEFAULT_FAILURE_PERCENT,
            failure_window: DEFAULT_FAILURE_WINDOW,
            min_requests: DEFAULT_MIN_REQUESTS,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

/// An endpoint given as `host:port`: every address the host resolves to is an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEndpoint {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub max_idle_per_endpoint: usize,
}
