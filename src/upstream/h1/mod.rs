//! HTTP/1.1 to upstreams, driven by the exchange that uses the connection.
//!
//! hyper's client runs each connection as a task of its own and hands requests, responses
//! and body chunks across channels to it; on a proxy's hot path that is most of the user
//! time spent per request. Here the request's own task writes the request, reads the
//! response head and, through [`Body`], the response body, straight from the socket: no
//! task, no channel, and an idle pooled connection holds nothing but its socket.
//!
//! What is checked on the way in: the response head parses (httparse), fits
//! [`MAX_HEAD_BYTES`], has at most [`MAX_HEADERS`](crate::codec::MAX_HEADERS) fields and unambiguous framing
//! (RFC 9112 §6.3: no `Content-Length` with `Transfer-Encoding`, no differing lengths);
//! chunk sizes parse. A connection is reused only when the response said it may be (HTTP/1.1
//! without `Connection: close`, or HTTP/1.0 with `keep-alive`), its body was delimited
//! and read to the end, and nothing followed it.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::cause::Cause;
use crate::classify;
use crate::codec::{bufs, encode_data, encode_trailers, maps, Decoder, MAX_HEAD_BYTES};
use crate::forward::Forwarding;
use crate::timer::LazyDeadline;
use crate::transport::Stream;
use crate::upstream::Endpoint;

mod body;
mod head;

pub use body::Body;
pub(crate) use head::fuzz;
use head::{early, parse_head, Early, ParsedHead};

/// Request body data this small is written with the head, in one system call.
const COALESCE_BYTES: usize = 16 * 1024;
/// Room for a read of what an upstream sends while the request body still goes out.
const EARLY_READ: usize = 8 * 1024;

/// One HTTP/1.1 connection to an upstream.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// The deadline of the answer being waited for, kept with the connection from one
    /// request to the next so that moving it costs no timer work (see [`LazyDeadline`]).
    timer: Option<LazyDeadline>,
}

/// A failed exchange, and whether any of the request reached the upstream. The request's
/// head is left as it was in every case, so that it can go again.
pub enum SendError {
    /// Nothing was written: the request is whole, to go elsewhere.
    NotSent(Cause),
    /// Some or all of it was written, its body spent: it can be sent again with a kept
    /// copy of its body.
    Sent(Cause),
    /// It was written, and the upstream says it did not process it (an HTTP/2 stream it
    /// refused, or one past its GOAWAY; a TLS handshake it refused after the fact): as
    /// safe to send elsewhere as an unsent one, with a kept copy of its body.
    Unprocessed(Cause),
}

