//! Writing an answer to an HTTP/1.1 client: its head, encoded from the status, the fields
//! as read or from the map, and what framing the request and the body allow; then its body,
//! gathered with the head into as few writes as it can.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame};

use crate::body::ResponseBody;
use crate::codec::{bufs, encode_chunk_size, encode_field_lines, encode_trailers, maps, RawFields};
use crate::forward::header_tokens;
use crate::transport::Stream;

/// Body data this small is copied next to the head or chunk line before it, so that both go
/// out in one write; larger data is written from where it is.
const COPY_MAX: usize = 16 * 1024;
/// Output gathered before it is written, when the body has more ready.
const FLUSH_AT: usize = 64 * 1024;

/// What the answer's framing depends on in the request.
pub(super) struct Facts {
    pub(super) head_request: bool,
    pub(super) version: Version,
    pub(super) upgrade: bool,
}

/// How a response was written, and what comes next on its connection.
pub(super) enum Written {
    KeepAlive,
    Close,
    /// `101 Switching Protocols` to an upgrade request: a tunnel follows.
    Upgraded,
}

/// How the answer's body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Writes `response` (after `prefix`, the rest of a `100 Continue`).
pub(super) async fn write_response(
    io: &Stream,
    response: Response<ResponseBody>,
    facts: &Facts,
    mut close: bool,
    prefix: &[u8],
) -> io::Result<Written> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let headers = &parts.headers;
    // An upstream's fields as read, when they are not in the map (`codec::RawFields`);
    // the map then holds only what baton adds, never `Connection` or `Content-Length`.
    let raw = body.raw_fields();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && facts.upgrade;
    close |= header_tokens(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("close"));
    let declared = match raw {
        Some(raw) => raw.content_length(),
        None => headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok()),
    };
    let mut out = bufs::take(1000);
    out.extend_from_slice(prefix);
    encode_status(&mut out, status);
    if let Some(raw) = raw {
        raw.encode(&mut out);
    }
    encode_field_lines(&mut out, headers);
    let no_body = facts.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::None
    } else if let Some(length) = declared {
        Framing::Length(length)
    } else if let Some(length) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(length)
    } else if facts.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        close = true;
        Framing::Close
    };
    if !headers.contains_key(DATE) && !raw.is_some_and(RawFields::has_date) {
        encode_date(&mut out);
    }
    if !switching && !headers.contains_key(CONNECTION) {
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if facts.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    maps::give(parts.headers);
    let mut output = Output {
        out,
        sent: 0,
        data: Bytes::new(),
        tail: b"",
        framing,
        failed: false,
        ended: false,
    };
    let mut body = pin!(body);
    poll_fn(|cx| output.poll_send(io, cx, body.as_mut())).await?;
    bufs::give(output.out);
    Ok(if switching {
        Written::Upgraded
    } else if close {
        Written::Close
    } else {
        Written::KeepAlive
    })
}

/// An answer on its way out: encoded bytes, then data written from where it is, then a
/// short tail (the CRLF after chunk data).
struct Output {
    /// Encoded bytes, of which the first `sent` are written; emptied once all are, so that
    /// it keeps its whole room for what comes next and goes back whole to [`bufs`].
    out: BytesMut,
    sent: usize,
    data: Bytes,
    tail: &'static [u8],
    framing: Framing,
    /// The body failed, or did not match its declared length: the connection must end
    /// without the answer looking complete.
    failed: bool,
    ended: bool,
}

impl Output {
    fn has_output(&self) -> bool {
        self.sent < self.out.len() || !self.data.is_empty() || !self.tail.is_empty()
    }

    /// Polls the body and writes what it gives until both are done.
    fn poll_send(
        &mut self,
        io: &Stream,
        cx: &mut Context<'_>,
        mut body: Pin<&mut ResponseBody>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.ended && self.data.is_empty() && self.out.len() - self.sent < FLUSH_AT {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.encode(frame);
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.finish();
                        continue;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // Why is logged with the exchange; what came before still goes out.
                        self.failed = true;
                        self.ended = true;
                        continue;
                    }
                    Poll::Pending if !self.has_output() => {
                        // What a TLS stream holds back goes out while the body waits.
                        ready!(io.poll_flush(cx))?;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.has_output() {
                ready!(io.poll_flush(cx))?;
                return Poll::Ready(if self.failed {
                    Err(io::Error::other("the response body failed"))
                } else {
                    Ok(())
                });
            }
            let bufs = [
                io::IoSlice::new(&self.out[self.sent..]),
                io::IoSlice::new(&self.data),
                io::IoSlice::new(self.tail),
            ];
            let n = ready!(io.poll_write(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
    }

    fn consume(&mut self, mut n: usize) {
        let from_out = n.min(self.out.len() - self.sent);
        self.sent += from_out;
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        n -= from_out;
        let from_data = n.min(self.data.len());
        self.data.advance(from_data);
        n -= from_data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    fn push(&mut self, data: Bytes, tail: &'static [u8]) {
        if data.len() <= COPY_MAX {
            self.out.extend_from_slice(&data);
            self.out.extend_from_slice(tail);
        } else {
            self.data = data;
            self.tail = tail;
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>) {
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Framing::Chunked, Ok(trailers)) = (self.framing, frame.into_trailers()) {
                    encode_trailers(&mut self.out, &trailers);
                    self.framing = Framing::None;
                }
                return;
            }
        };
        match &mut self.framing {
            Framing::None => {}
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    // More than declared: send what was declared, then end the connection.
                    data.truncate(*left as usize);
                    self.failed = true;
                    self.ended = true;
                }
                *left -= data.len() as u64;
                self.push(data, b"");
            }
            Framing::Close => self.push(data, b""),
            Framing::Chunked if data.is_empty() => {}
            Framing::Chunked => {
                encode_chunk_size(&mut self.out, data.len());
                self.push(data, b"\r\n");
            }
        }
    }

    fn finish(&mut self) {
        self.ended = true;
        match self.framing {
            Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            // Less than declared.
            Framing::Length(left) if left > 0 => self.failed = true,
            _ => {}
        }
    }
}

fn encode_status(out: &mut BytesMut, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The `Date` field, formatted once a second per thread.
fn encode_date(out: &mut BytesMut) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second || text.is_empty() {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}
