//! A response body read from its connection as the client takes it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::Conn;
use crate::codec::{Decoder, RawFields};
use crate::spare::Kept;

/// A response body read from its connection as the client takes it.
pub struct Body {
    pub(super) conn: Option<Conn>,
    pub(super) framing: Decoder,
    /// `101 Switching Protocols`: the connection now carries another protocol.
    pub(super) upgraded: bool,
    /// The response allows reuse, and the request was sent whole.
    pub(super) reusable: bool,
    /// The upstream's `Keep-Alive: timeout`, for the pool.
    pub(super) keep_alive_hint: Option<Duration>,
    /// A failure to report at the next poll (see [`Body::poll_frame`]).
    pub(super) failed: Option<io::Error>,
    /// The head's fields for the client as read, when the exchange asked for them so.
    /// Boxed: inline, it would take the boxed response body past the size glibc's
    /// per-thread cache serves (1,032 bytes).
    pub(super) raw: Option<Kept<RawFields>>,
}

impl Body {
    /// The response's fields as read, which then are not in its header map: the client's
    /// side writes them out as they are.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        self.raw.as_deref()
    }

    pub fn raw_fields_mut(&mut self) -> Option<&mut RawFields> {
        self.raw.as_deref_mut()
    }

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
