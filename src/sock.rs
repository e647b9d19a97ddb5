//! Reads and writes on a nonblocking TCP socket, for both sides of HTTP/1.1: the server's
//! client connections and the upstream client's connections.
//!
//! A read that leaves part of its room empty has drained the socket, so its readiness is
//! cleared then (as tokio's own `AsyncRead` does): the next read waits for the next
//! readiness event instead of costing a system call that can only fail.

use std::cell::RefCell;
use std::io;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most a read of head bytes takes at once.
pub const HEAD_READ: usize = 8 * 1024;

thread_local! {
    /// Where heads are read before they are copied to a buffer of their own size.
    static SCRATCH: RefCell<[u8; HEAD_READ]> = const { RefCell::new([0; HEAD_READ]) };
}

/// Reads what the socket has into `buf`, making `room` for it once there is something to
/// read (so that a buffer waiting for a read can stay unallocated).
pub fn poll_read(
    io: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: usize,
) -> Poll<io::Result<usize>> {
    poll_read_with(io, cx, || {
        buf.reserve(room);
        let space = buf.capacity() - buf.len();
        Ok((io.try_read_buf(buf)?, space))
    })
}

/// Reads up to [`HEAD_READ`] bytes of a head (and whatever follows it) and appends them to
/// `buf`. The read goes through a per-thread scratch buffer, so that `buf` grows by what
/// arrived: a head of a few hundred bytes takes an allocation of its size, which the
/// allocator serves from its per-thread cache, instead of one sized for the largest head.
pub fn poll_read_head(
    io: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    poll_read_with(io, cx, || {
        SCRATCH.with_borrow_mut(|scratch| {
            let n = io.try_read(scratch)?;
            buf.extend_from_slice(&scratch[..n]);
            Ok((n, scratch.len()))
        })
    })
}

/// Makes one read with `read` once the socket is readable; `read` returns how many bytes it
/// got and how many it had room for.
fn poll_read_with(
    io: &TcpStream,
    cx: &mut Context<'_>,
    mut read: impl FnMut() -> io::Result<(usize, usize)>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_read_ready(cx))?;
        let mut got = None;
        let result = io.try_io(Interest::READABLE, || {
            let (n, room) = read()?;
            got = Some(n);
            if n > 0 && n < room {
                // Returning `WouldBlock` is how `try_io` is told to clear the readiness.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (got, result) {
            (Some(n), _) => return Poll::Ready(Ok(n)),
            (None, Err(err)) if err.kind() == io::ErrorKind::WouldBlock => continue,
            (None, result) => return Poll::Ready(result),
        }
    }
}

/// Writes as much of `bufs` as the socket takes.
pub fn poll_write(
    io: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_write_ready(cx))?;
        match io.try_write_vectored(bufs) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}
