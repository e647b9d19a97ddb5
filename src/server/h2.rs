//! HTTP/2 to clients (over TLS by ALPN, or h2c with prior knowledge), with hyper's server,
//! and the limits a front server needs that hyper leaves to its user:
//!
//! - the first request must arrive within `header_read_timeout` of the connection being
//!   ready (a connection that never sends one holds a socket and a task for nothing);
//! - a connection with no stream open for `idle_timeout` is closed with `GOAWAY`;
//! - at most `max_concurrent_streams` streams at once (SETTINGS_MAX_CONCURRENT_STREAMS),
//!   and header lists up to `max_header_bytes` (SETTINGS_MAX_HEADER_LIST_SIZE, counted as
//!   RFC 9113 §6.5.2 does; h2 refuses lists past twice that by itself, and baton answers
//!   the ones between with its own 431 `headers-too-large`);
//! - rapid reset (CVE-2023-44487): a client that opens streams and cancels them before
//!   their answer costs baton a request each while it counts against no stream limit. A
//!   connection whose client cancelled more than [`PREMATURE_RESETS_ALLOWED`] streams, and
//!   more than half of all it opened, is told `GOAWAY` and closed; h2 itself closes a
//!   connection with more than [`PENDING_ACCEPT_RESETS`] streams reset before they were
//!   even taken up;
//! - CONTINUATION floods (a header block that never ends) are cut off by h2, which bounds
//!   a header block by the header list size and the number of frames it may span.

use std::convert::Infallible;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{ClientBody, Setup};
use crate::body::ResponseBody;
use crate::gateway::stop_requested;
use crate::proxy;
use crate::transport::{Handed, Stream};

/// Streams a client may cancel before their answer before its share of cancelled streams
/// is looked at. Browsers cancel streams as users navigate away; a few hundred in one
/// connection's life is ordinary, thousands in a burst is an attack.
pub const PREMATURE_RESETS_ALLOWED: u64 = 200;
/// Streams reset by the client before hyper took them up, at most (h2's own defense).
const PENDING_ACCEPT_RESETS: usize = 50;
/// How long streams still open may run after baton sent `GOAWAY` to an abusive client.
const ABUSE_GRACE: Duration = Duration::from_secs(1);
/// How long a connection told `GOAWAY` for being idle or too slow may take to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a connection knows of its streams, shared with each stream's task.
#[derive(Default)]
struct Streams {
    /// Streams taken up so far.
    opened: AtomicU64,
    /// Streams whose answer is still going out.
    open: AtomicUsize,
    /// Streams the client cancelled before their answer's head.
    premature_resets: AtomicU64,
    /// When the last open stream ended.
    idle_since: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Streams {
    fn abusive(&self) -> bool {
        let resets = self.premature_resets.load(Ordering::Relaxed);
        resets > PREMATURE_RESETS_ALLOWED && resets * 2 > self.opened.load(Ordering::Relaxed)
    }

    /// When the connection is to be closed for want of a stream, if no stream is open.
    fn deadline(&self, started: Instant, setup: &Setup) -> Option<Instant> {
        if self.opened.load(Ordering::Relaxed) == 0 {
            return Some(started + setup.limits.header_read_timeout);
        }
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle_since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle_since.map(|since| since + setup.limits.idle_timeout)
    }
}

/// One stream's place in [`Streams`], from the request to the end of its answer.
struct StreamGuard {
    streams: Arc<Streams>,
    answered: bool,
}

impl StreamGuard {
    fn new(streams: &Arc<Streams>) -> StreamGuard {
        streams.opened.fetch_add(1, Ordering::Relaxed);
        streams.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            streams: streams.clone(),
            answered: false,
        }
    }
}

impl Drop for StreamGuard {
    /// The connection's task is woken only when what it watches changed: a stream
    /// cancelled early (rapid reset?), or the last open stream ended (idle from now). A
    /// stream that ends among others costs it nothing.
    fn drop(&mut self) {
        let mut changed = false;
        if !self.answered {
            self.streams
                .premature_resets
                .fetch_add(1, Ordering::Relaxed);
            changed = true;
        }
        if self.streams.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self
                .streams
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            changed = true;
        }
        if changed {
            self.streams.changed.notify_one();
        }
    }
}

/// An answer's body, holding its stream's place until it is sent or dropped.
struct Tracked {
    body: ResponseBody,
    _guard: StreamGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves an HTTP/2 connection, after `read` (bytes of it already read).
pub(super) async fn serve(stream: Stream, read: Bytes, mut setup: Setup) {
    let started = Instant::now();
    let streams = Arc::new(Streams::default());
    let gateway = setup.gateway.clone();
    let conn = setup.conn.clone();
    let service_streams = streams.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let gateway = gateway.clone();
        let conn = conn.clone();
        let mut guard = StreamGuard::new(&service_streams);
        async move {
            let request = request.map(ClientBody::H2);
            // Boxed, and built in its box: hyper moves this future into a task of its own
            // for each stream, and the request future inline would be copied each time.
            // The box is one this thread keeps, as for HTTP/1.1 (`crate::spare`): a new
            // one, 4 KiB, past glibc's per-thread cache, cost about 450 instructions to
            // make and free.
            let mut handling = Box::into_pin(Box::write(
                crate::spare::take(),
                proxy::handle(gateway, &conn, request, None),
            ));
            let mut response = handling.as_mut().await;
            crate::spare::give(handling);
            guard.answered = true;
            // Not asked for on HTTP/2, but should an answer's fields still be as read,
            // hyper can only send them from the map.
            if let Some(raw) = response.body().raw_fields() {
                let mut fields = http::HeaderMap::new();
                let _ = raw.append_to(&mut fields);
                response.headers_mut().extend(fields);
            }
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _guard: guard,
            }))
        }
    });
    let max_header_list = u32::try_from(setup.limits.max_head_bytes).unwrap_or(u32::MAX);
    let io = TokioIo::new(Handed::new(stream, read, |_: &[u8]| {}));
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(setup.limits.max_concurrent_streams)
        .max_header_list_size(max_header_list.saturating_mul(2))
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .serve_connection(io, service);
    let mut connection = pin!(connection);
    let mut closing: Option<Instant> = None;
    let result = loop {
        let deadline = closing.or_else(|| streams.deadline(started, &setup));
        tokio::select! {
            result = connection.as_mut() => break result,
            () = stop_requested(&mut setup.stopped), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + crate::gateway::SHUTDOWN_GRACE);
            }
            () = streams.changed.notified(), if closing.is_none() => {
                if streams.abusive() {
                    tracing::warn!(peer = %setup.conn.peer, "HTTP/2 client cancelled too many streams (rapid reset); closing its connection");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + ABUSE_GRACE);
                }
            }
            () = sleep_until(deadline) => {
                if closing.is_some() {
                    // GOAWAY was sent and the time to finish is up.
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %setup.conn.peer, error = %err, "HTTP/2 connection ended with an error");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
