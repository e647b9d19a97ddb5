//! Reading one request head: where it ends, whether it parses, whether its framing is
//! unambiguous (RFC 9112 §6, SPEC §13), and the request it makes.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Uri, Version};

use super::Refusal;
use crate::cause::Cause;
use crate::codec::{
    name_is, slice, span, Decoder, FieldSpans, Known, RequestFields, Span, MAX_HEADERS,
};
use crate::spare::Kept;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head, taken off the buffer.
pub(super) struct Head {
    pub parts: http::request::Parts,
    /// Its fields as read, when the head is plain enough to forward them so; `parts` then
    /// has an empty header map.
    pub fields: Option<Kept<RequestFields>>,
    /// How its body is framed; `None` when it has none.
    pub body: Option<Decoder>,
    /// It asks for a protocol upgrade.
    pub upgrade: bool,
    /// The client may send another request on the connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body to come.
    pub expects_continue: bool,
}

/// The verdict on the bytes at the front of the buffer.
pub(super) enum Verdict {
    /// Not all of the head yet.
    Partial,
    Complete(Kept<Head>),
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    H2,
    Refused(Refusal),
}

pub(super) fn refusal(cause: Cause) -> Refusal {
    Refusal {
        cause: Some(cause),
        ..Refusal::default()
    }
}

/// Where the head ends, just past its empty line (`\r\n\r\n`, or a bare `\n` line end that
/// RFC 9112 §2.2 lets a server accept), searching from about `from`. Empty lines before the
/// request line (RFC 9112 §2.2) do not end anything.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let leading = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let mut i = from.min(buf.len()).saturating_sub(2).max(leading);
    while let Some(offset) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let newline = i + offset;
        match (buf.get(newline + 1), buf.get(newline + 2)) {
            (Some(b'\n'), _) => return Some(newline + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(newline + 3),
            _ => i = newline + 1,
        }
    }
    None
}

/// Looks at the bytes at the front of `buf`; a complete, valid head is taken off it.
/// `scanned` keeps how far an earlier call searched for the head's end.
pub(super) fn inspect(buf: &mut BytesMut, scanned: &mut usize, first: bool, max: usize) -> Verdict {
    if first {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            return if n == H2_PREFACE.len() {
                Verdict::H2
            } else {
                Verdict::Partial
            };
        }
    }
    let Some(end) = head_end(buf, *scanned) else {
        *scanned = buf.len();
        return if buf.len() > max {
            Verdict::Refused(refusal(Cause::HeadersTooLarge))
        } else {
            Verdict::Partial
        };
    };
    // Offsets into the head are kept as u32 below, whatever the configured limit.
    if end > max || u32::try_from(end).is_err() {
        return Verdict::Refused(refusal(Cause::HeadersTooLarge));
    }
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        &buf[..end],
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Verdict::Refused(refusal(Cause::BadRequest)),
        Err(httparse::Error::TooManyHeaders) => {
            return Verdict::Refused(refusal(Cause::HeadersTooLarge))
        }
        Err(_) => return Verdict::Refused(refusal(Cause::BadRequest)),
    };
    let framing = match check_framing(&request) {
        Ok(framing) => framing,
        Err(refused) => return Verdict::Refused(*refused),
    };
    // Where the target and each field lie in the head, so that they can share its bytes.
    // Offsets fit in u32: the head is shorter than 4 GiB (checked above).
    let fields = FieldSpans::of(buf, request.headers);
    // The end of the last field line: just before the empty line's CRLF (or LF).
    let fields_end = len - if buf[..len].ends_with(b"\r\n") { 2 } else { 1 };
    let plain = framing.plain && lines_end_in_crlf(buf, request.headers, fields_end);
    let method = span(buf, request.method.unwrap_or_default().as_bytes());
    let target = span(buf, request.path.unwrap_or_default().as_bytes());
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let head = buf.split_to(len).freeze();
    match build(&head, method, target, version, (!plain).then_some(&fields)) {
        Some(parts) => Verdict::Complete(Kept::new(Head {
            parts,
            fields: plain.then(|| {
                Kept::new(RequestFields::new(
                    head.clone(),
                    fields,
                    framing.known,
                    fields_end as u32,
                    framing.length,
                ))
            }),
            body: framing.body,
            upgrade: framing.upgrade,
            keep_alive: framing.keep_alive,
            expects_continue: framing.expects_continue && version == Version::HTTP_11,
        })),
        None => Verdict::Refused(Refusal {
            cause: Some(Cause::BadRequest),
            method: Some(String::from_utf8_lossy(&slice(&head, method)).into_owned()),
            path: Some(String::from_utf8_lossy(&slice(&head, target)).into_owned()),
            ..Refusal::default()
        }),
    }
}

