//! What baton tells operators: metrics, the access log, and the [`Exchange`] record that
//! feeds both once a request has been answered.

pub mod access_log;
pub mod history;
pub mod metrics;
pub mod window;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;

use crate::cause::{Cause, Delivery};
use crate::gateway::{Gateway, RouteState};
use crate::idempotency::Claim;
use crate::limit::admission::Permit;
use crate::limit::RateNote;
use crate::upstream::endpoint::ms_at;
use crate::upstream::Upstream;
use access_log::{AccessLog, AccessRecord, FailedAttempt};
use metrics::{ErrorLabels, Metrics, RouteCode, RouteLabel};

pub struct Observer {
    pub metrics: Metrics,
    pub access_log: AccessLog,
    /// The last [`RECENT_ERRORS`] responses baton generated, oldest first.
    recent_errors: Mutex<VecDeque<RecentError>>,
}

/// How many generated errors the status page lists.
pub const RECENT_ERRORS: usize = 50;

/// A response baton generated, as the status page lists it.
#[derive(Debug, Clone)]
pub struct RecentError {
    pub at: SystemTime,
    pub request_id: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub status: u16,
    pub cause: Cause,
    /// What the cause alone does not say (see [`Exchange::detail`]).
    pub detail: Option<Arc<str>>,
}

