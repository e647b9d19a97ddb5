//! The request path (SPEC §3) for one request: route, maintenance, read the body ahead,
//! then try endpoints until one answers, and stream the answer back.
//!
//! `handle_inner` does the work and returns either the upstream's response or a
//! [`ProxyError`]; [`handle`] is the one place that turns either into the client's
//! response, and hands the [`Exchange`] to the body so it is logged when the body ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{
    HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::attempt::{attempt, Success};
use crate::body::{client_frame, Capture, RequestBody, ResponseBody};
use crate::cause::{is_idempotent, Cause, Delivery};
use crate::config::Route;
use crate::forward::{self, Forwarding, Peer};
use crate::gateway::{Gateway, RouteState, Snapshot};
use crate::guard::{self, Stage};
use crate::idempotency::{Decision, Refused, StoredResponse};
use crate::listener::ClientConn;
use crate::observe::access_log::FailedAttempt;
use crate::observe::metrics::{AttemptLabels, RouteLabel, RouteResult};
use crate::observe::Exchange;
use crate::respond::{self, ErrorReply, DEFAULT_RETRY_AFTER};
use crate::retry::{backoff, may_retry};
use crate::route;
use crate::server::ClientBody;
use crate::status;
use crate::upstream::balance::StableHasher;
use crate::upstream::endpoint::ms_at;
use crate::upstream::h1;
use crate::upstream::pool::Lease;
use crate::upstream::Upstream;

/// Why baton answers a request itself.
#[derive(Debug)]
pub struct ProxyError {
    pub cause: Cause,
    pub delivery: Delivery,
    /// `Retry-After` for a 503 or 429; [`DEFAULT_RETRY_AFTER`] when unset.
    pub retry_after: Option<Duration>,
    /// Close the client connection after answering: its framing can't be trusted.
    pub close: bool,
}

impl From<Cause> for ProxyError {
    fn from(cause: Cause) -> ProxyError {
        ProxyError {
            cause,
            delivery: cause.delivery(),
            retry_after: None,
            close: false,
        }
    }
}

impl ProxyError {
    fn closing(cause: Cause) -> ProxyError {
        ProxyError {
            close: true,
            ..ProxyError::from(cause)
        }
    }
}

/// An upstream's response head and what its body needs to stream.
pub struct Proxied {
    response: Response<h1::Body>,
    lease: Lease,
    idle: Option<Duration>,
    deadline: Option<Instant>,
}

/// What a request is answered with, when it is not an error.
pub enum Answer {
    Proxied(Proxied),
    /// The stored answer to an idempotency key.
    Replay(StoredResponse),
    /// The public status page.
    Page(Response<ResponseBody>),
}

/// Answers one client request.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: &ClientConn,
    request: Request<ClientBody>,
) -> Response<ResponseBody> {
    let request_id = forward::request_id(request.headers());
    let accept = request.headers().get(ACCEPT).cloned();
    let method = request.method().clone();
    let client_version = request.version();
    let mut exchange = Exchange::new(
        gateway.clone(),
        conn.peer_ip.clone(),
        method.clone(),
        request.uri().clone(),
        request_id,
    );
    let snapshot = gateway.current();
    let handled = guard::catch(handle_inner(
        &gateway,
        &snapshot,
        conn,
        request,
        &mut exchange,
    ))
    .await;
    let result = handled.unwrap_or_else(|panic| Err(caught_panic(&gateway, &mut exchange, &panic)));
    match result {
        Ok(Answer::Proxied(proxied)) => {
            let (mut parts, body) = proxied.response.into_parts();
            // The client gets its own protocol version, whatever the upstream spoke.
            parts.version = client_version;
            exchange.status = parts.status.as_u16();
            let capture = exchange
                .claim
                .as_ref()
                .map(|_| Capture::new(parts.status, parts.headers.clone()));
            let body = ResponseBody::upstream(
                body,
                proxied.idle,
                proxied.deadline,
                proxied.lease,
                exchange,
                capture,
            );
            Response::from_parts(parts, body)
        }
        Ok(Answer::Page(response)) => {
            exchange.status = response.status().as_u16();
            let bytes_out = http_body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0);
            exchange.finish(bytes_out, None);
            response
        }
        Ok(Answer::Replay(stored)) => {
            let mut response = Response::new(ResponseBody::full(stored.body));
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers;
            response
                .headers_mut()
                .insert(respond::X_REQUEST_ID, exchange.request_id.clone());
            response
                .headers_mut()
                .insert(BATON_IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
            exchange.status = stored.status.as_u16();
            let bytes_out = http_body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0);
            exchange.finish(bytes_out, None);
            response
        }
        Err(error) => {
            // A key whose request reached no upstream is free again; otherwise dropping
            // the claim with the exchange records the outcome as unknown.
            if let (Delivery::None, Some(claim)) = (exchange.delivery, exchange.claim.take()) {
                claim.release();
                count_key(&gateway, &exchange, "released");
            }
            let retry_after = match error.cause.status() {
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                    Some(error.retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
                }
                _ => None,
            };
            let delivery = exchange.delivery.max(error.delivery);
            let response = respond::error_response(
                &ErrorReply {
                    cause: error.cause,
                    delivery,
                    request_id: exchange.request_id.to_str().unwrap_or(""),
                    method: &method,
                    accept: accept.as_ref(),
                    retry_after,
                    close: error.close,
                },
                &snapshot.config.error_pages,
            );
            exchange.status = response.status().as_u16();
            exchange.cause = Some(error.cause);
            exchange.delivery = delivery;
            let bytes_out = http_body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0);
            exchange.finish(bytes_out, None);
            response
        }
    }
}

