//! A client's request body: read from its HTTP/1.1 connection as the request handler takes
//! it ([`H1Body`]), or an HTTP/2 stream's (hyper's [`Incoming`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::cause::Cause;
use crate::classify;
use crate::codec::Decoder;
use crate::transport::Stream;

pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of a client's request, whatever protocol brought it.
pub enum ClientBody {
    Empty,
    H1(H1Body),
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    /// Why the body could not be read: `bad-request` for broken framing, `client-closed`
    /// when the client went away.
    type Error = Cause;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cause>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(body) => body.poll_frame(cx),
            ClientBody::H2(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|err| classify::client_body_error(&err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(body) => body.reader().decoder.is_done(),
            ClientBody::H2(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(body) => body.reader().decoder.size_hint(),
            ClientBody::H2(incoming) => incoming.size_hint(),
        }
    }
}

/// Where `100 Continue` stands for a request that asked for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Continue {
    /// Not asked for, written, or no longer wanted.
    No,
    /// To be written when the body is first read.
    Pending,
    /// This much of it written.
    Writing(usize),
}

/// What the body and its connection share while the request is handled: the connection's
/// read buffer, where the body ends, and the `100 Continue` state.
pub(super) struct Reader {
    pub buf: BytesMut,
    pub decoder: Decoder,
    pub continue_state: Continue,
    /// The body failed: its framing was broken or the client went away.
    pub failed: bool,
}

/// A request body read straight from the client's connection.
pub struct H1Body {
    io: Arc<Stream>,
    shared: Arc<Mutex<Reader>>,
}

impl H1Body {
    pub(super) fn new(io: Arc<Stream>, shared: Arc<Mutex<Reader>>) -> H1Body {
        H1Body { io, shared }
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        lock(&self.shared)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Cause>>> {
        let mut reader = lock(&self.shared);
        let reader = &mut *reader;
        if reader.failed {
            return Poll::Ready(None);
        }
        if let Err(err) = ready!(poll_continue(&self.io, cx, &mut reader.continue_state)) {
            tracing::debug!(error = %err, "writing 100 Continue failed");
            reader.failed = true;
            return Poll::Ready(Some(Err(Cause::ClientClosed)));
        }
        loop {
            match reader.decoder.decode(&mut reader.buf) {
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => {}
                Err(message) => {
                    tracing::debug!(message, "malformed request body");
                    reader.failed = true;
                    return Poll::Ready(Some(Err(Cause::BadRequest)));
                }
            }
            let room = reader.decoder.read_room();
            match ready!(self.io.poll_read(cx, &mut reader.buf, room)) {
                Ok(0) | Err(_) => {
                    reader.failed = true;
                    return Poll::Ready(Some(Err(Cause::ClientClosed)));
                }
                Ok(_) => {}
            }
        }
    }
}

pub(super) fn lock(shared: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes what is left of `100 Continue`, when it is due.
fn poll_continue(io: &Stream, cx: &mut Context<'_>, state: &mut Continue) -> Poll<io::Result<()>> {
    loop {
        let written = match *state {
            Continue::No => return Poll::Ready(Ok(())),
            Continue::Pending => 0,
            Continue::Writing(written) => written,
        };
        if written == CONTINUE.len() {
            ready!(io.poll_flush(cx))?;
            *state = Continue::No;
            return Poll::Ready(Ok(()));
        }
        *state = Continue::Writing(written);
        let n = ready!(io.poll_write(cx, &[io::IoSlice::new(&CONTINUE[written..])]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *state = Continue::Writing(written + n);
    }
}
