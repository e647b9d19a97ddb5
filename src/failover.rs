//! Failing over (SPEC §6): a request, once the upstream's admission let it in, tries the
//! route's upstream, endpoint after endpoint, until one answers with a response head or the
//! retry policy says stop. Each attempt is counted against its endpoint (metrics, health,
//! latency) and in the exchange (the access log's attempts, delivery, connect and
//! first-byte times).

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::attempt::{attempt, Success};
use crate::body::RequestBody;
use crate::cause::{Cause, Delivery};
use crate::config::Route;
use crate::forward::Forwarding;
use crate::gateway::{Gateway, RouteState};
use crate::limit;
use crate::listener::ClientConn;
use crate::observe::access_log::FailedAttempt;
use crate::observe::metrics::{AttemptLabels, RouteLabel};
use crate::observe::Exchange;
use crate::proxy::ProxyError;
use crate::retry::{backoff, may_retry};
use crate::upstream::endpoint::ms_at;
use crate::upstream::Upstream;

/// A request on its way upstream: its head and body, the fields baton adds to the head,
/// and its key for a hashing balancer. It stays where its stage keeps it; the tries
/// borrow it.
pub(crate) struct Outgoing {
    pub request: Request<RequestBody>,
    pub forwarding: Forwarding,
    pub key: Option<u64>,
}

