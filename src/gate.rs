//! The request-head gate: an HTTP/1.1 guard between a client socket and hyper.
//!
//! hyper answers a malformed head with a bare 400 or 431 and a slow one by closing the
//! connection; a gateway owes the client a cause code, a request ID and a readable page for
//! each (SPEC §5, §13). So every byte a client sends passes through [`Gate`] first, which
//!
//! - holds back each request head until it is complete, then checks it with the same parser
//!   hyper uses (httparse) plus the framing rules of SPEC §13: no `Content-Length` together
//!   with `Transfer-Encoding`, no differing `Content-Length`s, `chunked` last, one `Host`;
//! - enforces `max_header_bytes` (431 `headers-too-large`) and `header_read_timeout`
//!   (408 `client-timeout`), and closes keep-alive connections idle for
//!   [`CLIENT_KEEPALIVE_IDLE`];
//! - follows body framing (`Content-Length` or chunked) so it knows where the next head
//!   starts, passing body bytes straight through;
//! - steps aside for h2c (the HTTP/2 preface) and after an upgrade request.
//!
//! A refused head is never given to hyper: once no earlier request of the connection is
//! still being answered, the gate ends the read side, and when hyper then shuts the
//! connection down, writes the error response first.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::cause::Cause;

/// How long a client keep-alive connection may sit idle between requests.
pub const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// The most header fields a request may have; hyper's default, so the two agree.
pub const MAX_HEADERS: usize = 100;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Hex digits of the largest chunk size accepted (2^64 - 1).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;
const READ_CHUNK: usize = 8 * 1024;

/// What the request handler tells the gate about its connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests still being answered; an idle timeout waits for zero.
    in_flight: AtomicUsize,
    /// Set when an upstream accepted an upgrade (101): what follows is not HTTP.
    upgraded: AtomicBool,
    /// A gate waiting for `in_flight` to reach zero, and whether there is one.
    idle_waker: Mutex<Option<Waker>>,
    has_idle_waker: AtomicBool,
}

impl ConnState {
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Wakes `waker` once no request is in flight.
    fn wake_when_idle(&self, waker: &Waker) {
        if let Ok(mut slot) = self.idle_waker.lock() {
            *slot = Some(waker.clone());
            self.has_idle_waker.store(true, Ordering::Release);
        }
    }
}

/// Counts one request as in flight on its connection while it lives, so the gate does not
/// close a connection for idleness while a response is still being written.
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    pub fn enter(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && state.has_idle_waker.swap(false, Ordering::AcqRel)
        {
            if let Some(waker) = state.idle_waker.lock().ok().and_then(|mut w| w.take()) {
                waker.wake();
            }
        }
    }
}

/// What the gate knows about a request it refused.
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
}

pub struct Gate<IO> {
    io: IO,
    /// Bytes read from the client and not yet given to hyper.
    pending: BytesMut,
    /// How many bytes at the front of `pending` are checked and may go to hyper.
    releasable: usize,
    /// What the bytes after the releasable prefix are.
    state: State,
    /// How far `pending` was searched for the end of a head.
    scanned: usize,
    first_request: bool,
    head_started: bool,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    conn: Arc<ConnState>,
    /// The last head asked for an upgrade: if the upstream accepts, stop checking.
    upgrade_requested: bool,
    refuse: Refuse,
    /// The error response to write before shutting down.
    refusal: Option<bytes::Bytes>,
}

enum State {
    Head,
    Body(Framing),
    /// h2c, an upgraded connection, or a body hyper will refuse: no more checks.
    Passthrough,
    /// The read side is over (refused, timed out or closed).
    Closed,
}

