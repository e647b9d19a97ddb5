//! HTTP/1.1 to clients: one task per connection reads each request head, hands the request
//! to the proxy, writes the answer, and goes on to the next.
//!
//! A gateway owes the client a cause code, a request ID and a readable page for every
//! request it refuses (SPEC §5, §13), and it should cost little on the hot path; both are
//! simpler with a server of its own than around hyper's. Here
//!
//! - each head is checked once, with httparse and the framing rules of SPEC §13 (no
//!   `Content-Length` together with `Transfer-Encoding`, no differing `Content-Length`s,
//!   `chunked` last, one `Host`), within `max_header_bytes` (431 `headers-too-large`) and
//!   `header_read_timeout` (408 `client-timeout`); its fields share the bytes read;
//! - the request body is read from the socket only as the proxy takes it (`100 Continue`
//!   is written then, if asked for);
//! - the answer's head and small body go out in one write; its framing is its
//!   `Content-Length`, else chunked (close-delimited for HTTP/1.0 clients);
//! - keep-alive connections idle for the listener's `idle_timeout` are closed, and an idle
//!   connection holds no buffer;
//! - a closing connection whose client may still be sending reads and discards what comes
//!   for up to [`LINGER_TIME`] first (a "lingering close"): closing a socket with unread
//!   data resets the connection, and a reset can destroy the answer before the client read
//!   it;
//! - the HTTP/2 preface (h2c with prior knowledge) hands the connection to hyper's HTTP/2
//!   server, and an accepted upgrade (`101`) turns it into a tunnel to the upstream.

mod body;
mod h2;
mod head;

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::cause::Cause;
use crate::codec::{bufs, encode_chunk_size, encode_field_lines, encode_trailers, maps, RawFields};
use crate::forward::header_tokens;
use crate::gateway::{stop_requested, Gateway};
use crate::listener::ClientConn;
use crate::proxy;
use crate::spare::Kept;
use crate::timer::LazyDeadline;
use crate::transport::Stream;
use crate::upstream::h1;
use body::{lock, Continue, H1Body, Reader};
use head::{inspect, refusal, Head, Verdict};

pub use body::ClientBody;
pub(crate) use head::fuzz as fuzz_head;

/// How long a closing connection keeps reading (and discarding) what the client still
/// sends after the last answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Body data this small is copied next to the head or chunk line before it, so that both go
/// out in one write; larger data is written from where it is.
const COPY_MAX: usize = 16 * 1024;
/// Output gathered before it is written, when the body has more ready.
const FLUSH_AT: usize = 64 * 1024;

/// What the server knows about a request it refused.
#[derive(Debug, Default)]
pub struct Refusal {
    pub cause: Option<Cause>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub accept: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
}

/// Turns a refusal into the bytes of the response to send (and records it).
pub type Refuse = Arc<dyn Fn(Refusal) -> Vec<u8> + Send + Sync>;

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2: streams a client may have open at once.
    pub max_concurrent_streams: u32,
}

/// What a connection needs besides its socket.
pub struct Setup {
    pub gateway: Arc<Gateway>,
    pub conn: Arc<ClientConn>,
    pub limits: Limits,
    pub refuse: Refuse,
    pub stopped: watch::Receiver<bool>,
}

/// Serves one client connection until it closes.
pub async fn serve(stream: Stream, mut setup: Setup) {
    if stream.alpn_is(b"h2") {
        return Box::pin(h2::serve(stream, Bytes::new(), setup)).await;
    }
    let io = Arc::new(stream);
    setup.conn.set_socket(&io);
    let mut buf = BytesMut::new();
    let mut first = true;
    let mut timer = LazyDeadline::new(Instant::now() + setup.limits.header_read_timeout);
    loop {
        // The wait for baton to stop is made for each keep-alive wait (a waiter put on the
        // watch and taken off again, about 250 instructions a request), not pinned for the
        // connection's life: there it held 0.25 KiB of every idle connection's task, whose
        // largest state is a request's.
        let read = read_head(
            &io,
            &mut buf,
            first,
            setup.limits,
            &mut setup.stopped,
            &mut timer,
        );
        let head = match read.await {
            HeadRead::Request(head) => head,
            // Boxed, as are the tunnel and the lingering close: an idle connection's task
            // is as large as its largest state, and these are rare.
            HeadRead::H2 => {
                if let Ok(stream) = Arc::try_unwrap(io) {
                    Box::pin(h2::serve(stream, buf.freeze(), setup)).await;
                }
                return;
            }
            HeadRead::Refused(refusal) => {
                let answer = (setup.refuse)(refusal);
                if io.write_all(&answer).await.is_ok() {
                    Box::pin(close(io, true)).await;
                }
                return;
            }
            HeadRead::Closed => return Box::pin(close(io, false)).await,
        };
        first = false;
        let Head {
            parts,
            fields,
            body,
            upgrade,
            keep_alive,
            expects_continue,
        } = Kept::into_inner(head);
        let facts = Facts {
            head_request: parts.method == Method::HEAD,
            version: parts.version,
            upgrade,
        };
        let (request_body, shared) = match body {
            None => (ClientBody::Empty, None),
            Some(decoder) => {
                let shared = Arc::new(Mutex::new(Reader {
                    buf: mem::take(&mut buf),
                    decoder,
                    continue_state: if expects_continue {
                        Continue::Pending
                    } else {
                        Continue::No
                    },
                    failed: false,
                }));
                let body = H1Body::new(io.clone(), shared.clone());
                (ClientBody::H1(body), Some(shared))
            }
        };
        let request = Request::from_parts(parts, request_body);
        // Boxed: the request's state lives on the heap while it is answered, so that an
        // idle connection's task stays small (see bench/README.md), in a box this thread
        // keeps from one request to the next. The box is had first and the future written
        // into it, which lets the compiler build the future in place: `Box::pin(future)`
        // built it on the stack and copied its 4 KiB.
        let mut handling = Box::into_pin(Box::write(
            crate::spare::take(),
            proxy::handle(setup.gateway.clone(), &setup.conn, request, fields),
        ));
        let response = handling.as_mut().await;
        crate::spare::give(handling);

        // The body is no longer read: take back what was read past it, and finish a
        // `100 Continue` half written (one not yet begun is not wanted any more).
        let mut body_done = true;
        let mut continue_rest: &[u8] = &[];
        if let Some(shared) = shared {
            // A body still held elsewhere could still read from the socket: the connection
            // cannot go on to another request.
            let held_elsewhere = Arc::strong_count(&shared) > 1;
            let mut reader = lock(&shared);
            body_done = reader.decoder.is_done() && !reader.failed && !held_elsewhere;
            buf = mem::take(&mut reader.buf);
            if let Continue::Writing(written) = reader.continue_state {
                continue_rest = &body::CONTINUE[written.min(body::CONTINUE.len())..];
            }
            reader.continue_state = Continue::No;
        }
        let close_after = !keep_alive || !body_done || *setup.stopped.borrow();
        let written = write_response(&io, response, &facts, close_after, continue_rest).await;
        match written {
            Err(err) => {
                tracing::debug!(peer = %setup.conn.peer, error = %err, "writing a response failed");
                return;
            }
            Ok(Written::Upgraded) => {
                let upstream = setup.conn.take_upgraded();
                if let Some(upstream) = upstream {
                    Box::pin(tunnel(io, buf, upstream)).await;
                }
                return;
            }
            Ok(Written::Close) => {
                return Box::pin(close(io, !body_done || !buf.is_empty())).await;
            }
            Ok(Written::KeepAlive) => {}
        }
        if buf.is_empty() {
            // An idle connection holds no buffer.
            buf = BytesMut::new();
        }
    }
}

