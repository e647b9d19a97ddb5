//! Prometheus metrics (SPEC §11), served as text by the admin server.

use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: Arc<str>,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: Arc<str>,
    pub upstream: Arc<str>,
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResult {
    pub route: Arc<str>,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub upstream: Arc<str>,
    pub endpoint: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: Arc<str>,
    pub endpoint: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub listener: String,
    pub result: &'static str,
}

/// Request durations from 1 ms to about 33 s, doubling.
const DURATION_BUCKET_START: f64 = 0.001;
const DURATION_BUCKET_COUNT: u16 = 16;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        DURATION_BUCKET_START,
        2.0,
        DURATION_BUCKET_COUNT,
    ))
}

/// Queue waits from 100 µs to about 6.5 s, doubling.
const WAIT_BUCKET_START: f64 = 0.0001;
const WAIT_BUCKET_COUNT: u16 = 17;

fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        WAIT_BUCKET_START,
        2.0,
        WAIT_BUCKET_COUNT,
    ))
}

/// Label values are `Arc<str>`, shared with the runtime state, so that recording a metric
/// copies no string.
pub struct Metrics {
    registry: Registry,
    /// The route label of requests that matched no route.
    pub no_route: Arc<str>,
    pub requests: Family<RouteCode, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub retries: Family<RouteLabel, Counter>,
    pub idempotency: Family<RouteResult, Counter>,
    /// Requests on cached routes by what the cache did.
    pub cache: Family<RouteResult, Counter>,
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// TLS handshakes with clients, by listener and result.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// 1 when the endpoint takes new requests; set when metrics are read.
    pub endpoint_up: Family<EndpointLabels, Gauge>,
    /// Exchanges in progress per endpoint; set when metrics are read.
    pub endpoint_inflight: Family<EndpointLabels, Gauge>,
    pub reloads: Family<ResultLabel, Counter>,
    /// The upstream's `max_inflight` now (learned, for `"auto"`), and the requests waiting
    /// for a place; set when metrics are read.
    pub inflight_limit: Family<UpstreamLabel, Gauge>,
    pub queue: Family<UpstreamLabel, Gauge>,
    /// How long requests waited for admission, refused ones included.
    pub queue_wait: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    /// Panics caught on a request's path or a connection's (bugs).
    pub panics: Counter,
    /// Settled idempotency records and rate-limit keys dropped to keep the memory store
    /// within `max_bytes`.
    pub store_evictions: Counter,
    /// Redis commands that failed, and rate checks skipped because Redis just failed.
    pub store_errors: Counter,
    pub rate_limited: Family<RouteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let requests = Family::<RouteCode, Counter>::default();
        registry.register(
            "requests",
            "Responses sent to clients, by route and status code",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors by cause, including mid-body aborts",
            errors.clone(),
        );
        let duration = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            duration.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Tries against an endpoint, by outcome (ok or a cause code)",
            attempts.clone(),
        );
        let retries = Family::<RouteLabel, Counter>::default();
        registry.register(
            "retries",
            "Requests tried again after a failed attempt",
            retries.clone(),
        );
        let idempotency = Family::<RouteResult, Counter>::default();
        registry.register(
            "idempotency",
            "Keyed requests by what became of them: forwarded, replayed, or a cause code",
            idempotency.clone(),
        );
        let cache = Family::<RouteResult, Counter>::default();
        registry.register(
            "cache",
            "Requests on cached routes by what the cache did: hit, miss, collapsed, revalidated, stale-while-revalidate, stale-if-error, bypass, refresh, not-cached",
            cache.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections currently open",
            connections_open.clone(),
        );
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients, by result: ok (full), resumed, failed, timeout, plaintext (HTTP sent to a TLS port)",
            tls_handshakes.clone(),
        );
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_up",
            "1 when the endpoint takes new requests (not ejected, unhealthy or draining)",
            endpoint_up.clone(),
        );
        let endpoint_inflight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_inflight",
            "Exchanges in progress with the endpoint",
            endpoint_inflight.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads, by result (success or failure)",
            reloads.clone(),
        );
        let inflight_limit = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "upstream_inflight_limit",
            "Requests the upstream takes at once (max_inflight, or what \"auto\" learned)",
            inflight_limit.clone(),
        );
        let queue = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "upstream_queue",
            "Requests waiting for a place among the upstream's max_inflight",
            queue.clone(),
        );
        let queue_wait =
            Family::<UpstreamLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                wait_histogram,
            );
        registry.register(
            "upstream_queue_wait_seconds",
            "Time requests waited for admission to the upstream, refused ones included",
            queue_wait.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "panics",
            "Panics caught while handling a request or a connection (each one a bug)",
            panics.clone(),
        );
        let store_evictions = Counter::default();
        registry.register(
            "store_evictions",
            "Settled idempotency records and rate-limit keys dropped to keep the memory store within max_bytes",
            store_evictions.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Redis commands that failed, and rate-limit checks skipped (the request let through) because Redis had just failed",
            store_errors.clone(),
        );
        let rate_limited = Family::<RouteLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 rate-limited",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            reloads,
            inflight_limit,
            queue,
            queue_wait,
            panics,
            store_evictions,
            store_errors,
            rate_limited,
            endpoint_up,
            endpoint_inflight,
            no_route: Arc::from(""),
            requests,
            errors,
            duration,
            attempts,
            retries,
            idempotency,
            cache,
            connections_open,
            tls_handshakes,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One metric of a family, looked up the first time and kept: a family lookup takes a lock
