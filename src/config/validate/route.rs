//! Validating `[[routes]]`: host and path matching, timeouts, retries, idempotency keys
//! rate limits and caches.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::{limit, Validator};
use crate::config::raw::{self, RawRoute};
use crate::config::runtime::*;

fn build_host(v: &mut Validator, host: Option<&Spanned<String>>) -> HostPattern {
    let Some(host) = host else {
        return HostPattern::Any;
    };
    let text = host.get_ref().trim().to_ascii_lowercase();
    if text == "*" {
        return HostPattern::Any;
    }
    let (pattern, name) = match text.strip_prefix("*.") {
        Some(rest) => (HostPattern::Suffix(format!(".{rest}")), rest.to_owned()),
        None => (HostPattern::Exact(text.clone()), text.clone()),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        v.error(
            Some(host.span()),
            format!(
                "`host` must be \"*\", a host name such as \"api.example.com\", or \"*.example.com\", not {:?}",
                host.get_ref()
            ),
        );
    }
    pattern
}

pub(super) fn build_route(
    v: &mut Validator,
    index: usize,
    raw: &Spanned<RawRoute>,
    upstream_index: &HashMap<String, usize>,
) -> Option<Route> {
    let route = raw.get_ref();
    let cache = route.cache.as_ref().and_then(|c| build_cache(v, c));
    let idempotency = route
        .idempotency
        .as_ref()
        .and_then(|i| build_idempotency(v, i));
    let rate_limit = route
        .rate_limit
        .as_ref()
        .and_then(|r| build_rate_limit(v, r));

    let host = build_host(v, route.host.as_ref());
    let path_prefix = match &route.path_prefix {
        None => "/".to_owned(),
        Some(prefix) if !prefix.get_ref().starts_with('/') => {
            v.error(
                Some(prefix.span()),
                format!(
                    "`path_prefix` must start with \"/\", not {:?}",
                    prefix.get_ref()
                ),
            );
            return None;
        }
        Some(prefix) => prefix.get_ref().clone(),
    };
    let upstream = match &route.upstream {
        None => {
            v.error(
                Some(raw.span()),
                "a route needs `upstream`, the name of an [upstreams.NAME] table",
            );
            return None;
        }
        Some(name) => match upstream_index.get(name.get_ref()) {
            Some(&index) => index,
            None => {
                let mut known: Vec<&str> = upstream_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                v.error(
                    Some(name.span()),
                    format!(
                        "upstream {:?} is not defined (defined: {})",
                        name.get_ref(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                return None;
            }
        },
    };
    let attempts = match &route.retry.attempts {
        None => DEFAULT_ATTEMPTS,
        Some(attempts) if *attempts.get_ref() == 0 => {
            v.error(
                Some(attempts.span()),
                "`retry.attempts` counts the first try and must be at least 1",
            );
            return None;
        }
        Some(attempts) => *attempts.get_ref(),
    };
    let timeouts = &route.timeouts;
    Some(Route {
        name: route
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| format!("route-{}", index + 1)),
        host,
        path_prefix,
        upstream,
        max_body_bytes: route.max_body_bytes.map_or(DEFAULT_MAX_BODY_BYTES, |s| s.0),
        preserve_host: route.preserve_host.unwrap_or(true),
        maintenance: route.maintenance.unwrap_or(false),
        maintenance_retry_after: route
            .maintenance_retry_after
            .map_or(DEFAULT_MAINTENANCE_RETRY_AFTER, |d| d.0),
        timeouts: Timeouts {
            connect: limit(timeouts.connect.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0)),
            response_header: limit(
                timeouts
                    .response_header
                    .map_or(DEFAULT_RESPONSE_HEADER_TIMEOUT, |d| d.0),
            ),
            idle: limit(timeouts.idle.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0)),
            total: timeouts.total.and_then(|d| limit(d.0)),
        },
        retry: build_retry(v, &route.retry, attempts),
        idempotency,
        rate_limit,
        cache,
        buffer_bytes: usize::try_from(
            route
                .retry
                .buffer_bytes
                .map_or(DEFAULT_BUFFER_BYTES, |s| s.0),
        )
        .unwrap_or(usize::MAX),
    })
}

