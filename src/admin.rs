//! The admin server (SPEC §11): health, readiness, metrics and status, on its own listener.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<ResponseBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
    }
    match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if gateway.ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, TEXT, "ready\n")
        }
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            gateway.observer.metrics.encode(),
        ),
        "/status.json" => reply(StatusCode::OK, JSON, status(gateway).to_string()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /readyz, /metrics or /status.json\n",
        ),
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
    let routes: Vec<_> = config
        .routes
        .iter()
        .zip(&gateway.route_stats)
        .map(|(route, stats)| {
            json!({
                "name": route.name,
                "host": host_pattern(&route.host),
                "path_prefix": route.path_prefix,
                "upstream": gateway.upstreams[route.upstream].name,
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
                .endpoints
                .iter()
                .map(|endpoint| {
                    json!({
                        "addr": endpoint.label,
                        "weight": endpoint.weight,
                        "state": "healthy",
                        "inflight": endpoint.inflight.load(Ordering::Relaxed),
                        "attempts_ok": endpoint.ok.load(Ordering::Relaxed),
                        "attempts_failed": endpoint.failed.load(Ordering::Relaxed),
                        "idle_connections": endpoint.pool.idle_count(),
                    })
                })
                .collect();
            json!({ "name": upstream.name, "balance": "round-robin", "endpoints": endpoints })
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
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
    })
}
