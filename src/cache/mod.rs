//! The cache stage (SPEC §10): a shared HTTP cache per RFC 9111 for routes with `cache`.
//!
//! [`lookup`] runs after the rate limit. It answers a GET or HEAD from a stored response
//! when that response may serve the request ([`policy`]); answers stale at once and starts
//! one background refresh inside `stale-while-revalidate` (RFC 5861); lets a miss wait for
//! another request's fetch of the same URI ([`fill`]); and otherwise hands the request on
//! with a [`Pending`] that knows what was stored. [`Pending::after_response`] then decides,
//! from the upstream's head, whether to store the response (streaming it to the client and
//! into the store at once), to refresh the stored one from a 304, or to answer with the
//! stale copy instead of a 5xx (`stale-if-error`), as [`Pending::instead_of_error`] does
//! when no upstream answered at all.
//!
//! Every answer on a cached route says what the cache did in an RFC 9211 `Cache-Status`
//! field ([`Note`]).

pub mod control;
mod date;
pub mod fill;
mod note;
pub mod policy;
mod serve;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderName, CONTENT_LENGTH, CONTENT_LOCATION, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, LOCATION, RANGE, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::config::CacheConfig;
use crate::respond::X_REQUEST_ID;
use control::Directives;
use fill::{Fill, Filler, Joined};
use policy::{Freshness, Rules, Use};
use serve::{answer, set_age};
use store::{Key, Meta, Object, Store};

pub use note::{Counters, Note, Outcome, CACHE_STATUS, OUTCOMES};

/// Fields a 304 does not update in a stored response: they describe the stored body (its
/// length, coding, digest and range) and the validator it was selected by, or the
/// request (its ID).
const KEPT_ON_UPDATE: [HeaderName; 6] = [
    CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    HeaderName::from_static("content-md5"),
    http::header::CONTENT_RANGE,
    ETAG,
    X_REQUEST_ID,
];

/// One route's cache: what it stores, and the fills under way.
pub struct RouteCache {
    pub store: Store,
    fills: Mutex<HashMap<Key, Arc<Fill>>>,
    max_bytes: u64,
    max_object_bytes: u64,
}

impl RouteCache {
    pub fn new(config: &CacheConfig) -> RouteCache {
        RouteCache {
            store: Store::new(config.max_bytes),
            fills: Mutex::new(HashMap::new()),
            max_bytes: config.max_bytes,
            max_object_bytes: config.max_object_bytes,
        }
    }

    /// Whether this cache keeps serving a route reloaded with `config`: its bounds are
    /// the same (the other settings are read on each request).
    pub fn fits(&self, config: &CacheConfig) -> bool {
        self.max_bytes == config.max_bytes && self.max_object_bytes == config.max_object_bytes
    }

    fn fills(&self) -> MutexGuard<'_, HashMap<Key, Arc<Fill>>> {
        self.fills.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fill under way for `key`, or a new one this request leads.
    fn lead_or_join(self: &Arc<RouteCache>, key: &Key) -> Result<Lead, Arc<Fill>> {
        let mut fills = self.fills();
        if let Some(fill) = fills.get(key) {
            return Err(fill.clone());
        }
        let fill = Arc::new(Fill::default());
        fills.insert(key.clone(), fill.clone());
        Ok(Lead {
            filler: Filler::new(fill, self.max_object_bytes),
            cache: self.clone(),
            key: key.clone(),
            registered: true,
        })
    }

    /// A fill nobody waits for.
    fn alone(self: &Arc<RouteCache>, key: Key) -> Lead {
        Lead {
            filler: Filler::new(Arc::default(), self.max_object_bytes),
            cache: self.clone(),
            key,
            registered: false,
        }
    }
}

/// What the cache stage decided.
pub enum Lookup {
    /// Answer with this, from the cache.
    Answer(Response<ResponseBody>, Note),
    /// Answer with this stale copy, and refresh it in the background with the request.
    Refresh(Response<ResponseBody>, Note, Box<Pending>),
    /// Answer 504 `not-cached` (`only-if-cached`).
    NotCached(Note),
    /// Send the request upstream.
    Forward(Box<Pending>),
}

/// Where the cache stands while a request is upstream.
pub struct Pending {
    cache: Arc<RouteCache>,
    key: Key,
    pub note: Note,
    /// The stored variant for this request, stale: to revalidate, or to answer with if
    /// the upstream fails.
    stale: Option<Arc<Object>>,
    /// Whether the request carries the stored response's validators.
    revalidate: bool,
    /// The fill this request's response goes into; `None` when it is not to be stored.
    lead: Option<Lead>,
    /// The request's head fields and directives, for `Vary` and storability.
    request: HeaderMap,
    request_cc: Directives,
    /// A method that invalidates what is stored for the URI (RFC 9111 §4.4).
    unsafe_method: bool,
    head: bool,
    /// Whether requests for the URI were already kept apart when this one came.
    passing: bool,
    requested: SystemTime,
}