/// The admission and upstream stages: waits for a place at the upstream when it has
/// `max_inflight` (`watch`: the client connection to see leave while the request waits),
/// then tries the route's upstream until an endpoint answers with a response head, retrying as
/// SPEC §6 allows: a failure before anything was sent, for any method; a failure after
/// sending, for idempotent methods (or `non_idempotent`) whose body was read in full. Retries
/// go to endpoints not yet tried while there are some, wait a jittered backoff, and each
/// takes one from the route's budget; up to `retry.attempts` tries in all. The error, when
/// every try failed, is the last one's cause with the strongest delivery seen.
pub(crate) async fn try_endpoints(
    gateway: &Gateway,
    upstream: &Upstream,
    stats: &RouteState,
    route: &Route,
    watch: Option<&ClientConn>,
    outgoing: &mut Outgoing,
    exchange: &mut Exchange,
) -> Result<Success, ProxyError> {
    // One stage with the admission rather than a call around both: each level of
    // `async fn` moves the request and the whole future below it once more.
    let deadline = route.timeouts.total.map(|total| exchange.started + total);
    if upstream.admission.is_some() {
        Box::pin(limit::admit(gateway, upstream, deadline, watch, exchange)).await?;
    }
    // One clock reading for the budget, the balancer and the first attempt's start.
    let mut now = Instant::now();
    let mut now_ms = ms_at(now);
    stats.retry_budget.record_request(now_ms);
    let key = outgoing.key;
    let forwarding = &outgoing.forwarding;
    let request = &mut outgoing.request;
    let members = upstream.members();
    let metrics = &gateway.observer.metrics;
    let policy = &route.retry;
    let method = request.method().clone();
    // What it takes to send the request again after it was sent once: a copy of its body,
    // kept when the whole body was read ahead (the head comes back with the failure).
    // Whatever the method: an upstream may say it did not process a request it received
    // (an HTTP/2 stream refused or past a GOAWAY), and then any request may go again.
    let resend = (policy.attempts > 1)
        .then(|| request.body().copy())
        .flatten();
    // Inline for the usual few attempts: no allocation per request.
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    // Endpoints that timed out for this request: a hang tends to repeat, and the client
    // would wait for each one (SPEC §6).
    let mut timed_out: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_failure: Option<Cause> = None;
    loop {
        // Another endpoint while there is one; then any usable one again but those that
        // timed out.
        let index = members.pick_at(&tried, key, now_ms).or_else(|| {
            (!tried.is_empty())
                .then(|| members.pick_at(&timed_out, key, now_ms))
                .flatten()
        });
        let Some(index) = index else {
            break;
        };
        tried.push(index);
        let endpoint = &members.endpoints[index];
        exchange.endpoint = Some(endpoint.label.clone());
        exchange.attempts += 1;
        let sent_at = now;
        let head_deadline = route
            .timeouts
            .response_header
            .map(|limit| sent_at + limit)
            .into_iter()
            .chain(deadline)
            .min();
        let result = attempt(
            endpoint,
            request,
            forwarding,
            route.timeouts.connect,
            head_deadline,
            sent_at,
        )
        .await;
        match &result {
            Ok(_) => endpoint
                .ok_attempts
                .get(&metrics.attempts, || AttemptLabels {
                    upstream: upstream.name.clone(),
                    endpoint: endpoint.label.clone(),
                    outcome: "ok",
                })
                .inc(),
            Err(failure) => metrics
                .attempts
                .get_or_create(&AttemptLabels {
                    upstream: upstream.name.clone(),
                    endpoint: endpoint.label.clone(),
                    outcome: failure.cause.code(),
                })
                .inc(),
        };
        let failure = match result {
            Ok(success) => {
                // One clock reading for the latency, the balancer's clock and the TTFB.
                let answered = Instant::now();
                let (latency, now) = (answered.saturating_duration_since(sent_at), ms_at(answered));
                endpoint.ok.fetch_add(1, Ordering::Relaxed);
                endpoint.record_success(now);
                endpoint.observe_latency(latency, now);
                endpoint.recent.record(now, latency, None);
                if let Some(admission) = &upstream.admission {
                    admission.record(latency);
                }
                exchange.delivery = Delivery::Sent;
                exchange.connect = success.connect;
                exchange.ttfb = Some(answered.saturating_duration_since(exchange.started));
                return Ok(success);
            }
            Err(failure) => failure,
        };
        let failed_at = Instant::now();
        let failed_ms = ms_at(failed_at);
        endpoint.failed.fetch_add(1, Ordering::Relaxed);
        endpoint.record_failure(failure.cause, failed_ms);
        endpoint.recent.record(
            failed_ms,
            failed_at.saturating_duration_since(sent_at),
            Some(failure.cause),
        );
        exchange.delivery = exchange.delivery.max(failure.delivery);
        if failure.connect.is_some() {
            exchange.connect = failure.connect;
        }
        last_failure = Some(failure.cause);
        exchange.detail = failure.detail.clone();
        if failure.cause.is_timeout() {
            timed_out.push(index);
            // A timeout is latency too: the most telling sample of an overloaded upstream.
            if let Some(admission) = &upstream.admission {
                admission.record(failed_at.saturating_duration_since(sent_at));
            }
        }

        let retryable = may_retry(
            failure.cause,
            failure.delivery,
            &method,
            policy,
            resend.is_some(),
        );
        if !retryable || exchange.attempts >= policy.attempts {
            break;
        }
        if !failure.intact {
            // The body went with the failed try; a kept copy of it goes with the next.
            let Some(body) = &resend else {
                break;
            };
            *request.body_mut() = body.body();
        }
        if !stats.retry_budget.try_spend(policy) {
            tracing::debug!(route = %route.name, "retry budget spent; answering with the error");
            break;
        }
        let wait = backoff(policy, exchange.attempts - 1);
        if deadline.is_some_and(|d| failed_at + wait >= d) {
            break;
        }
        exchange.failed_attempts.push(FailedAttempt {
            endpoint: endpoint.label.clone(),
            cause: failure.cause.code(),
            delivery: failure.delivery.as_str(),
        });
        metrics
            .retries
            .get_or_create(&RouteLabel {
                route: stats.label.clone(),
            })
            .inc();
        tokio::time::sleep(wait).await;
        now = Instant::now();
        now_ms = ms_at(now);
    }
    Err(match last_failure {
        Some(cause) => ProxyError {
            delivery: exchange.delivery,
            ..ProxyError::from(cause)
        },
        // Nowhere to go because a host name never resolved.
        None if members.endpoints.is_empty() && members.unresolved => {
            Cause::UpstreamDnsFailed.into()
        }
        None => ProxyError {
            // When ejections are all that keep the endpoints out, say when one returns.
            retry_after: members.usable_in().map(|d| d.max(Duration::from_secs(1))),
            ..ProxyError::from(Cause::NoHealthyUpstream)
        },
    })
}
