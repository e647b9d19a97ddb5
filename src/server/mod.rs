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
mod write;

use std::future::poll_fn;
use std::mem;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::gateway::{stop_requested, Gateway};
use crate::listener::ClientConn;
use crate::proxy;
use crate::spare::Kept;
use crate::timer::LazyDeadline;
use crate::transport::Stream;
use crate::upstream::h1;
use body::{lock, Continue, H1Body, Reader};
use head::{inspect, refusal, Head, Verdict};
use write::{write_response, Facts, Written};

pub use body::ClientBody;
pub(crate) use head::fuzz as fuzz_head;

/// How long a closing connection keeps reading (and discarding) what the client still
/// sends after the last answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
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