fn build_cache(v: &mut Validator, raw: &Spanned<raw::RawCache>) -> Option<CacheConfig> {
    let raw = raw.get_ref();
    let max_bytes = raw
        .max_bytes
        .as_ref()
        .map_or(DEFAULT_CACHE_MAX_BYTES, |s| s.get_ref().0);
    let max_object_bytes = raw
        .max_object_bytes
        .as_ref()
        .map_or(DEFAULT_CACHE_MAX_OBJECT_BYTES.min(max_bytes), |s| {
            s.get_ref().0
        });
    if let Some(size) = raw.max_bytes.as_ref().filter(|s| s.get_ref().0 == 0) {
        v.error(
            Some(size.span()),
            "`cache.max_bytes` must be more than 0 (leave `cache` out for no cache)",
        );
        return None;
    }
    if max_object_bytes > max_bytes {
        v.error(
            raw.max_object_bytes
                .as_ref()
                .or(raw.max_bytes.as_ref())
                .map(|s| s.span()),
            "`cache.max_object_bytes` must be at most `cache.max_bytes`",
        );
        return None;
    }
    let seconds = |d: Option<crate::config::units::Dur>| d.map_or(Duration::ZERO, |d| d.0);
    Some(CacheConfig {
        max_bytes,
        max_object_bytes,
        default_ttl: seconds(raw.default_ttl),
        stale_if_error: seconds(raw.stale_if_error),
        stale_while_revalidate: seconds(raw.stale_while_revalidate),
    })
}

fn build_rate_limit(v: &mut Validator, raw: &Spanned<raw::RawRateLimit>) -> Option<RateLimit> {
    let span = raw.span();
    let raw = raw.get_ref();
    let mut count = |value: &Option<Spanned<u64>>, key: &str| match value {
        Some(n) if !(1..=MAX_RATE_REQUESTS).contains(n.get_ref()) => {
            v.error(
                Some(n.span()),
                format!("`rate_limit.{key}` must be 1 to {MAX_RATE_REQUESTS}"),
            );
            None
        }
        Some(n) => Some(Some(*n.get_ref() as u32)),
        None => Some(None),
    };
    let requests = count(&raw.requests, "requests");
    let burst = count(&raw.burst, "burst");
    let requests = match requests? {
        Some(requests) => requests,
        None => {
            v.error(
                Some(span),
                "`rate_limit` needs `requests`, how many requests a key may make `per` period",
            );
            return None;
        }
    };
    let per = match &raw.per {
        None => DEFAULT_RATE_PER,
        Some(per) if per.get_ref().0 < Duration::from_millis(1) => {
            v.error(Some(per.span()), "`rate_limit.per` must be at least 1ms");
            return None;
        }
        Some(per) => per.get_ref().0,
    };
    let key = match raw.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
        None | Some((_, "client-ip")) => RateKey::ClientIp,
        Some((_, "route")) => RateKey::Route,
        Some((spanned, text)) => match text
            .strip_prefix("header:")
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
        {
            Some(name) => RateKey::Header(name),
            None => {
                v.error(
                    Some(spanned.span()),
                    format!("`rate_limit.key` must be \"client-ip\", \"header:NAME\" or \"route\", not {text:?}"),
                );
                return None;
            }
        },
    };
    Some(RateLimit::new(
        requests,
        per,
        burst?.unwrap_or(requests),
        key,
    ))
}

fn build_idempotency(v: &mut Validator, raw: &Spanned<raw::RawIdempotency>) -> Option<Idempotency> {
    let raw = raw.get_ref();
    let header = match &raw.header {
        None => http::HeaderName::from_static(DEFAULT_IDEMPOTENCY_HEADER),
        Some(name) => match http::HeaderName::from_bytes(name.get_ref().as_bytes()) {
            Ok(header) => header,
            Err(_) => {
                v.error(
                    Some(name.span()),
                    format!("{:?} is not a header name", name.get_ref()),
                );
                return None;
            }
        },
    };
    let forward_unknown = match raw.on_unknown.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "reject")) => false,
        Some((_, "forward")) => true,
        Some((spanned, other)) => {
            v.error(
                Some(spanned.span()),
                format!(
                    "`idempotency.on_unknown` must be \"reject\" or \"forward\", not {other:?}"
                ),
            );
            return None;
        }
    };
    Some(Idempotency {
        header,
        ttl: raw.ttl.map_or(DEFAULT_IDEMPOTENCY_TTL, |d| d.0),
        forward_unknown,
    })
}

fn build_retry(v: &mut Validator, raw: &raw::RawRetry, attempts: u32) -> Retry {
    let budget_percent = v.percent(
        raw.budget_percent.as_ref(),
        "retry.budget_percent",
        DEFAULT_BUDGET_PERCENT,
    );
    let backoff = raw.backoff.map_or(DEFAULT_BACKOFF, |d| d.0);
    let max_backoff = raw
        .max_backoff
        .as_ref()
        .map_or(DEFAULT_MAX_BACKOFF, |d| d.get_ref().0);
    if max_backoff < backoff {
        v.error(
            raw.max_backoff.as_ref().map(|d| d.span()),
            "`retry.max_backoff` must be at least `retry.backoff`",
        );
    }
    Retry {
        attempts,
        non_idempotent: raw.non_idempotent.unwrap_or(false),
        budget_percent,
        min_per_second: raw.min_per_second.unwrap_or(DEFAULT_MIN_RETRIES_PER_SECOND),
        backoff,
        max_backoff,
    }
}