/// The request's method, target and fields (unless they are kept as read) as `http`
/// types; `None` when one is not valid for them (a target that is no URI, say).
fn build(
    head: &Bytes,
    method: Span,
    target: Span,
    version: Version,
    fields: Option<&FieldSpans>,
) -> Option<http::request::Parts> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::from_bytes(&slice(head, method)).ok()?;
    parts.uri = Uri::from_maybe_shared(slice(head, target)).ok()?;
    if !gateway_target(&parts.method, &parts.uri) {
        return None;
    }
    parts.version = version;
    // Room for a field baton may set on the way upstream (the body's framing, or
    // `Connection: upgrade`); the forwarding fields are written with the head instead.
    if let Some(fields) = fields {
        parts.headers = fields.to_map(head, 1)?;
    }
    Some(parts)
}

/// Whether each of `fields` (parsed from `buf`, the last ending at `end`) ends in CRLF, as
/// a line passed on as read must: a bare LF, which the parser accepts, is not sent on.
fn lines_end_in_crlf(buf: &[u8], fields: &[httparse::Header<'_>], end: usize) -> bool {
    let starts = fields
        .iter()
        .skip(1)
        .map(|field| span(buf, field.name.as_bytes()).0 as usize);
    starts
        .chain([end])
        .all(|line_end| buf.get(line_end.wrapping_sub(2)..line_end) == Some(b"\r\n"))
}

/// Whether a request target is one a gateway serves (RFC 9112 §3.2): origin-form
/// (`/path?query`), absolute-form with an `http` or `https` scheme, or `*` for OPTIONS.
/// Authority-form is CONNECT's, which asks a forward proxy for a tunnel: baton is not one,
/// and a bare `host:port` target must not choose the host past `Host`.
fn gateway_target(method: &Method, uri: &Uri) -> bool {
    if *method == Method::CONNECT {
        return false;
    }
    match (uri.scheme_str(), uri.authority(), uri.path_and_query()) {
        (None, None, Some(pq)) => {
            pq.as_str().starts_with('/') || (pq == "*" && *method == Method::OPTIONS)
        }
        (Some(scheme), Some(_), _) => {
            scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
        }
        _ => false,
    }
}

/// What the fields of a head say about its body and its connection.
struct Framing {
    body: Option<Decoder>,
    upgrade: bool,
    keep_alive: bool,
    expects_continue: bool,
    /// The `Content-Length` declared.
    length: Option<u64>,
    /// Where the known fields are, each plus one ([`RequestFields`]).
    known: [u8; Known::COUNT],
    /// The fields can go on as read: no known field twice, and no hop-by-hop field but
    /// `Keep-Alive` and a `Connection` of `keep-alive` or `close` (left out whole).
    plain: bool,
}

/// Applies the framing rules of RFC 9112 §6 and SPEC §13 to a parsed head.
fn check_framing(request: &httparse::Request<'_, '_>) -> Result<Framing, Box<Refusal>> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut hosts = 0;
    let (mut connection_upgrade, mut connection_close, mut connection_keep_alive) =
        (false, false, false);
    let (mut has_upgrade, mut h2c) = (false, false);
    let mut expects_continue = false;
    // Kept as bytes: they become header values only for a refusal.
    let mut accept: Option<&[u8]> = None;
    let mut request_id: Option<&[u8]> = None;
    let mut valid = true;
    let mut known = [0u8; Known::COUNT];
    let mut plain = true;
    for (at, header) in request.headers.iter().enumerate() {
        let name = header.name;
        let is = |lower: &[u8]| name_is(name.as_bytes(), lower);
        if is(b"content-length") {
            // A list, or a second field, goes upstream as one value, from a map.
            plain &= length.is_none() && !header.value.contains(&b',');
            for part in header.value.split(|&b| b == b',') {
                let parsed = std::str::from_utf8(part)
                    .ok()
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok());
                match (parsed, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => valid = false,
                }
            }
        } else if is(b"transfer-encoding") {
            // Several fields form one list; the last coding is the one that frames.
            transfer_encoding = Some(header.value);
            plain = false;
        } else if is(b"host") {
            hosts += 1;
            note(&mut known, &mut plain, Known::Host, at);
        } else if is(b"connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let upgrade = token.eq_ignore_ascii_case(b"upgrade");
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= upgrade;
                connection_close |= close;
                connection_keep_alive |= keep_alive;
                // A token naming another field makes that one hop-by-hop too.
                plain &= close || keep_alive || token.is_empty();
            }
            note(&mut known, &mut plain, Known::Connection, at);
        } else if is(b"expect") {
            expects_continue = header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
            note(&mut known, &mut plain, Known::Expect, at);
        } else if is(b"upgrade") {
            has_upgrade = true;
            h2c |= std::str::from_utf8(header.value)
                .is_ok_and(|v| v.split(',').map(str::trim).any(crate::forward::is_h2c));
            plain = false;
        } else if is(b"accept") {
            accept = Some(header.value);
            note(&mut known, &mut plain, Known::Accept, at);
        } else if is(b"x-request-id") {
            request_id = Some(header.value);
            note(&mut known, &mut plain, Known::RequestId, at);
        } else if let Some(field) = Known::of(name) {
            note(&mut known, &mut plain, field, at);
        } else if crate::forward::is_hop_by_hop(name.as_bytes()) {
            plain = false;
        }
        // A name `http` could not hold (64 KiB or longer) goes the way of a map, and is
        // refused there.
        plain &= name.len() < usize::from(u16::MAX);
    }
    let chunked = match transfer_encoding {
        None => false,
        Some(value) => {
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            valid &= last.eq_ignore_ascii_case(b"chunked");
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            valid &= request.version == Some(1);
            valid &= length.is_none();
            true
        }
    };
    if hosts > 1 {
        valid = false;
    }
    if !valid {
        return Err(Box::new(Refusal {
            cause: Some(Cause::BadRequest),
            method: request.method.map(str::to_owned),
            path: request.path.map(str::to_owned),
            accept: accept.and_then(|v| HeaderValue::from_bytes(v).ok()),
            request_id: request_id.and_then(|v| HeaderValue::from_bytes(v).ok()),
        }));
    }
    let body = if chunked {
        Some(Decoder::chunked())
    } else {
        length.filter(|&n| n > 0).map(Decoder::Length)
    };
    let keep_alive = !connection_close && (request.version == Some(1) || connection_keep_alive);
    Ok(Framing {
        expects_continue: expects_continue && body.is_some(),
        length,
        known,
        plain,
        body,
        // An h2c upgrade is never one (see `forward::is_upgrade`).
        upgrade: connection_upgrade && has_upgrade && !h2c,
        keep_alive,
    })
}