/// A panic on the request's path (a bug): logged with the request ID, counted, and
/// answered with 500 `internal-error`. An attempt that was under way may have sent the
/// request, so the delivery is `sent` once any attempt began.
fn caught_panic(gateway: &Gateway, exchange: &mut Exchange, panic: &str) -> ProxyError {
    gateway.observer.metrics.panics.inc();
    if exchange.attempts > 0 {
        exchange.delivery = Delivery::Sent;
    }
    tracing::error!(
        request_id = exchange.request_id.to_str().unwrap_or(""),
        path = exchange.path(),
        delivery = exchange.delivery.as_str(),
        panic,
        "panic while handling a request; answered 500 internal-error"
    );
    ProxyError {
        delivery: exchange.delivery,
        ..ProxyError::closing(Cause::InternalError)
    }
}

/// The public status page, as HTML or (when the client accepts it) JSON; never cached.
fn status_page(snapshot: &Snapshot, request: &Request<ClientBody>) -> Response<ResponseBody> {
    let json = request
        .headers()
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let mut response = Response::new(ResponseBody::full(status::public(snapshot, json).into()));
    let content_type = if json {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn declared_length(request: &Request<ClientBody>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The header that marks a replayed answer (SPEC §8).
const BATON_IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("baton-idempotent-replay");

fn count_key(gateway: &Gateway, exchange: &Exchange, result: &'static str) {
    if let Some(route) = &exchange.route {
        gateway
            .observer
            .metrics
            .idempotency
            .get_or_create(&RouteResult {
                route: route.label.clone(),
                result,
            })
            .inc();
    }
}

async fn handle_inner(
    gateway: &Gateway,
    snapshot: &Snapshot,
    conn: &ClientConn,
    request: Request<ClientBody>,
    exchange: &mut Exchange,
) -> Result<Answer, ProxyError> {
    let host = request_host(&request)?;
    exchange.host = host.clone();
    if let Some(page) = &snapshot.config.status_page {
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        if read && request.uri().path() == page.path {
            return Ok(Answer::Page(status_page(snapshot, &request)));
        }
    }
    let host_name = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(route::normalize_host)
        .unwrap_or_default();
    let Some((route_index, route)) = snapshot.route_table.select(
        &snapshot.config.routes,
        &host_name,
        route_path(request.uri()),
    ) else {
        return Err(Box::pin(answer_early(request, Cause::NoRoute.into())).await);
    };
    let route_state = &snapshot.routes[route_index];
    let upstream = &snapshot.upstreams[route.upstream];
    exchange.route = Some(route_state.clone());
    exchange.upstream = Some(upstream.clone());
    guard::checkpoint(request.uri().path(), Stage::BeforeUpstream);
    if route_state.maintenance(route.maintenance) {
        let error = ProxyError {
            retry_after: Some(route.maintenance_retry_after),
            ..ProxyError::from(Cause::Maintenance)
        };
        return Err(Box::pin(answer_early(request, error)).await);
    }
    if declared_length(&request).is_some_and(|length| length > route.max_body_bytes) {
        return Err(ProxyError::closing(Cause::RequestTooLarge));
    }
    let decision = match &route.idempotency {
        Some(policy) => {
            // Boxed, as are the other futures off the common path: inline, their state
            // would make every request's future larger, and it is moved as a whole
            // (together about 200 instructions a request in copies).
            Box::pin(gateway.keys.check(
                policy,
                &route.name,
                request.method(),
                &host_name,
                request.uri().path(),
                request.headers(),
            ))
            .await
        }
        None => None,
    };
    let body_hash = match decision {
        None => None,
        Some(Err(Refused(cause))) => {
            count_key(gateway, exchange, cause.code());
            return Err(Box::pin(answer_early(request, cause.into())).await);
        }
        Some(Ok(Decision::Replay {
            body_hash,
            response,
        })) => {
            // The same key and head: the body must be the same too.
            let hash = Box::pin(hash_body(
                request.into_body(),
                route.max_body_bytes,
                route.timeouts.idle,
            ))
            .await
            .map_err(ProxyError::closing)?;
            if body_hash.is_some_and(|stored| stored != hash) {
                count_key(gateway, exchange, Cause::IdempotencyKeyReused.code());
                return Err(Cause::IdempotencyKeyReused.into());
            }
            count_key(gateway, exchange, "replayed");
            return Ok(Answer::Replay(response));
        }
        Some(Ok(Decision::Forward(claim))) => {
            count_key(gateway, exchange, "forwarded");
            let cell = claim.body_hash.clone();
            exchange.claim = Some(claim);
            Some(cell)
        }
    };

    let upgrade = forward::is_upgrade(request.version(), request.headers());
    let deadline = route.timeouts.total.map(|total| exchange.started + total);
    let (mut parts, incoming) = request.into_parts();
    let body = if http_body::Body::is_end_stream(&incoming) {
        RequestBody::empty()
    } else {
        let read = Arc::new(AtomicU64::new(0));
        exchange.bytes_in = Some(read.clone());
        RequestBody::read_ahead(
            incoming,
            route.buffer_bytes,
            route.max_body_bytes,
            route.timeouts.idle,
            read,
        )
        .await
        .map_err(ProxyError::closing)?
    };
    let mut body = body;
    if let Some(cell) = body_hash {
        body.hash_into(cell);
    }

    let listener = conn.listener.config.load();
    let peer = Peer {
        ip: conn.peer.ip(),
        ip_header: &conn.peer_ip,
        trusted_proxies: &listener.trusted_proxies,
    };
    forward::remove_hop_by_hop(&mut parts.headers, upgrade);
    let forwarding = Forwarding::new(
        &parts.headers,
        &peer,
        host.as_ref(),
        parts.version,
        &exchange.request_id,
        route.preserve_host,
    );
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
    let key = upstream
        .hash_key()
        .and_then(|key| key.of(&parts.headers, parts.uri.path(), conn.peer.ip()));
    let outgoing = Outgoing {
        request: Request::from_parts(parts, body),
        forwarding,
        key,
    };

    route_state.retry_budget.record_request();
    let success = try_endpoints(gateway, upstream, route_state, route, outgoing, exchange).await?;
    guard::checkpoint(exchange.path(), Stage::AfterUpstream);
    let mut response = success.response;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, upgrade) {
        // The client's connection becomes a tunnel to this one once the 101 is written.
        (true, true) => {
            if let Some(upstream) = response.body_mut().take_upgraded() {
                conn.set_upgraded(upstream);
            }
        }
        // A 101 nobody asked for cannot be passed on.
        (true, false) => {
            return Err(ProxyError {
                delivery: Delivery::Sent,
                ..ProxyError::from(Cause::UpstreamInvalidResponse)
            })
        }
        (false, _) => {}
    }
    forward::prepare_response_headers(response.headers_mut(), switching, &exchange.request_id);
    if upgrade && !switching {
        // The client may have started speaking the protocol it asked for; end the
        // connection after this answer.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(Answer::Proxied(Proxied {
        response,
        lease: success.lease,
        idle: route.timeouts.idle,
        deadline,
    }))
}

