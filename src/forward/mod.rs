//! Header rules on the way in (client → upstream) and out (upstream → client).
//!
//! Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1): `Connection` and
//! every header it names, `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`),
//! `Transfer-Encoding` and `Upgrade` (except on an upgrade). Forwarded requests get
//! `X-Forwarded-For/Proto/Host`, `Via` (RFC 9110 §7.6.3) and `X-Request-Id`.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, EXPECT, FORWARDED, HOST, TE, TRANSFER_ENCODING, UPGRADE,
    VIA,
};
use http::{HeaderMap, Version};
use ipnet::IpNet;

mod host;
mod request_id;

pub use host::valid_host;
pub use request_id::{
    incoming_request_id, new_request_id, request_id, request_id_from, valid_request_id,
};

use crate::codec::{encode_field, Known, RawFields, RequestFields};
use crate::respond::X_REQUEST_ID;
use crate::spare::Kept;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The settings of an h2c upgrade (RFC 7540 §3.2.1): connection-specific, so never
/// forwarded (SPEC §13).
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// True when the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`),
/// which only HTTP/1.1 can do. An upgrade to h2c never is one (SPEC §13): a back-end that
/// accepted it would take HTTP/2 on a connection baton only tunnels, so the client could
/// send it any request past baton's rules ("h2c smuggling"). Its `Upgrade` is dropped with
/// the other hop-by-hop fields and the request goes on as a plain HTTP/1.1 one, as RFC 9110
/// §7.8 lets a server that ignores the upgrade do.
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && header_tokens(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && !header_tokens(headers, UPGRADE).any(is_h2c)
}

/// Whether an `Upgrade` token names HTTP/2 over cleartext.
pub fn is_h2c(token: &str) -> bool {
    token.eq_ignore_ascii_case("h2c")
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
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    HTTP2_SETTINGS,
];

/// Whether `name` is one of the standard hop-by-hop fields (any case).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_str().as_bytes()))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay.
/// A `TE` that accepts `trailers` is sent on as `TE: trailers`.
///
/// Every request and response passes here, and most carry none of these headers or only
/// `Connection: keep-alive`; so one pass over the names finds which are present, and only
/// those are looked up and removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = [false; 7];
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|name| name == key) {
            present[i] = true;
        }
    }
    let [connection, keep_alive, proxy_connection, te, transfer_encoding, upgrade_header, http2_settings] =
        present;
    if connection {
        // Headers the client named as hop-by-hop, beyond the standard ones removed below.
        let named: Vec<HeaderName> = header_tokens(headers, CONNECTION)
            .filter(|token| !is_hop_by_hop(token.as_bytes()))
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
    if http2_settings {
        headers.remove(HTTP2_SETTINGS);
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

/// Where a request came from, for the forwarding headers.
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// `ip` as a header value, made once per connection.
    pub ip_header: &'a HeaderValue,
    pub trusted_proxies: &'a [IpNet],
    /// The connection came over TLS.
    pub tls: bool,
}

impl Peer<'_> {
    fn is_trusted(&self) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&self.ip))
    }
}

/// The client's address: the peer's, or when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that no trusted proxy added — read from the right, skipping trusted
/// addresses, as nginx's `real_ip_recursive` does. A value that is not an address ends the
/// walk at the last trusted hop: whatever it claims cannot be believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for field in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = field.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