/// Notes where the known field `field` is (`at`); a second one makes the head not plain.
fn note(known: &mut [u8; Known::COUNT], plain: &mut bool, field: Known, at: usize) {
    let slot = &mut known[field as usize];
    *plain &= *slot == 0;
    // Fewer than 255 fields (`MAX_HEADERS`): each place fits in a u8, plus one.
    *slot = u8::try_from(at + 1).unwrap_or(u8::MAX);
}

/// Fuzzing entry (see `fuzz/`): `data` arrives on a connection in reads of the size its
/// first byte picks; each complete head must have unambiguous framing, and its body is
/// decoded from what follows. Panics when something that must hold does not.
pub(crate) fn fuzz(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let (mut buf, mut fed, mut scanned, mut first) = (BytesMut::new(), 0, 0, true);
    loop {
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        match inspect(&mut buf, &mut scanned, first, 8 << 10) {
            Verdict::Partial if fed < data.len() => continue,
            Verdict::Partial | Verdict::H2 | Verdict::Refused(_) => return,
            Verdict::Complete(head) => {
                // Fields kept as read must make a map as well as those put in one.
                let map = head.fields.as_ref().map(|fields| {
                    assert!(head.parts.headers.is_empty());
                    fields.to_map().expect("plain fields that http refuses")
                });
                if let (Some(fields), Some(map)) = (&head.fields, &map) {
                    crate::fuzz::same_forwarding(fields, map.clone());
                }
                let headers = map.as_ref().unwrap_or(&head.parts.headers);
                assert!(headers.get_all(http::header::HOST).iter().count() <= 1);
                assert!(
                    !(headers.contains_key(http::header::CONTENT_LENGTH)
                        && headers.contains_key(http::header::TRANSFER_ENCODING)),
                    "ambiguous framing passed"
                );
                if let Some(mut decoder) = head.body {
                    buf.extend_from_slice(&data[fed..]);
                    fed = data.len();
                    if crate::fuzz::decode_body(&mut decoder, &mut buf, false).is_none() {
                        return;
                    }
                }
                if !head.keep_alive {
                    return;
                }
                (scanned, first) = (0, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &str) -> Verdict {
        inspect(
            &mut BytesMut::from(head.as_bytes()),
            &mut 0,
            false,
            64 << 10,
        )
    }

    fn refused_cause(head: &str) -> Option<Cause> {
        match verdict(head) {
            Verdict::Refused(r) => r.cause,
            _ => None,
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = [
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nx-folded: one\r\n two\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\rx: y\r\n\r\n",
        ];
        for head in bad {
            assert_eq!(refused_cause(head), Some(Cause::BadRequest), "{head:?}");
        }
    }

    #[test]
    fn good_heads_pass_with_their_framing() {
        let mut buf = BytesMut::from(
            &b"POST /x?y HTTP/1.1\r\nhost: a\r\ncontent-length: 3, 3\r\nexpect: 100-continue\r\n\r\nabc"[..],
        );
        match inspect(&mut buf, &mut 0, false, 64 << 10) {
            Verdict::Complete(head) => {
                assert!(matches!(head.body, Some(Decoder::Length(3))));
                assert!(!head.upgrade && head.keep_alive && head.expects_continue);
                assert_eq!(head.parts.method, Method::POST);
                assert_eq!(head.parts.uri, "/x?y");
                assert_eq!(head.parts.headers["host"], "a");
                assert_eq!(&buf[..], b"abc");
            }
            _ => panic!("expected a complete head"),
        }
        match verdict(
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        ) {
            Verdict::Complete(head) => assert!(head.body.is_none() && head.upgrade),
            _ => panic!("expected a complete head"),
        }
        match verdict("GET / HTTP/1.0\r\n\r\n") {
            Verdict::Complete(head) => assert!(!head.keep_alive),
            _ => panic!("expected a complete head"),
        }
        match verdict("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n") {
            Verdict::Complete(head) => assert!(head.keep_alive),
            _ => panic!("expected a complete head"),
        }
        match verdict("GET / HTTP/1.1\r\nconnection: close\r\n\r\n") {
            Verdict::Complete(head) => assert!(!head.keep_alive),
            _ => panic!("expected a complete head"),
        }
        assert!(matches!(
            verdict("GET /a b HTTP/1.1\r\n\r\n"),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            verdict("GET / HTTP/1.1\r\nhost: a\r\n"),
            Verdict::Partial
        ));
    }

    #[test]
    fn plain_fields_are_kept_as_read() {
        let plain = "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nConnection: keep-alive\r\n\
                     X-Forwarded-For: 1.2.3.4\r\n\r\n";
        let Verdict::Complete(head) = verdict(plain) else {
            panic!("expected a complete head");
        };
        assert!(head.parts.headers.is_empty());
        let fields = Kept::into_inner(head).fields.expect("kept as read");
        assert_eq!(fields.get(Known::Host).unwrap(), "a");
        assert!(fields.has(Known::ForwardedFor) && !fields.has(Known::Accept));
        let mut out = BytesMut::new();
        fields.encode(&mut out, |f| matches!(f, Known::Host | Known::Connection));
        assert_eq!(&out[..], b"User-Agent: x\r\nX-Forwarded-For: 1.2.3.4\r\n");
        out.clear();
        fields.encode(&mut out, |f| f == Known::ForwardedFor);
        assert_eq!(
            &out[..],
            b"Host: a\r\nUser-Agent: x\r\nConnection: keep-alive\r\n"
        );
        assert_eq!(fields.to_map().unwrap().len(), 4);
        // Each of these goes into a map.
        for head in [
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nupgrade: h2c\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\naccept: a\r\naccept: b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\nx: y\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nx: y\n\n",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nproxy-connection: keep-alive\r\n\r\n",
        ] {
            let Verdict::Complete(parsed) = verdict(head) else {
                panic!("expected a complete head: {head:?}");
            };
            assert!(parsed.fields.is_none(), "{head:?}");
            assert!(!parsed.parts.headers.is_empty(), "{head:?}");
        }
    }

    #[test]
    fn oversized_heads_are_431() {
        let head = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert!(matches!(
            inspect(&mut BytesMut::from(head.as_bytes()), &mut 0, false, 64),
            Verdict::Refused(Refusal {
                cause: Some(Cause::HeadersTooLarge),
                ..
            })
        ));
        let partial = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100));
        assert!(matches!(
            inspect(&mut BytesMut::from(partial.as_bytes()), &mut 0, false, 64),
            Verdict::Refused(Refusal {
                cause: Some(Cause::HeadersTooLarge),
                ..
            })
        ));
    }

    #[test]
    fn heads_end_at_their_empty_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nhost: a\n\nbody", 0), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(22));
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n", 0), None);
        // Searching on from where the last search stopped finds the same end.
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(head_end(head, 26), Some(27));
        assert!(matches!(
            verdict("\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Verdict::Complete(_)
        ));
    }

    #[test]
    fn the_h2_preface_passes() {
        assert!(matches!(
            inspect(&mut BytesMut::from(H2_PREFACE), &mut 0, true, 1024),
            Verdict::H2
        ));
        assert!(matches!(
            inspect(&mut BytesMut::from(&H2_PREFACE[..10]), &mut 0, true, 1024),
            Verdict::Partial
        ));
    }
}
