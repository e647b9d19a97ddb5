//! The request path (SPEC §3) for one request: route, maintenance, read the body ahead,
//! then try endpoints until one answers ([`crate::failover`]), and stream the answer back.
//!
//! `handle_inner` does the work and returns either the upstream's response or a
//! [`ProxyError`]; [`handle`] is the one place that turns either into the client's
//! response, and hands the [`Exchange`] to the body so it is logged when the body ends.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use crate::body::{Capture, Keep, RequestBody, ResponseBody};
use crate::cache::{self, After, Lead, Lookup, CACHE_STATUS};
use crate::cause::{Cause, Delivery};
use crate::codec::{Known, RequestFields};
use crate::failover::{try_endpoints, Outgoing};
use crate::forward::{self, Forwarding, Peer};
use crate::gateway::{Gateway, Snapshot};
use crate::guard::{self, Stage};
use crate::idempotency::{Decision, Refused, StoredResponse};
use crate::limit;
use crate::listener::ClientConn;
use crate::observe::metrics::RouteResult;
use crate::observe::Exchange;
use crate::respond::{self, ErrorReply, DEFAULT_RETRY_AFTER};
use crate::route;
use crate::server::ClientBody;
use crate::spare::Kept;
use crate::status;
use crate::upstream::client::Incoming;
use crate::upstream::pool::Lease;

mod refresh;
mod request;

use refresh::{refresh_in_background, FILL_PATIENCE};
use request::{
    answer_early, declared_length, hash_body, header_list_size, request_host, route_path,
};

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
    pub(crate) fn closing(cause: Cause) -> ProxyError {
        ProxyError {
            close: true,
            ..ProxyError::from(cause)
        }
    }
}

/// An upstream's response head and what its body needs to stream.
pub struct Proxied {
    response: Response<Incoming>,
    /// The cache fill the body goes into, when it is being stored.
    lead: Option<Lead>,
    lease: Lease,
    idle: Option<Duration>,
    deadline: Option<Instant>,
}

/// What a request is answered with, when it is not an error.
pub enum Answer {
    Proxied(Proxied),
    /// The stored answer to an idempotency key.
    Replay(StoredResponse),
    /// A page baton has whole: the public status page, or an answer from the cache.
    Page(Response<ResponseBody>),
}