/// An address as a header value (`X-Forwarded-For`).
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The fields a request carries upstream besides the client's own (SPEC §3): the upstream
/// `Host`, `X-Forwarded-For/Proto/Host`, `Via` and `X-Request-Id`. They are written after
/// the client's fields when the request head is encoded ([`Forwarding::encode_fields`]),
/// instead of being set in the request's header map: a map insertion costs a hash and a
/// probe each, and the map would need room for them. The upstream side is always baton's
/// own HTTP/1.1 client, so the head is the only place they are needed.
pub struct Forwarding {
    forwarded_for: HeaderValue,
    /// `None` when a trusted client's own `X-Forwarded-Proto` is kept.
    forwarded_proto: Option<HeaderValue>,
    /// `None` when a trusted client's own is kept, or no host is known.
    forwarded_host: Option<HeaderValue>,
    /// Whether the client's own forwarding fields are believed (it is a trusted proxy).
    trusted: bool,
    via: &'static str,
    request_id: HeaderValue,
    /// The client's host, sent as `Host` instead of the endpoint's (`preserve_host`).
    host: Option<HeaderValue>,
    /// The client's fields as read, when they are not in the request's header map.
    fields: Option<Kept<RequestFields>>,
    /// Nothing on the way reads the answer's fields, and the client speaks HTTP/1.1: an
    /// HTTP/1.1 upstream's answer may keep its fields as read, to be written out as they
    /// are (`codec::RawFields`).
    pub raw_answer: bool,
}

impl Forwarding {
    /// The fields for a request with `headers` (hop-by-hop fields already removed) or,
    /// when they were kept as read, `fields`, from `peer`. `host` is the host the client
    /// asked for (its `Host` header or URI authority), `version` the client's HTTP version;
    /// `preserve_host` sends that host upstream instead of the endpoint's. A client's own
    /// forwarding fields are kept only when it is a trusted proxy.
    pub fn new(
        headers: &HeaderMap,
        fields: Option<Kept<RequestFields>>,
        peer: &Peer<'_>,
        host: Option<&HeaderValue>,
        version: Version,
        request_id: &HeaderValue,
        preserve_host: bool,
    ) -> Forwarding {
        let trusted = peer.is_trusted();
        let peer_ip = peer.ip_header.clone();
        // Looked up only for a trusted peer: a lookup that finds nothing costs the most.
        let chain = match (&fields, trusted) {
            (_, false) => None,
            (Some(fields), true) => fields.get(Known::ForwardedFor),
            (None, true) => headers.get(X_FORWARDED_FOR).cloned(),
        };
        let forwarded_for = match chain {
            Some(chain) => {
                let mut value = chain.as_bytes().to_vec();
                value.extend_from_slice(b", ");
                value.extend_from_slice(peer_ip.as_bytes());
                HeaderValue::from_bytes(&value).unwrap_or(peer_ip)
            }
            None => peer_ip,
        };
        let kept = |field: Known, name| {
            trusted
                && match &fields {
                    Some(fields) => fields.has(field),
                    None => headers.contains_key(name),
                }
        };
        Forwarding {
            forwarded_for,
            forwarded_proto: (!kept(Known::ForwardedProto, X_FORWARDED_PROTO))
                .then(|| HeaderValue::from_static(if peer.tls { "https" } else { "http" })),
            forwarded_host: host
                .filter(|_| !kept(Known::ForwardedHost, X_FORWARDED_HOST))
                .cloned(),
            trusted,
            via: via_hop(version),
            request_id: request_id.clone(),
            host: host.filter(|_| preserve_host).cloned(),
            fields,
            raw_answer: false,
        }
    }

    /// Whether the client's field `name` stays out of the upstream request (see
    /// [`Forwarding::replaces_known`]).
    fn replaces(&self, name: &HeaderName) -> bool {
        Known::of(name.as_str()).is_some_and(|field| self.replaces_known(field))
    }

    /// Whether the client's field `field` stays out of the upstream request: baton sets
    /// it, or the client is not trusted to set it. `Expect` stays out too: the server
    /// answered `100-continue` when the body was first read, and the upstream gets the body
    /// without having to ask for it.
    fn replaces_known(&self, field: Known) -> bool {
        match field {
            Known::Host | Known::Expect | Known::ForwardedFor | Known::RequestId => true,
            Known::ForwardedProto => !self.trusted || self.forwarded_proto.is_some(),
            Known::ForwardedHost => !self.trusted || self.forwarded_host.is_some(),
            Known::Forwarded => !self.trusted,
            // Hop-by-hop ones are removed before (`remove_hop_by_hop`); on an upgrade,
            // baton's own `Connection: upgrade` goes on.
            Known::Accept | Known::Connection | Known::KeepAlive => false,
        }
    }

