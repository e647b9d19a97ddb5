//! Bodies in flight: the request body on its way upstream ([`RequestBody`]) and the response
//! body on its way to the client ([`ResponseBody`]).
//!
//! Both stream: baton holds at most `retry.buffer_bytes` of a request body and one frame of a
//! response at a time, so memory stays flat whatever the body size. The response body is
//! also where an exchange ends: at its last frame the upstream connection goes back to the
//! pool and the access-log line is written; a failure mid-body aborts the client's response
//! (hyper closes the HTTP/1.1 connection or resets the HTTP/2 stream) and is logged with its
//! cause.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::cache::fill::FillReader;
use crate::cache::Lead;
use crate::cause::Cause;
use crate::codec::RawFields;
use crate::idempotency::{StoredResponse, MAX_STORED_BODY};
use crate::observe::Exchange;
use crate::spare::Kept;
use crate::upstream::client::Incoming;
use crate::upstream::pool::Lease;

mod request;

pub use request::{client_frame, BodyCopy, RequestBody};

/// Why a body stream stopped early, as a cause code.
#[derive(Debug, thiserror::Error)]
#[error("body aborted: {0}")]
pub struct BodyError(pub Cause);

/// An upstream's answer kept for an idempotency key as it streams to the client.
pub struct Capture {
    status: http::StatusCode,
    headers: http::HeaderMap,
    chunks: Vec<Bytes>,
    size: usize,
    overflow: bool,
}

impl Capture {
    pub fn new(status: http::StatusCode, headers: http::HeaderMap) -> Capture {
        Capture {
            status,
            headers,
            chunks: Vec::new(),
            size: 0,
            overflow: false,
        }
    }

    fn push(&mut self, data: &Bytes) {
        self.size += data.len();
        if self.size > MAX_STORED_BODY {
            self.overflow = true;
            self.chunks.clear();
        } else if !self.overflow {
            self.chunks.push(data.clone());
        }
    }

    /// The stored answer; `None` when the body was too large to keep.
    fn into_stored(self) -> Option<StoredResponse> {
        if self.overflow {
            return None;
        }
        Some(StoredResponse {
            status: self.status,
            headers: self.headers,
            body: self.chunks.concat().into(),
        })
    }
}

/// What is kept of an upstream's answer as it streams to the client.
pub enum Keep {
    /// The answer to an idempotency key, settled when the body is complete.
    Answer(Capture),
    /// The response going into the route's cache.
    Cache(Lead),
}

impl Keep {
    fn push(&mut self, data: &Bytes) {
        match self {
            Keep::Answer(capture) => capture.push(data),
            Keep::Cache(lead) => lead.push(data),
        }
    }
}

/// The response body sent to the client.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    /// A stored response's body, from the cache.
    Stored {
        chunks: Arc<[Bytes]>,
        next: usize,
        remaining: u64,
    },
    /// The body another request is fetching into the cache.
    Filling(FillReader),
    Upstream(Kept<UpstreamBody>),
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())),
        }
    }

    /// The bytes of a body built with [`ResponseBody::full`].
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(data) => data.as_ref(),
            _ => None,
        }
    }

    /// An upstream answer's fields as read, when they are not in its header map (see
    /// [`Forwarding::raw_answer`](crate::forward::Forwarding::raw_answer)).
    pub fn raw_fields(&self) -> Option<&RawFields> {
        match &self.kind {
            Kind::Upstream(body) => body.inner.raw_fields(),
            _ => None,
        }
    }

    /// A stored body of `length` bytes in `chunks`.
    pub fn stored(chunks: Arc<[Bytes]>, length: u64) -> ResponseBody {
        ResponseBody {
            kind: Kind::Stored {
                chunks,
                next: 0,
                remaining: length,
            },
        }
    }

    /// A body read from a fill as it arrives.
    pub fn filling(reader: FillReader) -> ResponseBody {
        ResponseBody {
            kind: Kind::Filling(reader),
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
        }
    }

    /// Streams an upstream body, enforcing the idle and total timeouts, returning the
    /// connection to its pool at the end and finishing `exchange` however it ends.
    pub fn upstream(
        inner: Incoming,
        idle: Option<Duration>,
        deadline: Option<Instant>,
        lease: Lease,
        exchange: Exchange,
        keep: Option<Keep>,
    ) -> ResponseBody {
        // Written into its box (one this thread kept), not built on the stack and copied
        // there.
        let mut body = Kept::new(UpstreamBody {
            inner,
            idle,
            deadline,
            timer: None,
            waiting: false,
            lease: Some(lease),
            exchange: Some(exchange),
            keep,
            bytes: 0,
            detached: None,
        });
        if body.inner.is_end_stream() {
            body.finish(None);
        }
        ResponseBody {
            kind: Kind::Upstream(body),
        }
    }
}

