//! Reading an upstream's response head: interim answers, the head itself (httparse), what
//! its `Connection` and `Keep-Alive` fields say, and how its body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode, Version};

use crate::cause::Cause;
use crate::codec::{Decoder, FieldSpans, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::forward::{header_tokens, is_hop_by_hop};

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
        if parse_head(buf)?.is_none() {
            return Ok(Early::KeepSending);
        }
    }
}

pub(super) struct ParsedHead {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// The fields for the client: all but `Connection` and `Keep-Alive`, as a rule.
    pub(super) headers: HeaderMap,
    pub(super) connection: ConnectionFields,
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
    /// `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1).
    pub(super) timeout: Option<Duration>,
}

impl ConnectionFields {
    fn of(fields: &[httparse::Header<'_>]) -> ConnectionFields {
        let mut this = ConnectionFields::default();
        for field in fields {
            if field.name.eq_ignore_ascii_case("connection") {
                for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        this.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        this.keep_alive = true;
                    } else if !token.is_empty() && !is_hop_by_hop(token) {
                        this.names_others = true;
                    }
                }
            } else if field.name.eq_ignore_ascii_case("keep-alive") && this.timeout.is_none() {
                this.timeout = keep_alive_timeout(field.value);
            }
        }
        this
    }

    /// Whether the field `name` stays out of the header map.
    fn leaves_out(&self, name: &str) -> bool {
        !self.names_others
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"))
    }

    /// Whether the upstream lets the connection carry another request: HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `keep-alive`.
    pub(super) fn allows_reuse(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
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
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, Cause> {
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
    let connection = ConnectionFields::of(response.headers);
    // Offsets fit in u32: the head is at most MAX_HEAD_BYTES (checked above).
    let spans = FieldSpans::of_where(buf, response.headers, |name| !connection.leaves_out(name));
    let head = buf.split_to(len).freeze();
    // Room for the fields baton adds on the way to the client.
    let headers = spans.to_map(&head, 4).ok_or(invalid)?;
    Ok(Some(ParsedHead {
        status,
        version,
        headers,
        connection,
    }))
}

pub(super) fn response_framing(
    status: StatusCode,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<Decoder, Cause> {
    let invalid = Cause::UpstreamInvalidResponse;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // What follows is not HTTP: see `Body::take_upgraded`.
        return Ok(Decoder::Done);
    }
    let transfer_encoding = headers.contains_key(TRANSFER_ENCODING);
    // Every `Content-Length` field and list element must be the same number.
    let mut length: Option<u64> = None;
    for value in &headers.get_all(CONTENT_LENGTH) {
        for part in value.to_str().map_err(|_| invalid)?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid);
            }
            let parsed: u64 = part.parse().map_err(|_| invalid)?;
            if length.is_some_and(|l| l != parsed) {
                return Err(invalid);
            }
            length = Some(parsed);
        }
    }
    if transfer_encoding && length.is_some() {
        return Err(invalid);
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Decoder::Done);
    }
    if transfer_encoding {
        let chunked_last = header_tokens(headers, TRANSFER_ENCODING)
            .next_back()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked_last {
            Decoder::chunked()
        } else {
            Decoder::Close
        });
    }
    Ok(match length {
        Some(0) => Decoder::Done,
        Some(length) => Decoder::Length(length),
        None => Decoder::Close,
    })
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
    let head = loop {
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        if early(&mut buf).is_err() {
            return;
        }
        match parse_head(&mut buf) {
            Ok(Some(head))
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Ok(Some(head)) => break head,
            Ok(None) if fed < data.len() => {}
            Ok(None) | Err(_) => return,
        }
    };
    assert!((100..=599).contains(&head.status.as_u16()));
    let Ok(mut decoder) = response_framing(head.status, &head.headers, false) else {
        return;
    };
    buf.extend_from_slice(&data[fed..]);
    // All that came is all there is: a close-delimited body ends with it.
    crate::fuzz::decode_body(&mut decoder, &mut buf, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use http::HeaderValue;

    fn framing(pairs: &[(&str, &str)]) -> Result<Decoder, Cause> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response_framing(StatusCode::OK, &headers, false)
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
        assert!(framing(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_err());
    }

    #[test]
    fn heads_parse_with_values_sharing_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nX-A: c\r\n\r\nhi"[..],
        );
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-length"], "2");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"hi");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut garbage = BytesMut::from(&b"HTTX/1.1 200 OK\r\n\r\n"[..]);
        assert!(parse_head(&mut garbage).is_err());
        let long = format!(
            "HTTP/1.1 200 OK\r\nx-long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(parse_head(&mut BytesMut::from(long.as_bytes())).is_err());
    }

    fn head(text: &str) -> ParsedHead {
        parse_head(&mut BytesMut::from(text.as_bytes()))
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
}
