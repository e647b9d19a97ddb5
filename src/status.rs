//! What baton says about itself: the data of the admin status page (`/status.json`) and the
//! public, sanitized status page of `[status_page]`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::cache::RouteCache;
use crate::config::runtime::InflightLimit;
use crate::config::{HostPattern, Route};
use crate::gateway::{Gateway, RouteState, Snapshot};
use crate::observe::window::{Recent, Window, WINDOW};
use crate::upstream::endpoint::now_ms;
use crate::upstream::Upstream;

/// The share of a route's recent requests that may fail before it counts as degraded.
const DEGRADED_ERROR_RATE: f64 = 0.05;

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds to the microsecond: a fast upstream answers in well under one.
fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

fn recent_json(recent: &Recent) -> Value {
    let causes: serde_json::Map<String, Value> = recent
        .causes
        .iter()
        .map(|(cause, n)| (cause.code().to_owned(), json!(n)))
        .collect();
    json!({
        "requests": recent.requests,
        "errors": recent.errors,
        "per_second": (recent.per_second() * 100.0).round() / 100.0,
        "error_rate": (recent.error_rate() * 1e4).round() / 1e4,
        "p50_ms": millis(recent.p50),
        "p99_ms": millis(recent.p99),
        "causes": causes,
    })
}

fn host_pattern(host: &HostPattern) -> String {
    match host {
        HostPattern::Any => "*".to_owned(),
        HostPattern::Suffix(suffix) => format!("*{suffix}"),
        HostPattern::Exact(name) => name.clone(),
    }
}

/// How a route is doing, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Operational,
    /// Some endpoints are out, or more than [`DEGRADED_ERROR_RATE`] of requests fail.
    Degraded,
    /// No endpoint takes requests.
    Down,
    Maintenance,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Operational => "operational",
            Health::Degraded => "degraded",
            Health::Down => "down",
            Health::Maintenance => "maintenance",
        }
    }
}

fn route_health(route: &Route, state: &RouteState, upstream: &Upstream, now: u64) -> Health {
    if state.maintenance(route.maintenance) {
        return Health::Maintenance;
    }
    let members = upstream.members();
    let usable = members
        .endpoints
        .iter()
        .filter(|e| e.is_usable(now))
        .count();
    if usable == 0 {
        return Health::Down;
    }
    if usable < members.endpoints.len()
        || state.recent.recent(now).error_rate() > DEGRADED_ERROR_RATE
    {
        return Health::Degraded;
    }
    Health::Operational
}

/// A cached route's cache: what it holds and how often it answered.
fn cache_json(route: &Route, state: &RouteState, cache: &RouteCache) -> Value {
    let counters = &state.cache;
    let lookups = counters.lookups.load(Ordering::Relaxed);
    let hits = counters.hits.load(Ordering::Relaxed);
    cache.store.settle();
    let (objects, bytes) = cache.store.usage();
    json!({
        "lookups": lookups,
        "hits": hits,
        "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
        "stale_answers": counters.stale.load(Ordering::Relaxed),
        "objects": objects,
        "bytes": bytes,
        "max_bytes": route.cache.as_ref().map_or(0, |c| c.max_bytes),
    })
}

