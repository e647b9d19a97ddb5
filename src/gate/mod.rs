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

mod framing;
mod head;

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
use framing::Framing;
use head::{inspect, refusal, Verdict};

pub use head::MAX_HEADERS;

/// How long a client keep-alive connection may sit idle between requests.
pub const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How much room a read of head bytes makes: a typical request head fits in one read.
const READ_CHUNK: usize = 8 * 1024;
/// How long a closing connection keeps reading (and discarding) what the client still
/// sends after the last answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

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
    /// A head was refused: its body may still be on the way.
    refused: bool,
    /// The write side is shut; what the client still sends is being discarded.
    lingering: bool,
}

enum State {
    Head,
    Body(Framing),
    /// h2c, an upgraded connection, or a body hyper will refuse: no more checks.
    Passthrough,
    /// The read side is over (refused, timed out or closed).
    Closed,
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
            refused: false,
            lingering: false,
        }
    }

    fn refuse_with(&mut self, refusal: Refusal) {
        self.refused = true;
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

    /// Whether the client may still be sending when the connection closes: a body nobody
    /// read, bytes after the last head, or the body of a refused head.
    fn unread_input_likely(&self) -> bool {
        match self.state {
            State::Body(_) => true,
            State::Head => !self.pending.is_empty(),
            State::Closed => self.refused,
            State::Passthrough => false,
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

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<IO> {
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

    /// Writes a pending refusal before shutting down the write side; then, when the
    /// client may still be sending, reads and discards what comes for up to
    /// [`LINGER_TIME`] (a "lingering close"). Closing a socket with unread data resets the
    /// connection, and a reset can destroy the answer before the client has read it.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering {
            return this.poll_linger(cx);
        }
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
        ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
        if !this.unread_input_likely() {
            return Poll::Ready(Ok(()));
        }
        this.lingering = true;
        this.pending.clear();
        this.timer.as_mut().reset(Instant::now() + LINGER_TIME);
        this.poll_linger(cx)
    }
}

impl<IO: AsyncRead + Unpin> Gate<IO> {
    /// Discards client bytes until the client closes, fails, or [`LINGER_TIME`] is up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.timer.deadline() <= Instant::now() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 4096];
        // A client that keeps sending gets this much discarded per turn, then the task
        // yields to the others.
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