enum Framing {
    Length(u64),
    Chunked(Chunk),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunk {
    Size { digits: u8, value: u64 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
    Invalid,
}

impl Chunk {
    fn start() -> Chunk {
        Chunk::Size {
            digits: 0,
            value: 0,
        }
    }

    /// Advances over `bytes`; returns how many belong to the body (all of them unless the
    /// body ends inside `bytes`).
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(remaining) = self {
                let take = (*remaining).min((bytes.len() - i) as u64);
                *remaining -= take;
                i += take as usize;
                if *remaining == 0 {
                    *self = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunk::Size { digits, value }, b) if b.is_ascii_hexdigit() => {
                    if digits >= MAX_CHUNK_SIZE_DIGITS {
                        Chunk::Invalid
                    } else {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        Chunk::Size {
                            digits: digits + 1,
                            value: (value << 4) | digit,
                        }
                    }
                }
                (Chunk::Size { digits, value }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunk::Extension { value }
                }
                (Chunk::Size { digits, value }, b'\r') if digits > 0 => Chunk::SizeLf { value },
                (Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Extension { value }, b) if b != b'\n' => Chunk::Extension { value },
                (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf { value }, b'\n') => Chunk::Data(value),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::start(),
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::Trailer, b) if b != b'\r' && b != b'\n' => {
                    Chunk::Trailer
                }
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => {
                    *self = Chunk::Done;
                    return i;
                }
                _ => Chunk::Invalid,
            };
            if *self == Chunk::Invalid {
                return bytes.len();
            }
        }
        i
    }
}

impl Framing {
    /// Advances over `bytes`; returns how many belong to the body.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        match self {
            Framing::Length(remaining) => {
                let take = (*remaining).min(bytes.len() as u64);
                *remaining -= take;
                take as usize
            }
            Framing::Chunked(chunk) => chunk.advance(bytes),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    fn is_invalid(&self) -> bool {
        matches!(self, Framing::Chunked(Chunk::Invalid))
    }
}