/// Looks the request up in the route's cache.
pub async fn lookup<B>(
    cache: &Arc<RouteCache>,
    request: &Request<B>,
    host: &str,
    patience: Duration,
) -> Lookup {
    let method = request.method();
    let key = Key::new(
        host,
        request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
    );
    let now = SystemTime::now();
    let head = *method == Method::HEAD;
    let mut pending = Box::new(Pending {
        cache: cache.clone(),
        key,
        note: Note::new(Outcome::Miss, Some("miss")),
        stale: None,
        revalidate: false,
        lead: None,
        request: HeaderMap::new(),
        request_cc: Directives::default(),
        unsafe_method: false,
        head,
        passing: false,
        requested: now,
    });
    if *method != Method::GET && !head {
        pending.note = Note::new(Outcome::Bypass, Some("method"));
        pending.unsafe_method = !matches!(*method, Method::OPTIONS | Method::TRACE);
        return Lookup::Forward(pending);
    }
    let headers = request.headers();
    if headers.contains_key(UPGRADE) {
        // A protocol switch (WebSocket) is not a resource to store.
        pending.note = Note::new(Outcome::Bypass, Some("bypass"));
        return Lookup::Forward(pending);
    }
    let request_cc = Directives::of_request(headers);
    // A request that asks about one version (`If-Match`, `If-Range`...) is the origin's to
    // answer; `If-None-Match` and `If-Modified-Since` a stored response answers (§4.3.2).
    let origin_conditional = [IF_MATCH, IF_UNMODIFIED_SINCE, IF_RANGE]
        .iter()
        .any(|name| headers.contains_key(name));
    let entry = cache.store.get(&pending.key);
    let passing = entry
        .as_ref()
        .is_some_and(|e| e.passing(std::time::Instant::now()));
    if let Some(variants) = entry
        .as_ref()
        .map(|e| &e.variants)
        .filter(|v| !v.is_empty())
    {
        pending.note.fwd = Some("vary-miss");
        let found = variants
            .iter()
            .find(|object| object.meta.matches(headers))
            .cloned();
        if let (Some(object), false) = (found, origin_conditional) {
            match object.meta.rules.use_for(&request_cc, now) {
                Use::Serve => {
                    let response = answer(&object, Some(headers), head, now);
                    return Lookup::Answer(response, Note::hit(Outcome::Hit, &object, now));
                }
                Use::ServeAndRefresh => {
                    let response = answer(&object, Some(headers), head, now);
                    let mut note = Note::hit(Outcome::StaleWhileRevalidate, &object, now);
                    note.detail = Some("stale-while-revalidate");
                    // One refresh at a time: a fill under way for the URI is one.
                    let lead = match head {
                        false => cache.lead_or_join(&pending.key).ok(),
                        true => None,
                    };
                    let Some(lead) = lead else {
                        return Lookup::Answer(response, note);
                    };
                    pending.note = Note::new(Outcome::Refresh, Some("stale"));
                    pending.request = headers.clone();
                    pending.request_cc = request_cc;
                    pending.revalidate = object.meta.has_validators();
                    pending.stale = Some(object);
                    pending.lead = Some(lead);
                    return Lookup::Refresh(response, note, pending);
                }
                Use::Validate => {
                    pending.note.fwd = Some("stale");
                    pending.stale = Some(object);
                }
            }
        }
    }
    if request_cc.only_if_cached {
        let mut note = Note::new(Outcome::NotCached, None);
        note.detail = Some("only-if-cached");
        return Lookup::NotCached(note);
    }
    if request_cc.no_store {
        pending.note.fwd = Some("request");
        return Lookup::Forward(pending);
    }
    if head {
        return Lookup::Forward(pending);
    }
    if request_cc.no_cache && pending.stale.is_none() {
        pending.note.fwd = Some("request");
    }
    pending.request = headers.clone();
    pending.request_cc = request_cc;
    let client_conditional = origin_conditional
        || headers.contains_key(IF_NONE_MATCH)
        || headers.contains_key(IF_MODIFIED_SINCE)
        || headers.contains_key(RANGE);
    // A stored answer that was never fresh, or must be validated each time, says the
    // URI's answers are not to be shared either.
    let unshared = pending.stale.as_ref().is_some_and(|o| {
        let rules = &o.meta.rules;
        rules.no_cache || rules.freshness.lifetime <= rules.freshness.initial_age
    });
    pending.passing = passing;
    if client_conditional || passing || unshared {
        // The upstream answers the client's own conditions; a 200 may still be stored,
        // but nobody waits for it (a 304 or 206 is not theirs to share). Nor while the
        // URI's last answer was one that could not be shared.
        pending.lead = Some(cache.alone(pending.key.clone()));
        return Lookup::Forward(pending);
    }
    pending.revalidate = pending
        .stale
        .as_ref()
        .is_some_and(|o| o.meta.has_validators());
    match cache.lead_or_join(&pending.key) {
        Ok(lead) => pending.lead = Some(lead),
        Err(fill) => {
            let joined = fill.join(patience).await;
            let now = SystemTime::now();
            match joined {
                Joined::Done(object) if object.meta.matches(headers) => {
                    let mut note = Note::hit(Outcome::Collapsed, &object, now);
                    note.collapsed = true;
                    return Lookup::Answer(answer(&object, None, false, now), note);
                }
                Joined::Stream(meta, reader) if meta.matches(headers) => {
                    let mut note = Note::new(Outcome::Collapsed, None);
                    note.collapsed = true;
                    note.ttl = Some(meta.rules.freshness.ttl(now));
                    let mut response = Response::new(ResponseBody::filling(reader));
                    *response.status_mut() = meta.status;
                    *response.headers_mut() = meta.headers.clone();
                    set_age(response.headers_mut(), &meta, now);
                    return Lookup::Answer(response, note);
                }
                // Not storable, failed, or another variant: on its own, at once.
                _ => pending.lead = Some(cache.alone(pending.key.clone())),
            }
        }
    }
    Lookup::Forward(pending)
}