/// Reads a whole request body only to hash it (a repeat of a keyed request), holding no
/// more than one frame at a time.
async fn hash_body(
    mut incoming: ClientBody,
    limit: u64,
    idle: Option<Duration>,
) -> Result<u64, Cause> {
    let mut hasher = StableHasher::default();
    let mut read = 0u64;
    while let Some(frame) = client_frame(&mut incoming, idle).await? {
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > limit {
                return Err(Cause::RequestTooLarge);
            }
            hasher.update(data);
        }
    }
    Ok(hasher.finish())
}

/// How much of an unread request body baton reads and discards to answer early and keep
/// the connection, and for how long; a longer or slower body closes the connection instead.
const DISCARD_BYTES: u64 = 64 << 10;
const DISCARD_TIME: Duration = Duration::from_secs(1);

/// Prepares an answer given before the request body was read: the body is read and
/// discarded (as nginx does), since a client still sending it would otherwise find the
/// connection gone; if that takes too long or too much, the answer closes the connection.
async fn answer_early(request: Request<ClientBody>, mut error: ProxyError) -> ProxyError {
    let mut body = request.into_body();
    let drained = tokio::time::timeout(DISCARD_TIME, async {
        let mut read = 0u64;
        while !http_body::Body::is_end_stream(&body) {
            match client_frame(&mut body, None).await {
                Ok(Some(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DISCARD_BYTES {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        true
    })
    .await;
    error.close |= !matches!(drained, Ok(true));
    error
}

/// The host the client asked for: the authority of an absolute-form or HTTP/2 URI, which
/// takes precedence over `Host` (RFC 9112 §3.2.2), else `Host`. An HTTP/1.1 request without
/// either is malformed (RFC 9112 §3.2).
/// Both must be valid (RFC 9112 §3.2: an invalid `Host` is a 400, as is more than one,
/// which the HTTP/1.1 server refused already).
fn request_host(request: &Request<ClientBody>) -> Result<Option<HeaderValue>, ProxyError> {
    let field = request.headers().get(HOST);
    let authority = request.uri().authority().map(|a| a.as_str());
    let valid = field.is_none_or(|h| forward::valid_host(h.as_bytes()))
        && authority.is_none_or(|a| forward::valid_host(a.as_bytes()));
    let host = match authority {
        Some(authority) => HeaderValue::from_str(authority).ok(),
        None => field.cloned(),
    };
    if !valid || host.is_none() && request.version() == Version::HTTP_11 {
        return Err(ProxyError::closing(Cause::BadRequest));
    }
    Ok(host)
}

/// The path a request is routed by: `OPTIONS *` asks about the server as a whole, and
/// goes where the host's root goes.
fn route_path(uri: &Uri) -> &str {
    match uri.path() {
        "*" => "/",
        path => path,
    }
}

/// A request on its way upstream: its head and body, the fields baton adds to the head,
/// and its key for a hashing balancer.
struct Outgoing {
    request: Request<RequestBody>,
    forwarding: Forwarding,
    key: Option<u64>,
}

/// Tries the route's upstream until an endpoint answers with a response head, retrying as
/// SPEC §6 allows: a failure before anything was sent, for any method; a failure after
/// sending, for idempotent methods (or `non_idempotent`) whose body was read in full. Retries
/// go to endpoints not yet tried while there are some, wait a jittered backoff, and each
/// takes one from the route's budget; up to `retry.attempts` tries in all. The error, when
/// every try failed, is the last one's cause with the strongest delivery seen.
async fn try_endpoints(
    gateway: &Gateway,
    upstream: &Upstream,
    stats: &RouteState,
    route: &Route,
    outgoing: Outgoing,
    exchange: &mut Exchange,
) -> Result<Success, ProxyError> {
    let Outgoing {
        mut request,
        forwarding,
        key,
    } = outgoing;
    let deadline = route.timeouts.total.map(|total| exchange.started + total);
    let members = upstream.members();
    let metrics = &gateway.observer.metrics;
    let policy = &route.retry;
    let method = request.method().clone();
    // What it takes to send the request again after it was sent once: a copy of its body,
    // kept when the whole body was read ahead and the method may be retried after sending
    // (the head comes back with the failure).
    let resend = (policy.attempts > 1 && (policy.non_idempotent || is_idempotent(&method)))
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
        let index = members.pick(&tried, key).or_else(|| {
            (!tried.is_empty())
                .then(|| members.pick(&timed_out, key))
                .flatten()
        });
        let Some(index) = index else {
            break;
        };
        tried.push(index);
        let endpoint = &members.endpoints[index];
        exchange.endpoint = Some(endpoint.label.clone());
        exchange.attempts += 1;
        let sent_at = Instant::now();
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
            &forwarding,
            route.timeouts.connect,
            head_deadline,
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
                exchange.delivery = Delivery::Sent;
                exchange.connect = success.connect;
                exchange.ttfb = Some(answered.saturating_duration_since(exchange.started));
                return Ok(success);
            }
            Err(failure) => failure,
        };
        let failed_at = Instant::now();
        let now = ms_at(failed_at);
        endpoint.failed.fetch_add(1, Ordering::Relaxed);
        endpoint.record_failure(failure.cause, now);
        endpoint.recent.record(
            now,
            failed_at.saturating_duration_since(sent_at),
            Some(failure.cause),
        );
        exchange.delivery = exchange.delivery.max(failure.delivery);
        if failure.connect.is_some() {
            exchange.connect = failure.connect;
        }
        last_failure = Some(failure.cause);
        if failure.cause.is_timeout() {
            timed_out.push(index);
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
        let next = match (failure.request, failure.sent_head, &resend) {
            (Some(unsent), _, _) => unsent,
            (None, Some(head), Some(body)) => Request::from_parts(*head, body.body()),
            _ => break,
        };
        if !stats.retry_budget.try_spend(policy) {
            tracing::debug!(route = %route.name, "retry budget spent; answering with the error");
            break;
        }
        let wait = backoff(policy, exchange.attempts - 1);
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
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
        request = next;
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
