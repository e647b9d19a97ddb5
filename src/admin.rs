//! The admin server (SPEC §11): the status page, health, readiness, metrics, status and
//! the write API (reload, drain, maintenance), on its own listener.
//!
//! With `admin.token` set, every POST must carry `Authorization: Bearer TOKEN`; off
//! loopback every request must (the status page may also use Basic authentication with the
//! token as password, so that a browser can ask for it). A POST that a browser sends from
//! another site (its `Origin` is not the admin server) is refused, so that a web page
//! cannot toggle maintenance on an operator's machine.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ResponseBody;
use crate::gateway::{stop_requested, Gateway};
use crate::observe::metrics::{EndpointLabels, UpstreamLabel};
use crate::status;
use crate::upstream::endpoint::now_ms;

/// The status page: one file, no external assets.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin API until `stopped` turns true.
pub async fn serve(socket: TcpListener, gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
        };
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, request).await) }
        });
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    graceful.shutdown().await;
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn reply_json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    reply(status, JSON, format!("{value}\n"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    reply_json(status, &json!({ "error": message.into() }))
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

async fn route(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<ResponseBody> {
    if let Some(refusal) = refuse(gateway, &request) {
        return refusal;
    }
    let path = request.uri().path();
    if request.method() == Method::POST {
        if path == "/reload" {
            return reload(gateway).await;
        }
        if let Some((upstream, endpoint, drain)) = endpoint_action(path) {
            return drain_endpoint(gateway, upstream, endpoint, drain);
        }
        if let Some(route) = path
            .strip_prefix("/routes/")
            .and_then(|rest| rest.strip_suffix("/maintenance"))
        {
            return maintenance(gateway, route, request.uri().query());
        }
        if path == "/cache/purge" {
            return purge(gateway, request.uri().query());
        }
        return error(StatusCode::NOT_FOUND, format!("no admin action at {path}"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
    }
    match path {
        "/" => reply(StatusCode::OK, HTML, STATUS_PAGE),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if gateway.ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, TEXT, "ready\n")
        }
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
        "/metrics" => {
            refresh_endpoint_gauges(gateway);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                gateway.observer.metrics.encode(),
            )
        }
        "/status.json" => reply_json(StatusCode::OK, &status::admin(gateway)),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /, /healthz, /readyz, /metrics or /status.json\n",
        ),
    }
}

/// Checks the token and the origin of a request: the refusal to answer with, if any.
fn refuse(gateway: &Gateway, request: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    let snapshot = gateway.current();
    let admin = &snapshot.config.admin;
    let write = request.method() == Method::POST;
    if write && crossed_site(request) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin actions from a web page of another site are refused",
        ));
    }
    let token = admin.token.as_deref()?;
    if !write && admin.listen.ip().is_loopback() {
        return None;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| presented_token(value, !write));
    if presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut refusal = error(
        StatusCode::UNAUTHORIZED,
        "this admin request needs the admin token: Authorization: Bearer TOKEN",
    );
    refusal.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(if write {
            "Bearer realm=\"baton admin\""
        } else {
            "Basic realm=\"baton admin\", charset=\"UTF-8\""
        }),
    );
    Some(refusal)
}

/// The token in an `Authorization` value: Bearer, or (when `basic` is allowed) the password
/// of Basic authentication.
fn presented_token(value: &str, basic: bool) -> Option<String> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.trim().to_owned());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = data_encoding::BASE64
            .decode(credentials.trim().as_bytes())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A browser's request from a page of another site: its `Origin` names another host.
fn crossed_site(request: &Request<Incoming>) -> bool {
    let Some(origin) = request.headers().get(ORIGIN) else {
        return false;
    };
    let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    origin_host.is_none() || origin_host != host
}

async fn reload(gateway: &Arc<Gateway>) -> Response<ResponseBody> {
    match gateway.reload().await {
        Ok(changes) => reply_json(
            StatusCode::OK,
            &json!({ "result": "ok", "changes": changes }),
        ),
        Err(errors) => reply_json(
            StatusCode::BAD_REQUEST,
            &json!({ "result": "refused", "errors": errors }),
        ),
    }
}

/// `POST /routes/{name}/maintenance?on=true|false`.
fn maintenance(gateway: &Gateway, route: &str, query: Option<&str>) -> Response<ResponseBody> {
    let on = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("on="));
    let on = match on {
        Some("true") => true,
        Some("false") => false,
        _ => return error(StatusCode::BAD_REQUEST, "say ?on=true or ?on=false"),
    };
    let snapshot = gateway.current();
    let Some(index) = snapshot.config.routes.iter().position(|r| r.name == route) else {
        return error(StatusCode::NOT_FOUND, format!("no route {route}"));
    };
    snapshot.routes[index].set_maintenance(on);
    tracing::info!(%route, on, "maintenance changed by the admin API");
    reply_json(
        StatusCode::OK,
        &json!({ "route": route, "maintenance": on }),
    )
}

