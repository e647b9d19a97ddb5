//! Reading an upstream's response head: interim answers, the head itself (httparse), what
//! its `Connection` and `Keep-Alive` fields say, and how its body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, StatusCode, Version};

use crate::cause::Cause;
use crate::codec::{maps, name_is, Decoder, FieldSpans, RawFields, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::forward::is_hop_by_hop;
use crate::spare::Kept;

/// What arrived while the request body was still going out.
pub(super) enum Early {
    /// Interim answers only, now taken off the buffer; or too little to tell yet.
    KeepSending,
    /// The start of a final answer.
    Final,
}

/// Takes complete interim (1xx other than 101) heads off the front of `buf` and says
/// whether a final answer has begun.
pub(super) fn early(buf: &mut BytesMut) -> Result<Early, Cause> {
    loop {
        // "HTTP/1.1 1xx" tells an interim answer by its status line.
        let Some(status) = buf.get(..12) else {
            return Ok(Early::KeepSending);
        };
        let interim =
            status.starts_with(b"HTTP/1.") && status[9] == b'1' && &status[9..12] != b"101";
        if !interim {
            return Ok(Early::Final);
        }
        if parse_head(buf, false, false)?.is_none() {
            return Ok(Early::KeepSending);
        }
    }
}

pub(super) struct ParsedHead {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// The fields for the client: all but `Connection` and `Keep-Alive`, as a rule. Empty
    /// (with room for the fields baton adds) when they are in `raw`.
    pub(super) headers: HeaderMap,
    /// The fields for the client as read, when asked for and the head allows it.
    pub(super) raw: Option<Kept<RawFields>>,
    pub(super) connection: ConnectionFields,
    /// How the body is framed: `Done` for an interim answer.
    pub(super) framing: Decoder,
}

/// The fields of a response head that baton reads or leaves out, told apart once per field:
/// by length, then bytes (any case).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Known {
    Connection,
    KeepAlive,
    Te,
    TransferEncoding,
    /// `Proxy-Connection`, `Upgrade` and `HTTP2-Settings`: hop-by-hop, and only dropped.
    HopByHop,
    ContentLength,
    Date,
    RequestId,
    Other,
}

fn known(name: &str) -> Known {
    let is = |known: &str| name_is(name.as_bytes(), known.as_bytes());
    match name.len() {
        2 if is("te") => Known::Te,
        4 if is("date") => Known::Date,
        7 if is("upgrade") => Known::HopByHop,
        10 if is("connection") => Known::Connection,
        10 if is("keep-alive") => Known::KeepAlive,
        12 if is("x-request-id") => Known::RequestId,
        14 if is("content-length") => Known::ContentLength,
        14 if is("http2-settings") => Known::HopByHop,
        16 if is("proxy-connection") => Known::HopByHop,
        17 if is("transfer-encoding") => Known::TransferEncoding,
        _ => Known::Other,
    }
}

impl Known {
    /// Whether it goes on to the client with an answer whose fields are passed on as read:
    /// not a hop-by-hop field, and not `X-Request-Id`, which baton sets on every answer
    /// (`forward::prepare_response_headers`).
    fn passed_on(self) -> bool {
        matches!(self, Known::ContentLength | Known::Date | Known::Other)
    }
}

/// What a response's `Connection` and `Keep-Alive` fields say. They concern only the
/// connection to the upstream, so they are read from the parsed head and, unless
/// `Connection` names other fields too, left out of the header map: adding them only to
/// remove them on the way to the client cost a hash-map insertion and removal per answer.
#[derive(Default)]
pub(super) struct ConnectionFields {
    close: bool,
    keep_alive: bool,
    /// `Connection` names fields besides the standard hop-by-hop ones: then both fields stay
    /// in the map, and the named fields go with them in `forward::remove_hop_by_hop`.
    names_others: bool,
    /// There is a `TE` field, which `forward::remove_hop_by_hop` rewrites rather than drops.
    te: bool,
    /// `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1).
    pub(super) timeout: Option<Duration>,
}