    /// The `Content-Length` of the client's fields as read, when they are.
    pub fn declared_length(&self) -> Option<u64> {
        self.fields.as_ref()?.content_length()
    }

    /// The request's header fields for the upstream, and the empty line that ends them:
    /// `Host` first (the client's with `preserve_host`, else `endpoint_host`), the client's
    /// fields that stay, then baton's.
    pub fn encode_fields(
        &self,
        out: &mut BytesMut,
        headers: &HeaderMap,
        endpoint_host: &HeaderValue,
    ) {
        let host = self.host.as_ref().unwrap_or(endpoint_host);
        encode_field(out, HOST.as_str(), host.as_bytes());
        if let Some(fields) = &self.fields {
            // The hop-by-hop fields of plain fields are `Connection` and `Keep-Alive`.
            fields.encode(out, |field| {
                matches!(field, Known::Connection | Known::KeepAlive) || self.replaces_known(field)
            });
        }
        for (name, value) in headers {
            if !self.replaces(name) {
                encode_field(out, name.as_str(), value.as_bytes());
            }
        }
        encode_field(out, X_FORWARDED_FOR.as_str(), self.forwarded_for.as_bytes());
        if let Some(proto) = &self.forwarded_proto {
            encode_field(out, X_FORWARDED_PROTO.as_str(), proto.as_bytes());
        }
        if let Some(host) = &self.forwarded_host {
            encode_field(out, X_FORWARDED_HOST.as_str(), host.as_bytes());
        }
        encode_field(out, VIA.as_str(), self.via.as_bytes());
        encode_field(out, X_REQUEST_ID.as_str(), self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl Forwarding {
    /// The same fields set in a header map, for an HTTP/2 upstream (whose head hyper
    /// encodes): the client's fields that baton replaces are removed and baton's put in.
    /// Returns the host to send, which HTTP/2 carries as `:authority` (RFC 9113 §8.3.1).
    pub fn apply(&self, headers: &mut HeaderMap, endpoint_host: &HeaderValue) -> HeaderValue {
        if let Some(map) = self.fields.as_ref().and_then(|fields| fields.to_map()) {
            let added = std::mem::replace(headers, map);
            remove_hop_by_hop(headers, false);
            for (name, value) in &added {
                headers.append(name, value.clone());
            }
        }
        for name in [
            HOST,
            EXPECT,
            X_FORWARDED_FOR,
            X_REQUEST_ID,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
        ] {
            if self.replaces(&name) {
                headers.remove(&name);
            }
        }
        headers.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        if let Some(proto) = &self.forwarded_proto {
            headers.insert(X_FORWARDED_PROTO, proto.clone());
        }
        if let Some(host) = &self.forwarded_host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        headers.append(VIA, HeaderValue::from_static(self.via));
        headers.insert(X_REQUEST_ID, self.request_id.clone());
        self.host.clone().unwrap_or_else(|| endpoint_host.clone())
    }
}

/// This hop's `Via` entry, naming the protocol version the message was received with.
fn via_hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2 baton",
        Version::HTTP_10 => "1.0 baton",
        _ => ANSWER_VIA,
    }
}

/// The hop baton adds to `Via` on an upstream's answer.
const ANSWER_VIA: &str = "1.1 baton";

/// Prepares an upstream response's headers for the client.
pub fn prepare_response_headers(headers: &mut HeaderMap, upgrade: bool, request_id: &HeaderValue) {
    remove_hop_by_hop(headers, upgrade);
    headers.append(VIA, HeaderValue::from_static(ANSWER_VIA));
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// The same for an answer whose fields are passed on as read (no hop-by-hop fields among
/// them, no 101): baton's are written after them, with no header map to put them in.
pub fn prepare_raw_response(fields: &mut RawFields, request_id: &HeaderValue) {
    fields.add(VIA, HeaderValue::from_static(ANSWER_VIA));
    fields.add(X_REQUEST_ID, request_id.clone());
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
    fn the_client_ip_is_the_first_untrusted_hop_from_the_right() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |xff: &str| headers(&[("x-forwarded-for", xff)]);
        assert_eq!(
            client_ip(ip("192.0.2.9"), &with("203.0.113.5"), &nets),
            ip("192.0.2.9")
        );
        assert_eq!(
            client_ip(proxy, &with("203.0.113.5"), &nets),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(proxy, &with("198.51.100.1, 203.0.113.5, 10.0.0.7"), &nets),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(proxy, &with("nonsense, 10.0.0.7"), &nets),
            ip("10.0.0.7")
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &nets), proxy);
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

    /// The field lines `forwarding` writes for `map`, the endpoint's host being `upstream`.
    fn encoded(forwarding: &Forwarding, map: &HeaderMap) -> Vec<String> {
        let mut out = BytesMut::new();
        forwarding.encode_fields(&mut out, map, &HeaderValue::from_static("upstream"));
        let text = String::from_utf8(out.to_vec()).unwrap();
        let fields = text
            .strip_suffix("\r\n\r\n")
            .expect("the head ends in an empty line");
        fields.split("\r\n").map(str::to_owned).collect()
    }

    #[test]
    fn forwarding_fields_are_replaced_unless_trusted() {
        let id = HeaderValue::from_static("r1");
        let ip = "10.0.0.9".parse().unwrap();
        let ip_text = ip_header(ip);
        let untrusted = Peer {
            ip,
            ip_header: &ip_text,
            trusted_proxies: &[],
            tls: false,
        };
        let map = headers(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "elsewhere"),
            ("forwarded", "for=1.2.3.4"),
            ("x-request-id", "client-id"),
            ("expect", "100-continue"),
            ("via", "1.1 edge"),
            ("x-kept", "yes"),
        ]);
        let forwarding =
            Forwarding::new(&map, None, &untrusted, None, Version::HTTP_11, &id, false);
        assert_eq!(
            encoded(&forwarding, &map),
            [
                "host: upstream",
                "via: 1.1 edge",
                "x-kept: yes",
                "x-forwarded-for: 10.0.0.9",
                "x-forwarded-proto: http",
                "via: 1.1 baton",
                "x-request-id: r1",
            ]
        );

