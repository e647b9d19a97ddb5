//! Request IDs (SPEC §3): the client's `X-Request-Id` when it is valid, else a new one.

use http::{HeaderMap, HeaderValue};

use crate::respond::X_REQUEST_ID;

/// Longest incoming `X-Request-Id` that is kept (SPEC §3).
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's ID: the client's `X-Request-Id` when it is valid, else a new one. It is
/// marked sensitive: no other answer repeats it, so HTTP/2's header compression should
/// send it as a literal instead of adding it to the connection's table, where it could
/// only push out values that do repeat.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = incoming_request_id(headers)
        .cloned()
        .unwrap_or_else(new_request_id);
    id.set_sensitive(true);
    id
}

/// The request ID: the client's `X-Request-Id` when it is valid, otherwise `None` (the
/// caller makes a new one).
pub fn incoming_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(X_REQUEST_ID).filter(|id| valid_request_id(id))
}

/// A request ID is kept when it is 1–128 visible ASCII characters (SPEC §3).
pub fn valid_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// A new request ID: 16 hex digits from a per-process random seed and a counter, so IDs
/// never repeat within a process and are unlikely to repeat across processes.
pub fn new_request_id() -> HeaderValue {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    // splitmix64: a bijection, so distinct counters give distinct IDs.
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut text = [0u8; 16];
    for (i, byte) in text.iter_mut().enumerate() {
        *byte = b"0123456789abcdef"[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Owned by its own reference-counted allocation: the ID is cloned into the request, the
    // answer and the log, and a value copied from a slice would allocate again at its first
    // clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static("0000000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn request_ids_are_checked() {
        let kept = headers(&[("x-request-id", "abc-1")]);
        assert_eq!(incoming_request_id(&kept).unwrap(), "abc-1");
        assert_eq!(
            incoming_request_id(&headers(&[("x-request-id", "a b")])),
            None
        );
        let long = "x".repeat(129);
        assert_eq!(
            incoming_request_id(&headers(&[("x-request-id", &long)])),
            None
        );
        assert_eq!(incoming_request_id(&HeaderMap::new()), None);
    }
}