/// and hashes the labels, too much to do for every request. Families never drop a metric,
/// so the kept one is the one the family reports.
pub struct Cached<M>(OnceLock<M>);

impl<M> Default for Cached<M> {
    fn default() -> Self {
        Cached(OnceLock::new())
    }
}

impl<M: Clone> Cached<M> {
    pub fn get<S, C>(&self, family: &Family<S, M, C>, labels: impl FnOnce() -> S) -> &M
    where
        S: Clone + Hash + Eq,
        C: MetricConstructor<M>,
    {
        self.0
            .get_or_init(|| family.get_or_create(&labels()).clone())
    }
}

/// How many status codes a route keeps its `requests` counters at hand for.
const CACHED_CODES: usize = 8;

/// A route's `requests` counters by status code, for the first few codes it answers with;
/// further codes go through the family.
#[derive(Default)]
pub struct CodeCounters([OnceLock<(u16, Counter)>; CACHED_CODES]);

impl CodeCounters {
    pub fn inc(&self, family: &Family<RouteCode, Counter>, route: &Arc<str>, code: u16) {
        for slot in &self.0 {
            let (cached, counter) = slot.get_or_init(|| {
                let labels = RouteCode {
                    route: route.clone(),
                    code,
                };
                (code, family.get_or_create(&labels).clone())
            });
            if *cached == code {
                counter.inc();
                return;
            }
        }
        family
            .get_or_create(&RouteCode {
                route: route.clone(),
                code,
            })
            .inc();
    }
}

/// A route's counters of a family labelled by result, for a small fixed set of results
/// known by their place: created on first use, then found without a lookup.
pub struct ResultCounters<const N: usize>([OnceLock<Counter>; N]);

impl<const N: usize> Default for ResultCounters<N> {
    fn default() -> Self {
        ResultCounters([const { OnceLock::new() }; N])
    }
}

impl<const N: usize> ResultCounters<N> {
    /// The counter of `result`, the `index`th of the set.
    pub fn get(
        &self,
        index: usize,
        result: &'static str,
        family: &Family<RouteResult, Counter>,
        route: &Arc<str>,
    ) -> Counter {
        let make = || {
            family
                .get_or_create(&RouteResult {
                    route: route.clone(),
                    result,
                })
                .clone()
        };
        match self.0.get(index) {
            Some(slot) => slot.get_or_init(make).clone(),
            None => make(),
        }
    }
}
