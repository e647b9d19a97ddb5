//! Header rules on the way in (client → upstream) and out (upstream → client).
//!
//! Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1): `Connection` and
//! every header it names, `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`),
//! `Transfer-Encoding` and `Upgrade` (except on an upgrade). Forwarded requests get
//! `X-Forwarded-For/Proto/Host`, `Via` (RFC 9110 §7.6.3) and `X-Request-Id`.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, FORWARDED, TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};
use ipnet::IpNet;

use crate::respond::X_REQUEST_ID;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Longest incoming `X-Request-Id` that is kept (SPEC §3).
const MAX_REQUEST_ID_LEN: usize = 128;

/// True when the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`),
/// which only HTTP/1.1 can do.
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && header_tokens(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `name` field, in order, trimmed, empty ones left out.
pub fn header_tokens(
    headers: &HeaderMap,
    name: HeaderName,
) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The headers that only concern one connection (RFC 9110 §7.6.1), besides those that
/// `Connection` names.
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether any of `names` is present. One pass over the header names, cheaper than a
/// hash lookup per name when, as usual, none of them is there.
fn any_present(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|key| names.contains(key))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay.
/// A `TE` that accepts `trailers` is sent on as `TE: trailers`.
///
/// Every request and response passes here, and most carry none of these headers or only
/// `Connection: keep-alive`; so one pass over the names finds which are present, and only
/// those are looked up and removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = [false; 6];
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|name| name == key) {
            present[i] = true;
        }
    }
    let [connection, keep_alive, proxy_connection, te, transfer_encoding, upgrade_header] = present;
    if connection {
        // Headers the client named as hop-by-hop, beyond the standard ones removed below.
        let named: Vec<HeaderName> = header_tokens(headers, CONNECTION)
            .filter(|token| {
                !HOP_BY_HOP
                    .iter()
                    .any(|name| token.eq_ignore_ascii_case(name.as_str()))
            })
            .filter_map(|token| {
                headers
                    .keys()
                    .find(|key| token.eq_ignore_ascii_case(key.as_str()))
                    .cloned()
            })
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    if keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if proxy_connection {
        headers.remove(PROXY_CONNECTION);
    }
    if transfer_encoding {
        headers.remove(TRANSFER_ENCODING);
    }
    if te {
        let keeps_trailers = header_tokens(headers, TE).any(|t| t.eq_ignore_ascii_case("trailers"));
        headers.remove(TE);
        if keeps_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade_header {
        headers.remove(UPGRADE);
    }
}

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

/// Where a request came from, for the forwarding headers.
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// `ip` as a header value, made once per connection.
    pub ip_header: &'a HeaderValue,
    pub trusted_proxies: &'a [IpNet],
}

impl Peer<'_> {
    fn is_trusted(&self) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&self.ip))
    }
}

/// An address as a header value (`X-Forwarded-For`).
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

const FORWARDING: [HeaderName; 4] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// Sets the forwarding headers on a request going upstream. `host` is the host the client
/// asked for (its `Host` header or URI authority), `version` the client's HTTP version.
/// A client's own forwarding headers are kept only when it is a trusted proxy.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &Peer<'_>,
    host: Option<&HeaderValue>,
    version: Version,
    request_id: &HeaderValue,
) {
    let peer_ip = peer.ip_header.clone();
    let (mut has_proto, mut has_host) = (false, false);
    if any_present(headers, &FORWARDING) {
        let trusted = peer.is_trusted();
        match headers.get(X_FORWARDED_FOR).filter(|_| trusted) {
            Some(existing) => {
                let mut chain = existing.as_bytes().to_vec();
                chain.extend_from_slice(b", ");
                chain.extend_from_slice(peer_ip.as_bytes());
                let value = HeaderValue::from_bytes(&chain).unwrap_or(peer_ip);
                headers.insert(X_FORWARDED_FOR, value);
            }
            None => {
                headers.insert(X_FORWARDED_FOR, peer_ip);
            }
        }
        if trusted {
            has_proto = headers.contains_key(X_FORWARDED_PROTO);
            has_host = headers.contains_key(X_FORWARDED_HOST);
        } else {
            headers.remove(FORWARDED);
            headers.remove(X_FORWARDED_PROTO);
            headers.remove(X_FORWARDED_HOST);
        }
    } else {
        headers.insert(X_FORWARDED_FOR, peer_ip);
    }
    if !has_proto {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let (Some(host), false) = (host, has_host) {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    append_via(headers, version);
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Appends this hop to `Via`, naming the protocol version the message was received with.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_2 => "2 baton",
        Version::HTTP_10 => "1.0 baton",
        _ => "1.1 baton",
    };
    headers.append(VIA, HeaderValue::from_static(hop));
}

/// Prepares an upstream response's headers for the client.
pub fn prepare_response_headers(headers: &mut HeaderMap, upgrade: bool, request_id: &HeaderValue) {
    remove_hop_by_hop(headers, upgrade);
    append_via(headers, Version::HTTP_11);
    headers.insert(X_REQUEST_ID, request_id.clone());
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
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn named_headers_go_whatever_their_case_and_te_may_be_named() {
        let mut map = headers(&[
            ("connection", "close, X-Secret, TE, x-absent"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(map["te"], "trailers");

        // Nothing hop-by-hop: nothing changes.
        let mut map = headers(&[("x-kept", "yes"), ("host", "a")]);
        remove_hop_by_hop(&mut map, false);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(Version::HTTP_11, &map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_is_replaced_unless_trusted() {
        let id = HeaderValue::from_static("r1");
        let ip = "10.0.0.9".parse().unwrap();
        let ip_text = ip_header(ip);
        let untrusted = Peer {
            ip,
            ip_header: &ip_text,
            trusted_proxies: &[],
        };
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarding_headers(&mut map, &untrusted, None, Version::HTTP_11, &id);
        assert_eq!(map["x-forwarded-for"], "10.0.0.9");
        assert_eq!(map["x-forwarded-proto"], "http");

        let nets = ["10.0.0.0/8".parse().unwrap()];
        let trusted = Peer {
            ip,
            ip_header: &ip_text,
            trusted_proxies: &nets,
        };
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com");
        set_forwarding_headers(&mut map, &trusted, Some(&host), Version::HTTP_2, &id);
        assert_eq!(map["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "example.com");
        assert_eq!(map["via"], "2 baton");
        assert_eq!(map["x-request-id"], "r1");
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