/// The verdict on the bytes of a head.
enum Verdict {
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

fn refusal(cause: Cause) -> Refusal {
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

fn inspect(buf: &[u8], scanned: &mut usize, first: bool, max: usize) -> Verdict {
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
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(&buf[..end]) {
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
    let mut accept = None;
    let mut request_id = None;
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
            accept = HeaderValue::from_bytes(header.value).ok();
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = HeaderValue::from_bytes(header.value).ok();
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
            accept,
            request_id,
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

impl<IO> Gate<IO> {
    pub fn new(io: IO, limits: Limits, conn: Arc<ConnState>, refuse: Refuse) -> Self {
        Gate {
            io,
            pending: BytesMut::new(),
            releasable: 0,
            state: State::Head,
            scanned: 0,
            first_request: true,
            head_started: false,
            timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
            limits,
            conn,
            upgrade_requested: false,
            refuse,
            refusal: None,
        }
    }

    fn refuse_with(&mut self, refusal: Refusal) {
        self.refusal = Some((self.refuse)(refusal).into());
        self.close_read();
    }

    fn close_read(&mut self) {
        self.state = State::Closed;
        self.pending.clear();
        self.releasable = 0;
    }

    /// Enters the head state for the next request.
    fn await_head(&mut self) {
        self.state = State::Head;
        self.scanned = 0;
        self.head_started = false;
        self.timer
            .as_mut()
            .reset(Instant::now() + CLIENT_KEEPALIVE_IDLE);
        self.note_head_bytes();
    }

    /// Starts the head timeout at the first byte of a head.
    fn note_head_bytes(&mut self) {
        if !self.head_started && self.pending.len() > self.releasable {
            self.head_started = true;
            if !self.first_request {
                self.timer
                    .as_mut()
                    .reset(Instant::now() + self.limits.header_read_timeout);
            }
        }
    }

    /// The body framing after a head, or the next head. After an upgrade request the
    /// next bytes are checked as a head unless the upstream accepted the upgrade.
    fn after_head(&mut self, body: Option<Framing>, upgrade: bool) {
        self.first_request = false;
        self.upgrade_requested = upgrade;
        match body {
            Some(framing) => self.state = State::Body(framing),
            None => self.await_head(),
        }
    }

    /// True (and out of the way) once an upgrade this gate saw requested was accepted.
    fn upgrade_accepted(&mut self) -> bool {
        let accepted = self.upgrade_requested && self.conn.upgraded.load(Ordering::Acquire);
        if accepted {
            self.state = State::Passthrough;
        }
        accepted
    }

    /// Moves on when the body ended or turned out malformed.
    fn body_progress(&mut self) {
        if let State::Body(framing) = &self.state {
            if framing.is_invalid() {
                // hyper will refuse this body; let it see the bytes as they are.
                self.state = State::Passthrough;
            } else if framing.is_done() {
                self.await_head();
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> Gate<IO> {
    /// Reads more client bytes into `pending`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.pending.reserve(READ_CHUNK);
        let spare = self.pending.spare_capacity_mut();
        let mut buf = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
        unsafe { self.pending.set_len(self.pending.len() + n) };
        Poll::Ready(Ok(n))
    }

    /// The head timer fired: a slow head gets 408; an idle connection is closed, unless a
    /// response is still being written.
    fn on_timer(&mut self) -> bool {
        if self.upgrade_accepted() {
            true
        } else if self.head_started || self.first_request && !self.pending.is_empty() {
            self.refuse_with(refusal(Cause::ClientTimeout));
            true
        } else if self.first_request || !self.conn.is_busy() {
            self.close_read();
            true
        } else {
            self.timer
                .as_mut()
                .reset(Instant::now() + CLIENT_KEEPALIVE_IDLE);
            false
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gate<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.releasable > 0 {
                let n = this.releasable.min(out.remaining());
                out.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.releasable -= n;
                return Poll::Ready(Ok(()));
            }
            match &mut this.state {
                State::Closed => {
                    // A refused head behind a request still being answered (pipelining):
                    // ending the read side now would make hyper drop that answer, so wait.
                    if this.refusal.is_some() && this.conn.is_busy() {
                        this.conn.wake_when_idle(cx.waker());
                        if this.conn.is_busy() {
                            return Poll::Pending;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Passthrough => {
                    if !this.pending.is_empty() {
                        this.releasable = this.pending.len();
                        continue;
                    }
                    return Pin::new(&mut this.io).poll_read(cx, out);
                }
                State::Body(framing) => {
                    if !this.pending.is_empty() {
                        this.releasable = framing.advance(&this.pending);
                        this.body_progress();
                        continue;
                    }
                    // Body bytes go straight into hyper's buffer; what follows the body
                    // comes back into `pending` for the head check.
                    let before = out.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                    let read = &out.filled()[before..];
                    let used = framing.advance(read);
                    if used < read.len() {
                        this.pending.extend_from_slice(&read[used..]);
                        out.set_filled(before + used);
                    }
                    this.body_progress();
                    return Poll::Ready(Ok(()));
                }
                State::Head => {
                    if this.upgrade_accepted() {
                        continue;
                    }
                    match inspect(
                        &this.pending,
                        &mut this.scanned,
                        this.first_request,
                        this.limits.max_head_bytes,
                    ) {
                        Verdict::Complete { len, body, upgrade } => {
                            this.releasable = len;
                            this.after_head(body, upgrade);
                            // The bytes after the head belong to the new state.
                            let rest = this.pending.len() - len;
                            if rest > 0 {
                                if let State::Body(framing) = &mut this.state {
                                    let used = framing.advance(&this.pending[len..]);
                                    this.releasable += used;
                                    this.body_progress();
                                }
                            }
                            continue;
                        }
                        Verdict::H2 => {
                            this.state = State::Passthrough;
                            continue;
                        }
                        Verdict::Refused(refusal) => {
                            this.refuse_with(refusal);
                            continue;
                        }
                        Verdict::Partial => {}
                    }
                    match this.fill(cx) {
                        Poll::Ready(Ok(0)) => {
                            // The client closed mid-head or between requests: nothing to answer.
                            this.close_read();
                        }
                        Poll::Ready(Ok(_)) => this.note_head_bytes(),
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                        Poll::Pending => {
                            if this.timer.as_mut().poll(cx).is_ready() && this.on_timer() {
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gate<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes a pending refusal before shutting down the write side.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while let Some(refusal) = this.refusal.as_mut() {
            if refusal.is_empty() {
                this.refusal = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, refusal))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            refusal.advance(n);
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
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

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\ntrailer: x\r\n\r\nGET /next";
        let mut chunk = Chunk::start();
        let used = chunk.advance(body);
        assert_eq!(chunk, Chunk::Done);
        assert_eq!(&body[used..], b"GET /next");

        // Byte by byte gives the same answer.
        let mut chunk = Chunk::start();
        let mut used = 0;
        for b in body.iter() {
            if chunk == Chunk::Done {
                break;
            }
            used += chunk.advance(std::slice::from_ref(b));
        }
        assert_eq!(&body[used..], b"GET /next");

        let mut bad = Chunk::start();
        bad.advance(b"zz\r\n");
        assert_eq!(bad, Chunk::Invalid);
        let mut huge = Chunk::start();
        huge.advance(b"11111111111111111\r\n");
        assert_eq!(huge, Chunk::Invalid);
    }

    /// A xorshift generator: the same cases on every run, without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    /// Pipelined requests of every framing, in one stream.
    fn random_requests(rng: &mut Rng) -> Vec<u8> {
        let mut stream = Vec::new();
        for i in 0..rng.below(6) + 1 {
            match rng.below(3) {
                0 => stream
                    .extend_from_slice(format!("GET /{i} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes()),
                1 => {
                    let body = vec![b'c'; rng.below(3000)];
                    stream.extend_from_slice(
                        format!(
                            "POST /{i} HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    stream.extend_from_slice(&body);
                }
                _ => {
                    stream.extend_from_slice(
                        format!(
                            "POST /{i} HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    for _ in 0..rng.below(4) {
                        let size = rng.below(500) + 1;
                        let ext = if rng.below(2) == 0 { ";x=y" } else { "" };
                        stream.extend_from_slice(format!("{size:X}{ext}\r\n").as_bytes());
                        stream.extend_from_slice(&vec![b'k'; size]);
                        stream.extend_from_slice(b"\r\n");
                    }
                    let trailer = if rng.below(2) == 0 {
                        "x-trailer: 1\r\n"
                    } else {
                        ""
                    };
                    stream.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                }
            }
        }
        stream
    }

    /// For valid traffic the gate is transparent, and it keeps track of where each request
    /// ends: however the bytes arrive, every valid one comes out, in order, and a smuggling
    /// attempt after them is still caught at its head.
    #[tokio::test]
    async fn valid_traffic_passes_unchanged_whatever_the_split() {
        use std::sync::Mutex;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SMUGGLED: &[u8] =
            b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let valid = random_requests(&mut rng);
            let mut input = valid.clone();
            input.extend_from_slice(SMUGGLED);
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let refused = Arc::new(Mutex::new(Vec::new()));
            let seen = refused.clone();
            let refuse: Refuse = Arc::new(move |refusal: Refusal| {
                seen.lock().unwrap().push(refusal.cause);
                Vec::new()
            });
            let limits = Limits {
                max_head_bytes: 64 << 10,
                header_read_timeout: Duration::from_secs(60),
            };
            let mut gate = Gate::new(server, limits, Arc::default(), refuse);
            let mut cuts: Vec<usize> = (0..rng.below(8))
                .map(|_| rng.below(input.len() as u64))
                .collect();
            cuts.sort_unstable();
            let pieces = {
                let mut pieces = Vec::new();
                let mut start = 0;
                for cut in cuts.into_iter().chain([input.len()]) {
                    pieces.push(input[start..cut.max(start)].to_vec());
                    start = cut.max(start);
                }
                pieces
            };
            let writer = tokio::spawn(async move {
                for piece in pieces {
                    client.write_all(&piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            let mut output = Vec::new();
            let mut buf = vec![0u8; 1 + rng.below(4096)];
            loop {
                let n = tokio::time::timeout(Duration::from_secs(5), gate.read(&mut buf))
                    .await
                    .expect("the gate never stalls on valid input")
                    .unwrap();
                if n == 0 {
                    break;
                }
                output.extend_from_slice(&buf[..n]);
            }
            writer.await.unwrap();
            assert_eq!(output, valid);
            assert_eq!(*refused.lock().unwrap(), [Some(Cause::BadRequest)]);
        }
    }
}
