//! The rules of RFC 9111 for a shared cache, as pure functions of heads and clocks: may a
//! response be stored (§3), for how long is it fresh (§4.2), how old is it (§4.2.3), which
//! request headers pick its variant (§4.1), and may it answer a given request (§4).

use std::time::{Duration, SystemTime};

use http::header::{AGE, AUTHORIZATION, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, StatusCode};

use super::control::{Delta, Directives, MAX_DELTA};
use super::date::http_date;
use crate::config::CacheConfig;

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), less 206: baton
/// does not store partial content.
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The longest heuristic freshness baton gives a response that did not say (§4.2.2 leaves
/// the bound to the cache): a day.
const MAX_HEURISTIC: u64 = 24 * 3600;

/// Why a response is not stored, for the `Cache-Status` detail.
pub type NotStored = &'static str;

/// Whether a response to a GET may be stored (RFC 9111 §3, for a shared cache), and why not.
/// Baton is stricter than the RFC in two places: a response with `Set-Cookie` is never
/// stored (one user's session must not reach another, as nginx and Varnish also decide),
/// nor one with `Vary: *` (it could never be served).
pub fn storable(
    request: &HeaderMap,
    request_cc: &Directives,
    status: StatusCode,
    response: &HeaderMap,
    response_cc: &Directives,
) -> Result<(), NotStored> {
    let code = status.as_u16();
    if !(200..600).contains(&code) || code == 206 || code == 304 {
        return Err("status");
    }
    let understood = HEURISTIC.contains(&code) || (200..300).contains(&code);
    // `must-understand` lets a cache that knows the status ignore `no-store` (§5.2.2.3).
    let no_store = if response_cc.must_understand {
        !understood
    } else {
        response_cc.no_store
    };
    if request_cc.no_store || no_store {
        return Err("no-store");
    }
    if response_cc.private {
        return Err("private");
    }
    if request.contains_key(AUTHORIZATION)
        && !(response_cc.public || response_cc.s_maxage.is_some() || response_cc.must_revalidate)
    {
        return Err("authorization");
    }
    if response.contains_key(SET_COOKIE) {
        return Err("set-cookie");
    }
    if vary_names(response).is_none() {
        return Err("vary");
    }
    let explicit = response.contains_key(EXPIRES)
        || response_cc.max_age.is_some()
        || response_cc.s_maxage.is_some();
    if explicit || response_cc.public || HEURISTIC.contains(&code) {
        Ok(())
    } else {
        Err("status")
    }
}

/// How fresh a stored response is: received at `received`, `initial_age` seconds old then,
/// fresh for `lifetime` seconds of age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub received: SystemTime,
    pub initial_age: u64,
    pub lifetime: u64,
}

impl Freshness {
    /// The freshness of a response whose request was sent at `requested` and whose head
    /// arrived at `received`.
    pub fn of(
        status: StatusCode,
        headers: &HeaderMap,
        cc: &Directives,
        config: &CacheConfig,
        requested: SystemTime,
        received: SystemTime,
    ) -> Freshness {
        let date = http_date(headers, DATE).unwrap_or(received);
        Freshness {
            received,
            initial_age: initial_age(headers, date, requested, received),
            lifetime: lifetime(status, headers, cc, config, date),
        }
    }

    /// The response's current age in seconds (§4.2.3).
    pub fn age(&self, now: SystemTime) -> u64 {
        let resident = now.duration_since(self.received).unwrap_or_default();
        self.initial_age.saturating_add(resident.as_secs())
    }

    /// Seconds of freshness left at `now`: negative once stale.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        clamp(self.lifetime) - clamp(self.age(now))
    }
}

