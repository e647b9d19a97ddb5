//! Checking one request head: where it ends, whether it parses as hyper will parse it, and
//! whether its framing is unambiguous (RFC 9112 §6, SPEC §13).

use std::mem::MaybeUninit;

use http::HeaderValue;

use super::framing::{Chunk, Framing};
use super::Refusal;
use crate::cause::Cause;

/// The most header fields a request may have; hyper's default, so the two agree.
pub const MAX_HEADERS: usize = 100;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The verdict on the bytes of a head.
pub(super) enum Verdict {
    /// Not all of it yet.
    Partial,
    /// `len` bytes of valid head, followed by a body framed so.
    Complete {
        len: usize,
        body: Option<Framing>,
        upgrade: bool,
    },
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

pub(super) fn inspect(buf: &[u8], scanned: &mut usize, first: bool, max: usize) -> Verdict {
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
    if end > max {
        return Verdict::Refused(refusal(Cause::HeadersTooLarge));
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        &buf[..end],
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Verdict::Refused(refusal(Cause::BadRequest)),
        Err(httparse::Error::TooManyHeaders) => {
            return Verdict::Refused(refusal(Cause::HeadersTooLarge))
        }
        Err(_) => return Verdict::Refused(refusal(Cause::BadRequest)),
    };
    check_framing(&request, len)
}

/// Applies the framing rules of RFC 9112 §6 and SPEC §13 to a parsed head.
fn check_framing(request: &httparse::Request<'_, '_>, len: usize) -> Verdict {
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut connection_upgrade = false;
    let mut has_upgrade = false;
    // Kept as bytes: they become header values only for a refusal.
    let mut accept: Option<&[u8]> = None;
    let mut request_id: Option<&[u8]> = None;
    let mut valid = true;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
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
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Several fields form one list; the last coding is the one that frames.
            transfer_encoding = Some(header.value);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= header
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case("accept") {
            accept = Some(header.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = Some(header.value);
        }
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
        return Verdict::Refused(Refusal {
            cause: Some(Cause::BadRequest),
            method: request.method.map(str::to_owned),
            path: request.path.map(str::to_owned),
            accept: accept.and_then(|v| HeaderValue::from_bytes(v).ok()),
            request_id: request_id.and_then(|v| HeaderValue::from_bytes(v).ok()),
        });
    }
    let body = if chunked {
        Some(Framing::Chunked(Chunk::start()))
    } else {
        length.filter(|&n| n > 0).map(Framing::Length)
    };
    Verdict::Complete {
        len,
        body,
        upgrade: (connection_upgrade && has_upgrade) || request.method == Some("CONNECT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &str) -> Verdict {
        inspect(head.as_bytes(), &mut 0, false, 64 << 10)
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
        match verdict("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3, 3\r\n\r\nabc") {
            Verdict::Complete {
                len,
                body: Some(Framing::Length(3)),
                upgrade: false,
            } => assert_eq!(len, 50),
            _ => panic!("expected a complete head"),
        }
        assert!(matches!(
            verdict(
                "GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
            ),
            Verdict::Complete {
                body: None,
                upgrade: true,
                ..
            }
        ));
        assert!(matches!(
            verdict("GET / HTTP/1.1\r\nhost: a\r\n"),
            Verdict::Partial
        ));
    }

    #[test]
    fn oversized_heads_are_431() {
        let head = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert!(matches!(
            inspect(head.as_bytes(), &mut 0, false, 64),
            Verdict::Refused(Refusal {
                cause: Some(Cause::HeadersTooLarge),
                ..
            })
        ));
        let partial = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100));
        assert!(matches!(
            inspect(partial.as_bytes(), &mut 0, false, 64),
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
            Verdict::Complete { len: 29, .. }
        ));
    }

    #[test]
    fn the_h2_preface_passes() {
        assert!(matches!(
            inspect(H2_PREFACE, &mut 0, true, 1024),
            Verdict::H2
        ));
        assert!(matches!(
            inspect(&H2_PREFACE[..10], &mut 0, true, 1024),
            Verdict::Partial
        ));
    }
}
