//! Stored responses as answers: the head to store for a response, and the answer a stored
//! response gives a request (its `Age`, a 304 for a conditional request it satisfies).

use std::time::SystemTime;

use http::header::{
    HeaderName, AGE, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::date;
use super::policy::{self, Rules};
use super::store::{Meta, Object};
use crate::body::ResponseBody;
use crate::respond::X_REQUEST_ID;

impl Meta {
    /// The head to store for a response to `request`: as it goes to the client, less
    /// `Age` and the request's own ID.
    pub(super) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        request: &HeaderMap,
        rules: Rules,
    ) -> Meta {
        let stored = compact_headers(headers);
        let names = policy::vary_names(headers).unwrap_or_default();
        let values = policy::vary_values(&names, request);
        Meta {
            status,
            vary: names.into_iter().zip(values).collect(),
            etag: stored.get(ETAG).cloned(),
            last_modified: stored.get(LAST_MODIFIED).cloned(),
            headers: stored,
            rules,
        }
    }

    pub(super) fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// The fields to store, less `Age`, `X-Request-Id` and `Surrogate-Control`, their values copied into one buffer
/// of their own: a value parsed from a response shares the buffer the whole head was read
/// into, which a stored copy would otherwise keep alive.
fn compact_headers(headers: &HeaderMap) -> HeaderMap {
    let kept = |name: &HeaderName| {
        *name != AGE && *name != X_REQUEST_ID && *name != super::control::SURROGATE_CONTROL
    };
    let size = headers
        .iter()
        .filter(|(name, _)| kept(name))
        .map(|(_, value)| value.len())
        .sum();
    let mut values = bytes::BytesMut::with_capacity(size);
    for (_, value) in headers.iter().filter(|(name, _)| kept(name)) {
        values.extend_from_slice(value.as_bytes());
    }
    let values = values.freeze();
    let mut stored = HeaderMap::with_capacity(headers.len());
    let mut at = 0;
    for (name, value) in headers.iter().filter(|(name, _)| kept(name)) {
        let copy = values.slice(at..at + value.len());
        at += value.len();
        // The bytes were a valid value a moment ago.
        if let Ok(copy) = HeaderValue::from_maybe_shared(copy) {
            stored.append(name.clone(), copy);
        }
    }
    stored
}

pub(super) fn set_age(headers: &mut HeaderMap, meta: &Meta, now: SystemTime) {
    headers.insert(AGE, HeaderValue::from(meta.rules.freshness.age(now)));
}

/// A stored response as the answer to a request: with its current `Age`, as a 304 when the
/// client's `If-None-Match` or `If-Modified-Since` holds for it (RFC 9111 §4.3.2).
pub(super) fn answer(
    object: &Object,
    request: Option<&HeaderMap>,
    head: bool,
    now: SystemTime,
) -> Response<ResponseBody> {
    let meta = &object.meta;
    let mut headers = meta.headers.clone();
    set_age(&mut headers, meta, now);
    let not_modified = meta.status == StatusCode::OK && request.is_some_and(|r| unchanged(meta, r));
    let (status, body) = if not_modified {
        headers.remove(CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, ResponseBody::empty())
    } else if head {
        (meta.status, ResponseBody::empty())
    } else {
        (
            meta.status,
            ResponseBody::stored(object.body.clone(), object.body_len),
        )
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Whether the client's conditional GET finds the stored response unchanged: any of its
/// `If-None-Match` tags matches the `ETag` weakly, or, without `If-None-Match`, the
/// response was last modified by `If-Modified-Since` (RFC 9110 §13.1.2, §13.1.3).
fn unchanged(meta: &Meta, request: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = &meta.etag else {
            return false;
        };
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || weak_eq_str(tag, etag.to_str().unwrap_or("")));
    }
    let Some(since) = date::http_date(request, IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = date::http_date(&meta.headers, LAST_MODIFIED)
        .or_else(|| date::http_date(&meta.headers, http::header::DATE));
    modified.is_some_and(|modified| modified <= since)
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2): equal opaque tags, `W/` or not.
fn weak_eq_str(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    !a.trim().is_empty() && opaque(a) == opaque(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_compare_weakly() {
        assert!(weak_eq_str("W/\"a\"", "\"a\""));
        assert!(!weak_eq_str("\"a\"", "\"b\""));
        assert!(!weak_eq_str("", ""));
    }
}