fn clamp(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// The corrected initial age (§4.2.3): the larger of the age the `Date` shows and the
/// `Age` received plus the time the response took to come.
fn initial_age(
    headers: &HeaderMap,
    date: SystemTime,
    requested: SystemTime,
    received: SystemTime,
) -> u64 {
    // One `Age` line of digits; anything else (a sign, a fraction, a parameter, a second
    // line) leaves the age unknown, and a cache then takes the response as stale (the
    // conservative reading of RFC 9111 §5.1 that the cache-tests project checks).
    let mut lines = headers.get_all(AGE).iter();
    let age_value = match (lines.next(), lines.next()) {
        (None, _) => 0,
        (Some(line), None) => match Delta::parse(line.to_str().ok().map(str::trim)) {
            Delta::Seconds(seconds) => seconds,
            Delta::Invalid => MAX_DELTA,
        },
        (Some(_), Some(_)) => MAX_DELTA,
    };
    let apparent = received.duration_since(date).unwrap_or_default().as_secs();
    let delay = received
        .duration_since(requested)
        .unwrap_or_default()
        .as_secs();
    apparent.max(age_value.saturating_add(delay))
}

/// The freshness lifetime in seconds (§4.2.1, §4.2.2): `s-maxage`, `max-age`, `Expires`
/// less `Date`, or a heuristic for a response that allows one.
fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &Directives,
    config: &CacheConfig,
    date: SystemTime,
) -> u64 {
    if let Some(delta) = cc.s_maxage.or(cc.max_age) {
        return delta.seconds();
    }
    if headers.contains_key(EXPIRES) {
        // An invalid `Expires` (such as "0") is a time in the past (§5.3).
        return match http_date(headers, EXPIRES) {
            Some(expires) => expires.duration_since(date).unwrap_or_default().as_secs(),
            None => 0,
        };
    }
    if !(cc.public || HEURISTIC.contains(&status.as_u16())) {
        return 0;
    }
    if !config.default_ttl.is_zero() {
        return config.default_ttl.as_secs();
    }
    match http_date(headers, LAST_MODIFIED) {
        Some(modified) => {
            let unchanged = date.duration_since(modified).unwrap_or_default().as_secs();
            (unchanged / 10).min(MAX_HEURISTIC)
        }
        None => 0,
    }
}

/// The request fields a response varies on, lower case; `None` for `Vary: *` or a name
/// that is not a field name.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in headers.get_all(VARY) {
        for name in line.to_str().ok()?.split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// A request's values of the fields a response varies on, each as its lines joined with
/// ", " and the spaces around each element trimmed, so that `a,b` and `a, b` match (§4.1).
pub fn vary_values(names: &[HeaderName], request: &HeaderMap) -> Vec<Option<String>> {
    names
        .iter()
        .map(|name| {
            let mut joined: Option<String> = None;
            for line in request.get_all(name) {
                let text = String::from_utf8_lossy(line.as_bytes());
                for element in text.split(',').map(str::trim) {
                    let out = joined.get_or_insert_with(String::new);
                    if !out.is_empty() {
                        out.push_str(", ");
                    }
                    out.push_str(element);
                }
            }
            joined
        })
        .collect()
}

/// What a stored response may do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Serve it: fresh, or stale within what the request's `max-stale` accepts.
    Serve,
    /// Serve it stale at once and refresh it in the background (RFC 5861 §3).
    ServeAndRefresh,
    /// Ask the upstream first (conditionally, when the response has validators).
    Validate,
}

/// The response's own rules for serving it, fixed when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub freshness: Freshness,
    /// `no-cache`: validate before every use, never serve stale.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never serve stale.
    pub forbids_stale: bool,
    /// Seconds past freshness it may be served while refreshed, or instead of an error.
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
}

impl Rules {
    pub fn new(freshness: Freshness, cc: &Directives, config: &CacheConfig) -> Rules {
        let window = |delta: Option<Delta>, default: Duration| {
            delta.map_or(default.as_secs(), Delta::seconds)
        };
        Rules {
            freshness,
            no_cache: cc.no_cache,
            forbids_stale: cc.forbids_stale(),
            stale_while_revalidate: window(
                cc.stale_while_revalidate,
                config.stale_while_revalidate,
            ),
            stale_if_error: window(cc.stale_if_error, config.stale_if_error),
        }
    }

    /// What the response may do for a request with directives `request` at `now` (§4,
    /// §4.2.4, §5.2.1).
    pub fn use_for(&self, request: &Directives, now: SystemTime) -> Use {
        if self.no_cache || request.no_cache {
            return Use::Validate;
        }
        let age = self.freshness.age(now);
        let ttl = self.freshness.ttl(now);
        if request
            .max_age
            .is_some_and(|max| age > max.seconds() || max == Delta::Invalid)
        {
            return Use::Validate;
        }
        if let Some(min_fresh) = request.min_fresh {
            if ttl < clamp(min_fresh.seconds()) {
                return Use::Validate;
            }
        }
        if ttl > 0 {
            return Use::Serve;
        }
        if self.forbids_stale {
            return Use::Validate;
        }
        let stale = ttl.unsigned_abs();
        match request.max_stale {
            Some(None) => return Use::Serve,
            Some(Some(Delta::Seconds(max))) if stale <= max => return Use::Serve,
            _ => {}
        }
        if request.max_age.is_none()
            && request.min_fresh.is_none()
            && within(stale, self.stale_while_revalidate)
        {
            return Use::ServeAndRefresh;
        }
        Use::Validate
    }

