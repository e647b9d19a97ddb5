//! Entry points for the fuzz targets in `fuzz/`, one per parsing boundary: each takes
//! arbitrary bytes there and panics only when something that must hold for any input does
//! not (a panic anywhere else is a finding too). Not part of baton's interface.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Version};

use crate::codec::{Decoder, RequestFields};
use crate::forward::{self, Forwarding, Peer};
use crate::spare::Kept;

/// Decodes what `buf` holds of a body framed by `decoder`, and checks that no more body
/// comes out than bytes went in. Its length; `None` when the body is malformed, or
/// incomplete and more could have come (`ends_with_input` false).
pub(crate) fn decode_body(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    ends_with_input: bool,
) -> Option<usize> {
    let before = buf.len();
    let mut body = 0;
    loop {
        match decoder.decode(buf) {
            Ok(Some(Some(frame))) => body += frame.data_ref().map_or(0, Bytes::len),
            Ok(Some(None)) => break,
            Ok(None) if ends_with_input => break,
            Ok(None) | Err(_) => return None,
        }
    }
    assert!(body <= before, "{body} body bytes out of {before}");
    Some(body)
}

/// A client's request heads and bodies, as the HTTP/1.1 server reads them.
pub fn request_head(data: &[u8]) {
    crate::server::fuzz_head(data);
}

/// An upstream's answer, as the HTTP/1.1 client reads it: interim answers, the head, and
/// the body by its framing (chunked among them).
pub fn response(data: &[u8]) {
    crate::upstream::h1::fuzz(data);
}

/// A config file: it loads, or every error says something.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = crate::config::parse(&text, "fuzz.toml", Path::new("/nonexistent")) {
        assert!(!errors.is_empty());
        for error in errors {
            assert!(!error.to_string().is_empty());
        }
    }
}

/// Request fields (`name: value` lines) through the forwarding rules: what must never reach
/// an upstream does not.
pub fn forwarding(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let host = headers.get(http::header::HOST).cloned();
    if let Some(host) = &host {
        forward::valid_host(host.as_bytes());
    }
    let upgrade = forward::is_upgrade(Version::HTTP_11, &headers);
    forward::remove_hop_by_hop(&mut headers, upgrade);
    for gone in [TRANSFER_ENCODING, HeaderName::from_static("http2-settings")] {
        assert!(!headers.contains_key(gone), "a hop-by-hop field stayed");
    }
    assert!(headers.get_all(TE).iter().all(|te| te == "trailers"));
    if upgrade {
        assert!(!forward::header_tokens(&headers, UPGRADE).any(forward::is_h2c));
    } else {
        assert!(!headers.contains_key(UPGRADE) && !headers.contains_key(CONNECTION));
    }
    let id = forward::request_id(&headers);
    assert!(forward::valid_request_id(&id));
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let ip_header = forward::ip_header(ip);
    let trusted = ["10.0.0.0/8".parse().expect("a CIDR")];
    for trusted_proxies in [&trusted[..], &[]] {
        let peer = Peer {
            ip,
            ip_header: &ip_header,
            trusted_proxies,
            tls: trusted_proxies.is_empty(),
        };
        let forwarding = Forwarding::new(
            &headers,
            None,
            &peer,
            host.as_ref(),
            Version::HTTP_11,
            &id,
            true,
        );
        let mut out = BytesMut::new();
        forwarding.encode_fields(&mut out, &headers, &HeaderValue::from_static("upstream"));
        assert!(out.ends_with(b"\r\n\r\n"));
        // Every field line is one line: no value may smuggle in another.
        let line_feeds = out.iter().filter(|&&b| b == b'\n').count();
        let line_ends = out.windows(2).filter(|w| w == b"\r\n").count();
        assert_eq!(line_feeds, line_ends, "a bare LF in an encoded field");
    }
}

/// A request's fields kept as read go upstream as the same field lines (in any order and
/// name case) as a header map made of them would, from a trusted peer or not.
pub(crate) fn same_forwarding(fields: &RequestFields, mut map: HeaderMap) {
    forward::remove_hop_by_hop(&mut map, false);
    let host = map.get(http::header::HOST).cloned();
    let id = forward::request_id(&map);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let ip_header = forward::ip_header(ip);
    let trusted = ["10.0.0.0/8".parse().expect("a CIDR")];
    let endpoint = HeaderValue::from_static("upstream");
    for trusted_proxies in [&trusted[..], &[]] {
        let peer = Peer {
            ip,
            ip_header: &ip_header,
            trusted_proxies,
            tls: false,
        };
        let encode = |headers: &HeaderMap, kept: Option<Kept<RequestFields>>| {
            let forwarding = Forwarding::new(
                headers,
                kept,
                &peer,
                host.as_ref(),
                Version::HTTP_11,
                &id,
                true,
            );
            let mut out = BytesMut::new();
            forwarding.encode_fields(&mut out, headers, &endpoint);
            let mut lines: Vec<(String, String)> = out[..]
                .split(|&b| b == b'\n')
                .filter_map(|line| {
                    let text = String::from_utf8_lossy(line);
                    let (name, value) = text.split_once(':')?;
                    Some((name.to_ascii_lowercase(), value.trim().to_owned()))
                })
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            encode(&map, None),
            encode(&HeaderMap::new(), Some(Kept::new(fields.clone()))),
            "fields as read went upstream otherwise than from a map"
        );
    }
}
