//! HTTP/1.1 to upstreams, driven by the exchange that uses the connection.
//!
//! hyper's client runs each connection as a task of its own and hands requests, responses
//! and body chunks across channels to it; on a proxy's hot path that is most of the user
//! time spent per request. Here the request's own task writes the request, reads the
//! response head and, through [`Body`], the response body, straight from the socket: no
//! task, no channel, and an idle pooled connection holds nothing but its socket.
//!
//! What is checked on the way in: the response head parses (httparse), fits
//! [`MAX_HEAD_BYTES`], has at most [`MAX_HEADERS`] fields and unambiguous framing
//! (RFC 9112 §6.3: no `Content-Length` with `Transfer-Encoding`, no differing lengths);
//! chunk sizes parse. A connection is reused only when the response said it may be (HTTP/1.1
//! without `Connection: close`, or HTTP/1.0 with `keep-alive`), its body was delimited
//! and read to the end, and nothing followed it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::cause::Cause;
use crate::classify;
use crate::codec::{
    encode_data, encode_trailers, Decoder, FieldSpans, MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::forward::{header_tokens, is_hop_by_hop, Forwarding};
use crate::transport::Stream;

/// Request body data this small is written with the head, in one system call.
const COALESCE_BYTES: usize = 16 * 1024;
/// Room for a read of what an upstream sends while the request body still goes out.
const EARLY_READ: usize = 8 * 1024;

/// One HTTP/1.1 connection to an upstream.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet used.
    buf: BytesMut,
}

/// A failed exchange, and whether any of the request reached the upstream.
pub enum SendError {
    /// Nothing was written: the request comes back, to go elsewhere.
    NotSent(Box<Request<RequestBody>>, Cause),
    /// Some or all of it was written. The head comes back, so that the request can be
    /// sent again when its body was kept.
    Sent(Cause, Box<http::request::Parts>),
    /// It was written, and the upstream says it did not process it (an HTTP/2 stream it
    /// refused, or one past its GOAWAY; a TLS handshake it refused after the fact): as
    /// safe to send elsewhere as an unsent one, when its body was kept.
    Unprocessed(Cause, Box<http::request::Parts>),
}