/// What to do with the upstream's answer.
pub enum After {
    /// Answer from the cache instead (a 304 refreshed the stored response, or a 5xx that
    /// the stale copy answers).
    Answer(Response<ResponseBody>),
    /// Pass the upstream's answer on, storing its body into this fill if there is one.
    Forward(Option<Lead>),
}

impl Pending {
    /// Adds the stored response's validators to the request going upstream (RFC 9111
    /// §4.3.1), when it revalidates one.
    pub fn prepare(&self, headers: &mut HeaderMap) {
        if !self.unsafe_method {
            headers.insert(
                control::SURROGATE_CAPABILITY,
                HeaderValue::from_static("baton=\"Surrogate/1.0\""),
            );
        }
        let Some(stale) = self.stale.as_ref().filter(|_| self.revalidate) else {
            return;
        };
        if let Some(etag) = &stale.meta.etag {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = &stale.meta.last_modified {
            headers.insert(IF_MODIFIED_SINCE, modified.clone());
        }
    }

    /// The stale copy to answer with instead of an error of `status` (a 5xx baton would
    /// generate or the upstream sent), when `stale-if-error` allows it.
    pub fn instead_of_error(&mut self, status: StatusCode) -> Option<Response<ResponseBody>> {
        if !matches!(status.as_u16(), 500 | 502 | 503 | 504) {
            return None;
        }
        let now = SystemTime::now();
        let stale = self.stale.as_ref()?;
        if !stale.meta.rules.serves_if_error(now) {
            return None;
        }
        let stale = stale.clone();
        let mut note = Note::hit(Outcome::StaleIfError, &stale, now);
        note.detail = Some("stale-if-error");
        note.fwd_status = None;
        self.note = note;
        Some(answer(&stale, None, self.head, now))
    }

    /// Decides what becomes of the upstream's answer, whose head is `status` and
    /// `headers` (as they go to the client) with a body of `length` if known.
    pub fn after_response(
        mut self,
        config: &CacheConfig,
        status: StatusCode,
        headers: &HeaderMap,
        length: Option<u64>,
    ) -> (After, Note) {
        let received = SystemTime::now();
        if self.unsafe_method {
            if status.as_u16() < 400 {
                self.invalidate(headers);
            }
            return (After::Forward(None), self.note);
        }
        self.note.fwd_status = Some(status.as_u16());
        if let Some(response) = self.instead_of_error(status) {
            return (After::Answer(response), self.note);
        }
        if status == StatusCode::NOT_MODIFIED && self.revalidate {
            if let Some(refreshed) = self.refresh(config, headers, received) {
                let mut note = Note::hit(Outcome::Revalidated, &refreshed, received);
                note.fwd = Some("stale");
                note.fwd_status = Some(304);
                if self.note.outcome == Outcome::Refresh {
                    note.outcome = Outcome::Refresh;
                }
                let response = answer(&refreshed, None, self.head, received);
                return (After::Answer(response), note);
            }
        }
        let Some(mut lead) = self.lead.take() else {
            return (After::Forward(None), self.note);
        };
        let response_cc = response_directives(headers);
        let verdict = policy::storable(
            &self.request,
            &self.request_cc,
            status,
            headers,
            &response_cc,
        )
        .and_then(|()| match length {
            Some(length) if length > self.cache.max_object_bytes => Err("too-large"),
            _ => Ok(()),
        });
        if let Err(reason) = verdict {
            self.note.detail = Some(reason);
            self.keep_apart();
            return (After::Forward(None), self.note);
        }
        let freshness = Freshness::of(
            status,
            headers,
            &response_cc,
            config,
            self.requested,
            received,
        );
        let rules = Rules::new(freshness, &response_cc, config);
        self.note.ttl = Some(rules.freshness.ttl(received));
        let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
        if !rules.reusable() && !validators {
            // Stale on arrival, with nothing to revalidate it by and no stale answer
            // allowed: storing it could never serve anyone.
            self.note.detail = Some("not-reusable");
            self.keep_apart();
            return (After::Forward(None), self.note);
        }
        let meta = Meta::new(status, headers, &self.request, rules);
        self.note.stored = true;
        // Only a response fresh on arrival may go to the requests waiting for it: one that
        // must be validated first is theirs to fetch.
        let shared = rules.freshness.ttl(received) > 0 && !rules.no_cache;
        lead.filler.start(Arc::new(meta), length, shared);
        (After::Forward(Some(lead)), self.note)
    }

    /// Keeps the requests for the URI from waiting for each other, unless they already are
    /// (marking it again would cost a write to the store on every request).
    fn keep_apart(&self) {
        if !self.passing {
            self.cache.store.pass(self.key.clone());
        }
    }

    /// The stored response refreshed by a 304 (RFC 9111 §4.3.4), stored in its place. The
    /// request carried this variant's validators alone, so the 304 is about it, whatever
    /// validator it repeats; its fields replace the stored ones except those that describe
    /// the stored body itself ([`KEPT_ON_UPDATE`]).
    fn refresh(
        &mut self,
        config: &CacheConfig,
        headers: &HeaderMap,
        received: SystemTime,
    ) -> Option<Arc<Object>> {
        let stale = self.stale.as_ref()?;
        let old = &stale.meta;
        let mut merged = old.headers.clone();
        for name in headers.keys() {
            if KEPT_ON_UPDATE.contains(name) {
                continue;
            }
            merged.remove(name);
            for value in headers.get_all(name) {
                merged.append(name.clone(), value.clone());
            }
        }
        let response_cc = response_directives(&merged);
        let freshness = Freshness::of(
            old.status,
            &merged,
            &response_cc,
            config,
            self.requested,
            received,
        );
        let rules = Rules::new(freshness, &response_cc, config);
        let mut meta = Meta::new(old.status, &merged, &self.request, rules);
        meta.vary = old.vary.clone();
        let object = Arc::new(stale.with_meta(Arc::new(meta)));
        self.cache.store.insert(self.key.clone(), object.clone());
        if let Some(lead) = self.lead.take() {
            lead.done(object.clone());
        }
        Some(object)
    }

    /// Drops what is stored for the request's URI, and for the `Location` and
    /// `Content-Location` of the answer when they are on the same host (RFC 9111 §4.4).
    fn invalidate(&self, headers: &HeaderMap) {
        let store = &self.cache.store;
        store.remove(&self.key);
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(target) = headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let target = match target.parse::<http::Uri>() {
                Ok(uri) if uri.authority().is_none() && target.starts_with('/') => {
                    target.to_owned()
                }
                Ok(uri)
                    if uri
                        .host()
                        .is_some_and(|h| h.eq_ignore_ascii_case(self.key.host())) =>
                {
                    uri.path_and_query()
                        .map_or("/", |pq| pq.as_str())
                        .to_owned()
                }
                _ => continue,
            };
            store.remove(&Key::new(self.key.host(), &target));
        }
    }
}

/// The directives baton follows for a response: `Surrogate-Control`'s when it speaks to
/// baton, else `Cache-Control`'s.
fn response_directives(headers: &HeaderMap) -> Directives {
    control::surrogate(headers).unwrap_or_else(|| Directives::of(headers))
}

/// A response being stored as it streams to the client. Dropped before
/// [`Lead::complete`], it stores nothing and lets the requests waiting for it go.
pub struct Lead {
    filler: Filler,
    cache: Arc<RouteCache>,
    key: Key,
    /// Whether requests may find it in the route's fills.
    registered: bool,
}

impl Lead {
    /// The next piece of the body.
    pub fn push(&mut self, data: &Bytes) {
        self.filler.push(data);
    }

    /// The body is complete: store it.
    pub fn complete(mut self) {
        if let Some(object) = self.filler.complete() {
            self.cache.store.insert(self.key.clone(), object);
        }
    }

    fn done(mut self, object: Arc<Object>) {
        self.filler.done(object);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.registered {
            let mut fills = self.cache.fills();
            if fills
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, self.filler.fill()))
            {
                fills.remove(&self.key);
            }
        }
    }
}