/// The data of `/status.json` and the admin status page.
pub fn admin(gateway: &Gateway) -> Value {
    let snapshot = gateway.current();
    let config = &snapshot.config;
    let now = now_ms();
    let wall = SystemTime::now();
    let routes: Vec<Value> = config
        .routes
        .iter()
        .zip(&snapshot.routes)
        .zip(&snapshot.caches)
        .map(|((route, state), cache)| {
            let upstream = &snapshot.upstreams[route.upstream];
            json!({
                "name": route.name,
                "host": host_pattern(&route.host),
                "path_prefix": route.path_prefix,
                "upstream": &*upstream.name,
                "health": route_health(route, state, upstream, now).as_str(),
                "maintenance": state.maintenance(route.maintenance),
                "maintenance_set_by": if state.maintenance_overridden() { "admin" } else { "config" },
                "requests": state.requests.load(Ordering::Relaxed),
                "errors": state.errors.load(Ordering::Relaxed),
                "recent": recent_json(&state.recent.recent(now)),
                "cache": cache.as_ref().map(|cache| cache_json(route, state, cache)),
            })
        })
        .collect();
    let upstreams: Vec<Value> = snapshot
        .upstreams
        .iter()
        .map(|upstream| {
            let members = upstream.members();
            let endpoints: Vec<Value> = members
                .endpoints
                .iter()
                .map(|endpoint| {
                    let state = endpoint.state(now);
                    let ejection = endpoint.ejection(now).map(|e| {
                        json!({
                            "until": humantime::format_rfc3339_seconds(wall + e.remaining).to_string(),
                            "remaining_seconds": (e.remaining.as_secs_f64() * 10.0).round() / 10.0,
                            "cause": e.cause.code(),
                            "times": e.times,
                            "failed_percent": e.failed_percent,
                        })
                    });
                    let rate = endpoint.failure_rate(now);
                    let (checks_passed, checks_failed) = endpoint.checks();
                    json!({
                        "addr": &*endpoint.label,
                        "host": endpoint.host.as_deref(),
                        "weight": endpoint.weight(),
                        "state": state.as_str(),
                        "ejection": ejection,
                        "failure_rate": {
                            "window_seconds": endpoint.failure_window().as_secs_f64(),
                            "attempts": rate.attempts,
                            "failures": rate.failures,
                            "percent": (rate.percent() * 10.0).round() / 10.0,
                        },
                        "checks_passed": checks_passed,
                        "checks_failed": checks_failed,
                        "inflight": endpoint.inflight.load(Ordering::Relaxed),
                        "attempts_ok": endpoint.ok.load(Ordering::Relaxed),
                        "attempts_failed": endpoint.failed.load(Ordering::Relaxed),
                        "ejections": endpoint.ejected_total.load(Ordering::Relaxed),
                        "marked_unhealthy": endpoint.unhealthy_total.load(Ordering::Relaxed),
                        "idle_connections": endpoint.pool.idle_count(),
                        "recent": recent_json(&endpoint.recent.recent(now)),
                    })
                })
                .collect();
            let usable = members
                .endpoints
                .iter()
                .filter(|e| e.is_usable(now))
                .count();
            let recent = Window::merged(members.endpoints.iter().map(|e| &e.recent), now);
            let admission = upstream.admission.as_ref().map(|admission| {
                let usage = admission.usage();
                let config = admission.config();
                json!({
                    "max_inflight": match config.limit {
                        InflightLimit::Fixed(n) => json!(n),
                        InflightLimit::Auto => json!("auto"),
                    },
                    "limit": usage.limit,
                    "learned_limit": usage.learned.map(|l| (l * 10.0).round() / 10.0),
                    "unloaded_latency_ms": usage.baseline_ms.map(|b| (b * 100.0).round() / 100.0),
                    "inflight": usage.inflight,
                    "queued": usage.queued,
                    "queue_size": config.queue_size,
                    "queue_timeout_ms": config.queue_timeout.as_millis() as u64,
                    "wait": recent_json(&admission.recent_waits.recent(now)),
                })
            });
            json!({
                "name": &*upstream.name,
                "balance": upstream.balance(),
                "admission": admission,
                "history": upstream.history.to_json(),
                "unresolved_names": members.unresolved,
                "usable": usable,
                "recent": recent_json(&recent),
                "endpoints": endpoints,
            })
        })
        .collect();
    let listeners: Vec<Value> = gateway
        .listener_addrs()
        .into_iter()
        .map(|(name, addr)| json!({ "name": name, "addr": addr.to_string() }))
        .collect();
    let recent_errors: Vec<Value> = gateway
        .observer
        .recent_errors()
        .iter()
        .rev()
        .map(|e| {
            json!({
                "at": rfc3339(e.at),
                "request_id": e.request_id,
                "route": e.route.as_deref(),
                "upstream": e.upstream.as_deref(),
                "endpoint": e.endpoint.as_deref(),
                "status": e.status,
                "cause": e.cause.code(),
                "detail": e.detail.as_deref(),
            })
        })
        .collect();
    let last_reload = gateway
        .last_reload
        .lock()
        .ok()
        .and_then(|last| last.clone())
        .map(|r| json!({ "at": rfc3339(r.at), "ok": r.ok, "messages": r.messages }));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": rfc3339(wall),
        "window_seconds": WINDOW.as_secs(),
        "ready": gateway.ready.load(Ordering::Acquire),
        "access_log_dropped": gateway.observer.access_log.dropped(),
        "store": store_usage(gateway, config),
        "last_reload": last_reload,
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
        "recent_errors": recent_errors,
    })
}

