//! The byte stream under HTTP/1.1 and HTTP/2, on both sides: plain TCP, or TLS over TCP.
//!
//! An enum rather than a boxed trait object, so that the plain path stays what it was: a
//! read or write on a [`Stream::Tcp`] is one match away from the socket, with the readiness
//! tricks of [`crate::sock`].
//!
//! Both HTTP/1.1 sides read and write one stream from two places at once through shared
//! references (a request body read while its answer is written; a request body written
//! while an early answer is watched for). A TCP socket allows that as it is. A TLS stream
//! needs `&mut` for either direction, so it sits behind a mutex, held only for the length
//! of one poll: reading never writes and writing never reads (rustls queues what a read
//! would answer, such as a key update, for the next write), so the two directions keep
//! their own wakers as they do on TCP.
//!
//! TLS buffers what it is given: a write can be accepted before it reached the socket.
//! Whoever stops writing for a while — at the end of an answer, or to wait for more body —
//! calls [`Stream::poll_flush`] first (free on TCP).

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::sock;

/// A connection's byte stream.
pub enum Stream {
    Tcp(TcpStream),
    /// Boxed: a TLS session's state is a few kilobytes, and a plain stream should not
    /// carry that room.
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
}

impl Stream {
    pub fn tls(stream: impl Into<TlsStream<TcpStream>>) -> Stream {
        Stream::Tls(Box::new(Mutex::new(stream.into())))
    }

    /// Reads what is there into `buf`, with `room` for it (see [`sock::poll_read`]).
    /// `Ok(0)`: the peer closed.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        room: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(tcp) => sock::poll_read(tcp, cx, buf, room),
            Stream::Tls(tls) => poll_read_tls(&mut lock(tls), cx, buf, room),
        }
    }

    /// Reads the next part of a head into `buf` (see [`sock::poll_read_head`]).
    pub fn poll_read_head(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(tcp) => sock::poll_read_head(tcp, cx, buf),
            Stream::Tls(tls) => poll_read_tls(&mut lock(tls), cx, buf, sock::HEAD_READ),
        }
    }

    /// Writes as much of `bufs` as the stream takes now.
    pub fn poll_write(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(tcp) => sock::poll_write(tcp, cx, bufs),
            Stream::Tls(tls) => Pin::new(&mut *lock(tls)).poll_write_vectored(cx, bufs),
        }
    }

    /// Sends what a TLS stream holds back; on TCP there is nothing to do.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(_) => Poll::Ready(Ok(())),
            Stream::Tls(tls) => Pin::new(&mut *lock(tls)).poll_flush(cx),
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n =
                std::future::poll_fn(|cx| self.poll_write(cx, &[io::IoSlice::new(bytes)])).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        self.flush().await
    }

    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Whether an idle connection could carry another exchange: nothing has arrived on it
    /// and the peer has not closed it. Costs no system call unless the socket became
    /// readable since the last read. On TLS, records that carry no data (a session
    /// ticket, a key update) are taken in on the way.
    pub fn is_idle_open(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut tls = lock(tls);
                matches!(Pin::new(&mut *tls).poll_fill_buf(&mut cx), Poll::Pending)
            }
        }
    }

    /// Whether the peer closed the connection, to watch a client whose request waits while
    /// nothing else reads its socket: `Ready(true)` once it closed or failed, `Ready(false)`
    /// when bytes arrived instead (a pipelined request: closing can no longer be seen without
    /// reading them). Received bytes stay where the next read finds them.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<bool> {
        match self {
            Stream::Tcp(tcp) => {
                let mut probe = [0u8; 1];
                let mut probe = tokio::io::ReadBuf::new(&mut probe);
                match ready!(tcp.poll_peek(cx, &mut probe)) {
                    Ok(0) | Err(_) => Poll::Ready(true),
                    Ok(_) => Poll::Ready(false),
                }
            }
            // What is filled stays buffered in the session for the next read.
            Stream::Tls(tls) => match ready!(Pin::new(&mut *lock(tls)).poll_fill_buf(cx)) {
                Ok([]) | Err(_) => Poll::Ready(true),
                Ok(_) => Poll::Ready(false),
            },
        }
    }

    /// Whether the TLS handshake agreed on the ALPN protocol `protocol`.
    pub fn alpn_is(&self, protocol: &[u8]) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => lock(tls).get_ref().1.alpn_protocol() == Some(protocol),
        }
    }
}

fn lock(tls: &Mutex<TlsStream<TcpStream>>) -> MutexGuard<'_, TlsStream<TcpStream>> {
    tls.lock().unwrap_or_else(PoisonError::into_inner)
}

fn poll_read_tls(
    tls: &mut TlsStream<TcpStream>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: usize,
) -> Poll<io::Result<usize>> {
    let data = ready!(Pin::new(&mut *tls).poll_fill_buf(cx))?;
    let n = data.len().min(room);
    buf.extend_from_slice(&data[..n]);
    Pin::new(tls).consume(n);
    Poll::Ready(Ok(n))
}

/// The stream owned whole: a tunnel after an upgrade, hyper's HTTP/2 server, a closing
/// connection.
impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(owned(tls)).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(owned(tls)).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(owned(tls)).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(owned(tls)).poll_flush(cx),
        }
    }

    /// On TLS, sends `close_notify` first.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(owned(tls)).poll_shutdown(cx),
        }
    }
}

fn owned(tls: &mut Mutex<TlsStream<TcpStream>>) -> &mut TlsStream<TcpStream> {
    tls.get_mut().unwrap_or_else(PoisonError::into_inner)
}

impl From<TcpStream> for Stream {
    fn from(tcp: TcpStream) -> Stream {
        Stream::Tcp(tcp)
    }
}

/// A stream handed whole to hyper's HTTP/2 code, with bytes already read from it in front
/// (the client's preface, read while telling HTTP/2 from HTTP/1.1), and `watch` shown every
/// byte read from it after those.
pub struct Handed<W: FnMut(&[u8])> {
    io: Stream,
    front: bytes::Bytes,
    watch: W,
}

impl<W: FnMut(&[u8])> Handed<W> {
    pub fn new(io: Stream, front: bytes::Bytes, watch: W) -> Handed<W> {
        Handed { io, front, watch }
    }
}

impl<W: FnMut(&[u8]) + Unpin> AsyncRead for Handed<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.front.is_empty() {
            let n = this.front.len().min(buf.remaining());
            buf.put_slice(&this.front.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            (this.watch)(&buf.filled()[before..]);
        }
        polled
    }
}

impl<W: FnMut(&[u8]) + Unpin> AsyncWrite for Handed<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
