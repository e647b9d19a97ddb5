//! The request body on its way upstream: read ahead up to `retry.buffer_bytes` (kept so
//! that the request can be sent again), then streamed from the client.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::BodyError;
use crate::cause::Cause;
use crate::idempotency::BodyHash;
use crate::server::ClientBody;
use crate::upstream::balance::StableHasher;

/// A request body going upstream: the part read ahead of forwarding, then the rest streamed
/// from the client, with `max_body_bytes` enforced on the way and at most `idle` of silence
/// from the client between chunks (408 `client-timeout`).
pub struct RequestBody {
    buffered: VecDeque<Frame<Bytes>>,
    buffered_len: u64,
    rest: Option<ClientBody>,
    limit: u64,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read from the client so far; shared with the access-log record.
    read: Option<Arc<AtomicU64>>,
    /// The most of the body baton keeps for sending it again (`retry.buffer_bytes`).
    keep: u64,
    /// The body's hash as it streams, for an idempotency key's fingerprint.
    hash: Option<(StableHasher, Arc<BodyHash>)>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            buffered: VecDeque::new(),
            buffered_len: 0,
            rest: None,
            limit: u64::MAX,
            idle: None,
            timer: None,
            read: None,
            keep: 0,
            hash: None,
        }
    }

    /// Hashes the body as it streams into `cell`, which is set when the last byte is out.
    pub fn hash_into(&mut self, cell: Arc<BodyHash>) {
        if self.is_end_stream() {
            cell.set(StableHasher::default().finish());
        } else {
            self.hash = Some((StableHasher::default(), cell));
        }
    }

    /// Reads up to `buffer_bytes` of `incoming` (all of it when it is smaller) so that a
    /// malformed or oversized body is refused before anything is forwarded. Fails with the
    /// cause to answer with.
    pub async fn read_ahead(
        mut incoming: ClientBody,
        buffer_bytes: usize,
        limit: u64,
        idle: Option<Duration>,
        read: Arc<AtomicU64>,
    ) -> Result<RequestBody, Cause> {
        let mut buffered = VecDeque::new();
        let mut buffered_len = 0u64;
        let mut finished = incoming.is_end_stream();
        while !finished && buffered_len < buffer_bytes as u64 {
            match client_frame(&mut incoming, idle).await? {
                None => finished = true,
                Some(frame) => {
                    if let Some(data) = frame.data_ref() {
                        buffered_len += data.len() as u64;
                        if buffered_len > limit {
                            return Err(Cause::RequestTooLarge);
                        }
                    }
                    buffered.push_back(frame);
                    finished = incoming.is_end_stream();
                }
            }
        }
        read.store(buffered_len, Ordering::Relaxed);
        Ok(RequestBody {
            buffered,
            buffered_len,
            rest: (!finished).then_some(incoming),
            limit,
            idle,
            timer: None,
            read: Some(read),
            keep: buffer_bytes as u64,
            hash: None,
        })
    }
}

/// The next frame of a client's request body, waiting at most `idle` for it; errors are
/// classified as the client's.
pub async fn client_frame(
    incoming: &mut ClientBody,
    idle: Option<Duration>,
) -> Result<Option<Frame<Bytes>>, Cause> {
    let frame = http_body_util::BodyExt::frame(incoming);
    let frame = match idle {
        Some(idle) => tokio::time::timeout(idle, frame)
            .await
            .map_err(|_| Cause::ClientTimeout)?,
        None => frame.await,
    };
    frame.transpose()
}

/// A fully read request body, kept so that the request can be sent again.
#[derive(Clone)]
pub struct BodyCopy {
    data: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl BodyCopy {
    /// A new body with the same bytes.
    pub fn body(&self) -> RequestBody {
        let mut buffered: VecDeque<Frame<Bytes>> =
            self.data.iter().cloned().map(Frame::data).collect();
        if let Some(trailers) = &self.trailers {
            buffered.push_back(Frame::trailers(trailers.clone()));
        }
        RequestBody {
            buffered,
            buffered_len: self.data.iter().map(|d| d.len() as u64).sum(),
            rest: None,
            limit: u64::MAX,
            idle: None,
            timer: None,
            read: None,
            keep: u64::MAX,
            hash: None,
        }
    }
}

impl RequestBody {
    /// The data of the next frame when it is already buffered, without taking it.
    /// Whether the whole body was read from the client (or there was none).
    pub fn is_read(&self) -> bool {
        self.rest.is_none()
    }

    pub fn front_data(&self) -> Option<&Bytes> {
        self.buffered.front()?.data_ref()
    }

    /// A copy of the body when all of it was read ahead and it fits `retry.buffer_bytes`
    /// (so it can be sent again). An empty body always can.
    pub fn copy(&self) -> Option<BodyCopy> {
        if self.rest.is_some() || (self.buffered_len > self.keep && self.buffered_len > 0) {
            return None;
        }
        let mut copy = BodyCopy {
            data: Vec::new(),
            trailers: None,
        };
        for frame in &self.buffered {
            if let Some(data) = frame.data_ref() {
                copy.data.push(data.clone());
            } else if let Some(trailers) = frame.trailers_ref() {
                copy.trailers = Some(trailers.clone());
            }
        }
        Some(copy)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = self.next_frame(cx);
        if self.hash.is_some() {
            let ended = matches!(polled, Poll::Ready(None)) || self.is_end_stream();
            if let Some((hasher, cell)) = self.hash.as_mut() {
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        hasher.update(data);
                    }
                }
                if ended {
                    cell.set(hasher.finish());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint lets hyper send Content-Length instead of chunked framing.
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.buffered_len);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.buffered_len);
        }
        hint
    }
}

impl RequestBody {
    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        if let Some(frame) = this.buffered.pop_front() {
            if let Some(data) = frame.data_ref() {
                this.buffered_len -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if polled.is_pending() {
            if let Some(idle) = this.idle {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.rest = None;
                    return Poll::Ready(Some(Err(BodyError(Cause::ClientTimeout))));
                }
            }
            return Poll::Pending;
        }
        if let (Some(timer), Some(idle)) = (this.timer.as_mut(), this.idle) {
            timer.as_mut().reset(Instant::now() + idle);
        }
        match ready!(polled) {
            None => {
                this.rest = None;
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                this.rest = None;
                Poll::Ready(Some(Err(BodyError(err))))
            }
            Some(Ok(frame)) => {
                if let (Some(data), Some(read)) = (frame.data_ref(), &this.read) {
                    let total =
                        read.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > this.limit {
                        this.rest = None;
                        return Poll::Ready(Some(Err(BodyError(Cause::RequestTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}