/// How [`Conn::exchange`] failed.
enum Failed {
    NotSent(RequestBody),
    Sent(Cause),
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
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
    /// `upstream-response-timeout`). The response body streams from the connection through
    /// the returned [`Body`], which gives the connection back when the exchange allows its
    /// reuse.
    pub async fn send(
        self,
        request: Request<RequestBody>,
        forwarding: &Forwarding,
        host: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, SendError> {
        let head_request = request.method() == Method::HEAD;
        let (mut parts, body) = request.into_parts();
        let framing = request_framing(&mut parts.headers, &body);
        let mut head = BytesMut::with_capacity(512);
        encode_request_line(&mut head, &parts);
        forwarding.encode_fields(&mut head, &parts.headers, host);
        let exchange = self.exchange(head, body, framing, head_request);
        let result = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, exchange)
                .await
                .unwrap_or(Err(Failed::Sent(Cause::UpstreamResponseTimeout))),
            None => exchange.await,
        };
        result.map_err(|failed| match failed {
            Failed::NotSent(body) => SendError::NotSent(
                Box::new(Request::from_parts(parts, body)),
                Cause::UpstreamReset,
            ),
            // The upstream's TLS layer refused the connection after the fact (see
            // `classify::upstream_read_error`): nothing behind it saw the request.
            Failed::Sent(Cause::UpstreamTlsFailed) => {
                SendError::Unprocessed(Cause::UpstreamTlsFailed, Box::new(parts))
            }
            Failed::Sent(cause) => SendError::Sent(cause, Box::new(parts)),
        })
    }

    /// Writes the encoded head `out` and the body, and reads the response head.
    async fn exchange(
        mut self,
        mut out: BytesMut,
        mut body: RequestBody,
        framing: Outgoing,
        head_request: bool,
    ) -> Result<Response<Body>, Failed> {
        // Body data already at hand, when small, goes out with the head in one write; it
        // is taken from the body only once written.
        let coalesced = match body.front_data() {
            Some(data) if data.len() <= COALESCE_BYTES => {
                encode_data(&mut out, data, matches!(framing, Outgoing::Chunked));
                Some(data.len() as u64)
            }
            _ => None,
        };
        match poll_fn(|cx| self.io.poll_write(cx, &[io::IoSlice::new(&out)])).await {
            Ok(written) if written > 0 => {
                if self.io.write_all(&out[written..]).await.is_err() {
                    return Err(Failed::Sent(Cause::UpstreamReset));
                }
            }
            // Nothing went out: the request, untouched, may go elsewhere.
            _ => return Err(Failed::NotSent(body)),
        }
        if coalesced.is_some() {
            // The frame just written, through the body's own accounting.
            let _ = body.frame().await;
        }
        let mut whole = true;
        if !http_body::Body::is_end_stream(&body) || matches!(framing, Outgoing::Chunked) {
            whole = self
                .send_body(&mut body, framing, coalesced.unwrap_or(0))
                .await
                .map_err(Failed::Sent)?;
        }
        drop(body);
        let (head, mut incoming) = self.read_head(head_request).await.map_err(Failed::Sent)?;
        // An upstream that answered before taking the whole body left the connection in
        // the middle of a request.
        incoming.reusable &= whole;
        Ok(Response::from_parts(head, incoming))
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

    /// Reads until a whole response head (skipping interim 1xx answers other than 101).
    async fn read_head(
        mut self,
        head_request: bool,
    ) -> Result<(http::response::Parts, Body), Cause> {
        loop {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            if let Some(parsed) = parse_head(&mut self.buf)? {
                let ParsedHead {
                    status,
                    version,
                    headers,
                    connection,
                } = parsed;
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                let framing = response_framing(status, &headers, head_request)?;
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.status = status;
                parts.version = version;
                parts.headers = headers;
                let body = Body {
                    conn: Some(self),
                    framing,
                    upgraded: status == StatusCode::SWITCHING_PROTOCOLS,
                    reusable: connection.allows_reuse(version),
                    keep_alive_hint: connection.timeout,
                    failed: None,
                };
                return Ok((parts, body));
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(Cause::UpstreamInvalidResponse);
            }
            self.read_more().await?;
        }
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

/// What arrived while the request body was still going out.
enum Early {
    /// Interim answers only, now taken off the buffer; or too little to tell yet.
    KeepSending,
    /// The start of a final answer.
    Final,
}

/// Takes complete interim (1xx other than 101) heads off the front of `buf` and says
/// whether a final answer has begun.
fn early(buf: &mut BytesMut) -> Result<Early, Cause> {
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

/// How the request body is framed on the wire.
#[derive(Clone, Copy)]
enum Outgoing {
    Length(u64),
    Chunked,
}

/// Decides the request body's framing and sets its header: the client's `Content-Length`
/// when it sent one (the gate checked it), else the exact size when known, else chunked.
fn request_framing(headers: &mut HeaderMap, body: &RequestBody) -> Outgoing {
    if http_body::Body::is_end_stream(body) {
        return Outgoing::Length(0);
    }
    if let Some(length) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        return Outgoing::Length(length);
    }
    if let Some(length) = http_body::Body::size_hint(body).exact() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        return Outgoing::Length(length);
    }
    headers.remove(CONTENT_LENGTH);
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    Outgoing::Chunked
}

/// The request line, as HTTP/1.1 with the target in origin form.
fn encode_request_line(out: &mut BytesMut, parts: &http::request::Parts) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

struct ParsedHead {
    status: StatusCode,
    version: Version,
    /// The fields for the client: all but `Connection` and `Keep-Alive`, as a rule.
    headers: HeaderMap,
    connection: ConnectionFields,
}

/// What a response's `Connection` and `Keep-Alive` fields say. They concern only the
/// connection to the upstream, so they are read from the parsed head and, unless
/// `Connection` names other fields too, left out of the header map: adding them only to
/// remove them on the way to the client cost a hash-map insertion and removal per answer.
#[derive(Default)]
struct ConnectionFields {
    close: bool,
    keep_alive: bool,
    /// `Connection` names fields besides the standard hop-by-hop ones: then both fields stay
    /// in the map, and the named fields go with them in `forward::remove_hop_by_hop`.
    names_others: bool,
    /// `Keep-Alive: timeout=N` (RFC 2068 §19.7.1.1).
    timeout: Option<Duration>,
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
    fn allows_reuse(&self, version: Version) -> bool {
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
fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, Cause> {
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

fn response_framing(
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

/// A response body read from its connection as the client takes it.
pub struct Body {
    conn: Option<Conn>,
    framing: Decoder,
    /// `101 Switching Protocols`: the connection now carries another protocol.
    upgraded: bool,
    /// The response allows reuse, and the request was sent whole.
    reusable: bool,
    /// The upstream's `Keep-Alive: timeout`, for the pool.
    keep_alive_hint: Option<Duration>,
    /// A failure to report at the next poll (see [`Body::poll_frame`]).
    failed: Option<io::Error>,
}

impl Body {
    /// The connection, once the body ended cleanly and the exchange allows its reuse, and
    /// how long the upstream said it keeps it open (`Keep-Alive: timeout`).
    pub fn take_reusable(&mut self) -> Option<(Conn, Option<Duration>)> {
        let ended = self.framing.is_done() && !self.upgraded;
        let conn = self.conn.take()?;
        (ended && self.reusable && conn.buf.is_empty()).then(|| (conn.idle(), self.keep_alive_hint))
    }

    /// The connection after `101 Switching Protocols`.
    pub fn take_upgraded(&mut self) -> Option<Conn> {
        if self.upgraded {
            self.conn.take()
        } else {
            None
        }
    }

    fn fail(&mut self, message: &str) -> io::Error {
        self.conn = None;
        self.framing = Decoder::Done;
        self.reusable = false;
        io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
    }

    /// The next piece of body from what is buffered; `None` when more must be read.
    fn decode(&mut self) -> Result<Option<Option<Frame<Bytes>>>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(None));
        };
        let decoded = self.framing.decode(&mut conn.buf);
        decoded.map_err(|message| self.fail(message))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(failure) = this.failed.take() {
            return Poll::Ready(Some(Err(failure)));
        }
        loop {
            let failure = match this.decode() {
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => None,
                Err(err) => Some(err),
            };
            let room = this.framing.read_room();
            let failure = match (failure, this.conn.as_mut()) {
                (Some(failure), _) => failure,
                (None, None) => return Poll::Ready(None),
                (None, Some(conn)) => match ready!(conn.poll_fill(cx, room)) {
                    Ok(0) if matches!(this.framing, Decoder::Close) => {
                        this.framing = Decoder::Done;
                        this.reusable = false;
                        return Poll::Ready(None);
                    }
                    Ok(0) => this.fail("upstream closed mid-body"),
                    Ok(_) => continue,
                    Err(err) => {
                        this.fail("read failed");
                        err
                    }
                },
            };
            // The failure is reported at the next poll: the client's side gets to send
            // what came before it first (hyper drops unsent output when a body fails).
            this.failed = Some(failure);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
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