        let nets = ["10.0.0.0/8".parse().unwrap()];
        let trusted = Peer {
            ip,
            ip_header: &ip_text,
            trusted_proxies: &nets,
            tls: false,
        };
        let host = HeaderValue::from_static("example.com");
        let forwarding = Forwarding::new(
            &map,
            None,
            &trusted,
            Some(&host),
            Version::HTTP_2,
            &id,
            true,
        );
        assert_eq!(
            encoded(&forwarding, &map),
            [
                "host: example.com",
                "x-forwarded-proto: https",
                "x-forwarded-host: elsewhere",
                "forwarded: for=1.2.3.4",
                "via: 1.1 edge",
                "x-kept: yes",
                "x-forwarded-for: 1.2.3.4, 10.0.0.9",
                "via: 2 baton",
                "x-request-id: r1",
            ]
        );

        // A trusted proxy that sent no forwarding fields of its own gets baton's.
        let plain = headers(&[("host", "example.com")]);
        let forwarding = Forwarding::new(
            &plain,
            None,
            &trusted,
            Some(&host),
            Version::HTTP_10,
            &id,
            false,
        );
        assert_eq!(
            encoded(&forwarding, &plain),
            [
                "host: upstream",
                "x-forwarded-for: 10.0.0.9",
                "x-forwarded-proto: http",
                "x-forwarded-host: example.com",
                "via: 1.0 baton",
                "x-request-id: r1",
            ]
        );
    }
}