/// Answers one client request, whose fields are in its header map or, as read by the
/// HTTP/1.1 server, in `fields`.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: &ClientConn,
    request: Request<ClientBody>,
    fields: Option<Kept<RequestFields>>,
) -> Response<ResponseBody> {
    let (request_id, accept) = match &fields {
        Some(fields) => (
            forward::request_id_from(fields.get(Known::RequestId)),
            fields.get(Known::Accept),
        ),
        None => (
            forward::request_id(request.headers()),
            request.headers().get(ACCEPT).cloned(),
        ),
    };
    // gRPC runs over HTTP/2 only; an HTTP/1.1 request costs no header lookup for it.
    let grpc = request.version() == Version::HTTP_2
        && respond::is_grpc(request.headers().get(CONTENT_TYPE));
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
        fields,
        &mut exchange,
    ))
    .await;
    let result = handled.unwrap_or_else(|panic| Err(caught_panic(&gateway, &mut exchange, &panic)));
    match result {
        Ok(Answer::Proxied(proxied)) => {
            let (mut parts, body) = proxied.response.into_parts();
            // The client gets its own protocol version, whatever the upstream spoke.
            parts.version = client_version;
            annotate(&exchange, &mut parts.headers);
            exchange.status = parts.status.as_u16();
            let keep = match proxied.lead {
                Some(lead) => Some(Keep::Cache(lead)),
                None => exchange.claim.as_ref().map(|_| {
                    // A replay gets its own request's ID: the stored one would only hold
                    // on to the buffer it shares with other new IDs.
                    let mut stored = parts.headers.clone();
                    stored.remove(respond::X_REQUEST_ID);
                    Keep::Answer(Capture::new(parts.status, stored))
                }),
            };
            let body = ResponseBody::upstream(
                body,
                proxied.idle,
                proxied.deadline,
                proxied.lease,
                exchange,
                keep,
            );
            Response::from_parts(parts, body)
        }
        Ok(Answer::Page(mut response)) => {
            response
                .headers_mut()
                .insert(respond::X_REQUEST_ID, exchange.request_id.clone());
            annotate(&exchange, response.headers_mut());
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
            annotate(&exchange, response.headers_mut());
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
            let mut response = respond::error_response(
                &ErrorReply {
                    cause: error.cause,
                    delivery,
                    request_id: exchange.request_id.to_str().unwrap_or(""),
                    method: &method,
                    accept: accept.as_ref(),
                    retry_after,
                    close: error.close,
                    grpc,
                },
                &snapshot.config.error_pages,
            );
            if let Some(rate) = &exchange.rate {
                rate.add_fields(response.headers_mut());
            }
            if let Some(note) = &exchange.cache {
                response.headers_mut().insert(CACHE_STATUS, note.header());
            }
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

/// Adds what every answer of the route carries: the `RateLimit` fields and `Cache-Status`.
fn annotate(exchange: &Exchange, headers: &mut http::HeaderMap) {
    if let Some(rate) = &exchange.rate {
        rate.add_fields(headers);
    }
    if let Some(note) = &exchange.cache {
        headers.insert(CACHE_STATUS, note.header());
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
fn status_page(snapshot: &Snapshot, accept: Option<&HeaderValue>) -> Response<ResponseBody> {
    let json = accept
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
    gateway: &Arc<Gateway>,
    snapshot: &Arc<Snapshot>,
    conn: &ClientConn,
    mut request: Request<ClientBody>,
    fields: Option<Kept<RequestFields>>,
    exchange: &mut Exchange,
) -> Result<Answer, ProxyError> {
    if request.version() == Version::HTTP_2
        && header_list_size(&request) > conn.listener.config.load().max_header_bytes
    {
        return Err(Cause::HeadersTooLarge.into());
    }
    let host = request_host(&request, fields.as_deref())?;
    exchange.host = host.clone();
    if let Some(page) = &snapshot.config.status_page {
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        if read && request.uri().path() == page.path {
            let accept = match &fields {
                Some(fields) => fields.get(Known::Accept),
                None => request.headers().get(ACCEPT).cloned(),
            };
            return Ok(Answer::Page(status_page(snapshot, accept.as_ref())));
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
    // The stages that read fields by name get them in the header map.
    let cache = snapshot.caches[route_index].as_ref();
    let reads_fields = cache.is_some()
        || route.rate_limit.is_some()
        || route.idempotency.is_some()
        || upstream.hash_key().is_some_and(|key| key.reads_fields());
    let fields = match fields {
        Some(fields) if reads_fields => {
            *request.headers_mut() = fields
                .to_map()
                .ok_or(ProxyError::closing(Cause::BadRequest))?;
            None
        }
        fields => fields,
    };
    guard::checkpoint(request.uri().path(), Stage::BeforeUpstream);
    if route_state.maintenance(route.maintenance) {
        let error = ProxyError {
            retry_after: Some(route.maintenance_retry_after),
            ..ProxyError::from(Cause::Maintenance)
        };
        return Err(Box::pin(answer_early(request, error)).await);
    }
    if let Some(limit) = &route.rate_limit {
        // Not boxed: in memory the check is a few hundred instructions and its state a few
        // words; the Redis call inside is boxed.
        let checked = limit::check_rate(
            gateway,
            route_state,
            limit,
            conn,
            request.headers(),
            exchange,
        )
        .await;
        if let Err(refused) = checked {
            return Err(Box::pin(answer_early(request, refused)).await);
        }
    }
    let mut pending = None;
    let mut stale_now = None;
    if let Some(cache) = cache {
        let patience = route
            .timeouts
            .response_header
            .unwrap_or(FILL_PATIENCE)
            .min(FILL_PATIENCE);
        match Box::pin(cache::lookup(cache, &request, &host_name, patience)).await {
            Lookup::Answer(response, note) => {
                exchange.cache = Some(note);
                return Ok(Answer::Page(response));
            }
            Lookup::NotCached(note) => {
                exchange.cache = Some(note);
                return Err(Box::pin(answer_early(request, Cause::NotCached.into())).await);
            }
            Lookup::Refresh(response, note, refresh) => {
                exchange.cache = Some(note);
                stale_now = Some(response);
                pending = Some(refresh);
            }
            Lookup::Forward(forward) => {
                exchange.cache = Some(forward.note.clone());
                pending = Some(forward);
            }
        }
    }
    let declared = match &fields {
        Some(fields) => fields.content_length(),
        None => declared_length(&request),
    };
    if declared.is_some_and(|length| length > route.max_body_bytes) {
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

    // Fields kept as read have no `Upgrade`.
    let upgrade = fields.is_none() && forward::is_upgrade(request.version(), request.headers());
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
        tls: conn.tls,
    };
    forward::remove_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(pending) = &pending {
        pending.prepare(&mut parts.headers);
    }
    let mut forwarding = Forwarding::new(
        &parts.headers,
        fields,
        &peer,
        host.as_ref(),
        parts.version,
        &exchange.request_id,
        route.preserve_host,
    );
    // Only the fields baton adds go into the answer's map on the way to an HTTP/1.1
    // client when neither the cache nor an idempotency key reads the answer.
    forwarding.raw_answer = parts.version <= Version::HTTP_11
        && pending.is_none()
        && exchange.claim.is_none()
        && !upgrade;
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
    let key = upstream
        .hash_key()
        .and_then(|key| key.of(&parts.headers, parts.uri.path(), conn.peer.ip()));
    let mut outgoing = Outgoing {
        request: Request::from_parts(parts, body),
        forwarding,
        key,
    };

    if let Some(stale) = stale_now {
        // Answered stale at once; the request itself goes on in the background to
        // refresh the stored response (a body still to come from the client cannot).
        if let Some(refresh) = pending.filter(|_| outgoing.request.body().is_read()) {
            let background = exchange.background(refresh.note.clone());
            tokio::spawn(refresh_in_background(
                gateway.clone(),
                snapshot.clone(),
                route_index,
                outgoing,
                refresh,
                background,
            ));
        }
        return Ok(Answer::Page(stale));
    }
    let watch = outgoing.request.body().is_read().then_some(conn);
    let sent = try_endpoints(
        gateway,
        upstream,
        route_state,
        route,
        watch,
        &mut outgoing,
        exchange,
    )
    .await;
    let success = match (sent, pending.as_mut()) {
        (Ok(success), _) => success,
        (Err(error), Some(pending)) => match pending.instead_of_error(error.cause.status()) {
            Some(stale) => {
                exchange.cache = Some(pending.note.clone());
                return Ok(Answer::Page(stale));
            }
            None => return Err(error),
        },
        (Err(error), None) => return Err(error),
    };
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
    match response.body_mut().raw_fields_mut() {
        Some(raw) => forward::prepare_raw_response(raw, &exchange.request_id),
        None => forward::prepare_response_headers(
            response.headers_mut(),
            switching,
            &exchange.request_id,
        ),
    }
    let mut lead = None;
    if let (Some(pending), Some(config)) = (pending, &route.cache) {
        let length = http_body::Body::size_hint(response.body()).exact();
        let (after, note) =
            pending.after_response(config, response.status(), response.headers(), length);
        // For the gateway alone: clients never see it.
        response
            .headers_mut()
            .remove(cache::control::SURROGATE_CONTROL);
        exchange.cache = Some(note);
        match after {
            After::Answer(answer) => {
                // A 304 leaves the connection ready for the next request.
                let body = response.body_mut();
                if http_body::Body::is_end_stream(body) {
                    success.lease.release(body.take_reusable(), Instant::now());
                }
                return Ok(Answer::Page(answer));
            }
            After::Forward(filling) => lead = filling,
        }
    }
    if upgrade && !switching {
        // The client may have started speaking the protocol it asked for; end the
        // connection after this answer.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(Answer::Proxied(Proxied {
        response,
        lead,
        lease: success.lease,
        idle: route.timeouts.idle,
        deadline,
    }))
}