/// `POST /cache/purge?route=NAME&path=P`: drops the stored variants of every URI whose
/// path is `P` (with any query), or that starts with `P` less a final `*`. `P` is compared
/// as clients send it, percent-encoding and all. Without `route`, every cached route.
fn purge(gateway: &Gateway, query: Option<&str>) -> Response<ResponseBody> {
    let param = |name: &str| {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let Some(path) = param("path").filter(|p| p.starts_with('/')) else {
        return error(
            StatusCode::BAD_REQUEST,
            "say ?path=/page, or ?path=/prefix* for every path under it (and route=NAME)",
        );
    };
    let snapshot = gateway.current();
    let routes: Vec<usize> = match param("route") {
        Some(route) => match snapshot.route_position(route) {
            Some(index) if snapshot.caches[index].is_some() => vec![index],
            Some(_) => return error(StatusCode::NOT_FOUND, format!("route {route} has no cache")),
            None => return error(StatusCode::NOT_FOUND, format!("no route {route}")),
        },
        None => (0..snapshot.caches.len()).collect(),
    };
    let mut purged = 0;
    let mut names = Vec::new();
    for index in routes {
        if let Some(cache) = &snapshot.caches[index] {
            purged += cache.store.purge(path);
            names.push(snapshot.config.routes[index].name.as_str());
        }
    }
    tracing::info!(path, purged, routes = ?names, "cache purged by the admin API");
    reply_json(
        StatusCode::OK,
        &json!({ "routes": names, "path": path, "purged": purged }),
    )
}

/// `/upstreams/{name}/endpoints/{addr}/drain` or `.../undrain`: (name, addr, drain).
fn endpoint_action(path: &str) -> Option<(&str, &str, bool)> {
    let rest = path.strip_prefix("/upstreams/")?;
    let (upstream, rest) = rest.split_once("/endpoints/")?;
    let (endpoint, action) = rest.rsplit_once('/')?;
    let drain = match action {
        "drain" => true,
        "undrain" => false,
        _ => return None,
    };
    Some((upstream, endpoint, drain))
}

/// Stops or resumes sending new requests to an endpoint; requests in flight finish.
fn drain_endpoint(
    gateway: &Gateway,
    upstream: &str,
    endpoint: &str,
    drain: bool,
) -> Response<ResponseBody> {
    let snapshot = gateway.current();
    let found = snapshot.upstream(upstream).and_then(|u| u.find(endpoint));
    let Some(found) = found else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no endpoint {endpoint} in upstream {upstream}"),
        );
    };
    found.set_draining(drain);
    tracing::info!(%upstream, %endpoint, drain, "endpoint drain changed by the admin API");
    reply_json(
        StatusCode::OK,
        &json!({
            "upstream": upstream,
            "endpoint": endpoint,
            "state": found.state(now_ms()).as_str(),
            "inflight": found.inflight.load(Ordering::Relaxed),
        }),
    )
}

fn refresh_endpoint_gauges(gateway: &Gateway) {
    let metrics = &gateway.observer.metrics;
    let now = now_ms();
    for upstream in &gateway.current().upstreams {
        if let Some(admission) = &upstream.admission {
            let usage = admission.usage();
            let labels = UpstreamLabel {
                upstream: upstream.name.clone(),
            };
            metrics
                .inflight_limit
                .get_or_create(&labels)
                .set(i64::from(usage.limit));
            metrics
                .queue
                .get_or_create(&labels)
                .set(i64::try_from(usage.queued).unwrap_or(i64::MAX));
        }
        for endpoint in &upstream.members().endpoints {
            let labels = EndpointLabels {
                upstream: upstream.name.clone(),
                endpoint: endpoint.label.clone(),
            };
            let inflight = endpoint.inflight.load(Ordering::Relaxed);
            metrics
                .endpoint_up
                .get_or_create(&labels)
                .set(i64::from(endpoint.is_usable(now)));
            metrics
                .endpoint_inflight
                .get_or_create(&labels)
                .set(i64::try_from(inflight).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_bearer_and_basic() {
        assert_eq!(
            presented_token("Bearer s3cret", false).as_deref(),
            Some("s3cret")
        );
        // "admin:s3cret"
        assert_eq!(
            presented_token("Basic YWRtaW46czNjcmV0", true).as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented_token("Basic YWRtaW46czNjcmV0", false), None);
        assert_eq!(presented_token("Basic !!!", true), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