/// How [`Conn::exchange`] failed.
enum Failed {
    /// Nothing was written; the body is untouched.
    NotSent,
    Sent(Cause),
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            timer: None,
        }
    }

    /// Whether the connection can carry another request: nothing unread is waiting on it
    /// and the upstream has not closed it. Costs no system call unless the socket became
    /// readable since the last read.
    pub fn is_open(&self) -> bool {
        self.buf.is_empty() && self.io.is_idle_open()
    }

    /// Sends `request`, with the fields of `forwarding` and `host` as its `Host` unless
    /// the client's is kept, and reads the response head, all by `deadline` (else
    /// `upstream-response-timeout`). When `forwarding` says so, the response's fields may
    /// be left as read, in the body ([`Body::raw_fields`]), its header map then empty. The
    /// response body streams from the connection through the returned [`Body`], which gives
    /// the connection back when the exchange allows its reuse; should the exchange be
    /// dropped after the request was written, the connection goes back to `endpoint`'s pool
    /// if its answer is short (see `InFlight`).
    ///
    /// The request is borrowed, not moved: it stays where its caller keeps it, for
    /// another try should this one fail, and each level of `async fn` below would
    /// otherwise copy its few hundred bytes once more.
    pub async fn send(
        mut self,
        request: &mut Request<RequestBody>,
        forwarding: &Forwarding,
        host: &HeaderValue,
        deadline: Option<Instant>,
        endpoint: &Arc<Endpoint>,
    ) -> Result<Response<Body>, SendError> {
        let head_request = request.method() == Method::HEAD;
        let framing = request_framing(request, forwarding.declared_length());
        let mut timer = self.timer.take();
        let mut head = bufs::take(512);
        encode_request_line(&mut head, request);
        forwarding.encode_fields(&mut head, request.headers(), host);
        let mut flight = InFlight {
            conn: Some(self),
            endpoint,
            head_request,
            written: false,
        };
        let exchange = flight.exchange(head, request.body_mut(), framing, forwarding.raw_answer);
        let result = match deadline {
            Some(deadline) => {
                let timer = match &mut timer {
                    Some(timer) => {
                        timer.set(deadline);
                        timer
                    }
                    None => timer.insert(LazyDeadline::new(deadline)),
                };
                let mut exchange = pin!(exchange);
                poll_fn(|cx| {
                    if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(done);
                    }
                    ready!(timer.poll_passed(cx));
                    Poll::Ready(Err(Failed::Sent(Cause::UpstreamResponseTimeout)))
                })
                .await
            }
            None => exchange.await,
        };
        // An exchange that failed or ran out of time ends with its connection.
        flight.written = false;
        let failed = match result {
            Ok(mut response) => {
                maps::give(std::mem::take(request.headers_mut()));
                if let Some(conn) = response.body_mut().conn.as_mut() {
                    conn.timer = timer;
                }
                return Ok(response);
            }
            Err(failed) => failed,
        };
        Err(match failed {
            Failed::NotSent => SendError::NotSent(Cause::UpstreamReset),
            // The upstream's TLS layer refused the connection after the fact (see
            // `classify::upstream_read_error`): nothing behind it saw the request.
            Failed::Sent(Cause::UpstreamTlsFailed) => {
                SendError::Unprocessed(Cause::UpstreamTlsFailed)
            }
            Failed::Sent(cause) => SendError::Sent(cause),
        })
    }

    /// Writes the rest of the request body while watching for an early response. Returns
    /// whether the whole body was sent (`false`: the upstream answered first).
    async fn send_body(
        &mut self,
        body: &mut RequestBody,
        framing: Outgoing,
        already_sent: u64,
    ) -> Result<bool, Cause> {
        let io = &self.io;
        let buf = &mut self.buf;
        let send = async {
            let mut out = BytesMut::new();
            let mut sent = already_sent;
            loop {
                out.clear();
                let last = match body.frame().await {
                    None => {
                        if let Outgoing::Length(length) = framing {
                            if sent != length {
                                return Err(Cause::BadRequest);
                            }
                        } else {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        true
                    }
                    Some(Err(err)) => return Err(err.0),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            sent += data.len() as u64;
                            if matches!(framing, Outgoing::Length(length) if sent > length) {
                                return Err(Cause::BadRequest);
                            }
                            encode_data(&mut out, &data, matches!(framing, Outgoing::Chunked));
                            false
                        }
                        // Trailers end the body; only chunked framing can carry them.
                        Err(frame) => {
                            if let (Outgoing::Chunked, Ok(trailers)) =
                                (framing, frame.into_trailers())
                            {
                                encode_trailers(&mut out, &trailers);
                            }
                            true
                        }
                    },
                };
                io.write_all(&out).await.map_err(|_| Cause::UpstreamReset)?;
                if last {
                    return Ok(());
                }
            }
        };
        let mut send = pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => return sent.map(|()| true),
                read = poll_fn(|cx| io.poll_read(cx, buf, EARLY_READ)) => match read {
                    Ok(n) if n > 0 => {
                        // An interim answer (a `100 Continue` sent unasked) leaves the
                        // upstream waiting for the rest of the body; anything else is an
                        // early answer (or garbage, which reading the head will tell).
                        if let Early::Final = early(buf)? {
                            return Ok(false);
                        }
                    }
                    _ => return Err(Cause::UpstreamReset),
                },
            }
        }
    }

    /// Reads until a whole final response head (skipping interim 1xx answers other than
    /// 101); with `raw`, its fields as read when the head allows it (see
    /// [`Body::raw_fields`]).
    async fn read_head(&mut self, head_request: bool, raw: bool) -> Result<ParsedHead, Cause> {
        loop {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            if let Some(head) = parse_head(&mut self.buf, head_request, raw)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(Cause::UpstreamInvalidResponse);
            }
            self.read_more().await?;
        }
    }

    /// The answer with `head`, its body read from this connection. `whole`: the request
    /// was sent whole (else the connection is left in the middle of it).
    fn answer(self, head: ParsedHead, whole: bool) -> Response<Body> {
        let ParsedHead {
            status,
            version,
            headers,
            raw,
            connection,
            framing,
        } = head;
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        let body = Body {
            conn: Some(self),
            framing,
            upgraded: status == StatusCode::SWITCHING_PROTOCOLS,
            reusable: whole && connection.allows_reuse(version),
            keep_alive_hint: connection.timeout,
            failed: None,
            raw,
        };
        Response::from_parts(parts, body)
    }

    /// Reads more of a response head; the upstream closing first is a reset.
    async fn read_more(&mut self) -> Result<(), Cause> {
        match poll_fn(|cx| self.io.poll_read_head(cx, &mut self.buf)).await {
            Ok(0) => Err(Cause::UpstreamReset),
            Err(err) => Err(classify::upstream_read_error(&err)),
            Ok(_) => Ok(()),
        }
    }

    /// The socket and what was read past the response head, for a tunnel after `101`.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.io, self.buf)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        self.io.poll_read(cx, &mut self.buf, room)
    }

    /// Ready for the pool: the (empty) read buffer's memory is given back.
    fn idle(mut self) -> Conn {
        self.buf = BytesMut::new();
        self
    }
}