fn next_timer(idle: Option<Duration>, deadline: Option<Instant>) -> Option<Instant> {
    let idle_at = idle.map(|d| Instant::now() + d);
    match (idle_at, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct UpstreamBody {
    inner: Incoming,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    /// Set when a read has to wait, for the sooner of the idle limit from then and the
    /// deadline: most bodies arrive with their head and never wait, and then cost no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is set for the current wait; a frame ends the wait.
    waiting: bool,
    lease: Option<Lease>,
    exchange: Option<Exchange>,
    /// The answer being kept for an idempotency key or the cache.
    keep: Option<Keep>,
    bytes: u64,
    /// Set when the client went away while the body was going into the cache: the bytes
    /// it had been sent. The body is read on to its end all the same, for the cache.
    detached: Option<u64>,
}

impl UpstreamBody {
    /// Ends the exchange once: `None` for a complete body (the connection is reusable),
    /// otherwise the cause of the abort (the connection is dropped).
    fn finish(&mut self, abort: Option<Cause>) {
        // One clock reading for the pool's idle time and the exchange's duration.
        let now = Instant::now();
        if let Some(lease) = self.lease.take() {
            match abort {
                None => lease.release(self.inner.take_reusable(), now),
                Some(cause) => lease.record_failure(cause),
            }
        }
        // Ended where it lies: the exchange is large, and moving it out costs a copy.
        if let Some(exchange) = self.exchange.as_mut() {
            // A whole answer settles the key and is stored; an aborted one leaves the
            // key's outcome unknown, and nothing is stored.
            let keep = self.keep.take();
            if abort.is_none() {
                match (exchange.claim.take(), keep) {
                    (Some(claim), keep) => claim.complete(match keep {
                        Some(Keep::Answer(capture)) => capture.into_stored(),
                        _ => None,
                    }),
                    (None, Some(Keep::Cache(lead))) => lead.complete(),
                    (None, _) => {}
                }
            }
            // A client that left is logged as such, with what it was sent.
            match self.detached {
                Some(sent) => {
                    exchange.finish_at(sent, Some(abort.unwrap_or(Cause::ClientClosed)), now)
                }
                None => exchange.finish_at(self.bytes, abort, now),
            }
        }
        self.exchange = None;
        self.timer = None;
    }

    /// Whether the body is going into the cache and is not complete yet.
    fn filling(&self) -> bool {
        self.exchange.is_some() && matches!(self.keep, Some(Keep::Cache(_)))
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.exchange.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::debug!(error = %err, "upstream body failed");
                self.finish(Some(Cause::UpstreamBodyTruncated));
                Poll::Ready(Some(Err(BodyError(Cause::UpstreamBodyTruncated))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                    if let Some(keep) = self.keep.as_mut() {
                        keep.push(data);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
                self.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    if let Some(at) = next_timer(self.idle, self.deadline) {
                        match self.timer.as_mut() {
                            Some(timer) => timer.as_mut().reset(at),
                            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                        }
                    }
                }
                if let Some(timer) = self.timer.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        let total_ran_out = self.deadline.is_some_and(|d| Instant::now() >= d);
                        let cause = if total_ran_out {
                            Cause::UpstreamResponseTimeout
                        } else {
                            Cause::UpstreamIdleTimeout
                        };
                        self.finish(Some(cause));
                        return Poll::Ready(Some(Err(BodyError(cause))));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.exchange.is_some() {
            // Dropped before the end: the client went away (or never wanted the body).
            let abort = (!self.inner.is_end_stream()).then_some(Cause::ClientClosed);
            self.finish(abort);
        }
    }
}

impl Drop for ResponseBody {
    /// A client that goes away while its answer is going into the cache does not take the
    /// fill with it: the rest of the body (at most `max_object_bytes`, under the same
    /// idle and total timeouts) is read in the background and stored, and the requests
    /// streaming the same fill get it whole.
    fn drop(&mut self) {
        let Kind::Upstream(body) = &self.kind else {
            return;
        };
        if !body.filling() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Kind::Upstream(mut body) = std::mem::replace(&mut self.kind, Kind::Full(None)) else {
            return;
        };
        body.detached = Some(body.bytes);
        runtime.spawn(async move {
            while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stored {
                chunks,
                next,
                remaining,
            } => {
                let chunk = chunks.get(*next).cloned();
                *next += 1;
                if let Some(chunk) = &chunk {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                }
                Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
            }
            Kind::Filling(reader) => Pin::new(reader).poll_frame(cx),
            Kind::Upstream(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Stored { chunks, next, .. } => *next >= chunks.len(),
            Kind::Filling(reader) => reader.is_end_stream(),
            Kind::Upstream(body) => body.exchange.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stored { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Filling(reader) => reader.size_hint(),
            Kind::Upstream(body) => body.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every proxied answer's body is boxed (`ResponseBody::upstream`). Past 1,032 bytes the
    /// box is no longer served from glibc's per-thread cache and costs a few hundred
    /// instructions more a request, with nothing else to show it: a field added to the
    /// body, its exchange or the upstream connection must keep it within.
    #[test]
    fn an_upstream_body_fits_the_allocators_thread_cache() {
        let size = std::mem::size_of::<super::UpstreamBody>();
        assert!(size <= 1032, "UpstreamBody is {size} bytes");
    }
}