impl ConnectionFields {
    fn read_connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() && !is_hop_by_hop(token) {
                self.names_others = true;
            }
        }
    }

    /// Whether a field of this kind stays out of the header map.
    fn leaves_out(&self, kind: Known) -> bool {
        !self.names_others && matches!(kind, Known::Connection | Known::KeepAlive)
    }

    /// Whether the upstream lets the connection carry another request: HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `keep-alive`.
    pub(super) fn allows_reuse(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// What the fields say of the body's length (RFC 9112 §6.3).
#[derive(Default)]
struct Length {
    transfer_encoding: bool,
    /// Whether the last coding of all the `Transfer-Encoding` fields is `chunked`.
    chunked_last: bool,
    /// Every `Content-Length` field and list element, when all are the same number.
    content_length: Option<u64>,
    /// A `Content-Length` that is not a number, or two that differ.
    bad_content_length: bool,
}

impl Length {
    fn read_transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encoding = true;
        let last = value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        // Values that `HeaderValue::to_str` refuses were never read as codings.
        if let Some(last) = last.filter(|_| is_visible(value)) {
            self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
        }
    }

    fn read_content_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let parsed = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten();
            match parsed {
                Some(n) if self.content_length.is_none_or(|l| l == n) => {
                    self.content_length = Some(n)
                }
                _ => self.bad_content_length = true,
            }
        }
    }
}

/// Whether a field value is what `HeaderValue::to_str` takes: visible ASCII and tabs.
fn is_visible(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

/// One pass over a head's fields: the kind of each (into `kinds`), what they say of the
/// connection and of the body's length.
fn read_fields(fields: &[httparse::Header<'_>], kinds: &mut [Known]) -> (ConnectionFields, Length) {
    let (mut connection, mut length) = (ConnectionFields::default(), Length::default());
    for (field, slot) in fields.iter().zip(kinds.iter_mut()) {
        let kind = known(field.name);
        *slot = kind;
        match kind {
            Known::Connection => connection.read_connection(field.value),
            Known::KeepAlive if connection.timeout.is_none() => {
                connection.timeout = keep_alive_timeout(field.value)
            }
            Known::Te => connection.te = true,
            Known::TransferEncoding => length.read_transfer_encoding(field.value),
            Known::ContentLength => length.read_content_length(field.value),
            _ => {}
        }
    }
    (connection, length)
}

/// The `timeout=N` of a `Keep-Alive` response header's value (RFC 2068 §19.7.1.1).
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?;
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("timeout") {
            seconds.trim().parse::<u64>().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

/// Takes a complete response head off the front of `buf`; `None` when it is not all there.
/// `head_request`: it answers a HEAD request (for its framing). `raw`: the caller passes
/// the fields on as read when it can (see [`RawFields`]), rather than in a header map.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: bool,
) -> Result<Option<ParsedHead>, Cause> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let invalid = Cause::UpstreamInvalidResponse;
    let len = match parsed {
        // A read can complete a head past the limit the caller checks between reads.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => return Err(invalid),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid),
    };
    // RFC 9110 §15: a status is 100–599; `http` would take anything up to 999.
    let status = response
        .code
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(invalid)?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut kinds = [Known::Other; MAX_HEADERS];
    let (connection, length) = read_fields(response.headers, &mut kinds);
    let kinds = &kinds[..response.headers.len()];
    let interim = status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS;
    let framing = if interim {
        Decoder::Done
    } else {
        response_framing(status, &length, head_request)?
    };
    // The fields as read only for a final, non-101 answer whose hop-by-hop fields are all
    // the standard ones, each simply dropped.
    let raw = (raw
        && !interim
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !connection.names_others
        && !connection.te)
        .then(|| RawFields::of(buf, response.headers, len, |i| kinds[i].passed_on()))
        .flatten();
    // Offsets fit in u32: the head is at most MAX_HEAD_BYTES (checked above).
    let spans = raw
        .is_none()
        .then(|| FieldSpans::of_where(buf, response.headers, |i| !connection.leaves_out(kinds[i])));
    let head = buf.split_to(len).freeze();
    let (headers, raw) = match (raw, spans) {
        (Some(mut raw), _) => {
            let date = kinds.contains(&Known::Date);
            raw.set_head(head, length.content_length, date);
            (maps::take(4), Some(Kept::new(raw)))
        }
        // Room for the fields baton adds on the way to the client.
        (None, Some(spans)) => (spans.to_map(&head, 4).ok_or(invalid)?, None),
        (None, None) => (HeaderMap::new(), None),
    };
    Ok(Some(ParsedHead {
        status,
        version,
        headers,
        raw,
        connection,
        framing,
    }))
}

/// How the body of a final answer is framed (RFC 9112 §6.3).
fn response_framing(
    status: StatusCode,
    length: &Length,
    head_request: bool,
) -> Result<Decoder, Cause> {
    let invalid = Cause::UpstreamInvalidResponse;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // What follows is not HTTP: see `Body::take_upgraded`.
        return Ok(Decoder::Done);
    }
    if length.bad_content_length || (length.transfer_encoding && length.content_length.is_some()) {
        return Err(invalid);
    }
    Ok(
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Decoder::Done
        } else if length.transfer_encoding {
            if length.chunked_last {
                Decoder::chunked()
            } else {
                Decoder::Close
            }
        } else {
            match length.content_length {
                Some(0) => Decoder::Done,
                Some(n) => Decoder::Length(n),
                None => Decoder::Close,
            }
        },
    )
}

