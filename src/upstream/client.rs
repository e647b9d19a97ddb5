//! The upstream client seam: an exchange speaks HTTP/1.1 with baton's own client
//! ([`super::h1`]) or HTTP/2 with hyper's ([`super::h2`]), and what comes back is one body
//! type whatever the protocol.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::h1;
use super::h2::Slot;
use crate::codec::RawFields;

/// A response body from an upstream.
pub enum Incoming {
    H1(h1::Body),
    /// An HTTP/2 stream's body, and its place on the connection until it ends.
    H2(hyper::body::Incoming, Slot),
}

impl Incoming {
    /// The HTTP/1.1 connection, when the exchange allows its reuse (see
    /// [`h1::Body::take_reusable`]); an HTTP/2 connection stays where it is.
    pub fn take_reusable(&mut self) -> Option<(h1::Conn, Option<Duration>)> {
        match self {
            Incoming::H1(body) => body.take_reusable(),
            Incoming::H2(..) => None,
        }
    }

    /// The response's fields as read (HTTP/1.1 only), when they are not in its header map.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        match self {
            Incoming::H1(body) => body.raw_fields(),
            Incoming::H2(..) => None,
        }
    }

    pub fn raw_fields_mut(&mut self) -> Option<&mut RawFields> {
        match self {
            Incoming::H1(body) => body.raw_fields_mut(),
            Incoming::H2(..) => None,
        }
    }

    /// The upstream's connection after `101 Switching Protocols` (HTTP/1.1 only).
    pub fn take_upgraded(&mut self) -> Option<h1::Conn> {
        match self {
            Incoming::H1(body) => body.take_upgraded(),
            Incoming::H2(..) => None,
        }
    }
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Incoming::H1(body) => Pin::new(body).poll_frame(cx),
            Incoming::H2(body, _) => Pin::new(body).poll_frame(cx).map_err(io::Error::other),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Incoming::H1(body) => body.is_end_stream(),
            Incoming::H2(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Incoming::H1(body) => body.size_hint(),
            Incoming::H2(body, _) => body.size_hint(),
        }
    }
}