/// A request on its way, and its connection until the answer's head is read. Should the
/// exchange be dropped once the whole request was written (its client went away, an
/// HTTP/2 client cancelled the stream), the connection would close with it and the next
/// request open a new one; instead the answer is read in the background ([`drain`]) and,
/// when short, the connection goes back to the pool.
struct InFlight<'a> {
    conn: Option<Conn>,
    endpoint: &'a Arc<Endpoint>,
    head_request: bool,
    /// The whole request was written, and its answer not taken yet.
    written: bool,
}

impl InFlight<'_> {
    /// Writes the encoded head `out` and the body, and reads the response head. The body
    /// is left untouched when nothing was written, and spent otherwise.
    async fn exchange(
        &mut self,
        mut out: BytesMut,
        body: &mut RequestBody,
        framing: Outgoing,
        raw: bool,
    ) -> Result<Response<Body>, Failed> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failed::NotSent);
        };
        // Body data already at hand, when small, goes out with the head in one write; it
        // is taken from the body only once written.
        let coalesced = match body.front_data() {
            Some(data) if data.len() <= COALESCE_BYTES => {
                encode_data(&mut out, data, matches!(framing, Outgoing::Chunked));
                Some(data.len() as u64)
            }
            _ => None,
        };
        match poll_fn(|cx| conn.io.poll_write(cx, &[io::IoSlice::new(&out)])).await {
            Ok(written) if written > 0 => {
                if conn.io.write_all(&out[written..]).await.is_err() {
                    return Err(Failed::Sent(Cause::UpstreamReset));
                }
            }
            // Nothing went out: the request, untouched, may go elsewhere.
            _ => return Err(Failed::NotSent),
        }
        bufs::give(out);
        if coalesced.is_some() {
            // The frame just written, through the body's own accounting.
            let _ = body.frame().await;
        }
        let mut whole = true;
        if !http_body::Body::is_end_stream(&body) || matches!(framing, Outgoing::Chunked) {
            whole = conn
                .send_body(body, framing, coalesced.unwrap_or(0))
                .await
                .map_err(Failed::Sent)?;
        }
        // Done with: whatever of it the upstream did not take goes now.
        *body = RequestBody::empty();
        // An upstream that answered before taking the whole body left the connection in
        // the middle of a request: nothing to keep it for.
        self.written = whole;
        let head = conn
            .read_head(self.head_request, raw)
            .await
            .map_err(Failed::Sent)?;
        self.written = false;
        match self.conn.take() {
            Some(conn) => Ok(conn.answer(head, whole)),
            None => Err(Failed::Sent(Cause::UpstreamReset)),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.written {
            return;
        }
        let (Some(conn), Ok(runtime)) = (self.conn.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(drain(conn, self.head_request, self.endpoint.clone()));
    }
}

/// The most of an answer no one waits for that is read to keep its connection, and how
/// long it may take: longer or slower answers end with their connection.
const DRAIN_BYTES: u64 = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads the answer to a request whose exchange was dropped, and pools the connection when
/// the answer ends within [`DRAIN_BYTES`] and [`DRAIN_TIME`] and allows reuse.
async fn drain(mut conn: Conn, head_request: bool, endpoint: Arc<Endpoint>) {
    let read = async move {
        let head = conn.read_head(head_request, true).await.ok()?;
        let mut body = conn.answer(head, true).into_body();
        let endless = matches!(body.framing, Decoder::Close);
        let long = matches!(body.framing, Decoder::Length(length) if length > DRAIN_BYTES);
        if endless || long || body.upgraded || !body.reusable {
            return None;
        }
        let mut left = DRAIN_BYTES;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.ok()?.data_ref() {
                left = left.checked_sub(data.len() as u64)?;
            }
        }
        body.take_reusable()
    };
    if let Ok(Some((conn, hint))) = tokio::time::timeout(DRAIN_TIME, read).await {
        tracing::debug!(endpoint = %endpoint.addr, "kept the connection of an answer no one waited for");
        endpoint.pool.checkin(conn, hint, Instant::now());
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy)]
enum Outgoing {
    Length(u64),
    Chunked,
}

/// Decides the request body's framing and sets its header: the client's `Content-Length`
/// when it sent one (the gate checked it; `declared` when its fields go on as read), else
/// the exact size when known, else chunked.
fn request_framing(request: &mut Request<RequestBody>, declared: Option<u64>) -> Outgoing {
    if http_body::Body::is_end_stream(request.body()) {
        return Outgoing::Length(0);
    }
    let declared = declared.or_else(|| {
        request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    if let Some(length) = declared {
        return Outgoing::Length(length);
    }
    let size = http_body::Body::size_hint(request.body()).exact();
    let headers = request.headers_mut();
    if let Some(length) = size {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        return Outgoing::Length(length);
    }
    headers.remove(CONTENT_LENGTH);
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    Outgoing::Chunked
}

/// The request line, as HTTP/1.1 with the target in origin form.
fn encode_request_line(out: &mut BytesMut, request: &Request<RequestBody>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}
