//! What the handler reads of the client's request before it forwards it: the host, the
//! route path, the header list size, the declared length; and what it does with a body it
//! will not forward (hash it for an idempotency key, or read and discard it to answer early).

use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{Request, Uri, Version};

use super::ProxyError;
use crate::body::client_frame;
use crate::cause::Cause;
use crate::codec::{Known, RequestFields};
use crate::forward;
use crate::server::ClientBody;
use crate::upstream::balance::StableHasher;

pub(super) fn declared_length(request: &Request<ClientBody>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a whole request body only to hash it (a repeat of a keyed request), holding no
/// more than one frame at a time.
pub(super) async fn hash_body(
    mut incoming: ClientBody,
    limit: u64,
    idle: Option<Duration>,
) -> Result<u64, Cause> {
    let mut hasher = StableHasher::default();
    let mut read = 0u64;
    while let Some(frame) = client_frame(&mut incoming, idle).await? {
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > limit {
                return Err(Cause::RequestTooLarge);
            }
            hasher.update(data);
        }
    }
    Ok(hasher.finish())
}

/// How much of an unread request body baton reads and discards to answer early and keep
/// the connection, and for how long; a longer or slower body closes the connection instead.
const DISCARD_BYTES: u64 = 64 << 10;
const DISCARD_TIME: Duration = Duration::from_secs(1);

/// Prepares an answer given before the request body was read: the body is read and
/// discarded (as nginx does), since a client still sending it would otherwise find the
/// connection gone; if that takes too long or too much, the answer closes the connection.
pub(super) async fn answer_early(
    request: Request<ClientBody>,
    mut error: ProxyError,
) -> ProxyError {
    let mut body = request.into_body();
    let drained = tokio::time::timeout(DISCARD_TIME, async {
        let mut read = 0u64;
        while !http_body::Body::is_end_stream(&body) {
            match client_frame(&mut body, None).await {
                Ok(Some(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DISCARD_BYTES {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        true
    })
    .await;
    error.close |= !matches!(drained, Ok(true));
    error
}

/// The host the client asked for: the authority of an absolute-form or HTTP/2 URI, which
/// takes precedence over `Host` (RFC 9112 §3.2.2), else `Host`. An HTTP/1.1 request without
/// either is malformed (RFC 9112 §3.2).
/// Both must be valid (RFC 9112 §3.2: an invalid `Host` is a 400, as is more than one,
/// which the HTTP/1.1 server refused already).
pub(super) fn request_host(
    request: &Request<ClientBody>,
    fields: Option<&RequestFields>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let field = match fields {
        Some(fields) => fields.get(Known::Host),
        None => request.headers().get(HOST).cloned(),
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    let valid = field
        .as_ref()
        .is_none_or(|h| forward::valid_host(h.as_bytes()))
        && authority.is_none_or(|a| forward::valid_host(a.as_bytes()));
    let host = match authority {
        Some(authority) => HeaderValue::from_str(authority).ok(),
        None => field,
    };
    if !valid || host.is_none() && request.version() == Version::HTTP_11 {
        return Err(ProxyError::closing(Cause::BadRequest));
    }
    Ok(host)
}

/// An HTTP/2 request's header list size as RFC 9113 §6.5.2 counts it for
/// `SETTINGS_MAX_HEADER_LIST_SIZE`: each field's name and value and 32 bytes, pseudo-header
/// fields included.
pub(super) fn header_list_size(request: &Request<ClientBody>) -> usize {
    const FIELD_OVERHEAD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (
            ":path",
            uri.path_and_query().map_or(1, |pq| pq.as_str().len()),
        ),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
    ];
    let pseudo_size: usize = pseudo
        .iter()
        .map(|(name, len)| name.len() + len + FIELD_OVERHEAD)
        .sum();
    pseudo_size
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum::<usize>()
}

/// The path a request is routed by: `OPTIONS *` asks about the server as a whole, and
/// goes where the host's root goes.
pub(super) fn route_path(uri: &Uri) -> &str {
    match uri.path() {
        "*" => "/",
        path => path,
    }
}