impl Observer {
    pub fn new(metrics: Metrics, access_log: AccessLog) -> Observer {
        Observer {
            metrics,
            access_log,
            recent_errors: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }

    /// The last generated errors, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent_errors
            .lock()
            .map(|errors| errors.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push_error(&self, error: RecentError) {
        if let Ok(mut errors) = self.recent_errors.lock() {
            if errors.len() == RECENT_ERRORS {
                errors.pop_front();
            }
            errors.push_back(error);
        }
    }
}

/// One request from head to the end of its response: what the access-log line and the
/// metrics are made of. Finished exactly once, by [`Exchange::finish`].
pub struct Exchange {
    gateway: Arc<Gateway>,
    pub started: Instant,
    pub request_id: HeaderValue,
    /// The client's address, as text.
    client: HeaderValue,
    method: Method,
    uri: Uri,
    /// The host the client asked for, as it sent it.
    pub host: Option<HeaderValue>,
    pub route: Option<Arc<RouteState>>,
    pub upstream: Option<Arc<Upstream>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<Arc<str>>,
    pub attempts: u32,
    /// Attempts that failed before the last one (empty, and unallocated, for most).
    pub failed_attempts: Vec<FailedAttempt>,
    pub delivery: Delivery,
    pub status: u16,
    /// The cause of a response baton generated itself.
    pub cause: Option<Cause>,
    /// The last failed attempt's detail, for the status page: why a TLS handshake with
    /// the upstream failed. Never sent to the client.
    pub detail: Option<Arc<str>>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    /// The idempotency key this request holds, settled when the exchange ends.
    pub claim: Option<Claim>,
    /// Its place among the upstream's requests in flight, given back when the exchange
    /// ends, and how long it waited for it.
    pub permit: Option<Permit>,
    pub queue_wait: Option<Duration>,
    /// What the route's rate limit said, for the `RateLimit` fields of the answer.
    pub rate: Option<RateNote>,
    /// What the route's cache did, for `Cache-Status`.
    pub cache: Option<crate::cache::Note>,
}

impl Exchange {
    /// The path the client asked for.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    pub fn new(
        gateway: Arc<Gateway>,
        client: HeaderValue,
        method: Method,
        uri: Uri,
        request_id: HeaderValue,
    ) -> Exchange {
        Exchange {
            gateway,
            started: Instant::now(),
            request_id,
            client,
            method,
            uri,
            host: None,
            route: None,
            upstream: None,
            endpoint: None,
            attempts: 0,
            failed_attempts: Vec::new(),
            delivery: Delivery::None,
            status: 0,
            cause: None,
            bytes_in: None,
            connect: None,
            ttfb: None,
            claim: None,
            detail: None,
            permit: None,
            queue_wait: None,
            rate: None,
            cache: None,
        }
    }

    /// A request of its own for the same client request, made in the background (the
    /// refresh of a stale cached response), with what the cache says of it.
    pub fn background(&self, cache: crate::cache::Note) -> Exchange {
        let mut exchange = Exchange::new(
            self.gateway.clone(),
            self.client.clone(),
            self.method.clone(),
            self.uri.clone(),
            self.request_id.clone(),
        );
        exchange.host = self.host.clone();
        exchange.route = self.route.clone();
        exchange.upstream = self.upstream.clone();
        exchange.cache = Some(cache);
        exchange
    }

    /// Records the exchange: `bytes_out` body bytes sent, `abort` the cause when the
    /// response was cut off mid-body.
    pub fn finish(&self, bytes_out: u64, abort: Option<Cause>) {
        self.finish_at(bytes_out, abort, Instant::now());
    }

    /// [`Exchange::finish`], ended at `now`.
    pub fn finish_at(&self, bytes_out: u64, abort: Option<Cause>, now: Instant) {
        let gateway = &*self.gateway;
        let metrics = &gateway.observer.metrics;
        let cause = abort.or(self.cause);
        let route_stats = self.route.as_deref();
        let route_label = route_stats.map_or(&metrics.no_route, |r| &r.label);
        let upstream = self.upstream.as_deref();
        let duration = now.saturating_duration_since(self.started);
        if let Some(stats) = route_stats {
            stats.recent.record(ms_at(now), duration, cause);
        }
        // The wall-clock time it began, for the records that show it: read here, not
        // kept from the start, as most requests make no such record.
        let started_at = || {
            let wall = SystemTime::now();
            wall.checked_sub(duration).unwrap_or(wall)
        };

        let seconds = duration.as_secs_f64();
        match route_stats {
            Some(stats) => {
                stats
                    .codes
                    .inc(&metrics.requests, &stats.label, self.status);
                stats
                    .duration
                    .get(&metrics.duration, || RouteLabel {
                        route: stats.label.clone(),
                    })
                    .observe(seconds);
            }
            None => {
                let route = metrics.no_route.clone();
                metrics
                    .requests
                    .get_or_create(&RouteCode {
                        route: route.clone(),
                        code: self.status,
                    })
                    .inc();
                metrics
                    .duration
                    .get_or_create(&RouteLabel { route })
                    .observe(seconds);
            }
        }
        if let Some(stats) = route_stats {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            if let Some(note) = &self.cache {
                stats.cache.record(note.outcome);
                let outcome = note.outcome;
                stats
                    .cache_results
                    .get(
                        outcome as usize,
                        outcome.result(),
                        &metrics.cache,
                        &stats.label,
                    )
                    .inc();
            }
        }
        if let Some(cause) = cause {
            metrics
                .errors
                .get_or_create(&ErrorLabels {
                    route: route_label.clone(),
                    upstream: upstream.map_or_else(|| metrics.no_route.clone(), |u| u.name.clone()),
                    cause: cause.code(),
                })
                .inc();
            if let Some(stats) = route_stats {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            gateway.observer.push_error(RecentError {
                at: started_at(),
                request_id: String::from_utf8_lossy(self.request_id.as_bytes()).into_owned(),
                route: route_stats.map(|r| r.label.clone()),
                upstream: upstream.map(|u| u.name.clone()),
                endpoint: self.endpoint.clone(),
                status: self.status,
                cause,
                detail: self.detail.clone(),
            });
        }

        let log = &gateway.observer.access_log;
        if !log.enabled() {
            return;
        }
        // `from_utf8` first: for the ASCII ids nearly all requests have it is several
        // times cheaper than `from_utf8_lossy`'s walk through chunks.
        let request_id = match std::str::from_utf8(self.request_id.as_bytes()) {
            Ok(id) => std::borrow::Cow::Borrowed(id),
            Err(_) => String::from_utf8_lossy(self.request_id.as_bytes()),
        };
        let host = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(crate::route::normalize_host)
            .unwrap_or_default();
        log.write(&AccessRecord {
            ts: started_at(),
            request_id: &request_id,
            client: self.client.to_str().unwrap_or(""),
            method: self.method.as_str(),
            host: &host,
            path: self.uri.path(),
            status: self.status,
            cause: cause.map(Cause::code),
            route: route_stats.map(|r| &*r.label),
            upstream: upstream.map(|u| &*u.name),
            endpoint: self.endpoint.as_deref(),
            attempts: self.attempts,
            failed_attempts: &self.failed_attempts,
            delivery: self.delivery.as_str(),
            cache: self.cache.as_ref().map(|note| note.outcome.result()),
            bytes_in: self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out,
            duration,
            connect: self.connect,
            ttfb: self.ttfb,
            queue: self.queue_wait,
        });
    }
}
