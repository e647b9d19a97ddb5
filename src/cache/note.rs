//! What the cache did for one request, as the RFC 9211 `Cache-Status` field, the access
//! log's `cache` and the `result` of `baton_cache_total` say it; and the counts of each
//! route's cache for the status pages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue};

use super::store::Object;

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did for one request: the `Cache-Status` field, the access log's `cache`
/// and the `result` of `baton_cache_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub outcome: Outcome,
    /// RFC 9211 `fwd`: why the request went upstream.
    pub(super) fwd: Option<&'static str>,
    pub(super) fwd_status: Option<u16>,
    pub(super) stored: bool,
    pub(super) collapsed: bool,
    pub(super) ttl: Option<i64>,
    pub(super) detail: Option<&'static str>,
}

/// How many [`Outcome`]s there are.
pub const OUTCOMES: usize = 9;

/// What a cached route's request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the cache, fresh (or as stale as the request allowed).
    Hit,
    /// Answered with another request's fetch.
    Collapsed,
    /// Answered stale while one background refresh runs.
    StaleWhileRevalidate,
    /// Answered stale instead of an error.
    StaleIfError,
    /// The stored response was stale, the upstream said it is still good (304).
    Revalidated,
    /// Nothing stored could answer: forwarded.
    Miss,
    /// Not for the cache: a method other than GET and HEAD.
    Bypass,
    /// The background refresh of a stale response.
    Refresh,
    /// `only-if-cached` and nothing to answer with: 504.
    NotCached,
}

impl Outcome {
    /// The label of the access log and the metrics.
    pub fn result(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Collapsed => "collapsed",
            Outcome::StaleWhileRevalidate => "stale-while-revalidate",
            Outcome::StaleIfError => "stale-if-error",
            Outcome::Revalidated => "revalidated",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Refresh => "refresh",
            Outcome::NotCached => "not-cached",
        }
    }

    /// Whether the body came from the cache, for the hit ratio.
    pub fn from_cache(self) -> bool {
        matches!(
            self,
            Outcome::Hit
                | Outcome::Collapsed
                | Outcome::StaleWhileRevalidate
                | Outcome::StaleIfError
                | Outcome::Revalidated
        )
    }

    /// Whether a stale response was given.
    pub fn stale(self) -> bool {
        matches!(self, Outcome::StaleWhileRevalidate | Outcome::StaleIfError)
    }
}

impl Note {
    pub(super) fn new(outcome: Outcome, fwd: Option<&'static str>) -> Note {
        Note {
            outcome,
            fwd,
            fwd_status: None,
            stored: false,
            collapsed: false,
            ttl: None,
            detail: None,
        }
    }

    pub(super) fn hit(outcome: Outcome, object: &Object, now: SystemTime) -> Note {
        Note {
            ttl: Some(object.meta.rules.freshness.ttl(now)),
            ..Note::new(outcome, None)
        }
    }

    /// The `Cache-Status` field: `baton; hit; ttl=30`, `baton; fwd=miss; stored`, ...
    pub fn header(&self) -> HeaderValue {
        let mut text = String::with_capacity(64);
        let mut number = itoa::Buffer::new();
        text.push_str("baton");
        match self.fwd {
            None if self.outcome != Outcome::NotCached => text.push_str("; hit"),
            None => {}
            Some(fwd) => {
                text.push_str("; fwd=");
                text.push_str(fwd);
            }
        }
        if let Some(status) = self.fwd_status {
            text.push_str("; fwd-status=");
            text.push_str(number.format(status));
        }
        if self.stored {
            text.push_str("; stored");
        }
        if self.collapsed {
            text.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            text.push_str("; ttl=");
            text.push_str(number.format(ttl));
        }
        if let Some(detail) = self.detail {
            text.push_str("; detail=");
            text.push_str(detail);
        }
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("baton"))
    }
}

/// Counts of a route's cache for the status page, kept with the route across reloads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests that could have come from the cache (GET and HEAD).
    pub lookups: AtomicU64,
    /// Of those, answered with a stored body.
    pub hits: AtomicU64,
    /// Stale answers given (while refreshing, or instead of an error).
    pub stale: AtomicU64,
}

impl Counters {
    pub fn record(&self, outcome: Outcome) {
        if matches!(outcome, Outcome::Bypass | Outcome::Refresh) {
            return;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if outcome.from_cache() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.stale() {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_reads_as_rfc_9211_shows() {
        let mut note = Note::new(Outcome::Miss, Some("miss"));
        note.stored = true;
        note.fwd_status = Some(200);
        note.ttl = Some(60);
        assert_eq!(
            note.header(),
            "baton; fwd=miss; fwd-status=200; stored; ttl=60"
        );
        let mut hit = Note::new(Outcome::StaleIfError, None);
        hit.detail = Some("stale-if-error");
        assert_eq!(hit.header(), "baton; hit; detail=stale-if-error");
    }
}
