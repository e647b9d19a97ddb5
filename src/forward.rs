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
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    let keeps_trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    headers.remove(TE);
    if keeps_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
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
    pub trusted_proxies: &'a [IpNet],
}

impl Peer<'_> {
    fn is_trusted(&self) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&self.ip))
    }
}

/// Sets the forwarding headers on a request going upstream. `host` is the host the client
/// asked for (its `Host` header or URI authority), `version` the client's HTTP version.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &Peer<'_>,
    host: Option<&HeaderValue>,
    version: Version,
    request_id: &HeaderValue,
) {
    let trusted = peer.is_trusted();
    let peer_ip =
        HeaderValue::try_from(peer.ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
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
    if !trusted {
        headers.remove(FORWARDED);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_FORWARDED_HOST);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
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
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0000000000000000"))
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
        let untrusted = Peer {
            ip: "10.0.0.9".parse().unwrap(),
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
            ip: "10.0.0.9".parse().unwrap(),
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