    /// Whether it could ever answer a request without the upstream: fresh for a while, or
    /// allowed to be served stale.
    pub fn reusable(&self) -> bool {
        self.freshness.lifetime > self.freshness.initial_age
            || !self.no_cache
                && !self.forbids_stale
                && (self.stale_if_error > 0 || self.stale_while_revalidate > 0)
    }

    /// Whether it may answer instead of a 5xx at `now` (RFC 5861 §4).
    pub fn serves_if_error(&self, now: SystemTime) -> bool {
        if self.no_cache || self.forbids_stale {
            return false;
        }
        let ttl = self.freshness.ttl(now);
        ttl > 0 || within(ttl.unsigned_abs(), self.stale_if_error)
    }
}

/// Whether a response `stale` seconds past its freshness is inside a window of `window`
/// seconds; none is inside an empty window, not even at its first second.
fn within(stale: u64, window: u64) -> bool {
    window > 0 && stale <= window
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config() -> CacheConfig {
        CacheConfig {
            max_bytes: 1 << 20,
            max_object_bytes: 1 << 16,
            default_ttl: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn date(seconds: u64) -> String {
        httpdate::fmt_http_date(at(seconds))
    }

    fn freshness(pairs: &[(&str, &str)]) -> Freshness {
        let h = headers(pairs);
        Freshness::of(
            StatusCode::OK,
            &h,
            &Directives::of(&h),
            &config(),
            at(0),
            at(0),
        )
    }

    fn may_store(request: &[(&str, &str)], status: u16, response: &[(&str, &str)]) -> bool {
        let (req, res) = (headers(request), headers(response));
        storable(
            &req,
            &Directives::of(&req),
            StatusCode::from_u16(status).unwrap(),
            &res,
            &Directives::of(&res),
        )
        .is_ok()
    }

    #[test]
    fn what_a_shared_cache_may_store() {
        assert!(may_store(&[], 200, &[]));
        assert!(may_store(&[], 404, &[]));
        assert!(!may_store(&[], 500, &[]));
        assert!(may_store(&[], 500, &[("cache-control", "max-age=5")]));
        assert!(may_store(&[], 302, &[("cache-control", "public")]));
        assert!(!may_store(&[], 302, &[]));
        assert!(!may_store(&[], 206, &[("cache-control", "max-age=5")]));
        assert!(!may_store(&[], 200, &[("cache-control", "no-store")]));
        assert!(!may_store(&[("cache-control", "no-store")], 200, &[]));
        assert!(!may_store(
            &[],
            200,
            &[("cache-control", "private, max-age=5")]
        ));
        assert!(!may_store(&[], 200, &[("set-cookie", "a=b")]));
        assert!(!may_store(&[], 200, &[("vary", "accept, *")]));
        assert!(!may_store(
            &[("authorization", "x")],
            200,
            &[("cache-control", "max-age=5")]
        ));
        assert!(may_store(
            &[("authorization", "x")],
            200,
            &[("cache-control", "s-maxage=5")]
        ));
        assert!(may_store(
            &[],
            200,
            &[("cache-control", "no-store, must-understand")]
        ));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let expires = date(100);
        let f = freshness(&[
            ("cache-control", "max-age=10, s-maxage=20"),
            ("expires", &expires),
        ]);
        assert_eq!(f.lifetime, 20);
        let f = freshness(&[("cache-control", "max-age=10"), ("expires", &expires)]);
        assert_eq!(f.lifetime, 10);
        let now = date(0);
        let f = freshness(&[("date", &now), ("expires", &expires)]);
        assert_eq!(f.lifetime, 100);
        assert_eq!(freshness(&[("expires", "0")]).lifetime, 0);
        assert_eq!(freshness(&[("cache-control", "max-age=x")]).lifetime, 0);
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_time_since_modified_capped_at_a_day() {
        let (now, modified) = (date(1000), date(0));
        let f = freshness(&[("date", &now), ("last-modified", &modified)]);
        assert_eq!(f.lifetime, 100);
        let f = freshness(&[]);
        assert_eq!(f.lifetime, 0);
        let h = headers(&[]);
        let long = CacheConfig {
            default_ttl: Duration::from_secs(30),
            ..config()
        };
        let f = Freshness::of(StatusCode::OK, &h, &Directives::of(&h), &long, at(0), at(0));
        assert_eq!(f.lifetime, 30);
        let f = Freshness::of(
            StatusCode::FOUND,
            &h,
            &Directives::of(&h),
            &long,
            at(0),
            at(0),
        );
        assert_eq!(f.lifetime, 0, "302 is not heuristically cacheable");
    }

    #[test]
    fn age_counts_the_age_header_the_delay_and_the_date() {
        let h = headers(&[("age", "30")]);
        let f = Freshness::of(
            StatusCode::OK,
            &h,
            &Directives::of(&h),
            &config(),
            at(0),
            at(2),
        );
        assert_eq!(f.initial_age, 32);
        assert_eq!(f.age(at(12)), 42);
        for invalid in [
            &[("age", "-1")][..],
            &[("age", "1.0")],
            &[("age", "1, 2")],
            &[("age", "1"), ("age", "1")],
        ] {
            let h = headers(invalid);
            let f = Freshness::of(
                StatusCode::OK,
                &h,
                &Directives::of(&h),
                &config(),
                at(0),
                at(0),
            );
            assert!(f.ttl(at(0)) < 0, "{invalid:?}");
        }
        let old = date(0);
        let h = headers(&[("date", &old)]);
        let f = Freshness::of(
            StatusCode::OK,
            &h,
            &Directives::of(&h),
            &config(),
            at(99),
            at(100),
        );
        assert_eq!(f.initial_age, 100);
    }

    fn rules(response: &[(&str, &str)]) -> Rules {
        let h = headers(response);
        let cc = Directives::of(&h);
        let f = Freshness::of(StatusCode::OK, &h, &cc, &config(), at(0), at(0));
        Rules::new(f, &cc, &config())
    }

    fn use_at(rules: &Rules, request: &[(&str, &str)], seconds: u64) -> Use {
        rules.use_for(&Directives::of_request(&headers(request)), at(seconds))
    }

    #[test]
    fn a_stored_response_serves_while_fresh_and_as_the_request_allows() {
        let r = rules(&[("cache-control", "max-age=10")]);
        assert_eq!(use_at(&r, &[], 5), Use::Serve);
        assert_eq!(use_at(&r, &[], 10), Use::Validate);
        assert!(
            !r.serves_if_error(at(10)),
            "no stale-if-error window at all"
        );
        assert_eq!(
            use_at(&r, &[("cache-control", "max-age=3")], 5),
            Use::Validate
        );
        assert_eq!(
            use_at(&r, &[("cache-control", "min-fresh=6")], 5),
            Use::Validate
        );
        assert_eq!(
            use_at(&r, &[("cache-control", "no-cache")], 5),
            Use::Validate
        );
        assert_eq!(use_at(&r, &[("pragma", "no-cache")], 5), Use::Validate);
        assert_eq!(
            use_at(&r, &[("cache-control", "max-stale=5")], 14),
            Use::Serve
        );
        assert_eq!(
            use_at(&r, &[("cache-control", "max-stale")], 1000),
            Use::Serve
        );
        let strict = rules(&[("cache-control", "max-age=10, must-revalidate")]);
        assert_eq!(
            use_at(&strict, &[("cache-control", "max-stale")], 11),
            Use::Validate
        );
        let validate = rules(&[("cache-control", "max-age=10, no-cache")]);
        assert_eq!(use_at(&validate, &[], 1), Use::Validate);
    }

    #[test]
    fn stale_windows_come_from_the_response_or_the_route() {
        let r = rules(&[(
            "cache-control",
            "max-age=10, stale-while-revalidate=5, stale-if-error=60",
        )]);
        assert_eq!(use_at(&r, &[], 12), Use::ServeAndRefresh);
        assert_eq!(use_at(&r, &[], 16), Use::Validate);
        assert!(r.serves_if_error(at(70)));
        assert!(!r.serves_if_error(at(71)));
        let strict = rules(&[(
            "cache-control",
            "max-age=10, stale-if-error=60, proxy-revalidate",
        )]);
        assert!(!strict.serves_if_error(at(11)));
        let h = headers(&[("cache-control", "max-age=1")]);
        let cc = Directives::of(&h);
        let route = CacheConfig {
            stale_if_error: Duration::from_secs(300),
            ..config()
        };
        let f = Freshness::of(StatusCode::OK, &h, &cc, &route, at(0), at(0));
        assert!(Rules::new(f, &cc, &route).serves_if_error(at(250)));
    }

    #[test]
    fn vary_values_are_joined_and_trimmed() {
        let names = vary_names(&headers(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "x-a"),
        ]))
        .unwrap();
        assert_eq!(names.len(), 3);
        let a = vary_values(&names, &headers(&[("accept-encoding", "gzip,br")]));
        let b = vary_values(
            &names,
            &headers(&[("accept-encoding", "gzip"), ("accept-encoding", " br")]),
        );
        assert_eq!(a, b);
        assert_eq!(a[1], None);
    }
}
