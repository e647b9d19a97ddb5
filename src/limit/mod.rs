//! Limits that protect upstreams (SPEC §9): rate limits per client ([`rate`], a stage
//! right after maintenance), and admission ([`admission`]: `max_inflight` and its queue,
//! a stage just before the first attempt) with the `"auto"` controller that finds the
//! limit ([`adaptive`]).

pub mod adaptive;
pub mod admission;
pub mod rate;

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::config::runtime::{RateKey, RateLimit};
use crate::forward;
use crate::gateway::{Gateway, RouteState};
use crate::listener::ClientConn;
use crate::observe::metrics::{RouteLabel, UpstreamLabel};
use crate::observe::Exchange;
use crate::proxy::ProxyError;
use crate::upstream::endpoint::ms_at;
use crate::upstream::Upstream;
use rate::{Key, Verdict};

/// What the route's rate limit said of a request, for the `RateLimit` fields of its answer.
pub struct RateNote {
    pub policy: HeaderValue,
    /// `None` when the request was not counted (no key, or the store could not be asked).
    pub verdict: Option<Verdict>,
}

impl RateNote {
    /// Adds `RateLimit-Policy` and, when the request was counted, `RateLimit`
    /// (draft-ietf-httpapi-ratelimit-headers).
    pub fn add_fields(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        if let Some(verdict) = &self.verdict {
            // Written by hand: `format!` costs more than the rest of the field together.
            let mut value = SmallVec::<[u8; 64]>::new();
            value.extend_from_slice(b"\"default\";r=");
            value.extend_from_slice(itoa::Buffer::new().format(verdict.remaining).as_bytes());
            value.extend_from_slice(b";t=");
            let reset = whole_seconds(verdict.reset).as_secs();
            value.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert(RATELIMIT, value);
            }
        }
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `duration` rounded up to whole seconds: a client told to wait 0 s would come back at once.
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

/// The rate-limit stage: counts the request against its key and refuses it with 429
/// `rate-limited` when the key is over the limit. A request without the key's header is
/// not counted; when Redis cannot be asked, the request goes (SPEC §9), counted in
/// `baton_store_errors_total`.
pub(crate) async fn check_rate(
    gateway: &Gateway,
    route: &RouteState,
    limit: &RateLimit,
    conn: &ClientConn,
    headers: &HeaderMap,
    exchange: &mut Exchange,
) -> Result<(), ProxyError> {
    let key = match &limit.key {
        RateKey::ClientIp => {
            let trusted = &conn.listener.config.load().trusted_proxies;
            Some(Key::ClientIp(forward::client_ip(
                conn.peer.ip(),
                headers,
                trusted,
            )))
        }
        RateKey::Header(name) => headers.get(name).map(|v| Key::Header(v.as_bytes())),
        RateKey::Route => Some(Key::Route),
    };
    let verdict = match key {
        None => None,
        Some(key) => match gateway.rates.check(&route.label, &key, limit).await {
            Ok(verdict) => Some(verdict),
            Err(err) => {
                tracing::debug!(route = %route.label, error = %err, "rate limit not checked: the store is unavailable; the request goes");
                None
            }
        },
    };
    exchange.rate = Some(RateNote {
        policy: limit.policy.clone(),
        verdict,
    });
    match verdict {
        Some(verdict) if !verdict.allowed => {
            gateway
                .observer
                .metrics
                .rate_limited
                .get_or_create(&RouteLabel {
                    route: route.label.clone(),
                })
                .inc();
            Err(ProxyError {
                retry_after: Some(whole_seconds(verdict.retry_after)),
                ..ProxyError::from(Cause::RateLimited)
            })
        }
        _ => Ok(()),
    }
}

/// Resolves when the client `watch`ed goes away; never without one.
async fn closed(watch: Option<&ClientConn>) {
    match watch {
        Some(conn) => conn.closed().await,
        None => std::future::pending().await,
    }
}

/// The `Retry-After` of an `upstream-overloaded` answer: overload is measured in queue
/// timeouts, so a client may come back soon.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The admission stage: when `upstream` has `max_inflight`, waits for a place (the
/// exchange holds it until it ends) or refuses with 503 `upstream-overloaded`, nothing
/// sent. `deadline` is the request's total timeout. A client seen to go away while it
/// waits (`watch`, given when its request body was read whole) leaves the queue.
pub(crate) async fn admit(
    gateway: &Gateway,
    upstream: &Upstream,
    deadline: Option<Instant>,
    watch: Option<&ClientConn>,
    exchange: &mut Exchange,
) -> Result<(), ProxyError> {
    let Some(admission) = &upstream.admission else {
        return Ok(());
    };
    let arrived = Instant::now();
    let admitted = tokio::select! {
        // Admission first: a request admitted at once never looks at the socket.
        biased;
        admitted = admission.admit(deadline) => admitted,
        () = closed(watch) => {
            exchange.queue_wait = Some(arrived.elapsed());
            return Err(ProxyError::closing(Cause::ClientClosed));
        }
    };
    let now = Instant::now();
    let waited = now.saturating_duration_since(arrived);
    exchange.queue_wait = Some(waited);
    admission
        .wait_histogram
        .get(&gateway.observer.metrics.queue_wait, || UpstreamLabel {
            upstream: upstream.name.clone(),
        })
        .observe(waited.as_secs_f64());
    let refused = admitted.as_ref().err().map(|_| Cause::UpstreamOverloaded);
    admission.recent_waits.record(ms_at(now), waited, refused);
    match admitted {
        Ok(permit) => {
            exchange.permit = Some(permit);
            Ok(())
        }
        Err(_) => Err(ProxyError {
            retry_after: Some(OVERLOADED_RETRY_AFTER),
            ..ProxyError::from(Cause::UpstreamOverloaded)
        }),
    }
}