/// What the answer's framing depends on in the request.
struct Facts {
    head_request: bool,
    version: Version,
    upgrade: bool,
}

enum HeadRead {
    Request(Kept<Head>),
    H2,
    Refused(Refusal),
    /// The client closed, the connection sat idle too long, or baton is stopping: nothing
    /// is left to answer.
    Closed,
}

/// Reads until a whole request head is in `buf`, within the connection's time limits
/// (`timer`): the first head must be complete `header_read_timeout` after the connection
/// opened; a later one may keep the connection idle for `idle_timeout`, and must then be
/// complete `header_read_timeout` after its first byte. A head that comes whole in one
/// read leaves the timer's deadline only later than before, which costs no timer work
/// (see [`LazyDeadline`]). A wait with no byte of a head yet ends when baton stops
/// (`stopped`).
async fn read_head(
    io: &Stream,
    buf: &mut BytesMut,
    first: bool,
    limits: Limits,
    stopped: &mut watch::Receiver<bool>,
    timer: &mut LazyDeadline,
) -> HeadRead {
    let mut scanned = 0;
    let mut started = false;
    if !first {
        timer.set(Instant::now() + limits.idle_timeout);
    }
    loop {
        if !buf.is_empty() {
            match inspect(buf, &mut scanned, first, limits.max_head_bytes) {
                Verdict::Partial => {}
                Verdict::Complete(head) => return HeadRead::Request(head),
                Verdict::H2 => return HeadRead::H2,
                Verdict::Refused(refusal) => return HeadRead::Refused(refusal),
            }
            if !started && !first {
                timer.set(Instant::now() + limits.header_read_timeout);
            }
            started = true;
        }
        tokio::select! {
            biased;
            read = poll_fn(|cx| io.poll_read_head(cx, buf)) => match read {
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(_) => {}
            },
            () = timer.passed() => {
                return if started {
                    HeadRead::Refused(refusal(Cause::ClientTimeout))
                } else {
                    HeadRead::Closed
                };
            }
            () = stop_requested(stopped), if !started => {
                return HeadRead::Closed;
            }
        }
    }
}

/// How a response was written, and what comes next on its connection.
enum Written {
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
async fn write_response(
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

/// Ends the connection: shuts its write side and, when the client may still be sending
/// (`linger`), reads and discards what comes for up to [`LINGER_TIME`].
async fn close(io: Arc<Stream>, linger: bool) {
    // A request body still held elsewhere keeps the socket open until it is dropped.
    let Ok(mut stream) = Arc::try_unwrap(io) else {
        return;
    };
    if stream.shutdown().await.is_err() || !linger {
        return;
    }
    let discard = async {
        let mut scratch = [0u8; 4096];
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, discard).await;
}

/// Joins the client and the upstream after `101 Switching Protocols`: what either sent past
/// the heads goes first, then bytes flow both ways until one side closes.
async fn tunnel(io: Arc<Stream>, client_early: BytesMut, upstream: h1::Conn) {
    let Ok(mut client) = Arc::try_unwrap(io) else {
        return;
    };
    let (mut upstream, upstream_early) = upstream.into_parts();
    let result = async {
        client.write_all(&upstream_early).await?;
        upstream.write_all(&client_early).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    if let Err(err) = result.await {
        tracing::debug!(error = %err, "upgraded connection ended");
    }
}