/// Fuzzing entry (see `fuzz/`): `data` is what an upstream sent, read in pieces of the
/// size its first byte picks: interim answers, a response head, and a body decoded by the
/// framing the head declares. Panics when something that must hold does not.
pub(crate) fn fuzz(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let (mut buf, mut fed) = (BytesMut::new(), 0);
    // Odd steps ask for the fields as read.
    let raw = step % 2 == 1;
    let head = loop {
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        if early(&mut buf).is_err() {
            return;
        }
        match parse_head(&mut buf, false, raw) {
            Ok(Some(head))
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Ok(Some(head)) => break head,
            Ok(None) if fed < data.len() => {}
            Ok(None) | Err(_) => return,
        }
    };
    assert!((100..=599).contains(&head.status.as_u16()));
    if let Some(fields) = &head.raw {
        // What is passed on as read is whole lines, each valid for `http` too.
        let mut lines = BytesMut::new();
        fields.encode(&mut lines);
        assert!(lines.is_empty() || lines.ends_with(b"\r\n"));
        let mut map = HeaderMap::new();
        assert!(fields.append_to(&mut map).is_some());
        assert!(map.keys().all(|name| known(name.as_str()).passed_on()));
    }
    let mut decoder = head.framing;
    buf.extend_from_slice(&data[fed..]);
    // All that came is all there is: a close-delimited body ends with it.
    crate::fuzz::decode_body(&mut decoder, &mut buf, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(pairs: &[(&str, &str)]) -> Result<Decoder, Cause> {
        let fields: Vec<httparse::Header<'_>> = pairs
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let (_, length) = read_fields(&fields, &mut [Known::Other; MAX_HEADERS]);
        response_framing(StatusCode::OK, &length, false)
    }

    #[test]
    fn known_fields_are_told_apart_in_any_case() {
        // The list `forward::remove_hop_by_hop` works from, in two cases.
        for hop in crate::forward::HOP_BY_HOP {
            for name in [hop.as_str().to_owned(), hop.as_str().to_ascii_uppercase()] {
                assert!(is_hop_by_hop(name.as_bytes()), "{name}");
                assert!(!known(&name).passed_on(), "{name}");
            }
        }
        assert_eq!(known("X-Request-ID"), Known::RequestId);
        assert!(!known("x-request-id").passed_on());
        assert_eq!(known("DATE"), Known::Date);
        assert_eq!(known("Content-length"), Known::ContentLength);
        for name in [
            "content-type",
            "dates",
            "tee",
            "x-request-ids",
            "server",
            "upgrades",
        ] {
            assert_eq!(known(name), Known::Other, "{name}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert!(matches!(
            framing(&[("content-length", "5")]),
            Ok(Decoder::Length(5))
        ));
        assert!(matches!(
            framing(&[("content-length", "0")]),
            Ok(Decoder::Done)
        ));
        assert!(matches!(framing(&[]), Ok(Decoder::Close)));
        assert!(matches!(
            framing(&[("transfer-encoding", "gzip, chunked")]),
            Ok(Decoder::Chunked(crate::codec::Chunk::Size))
        ));
        assert!(matches!(
            framing(&[("transfer-encoding", "gzip")]),
            Ok(Decoder::Close)
        ));
        assert!(framing(&[("content-length", "5"), ("content-length", "6")]).is_err());
        assert!(framing(&[("content-length", "5, 5")]).is_ok());
        assert!(framing(&[("content-length", "+5")]).is_err());
        assert!(framing(&[("content-length", "5, 6")]).is_err());
        assert!(framing(&[("content-length", "")]).is_err());
        assert!(framing(&[("content-length", "99999999999999999999")]).is_err());
        assert!(framing(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_err());
    }

    #[test]
    fn heads_parse_with_values_sharing_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nX-A: c\r\n\r\nhi"[..],
        );
        let head = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-length"], "2");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"hi");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial, false, false).unwrap().is_none());
        let mut garbage = BytesMut::from(&b"HTTX/1.1 200 OK\r\n\r\n"[..]);
        assert!(parse_head(&mut garbage, false, false).is_err());
        let long = format!(
            "HTTP/1.1 200 OK\r\nx-long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(parse_head(&mut BytesMut::from(long.as_bytes()), false, false).is_err());
    }

    fn head(text: &str) -> ParsedHead {
        parse_head(&mut BytesMut::from(text.as_bytes()), false, false)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn connection_fields_decide_reuse_and_stay_out_of_the_map() {
        let kept = head("HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: max=5, timeout=7\r\nX-A: b\r\n\r\n");
        assert!(kept.connection.allows_reuse(kept.version));
        assert_eq!(kept.connection.timeout, Some(Duration::from_secs(7)));
        assert_eq!(kept.headers.len(), 1, "only x-a is for the client");

        let closed = head("HTTP/1.1 200 OK\r\nconnection: upgrade, CLOSE\r\n\r\n");
        assert!(!closed.connection.allows_reuse(closed.version));
        assert!(closed.headers.is_empty());

        let old = head("HTTP/1.0 200 OK\r\n\r\n");
        assert!(!old.connection.allows_reuse(old.version));
        let old_kept = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(old_kept.connection.allows_reuse(old_kept.version));

        // Fields that Connection names go with it later: both stay in the map for that.
        let naming = head("HTTP/1.1 200 OK\r\nConnection: x-secret\r\nKeep-Alive: timeout=3\r\nX-Secret: 1\r\n\r\n");
        assert!(naming.connection.allows_reuse(naming.version));
        assert_eq!(naming.connection.timeout, Some(Duration::from_secs(3)));
        assert_eq!(naming.headers.len(), 3);
    }

    #[test]
    fn interim_answers_during_the_body_are_skipped_and_final_ones_seen() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too"[..]);
        assert!(matches!(early(&mut buf), Ok(Early::Final)));
        assert!(buf.starts_with(b"HTTP/1.1 413"));
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Cont"[..]);
        assert!(matches!(early(&mut buf), Ok(Early::KeepSending)));
        let mut buf = BytesMut::from(&b"HTTP/1"[..]);
        assert!(matches!(early(&mut buf), Ok(Early::KeepSending)));
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        assert!(matches!(early(&mut buf), Ok(Early::KeepSending)));
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching"[..]);
        assert!(matches!(early(&mut buf), Ok(Early::Final)));
    }

    fn raw(text: &str) -> ParsedHead {
        parse_head(&mut BytesMut::from(text.as_bytes()), false, true)
            .unwrap()
            .unwrap()
    }

    fn passed(head: &ParsedHead) -> String {
        let mut out = BytesMut::new();
        head.raw.as_ref().expect("fields as read").encode(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn fields_pass_on_as_read_less_hop_by_hop_ones() {
        let head = raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n");
        assert!(head.headers.is_empty());
        assert_eq!(passed(&head), "X-A: b\r\n");
        assert_eq!(head.raw.as_ref().unwrap().content_length(), None);
        assert!(matches!(head.framing, Decoder::Chunked(_)));
        let head = raw("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-Request-Id: theirs\r\nX-A:  b \r\nDate: now\r\nVia: 1.1 a\r\n\r\nhi");
        assert_eq!(
            passed(&head),
            "Content-Length: 2\r\nX-A:  b \r\nDate: now\r\nVia: 1.1 a\r\n"
        );
        let fields = head.raw.as_ref().unwrap();
        assert_eq!(fields.content_length(), Some(2));
        assert!(fields.has_date());
        let mut map = HeaderMap::new();
        fields.append_to(&mut map).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map["x-a"], "b");
        assert!(matches!(head.framing, Decoder::Length(2)));

        assert_eq!(passed(&raw("HTTP/1.1 204 No Content\r\n\r\n")), "");
        assert_eq!(
            passed(&raw("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")),
            ""
        );

        // Into a map instead: a bare LF, fields that Connection names, a TE, a 101, and
        // more lines left out than are kept track of.
        let mapped = |text: &str| raw(text).raw.is_none();
        assert!(mapped("HTTP/1.1 200 OK\r\nX-A: b\n\r\n"));
        assert!(mapped("HTTP/1.1 200 OK\r\nX-A: b\r\n\n"));
        assert!(mapped(
            "HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: b\r\n\r\n"
        ));
        assert!(mapped("HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n"));
        assert!(mapped(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(mapped("HTTP/1.1 200 OK\r\nUpgrade: a\r\nUpgrade: b\r\nUpgrade: c\r\nUpgrade: d\r\nUpgrade: e\r\n\r\n"));
        let mapped = raw("HTTP/1.1 200 OK\r\nX-A: b\n\r\n");
        assert_eq!(mapped.headers["x-a"], "b");
    }
}