/// What the `[store]` holds: for memory, the idempotency records' bytes within their part
/// of `max_bytes`, and the rate-limit keys within theirs.
fn store_usage(gateway: &Gateway, config: &crate::config::Config) -> Value {
    let mut usage = gateway.keys.usage();
    if let (Some(object), crate::config::StoreConfig::Memory { max_bytes }) =
        (usage.as_object_mut(), &config.store)
    {
        if let Some(records_max) = object.insert("max_bytes".into(), json!(max_bytes)) {
            object.insert("records_max_bytes".into(), records_max);
        }
        if let Some((keys, max_keys)) = gateway.rates.usage() {
            object.insert("rate_limit_keys".into(), json!(keys));
            object.insert("rate_limit_max_keys".into(), json!(max_keys));
        }
    }
    usage
}

/// The public status page: each route and how it is doing, nothing else (no addresses,
/// no counts). JSON when `json`, else a small HTML page.
pub fn public(snapshot: &Snapshot, json: bool) -> String {
    let now = now_ms();
    let routes: Vec<(&str, Health)> = snapshot
        .config
        .routes
        .iter()
        .zip(&snapshot.routes)
        .map(|(route, state)| {
            let upstream = &snapshot.upstreams[route.upstream];
            (
                route.name.as_str(),
                route_health(route, state, upstream, now),
            )
        })
        .collect();
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    if json {
        let routes: Vec<Value> = routes
            .iter()
            .map(|(name, health)| json!({ "name": name, "status": health.as_str() }))
            .collect();
        return format!("{}\n", json!({ "at": at, "routes": routes }));
    }
    let overall = routes
        .iter()
        .map(|(_, health)| *health)
        .max_by_key(|health| match health {
            Health::Operational => 0,
            Health::Degraded => 1,
            Health::Maintenance => 2,
            Health::Down => 3,
        })
        .unwrap_or(Health::Operational);
    let rows: String = routes
        .iter()
        .map(|(name, health)| {
            format!(
                "<tr><td>{}</td><td class=\"{}\">{}</td></tr>\n",
                escape(name),
                health.as_str(),
                health.as_str()
            )
        })
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="15">
<title>Service status: {overall}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; color: #222; }}
table {{ width: 100%; border-collapse: collapse; }}
td {{ padding: .5rem; border-bottom: 1px solid #ddd; }}
.operational {{ color: #1a7f37; }} .degraded {{ color: #9a6700; }}
.down {{ color: #cf222e; font-weight: bold; }} .maintenance {{ color: #0969da; }}
footer {{ color: #666; font-size: .85rem; margin-top: 1rem; }}
</style></head>
<body>
<h1>Service status: <span class="{overall}">{overall}</span></h1>
<table>
{rows}</table>
<footer>As of {at}. This page refreshes itself.</footer>
</body></html>
"#,
        overall = overall.as_str(),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
