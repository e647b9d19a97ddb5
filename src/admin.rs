//! The admin server (SPEC §11): health, readiness, metrics and status, on its own listener.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
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
use crate::config::HostPattern;
use crate::gateway::{stop_requested, Gateway};
use crate::observe::metrics::EndpointLabels;
use crate::upstream::endpoint::now_ms;

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
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
        };
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, &request)) }
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

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path();
    if request.method() == Method::POST {
        return match endpoint_action(path) {
            Some((upstream, endpoint, drain)) => drain_endpoint(gateway, upstream, endpoint, drain),
            None => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        };
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
    }
    match path {
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
        "/status.json" => reply(StatusCode::OK, JSON, status(gateway).to_string()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /readyz, /metrics or /status.json\n",
        ),
    }
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
    let found = gateway
        .upstreams
        .iter()
        .find(|u| &*u.name == upstream)
        .and_then(|u| u.find(endpoint));
    let Some(found) = found else {
        let error = format!("no endpoint {endpoint} in upstream {upstream}");
        return reply(
            StatusCode::NOT_FOUND,
            JSON,
            json!({ "error": error }).to_string(),
        );
    };
    found.set_draining(drain);
    tracing::info!(%upstream, %endpoint, drain, "endpoint drain changed by the admin API");
    let state = json!({
        "upstream": upstream,
        "endpoint": endpoint,
        "state": found.state(now_ms()).as_str(),
        "inflight": found.inflight.load(Ordering::Relaxed),
    });
    reply(StatusCode::OK, JSON, state.to_string())
}

fn refresh_endpoint_gauges(gateway: &Gateway) {
    let metrics = &gateway.observer.metrics;
    let now = now_ms();
    for upstream in &gateway.upstreams {
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

fn host_pattern(host: &HostPattern) -> String {
    match host {
        HostPattern::Any => "*".to_owned(),
        HostPattern::Suffix(suffix) => format!("*{suffix}"),
        HostPattern::Exact(name) => name.clone(),
    }
}

/// The data of `/status.json`.
pub fn status(gateway: &Gateway) -> serde_json::Value {
    let config = &gateway.config;
    let now = now_ms();
    let routes: Vec<_> = config
        .routes
        .iter()
        .zip(&gateway.route_stats)
        .map(|(route, stats)| {
            json!({
                "name": route.name,
                "host": host_pattern(&route.host),
                "path_prefix": route.path_prefix,
                "upstream": &*gateway.upstreams[route.upstream].name,
                "maintenance": route.maintenance,
                "requests": stats.requests.load(Ordering::Relaxed),
                "errors": stats.errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    let upstreams: Vec<_> = gateway
        .upstreams
        .iter()
        .map(|upstream| {
            let endpoints: Vec<_> = upstream
                .members()
                .endpoints
                .iter()
                .map(|endpoint| {
                    let ejection = endpoint.ejection(now).map(|e| {
                        json!({
                            "until": humantime::format_rfc3339_seconds(SystemTime::now() + e.remaining).to_string(),
                            "remaining_seconds": e.remaining.as_secs_f64(),
                            "cause": e.cause.code(),
                            "times": e.times,
                        })
                    });
                    let (checks_passed, checks_failed) = endpoint.checks();
                    json!({
                        "addr": &*endpoint.label,
                        "host": endpoint.host.as_deref(),
                        "checks_passed": checks_passed,
                        "checks_failed": checks_failed,
                        "weight": endpoint.weight,
                        "state": endpoint.state(now).as_str(),
                        "ejection": ejection,
                        "inflight": endpoint.inflight.load(Ordering::Relaxed),
                        "attempts_ok": endpoint.ok.load(Ordering::Relaxed),
                        "attempts_failed": endpoint.failed.load(Ordering::Relaxed),
                        "idle_connections": endpoint.pool.idle_count(),
                    })
                })
                .collect();
            json!({
                "name": &*upstream.name,
                "balance": upstream.balance(),
                "unresolved_names": upstream.members().unresolved,
                "endpoints": endpoints,
            })
        })
        .collect();
    let listeners: Vec<_> = config
        .listeners
        .iter()
        .map(|l| json!({ "name": l.name, "listen": l.listen.to_string() }))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": gateway.ready.load(Ordering::Acquire),
        "access_log_dropped": gateway.observer.access_log.dropped(),
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
    })
}
