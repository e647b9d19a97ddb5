//! Filling the cache from one upstream response while others wait for it (coalescing).
//!
//! The first request to miss a URI leads: it registers a [`Fill`] and goes upstream;
//! requests for the same URI that come while it is under way wait for its head instead of
//! going upstream themselves. Once the head is in:
//!
//! - storable, with a `Content-Length` within `max_object_bytes`: the waiters stream the
//!   body from the fill as it arrives, the same bytes the leader's client gets;
//! - storable, with no length: the waiters wait for the whole body (it may turn out too
//!   large to keep, and only a whole body can be shared without holding it all);
//! - not storable, or the leader failed or left: every waiter goes upstream on its own, at
//!   once.
//!
//! The body is held at most once, and only while it fits `max_object_bytes`: memory stays
//! flat whatever the size of the responses passing through.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::store::{Meta, Object};
use crate::body::BodyError;
use crate::cause::Cause;

/// One upstream response on its way into the cache.
#[derive(Default)]
pub struct Fill {
    state: Mutex<State>,
    /// Woken when the phase changes.
    changed: Notify,
}

#[derive(Default)]
struct State {
    phase: Phase,
    chunks: Vec<Bytes>,
    size: u64,
    /// Readers waiting for the next chunk.
    readers: Vec<Waker>,
}

#[derive(Default)]
enum Phase {
    /// The leader has not got a head yet.
    #[default]
    Fetching,
    /// The head is in, with its length: readers may stream.
    Streaming(Arc<Meta>, u64),
    /// The head is in, without a length: waiters wait for the end.
    Buffering,
    /// Complete and stored.
    Done(Arc<Object>),
    /// Nothing to share: waiters go on their own, readers stop.
    Pass,
}

/// What a waiter gets from a fill.
pub enum Joined {
    /// The head, and the body as it arrives.
    Stream(Arc<Meta>, FillReader),
    /// The stored response, complete.
    Done(Arc<Object>),
    /// Nothing: go upstream.
    Alone,
}

impl Fill {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        let readers = {
            let mut state = self.lock();
            if matches!(phase, Phase::Pass) {
                state.chunks = Vec::new();
            }
            state.phase = phase;
            std::mem::take(&mut state.readers)
        };
        readers.into_iter().for_each(Waker::wake);
        self.changed.notify_waiters();
    }

    /// Waits up to `patience` for the leader's head (and, for a body without a length,
    /// its end).
    pub async fn join(self: &Arc<Fill>, patience: Duration) -> Joined {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let state = self.lock();
                    match &state.phase {
                        Phase::Fetching | Phase::Buffering => {}
                        Phase::Streaming(meta, length) => {
                            return Joined::Stream(
                                meta.clone(),
                                FillReader {
                                    fill: self.clone(),
                                    next: 0,
                                    length: *length,
                                },
                            )
                        }
                        Phase::Done(object) => return Joined::Done(object.clone()),
                        Phase::Pass => return Joined::Alone,
                    }
                }
                changed.await;
            }
        };
        tokio::time::timeout(patience, wait)
            .await
            .unwrap_or(Joined::Alone)
    }
}

/// The leader's side of a fill: decides what its response is, then feeds it. Dropped
/// before the end (the leader failed, its client left, the body broke), it lets every
/// waiter go on its own.
pub struct Filler {
    fill: Arc<Fill>,
    /// The head once decided, and the body's declared length.
    meta: Option<Arc<Meta>>,
    max_bytes: u64,
    finished: bool,
}

impl Filler {
    pub fn new(fill: Arc<Fill>, max_bytes: u64) -> Filler {
        Filler {
            fill,
            meta: None,
            max_bytes,
            finished: false,
        }
    }

    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The head is storable: waiters may stream a body of known length (or wait for one
    /// of unknown length), when it may be `shared` with them; otherwise they go on their
    /// own, and the body is stored all the same.
    pub fn start(&mut self, meta: Arc<Meta>, length: Option<u64>, shared: bool) {
        self.meta = Some(meta.clone());
        self.fill.set(match (length, shared) {
            (_, false) => Phase::Pass,
            (Some(length), true) => Phase::Streaming(meta, length),
            (None, true) => Phase::Buffering,
        });
    }

    /// Adds the next piece of the body. `false` once the body is over `max_object_bytes`
    /// and will not be stored (the fill lets its waiters go).
    pub fn push(&mut self, data: &Bytes) -> bool {
        if self.finished || self.meta.is_none() {
            return false;
        }
        let readers = {
            let mut state = self.fill.lock();
            state.size += data.len() as u64;
            if state.size > self.max_bytes {
                None
            } else {
                state.chunks.push(data.clone());
                Some(std::mem::take(&mut state.readers))
            }
        };
        match readers {
            Some(readers) => {
                readers.into_iter().for_each(Waker::wake);
                true
            }
            None => {
                self.finished = true;
                self.fill.set(Phase::Pass);
                false
            }
        }
    }

    /// The body is complete: the stored object, which waiters get too.
    pub fn complete(&mut self) -> Option<Arc<Object>> {
        let meta = self.meta.take()?;
        if self.finished {
            return None;
        }
        self.finished = true;
        let object = {
            let state = self.fill.lock();
            Arc::new(Object {
                meta,
                body: compact(&state.chunks, state.size),
                body_len: state.size,
            })
        };
        self.fill.set(Phase::Done(object.clone()));
        Some(object)
    }

    /// Nothing to store after all: a response refreshed by a 304, say, which is `object`.
    pub fn done(&mut self, object: Arc<Object>) {
        self.finished = true;
        self.fill.set(Phase::Done(object));
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if !self.finished {
            self.fill.set(Phase::Pass);
        }
    }
}

/// Bodies up to this size are stored in one piece of their own.
const COMPACT_BYTES: u64 = 64 << 10;

/// The chunks of a body to keep: a small body copied into one piece of its exact size,
/// since each chunk read from a socket may hold on to a larger buffer (a 100-byte body
/// would keep kilobytes alive); a larger one as its chunks, which fill their buffers.
fn compact(chunks: &[Bytes], size: u64) -> Arc<[Bytes]> {
    if chunks.len() <= 1 && size == 0 || size > COMPACT_BYTES {
        return Arc::from(chunks);
    }
    let mut whole = bytes::BytesMut::with_capacity(size as usize);
    for chunk in chunks {
        whole.extend_from_slice(chunk);
    }
    Arc::from([whole.freeze()])
}

/// A waiter's response body, read from the fill as the leader receives it.
pub struct FillReader {
    fill: Arc<Fill>,
    next: usize,
    length: u64,
}

impl Body for FillReader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut state = self.fill.lock();
        if let Some(chunk) = state.chunks.get(self.next).cloned() {
            drop(state);
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.phase {
            Phase::Done(_) => Poll::Ready(None),
            Phase::Pass => Poll::Ready(Some(Err(BodyError(Cause::UpstreamBodyTruncated)))),
            _ => {
                state.readers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length)
    }
}
