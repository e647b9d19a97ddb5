//! Request IDs (SPEC §3): the client's `X-Request-Id` when it is valid, else a new one.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::respond::X_REQUEST_ID;

/// Longest incoming `X-Request-Id` that is kept (SPEC §3).
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's ID: the client's `X-Request-Id` when it is valid, else a new one. It is
/// marked sensitive: no other answer repeats it, so HTTP/2's header compression should
/// send it as a literal instead of adding it to the connection's table, where it could
/// only push out values that do repeat.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_from(headers.get(X_REQUEST_ID).cloned())
}

/// The same, from the client's `X-Request-Id` when it has one.
pub fn request_id_from(incoming: Option<HeaderValue>) -> HeaderValue {
    let mut id = incoming
        .filter(valid_request_id)
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
///
/// IDs are made [`IDS_PER_BLOCK`] at a time into one shared buffer per thread, each ID a
/// slice of it: an allocation of its own per ID (reference-counted, as the ID is cloned into
/// the request, the answer and the log) took a malloc and a free per request that glibc's
/// per-thread cache seldom served.
pub fn new_request_id() -> HeaderValue {
    let id = IDS
        .try_with(|ids| {
            let mut ids = ids.try_borrow_mut().ok()?;
            if ids.next == IDS_PER_BLOCK {
                *ids = IdBlock::new();
            }
            let at = ids.next * ID_LEN;
            ids.next += 1;
            Some(ids.block.slice(at..at + ID_LEN))
        })
        .ok()
        .flatten()
        // Only while the thread ends: a block of one.
        .unwrap_or_else(|| IdBlock::new().block.slice(..ID_LEN));
    HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("0000000000000000"))
}

/// Length of a new request ID: 16 hex digits.
const ID_LEN: usize = 16;
/// New IDs made at once: 512 bytes, which glibc's per-thread cache serves.
const IDS_PER_BLOCK: usize = 32;

thread_local! {
    static IDS: RefCell<IdBlock> = RefCell::new(IdBlock::new());
}

/// New request IDs made at once, and how many of them were handed out.
struct IdBlock {
    block: Bytes,
    next: usize,
}

impl IdBlock {
    fn new() -> IdBlock {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
        let first = COUNTER.fetch_add(IDS_PER_BLOCK as u64, Ordering::Relaxed);
        let mut text = [0u8; ID_LEN * IDS_PER_BLOCK];
        for (n, id) in (first..).zip(text.chunks_exact_mut(ID_LEN)) {
            // splitmix64: a bijection, so distinct counters give distinct IDs.
            let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            for (i, byte) in id.iter_mut().enumerate() {
                *byte = b"0123456789abcdef"[((z >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        IdBlock {
            block: Bytes::from_owner(text),
            next: 0,
        }
    }
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
    fn new_request_ids_are_16_hex_digits_and_never_repeat() {
        // Past several blocks, and from two threads.
        let other = std::thread::spawn(|| (0..100).map(|_| new_request_id()).collect::<Vec<_>>());
        let mut ids: Vec<HeaderValue> = (0..100).map(|_| new_request_id()).collect();
        ids.extend(other.join().unwrap());
        for id in &ids {
            assert_eq!(id.len(), 16, "{id:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().map(|id| id.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
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
