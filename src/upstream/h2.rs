//! HTTP/2 to upstreams (`protocol = "h2"` over TLS with ALPN, `"h2c"` by prior knowledge),
//! with hyper's HTTP/2 client: each connection runs as a task of hyper's, and multiplexes
//! as many requests as the upstream allows.
//!
//! hyper does not tell its user the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, so the bytes
//! the upstream sends are watched on their way in (`Scan`): its SETTINGS frames give the
//! limit, and a GOAWAY marks the connection as taking no new request. A request goes to
//! a connection with room, and a new connection opens (one at a time per endpoint) when
//! none has any; h2 would otherwise queue the request until a stream closes.
//!
//! What the upstream did with a request that failed (RFC 9113 §8.7): a stream it refused
//! (`REFUSED_STREAM`) or one above the last stream ID of its graceful `GOAWAY` was not
//! processed — `Baton-Delivery: none`, retried like a connect failure. Other stream and
//! connection errors are `upstream-protocol-error`, and may have been processed.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;

use super::endpoint::now_ms;
use super::h1::SendError;
use super::pool::ConnectError;
use crate::body::RequestBody;
use crate::cause::Cause;
use crate::forward::Forwarding;
use crate::transport::{Handed, Stream};

/// How long a new connection waits for the upstream's first SETTINGS before it is used
/// as if it allowed any number of streams (RFC 9113 §6.5.2: the initial value is
/// unlimited; a server sends SETTINGS first thing).
const SETTINGS_WAIT: Duration = Duration::from_secs(1);

/// An endpoint's HTTP/2 connections.
#[derive(Default)]
pub struct Connections {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while a connection is being made, so that a burst of requests opens one.
    connecting: tokio::sync::Mutex<()>,
}

/// One HTTP/2 connection.
struct Conn {
    sender: SendRequest<RequestBody>,
    /// Streams in use.
    active: AtomicUsize,
    /// When the last stream ended ([`now_ms`]).
    idle_since: AtomicU64,
    peer: Arc<PeerState>,
}

/// What the upstream told about a connection, as the tap saw it.
struct PeerState {
    max_streams: AtomicU32,
    /// A GOAWAY came: no new stream may start.
    going_away: AtomicBool,
    /// Turns true at the first SETTINGS.
    settings: watch::Sender<bool>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && !self.peer.going_away.load(Ordering::Relaxed)
    }

    /// Takes a stream on the connection if it has room.
    fn try_take(self: &Arc<Conn>) -> Option<Slot> {
        let limit = self.peer.max_streams.load(Ordering::Relaxed) as usize;
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |active| {
                (active < limit).then_some(active + 1)
            });
        taken.ok().map(|_| Slot { conn: self.clone() })
    }
}

/// A stream in use on a connection, until the response body ends or is dropped.
pub struct Slot {
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.idle_since.store(now_ms(), Ordering::Relaxed);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// A stream on a connection with room, opening a connection through `connect` when no
    /// connection has any.
    async fn slot<F>(&self, connect: F) -> Result<(SendRequest<RequestBody>, Slot), ConnectError>
    where
        F: AsyncFnOnce() -> Result<Stream, ConnectError>,
    {
        if let Some(found) = self.find() {
            return Ok(found);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(found) = self.find() {
            return Ok(found);
        }
        let stream = connect().await?;
        let conn = handshake(stream).await.map_err(ConnectError::Tcp)?;
        let slot = conn.try_take().ok_or_else(|| {
            ConnectError::Tcp(io::Error::other("the upstream allows no HTTP/2 stream"))
        })?;
        let sender = conn.sender.clone();
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        Ok((sender, slot))
    }

    fn find(&self) -> Option<(SendRequest<RequestBody>, Slot)> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|conn| conn.usable() || conn.active.load(Ordering::Relaxed) > 0);
        conns
            .iter()
            .filter(|conn| conn.usable() && conn.sender.is_ready())
            .find_map(|conn| conn.try_take().map(|slot| (conn.sender.clone(), slot)))
    }

    /// Closes connections that carried no stream for `idle`, and forgets closed ones.
    pub fn purge(&self, idle: Duration) {
        let now = now_ms();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|conn| {
            let active = conn.active.load(Ordering::Relaxed) > 0;
            let fresh = now.saturating_sub(conn.idle_since.load(Ordering::Relaxed)) < idle_ms;
            active || (conn.usable() && fresh)
        });
    }

    pub fn count(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Sends `request` on a stream of a connection to the endpoint, with the fields of
    /// `forwarding` (`endpoint_host` as `:authority` unless the client's is kept), and
    /// waits for the response head until `deadline`. Finding a stream — waiting for
    /// another request's connect to this endpoint included — takes at most
    /// `connect_timeout`, so that requests do not queue behind a connect that hangs.
    #[allow(clippy::too_many_arguments)]
    pub async fn send<F>(
        &self,
        connect: F,
        connect_timeout: Option<Duration>,
        tls: bool,
        request: &mut Request<RequestBody>,
        forwarding: &Forwarding,
        endpoint_host: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<(Response<hyper::body::Incoming>, Slot), H2Failure>
    where
        F: AsyncFnOnce() -> Result<Stream, ConnectError>,
    {
        let slot = self.slot(connect);
        let found = match connect_timeout {
            Some(limit) => tokio::time::timeout(limit, slot)
                .await
                .unwrap_or_else(|_| Err(ConnectError::Tcp(io::ErrorKind::TimedOut.into()))),
            None => slot.await,
        };
        let (mut sender, slot) = match found {
            Ok(found) => found,
            Err(err) => return Err(H2Failure::Connect(err)),
        };
        // hyper takes the request whole: a copy of the head goes, and the client's stays
        // for another try.
        // HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2): hyper drops what is
        // left of them (`Connection`, `Upgrade` of a WebSocket handshake, which goes on as
        // a plain request).
        let mut headers = request.headers().clone();
        let authority = forwarding.apply(&mut headers, endpoint_host);
        let Some(uri) = upstream_uri(request.uri(), &authority, tls) else {
            return Err(H2Failure::Send(SendError::NotSent(Cause::BadRequest)));
        };
        let mut outgoing =
            Request::new(std::mem::replace(request.body_mut(), RequestBody::empty()));
        *outgoing.method_mut() = request.method().clone();
        *outgoing.uri_mut() = uri;
        *outgoing.version_mut() = Version::HTTP_2;
        *outgoing.headers_mut() = headers;
        *outgoing.extensions_mut() = request.extensions().clone();
        let sending = sender.try_send_request(outgoing);
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, sending).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(H2Failure::Send(SendError::Sent(
                        Cause::UpstreamResponseTimeout,
                    )))
                }
            },
            None => sending.await,
        };
        match result {
            Ok(response) => Ok((response, slot)),
            Err(mut err) => {
                if let Some(unsent) = err.take_message() {
                    // The connection closed before the request went out.
                    *request.body_mut() = unsent.into_body();
                    return Err(H2Failure::Send(SendError::NotSent(Cause::UpstreamReset)));
                }
                let error = err.into_error();
                tracing::debug!(error = %error, "HTTP/2 request to the upstream failed");
                Err(H2Failure::Send(classify(&error)))
            }
        }
    }
}

/// A failed HTTP/2 exchange.
pub enum H2Failure {
    /// No connection could be made; the request is untouched.
    Connect(ConnectError),
    Send(SendError),
}

/// What became of a request whose stream failed (RFC 9113 §8.7).
fn classify(error: &hyper::Error) -> SendError {
    let Some(h2) = find_source::<h2::Error>(error) else {
        return SendError::Sent(Cause::UpstreamReset);
    };
    if h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return SendError::Unprocessed(Cause::UpstreamProtocolError);
    }
    if h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR) {
        // Only streams above the GOAWAY's last stream ID end with a graceful GOAWAY's
        // error; the streams it kept end with their answers, or a broken pipe.
        return SendError::Unprocessed(Cause::UpstreamReset);
    }
    if h2.is_io() {
        return SendError::Sent(Cause::UpstreamReset);
    }
    SendError::Sent(Cause::UpstreamProtocolError)
}

fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The absolute URI an HTTP/2 request carries: `:scheme`, `:authority` and `:path`.
fn upstream_uri(uri: &Uri, authority: &HeaderValue, tls: bool) -> Option<Uri> {
    let authority = Authority::try_from(authority.as_bytes()).ok()?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// Starts an HTTP/2 connection on `stream` and waits (briefly) for the upstream's first
/// SETTINGS.
async fn handshake(stream: Stream) -> io::Result<Arc<Conn>> {
    let (settings, mut seen) = watch::channel(false);
    let peer = Arc::new(PeerState {
        max_streams: AtomicU32::new(u32::MAX),
        going_away: AtomicBool::new(false),
        settings,
    });
    // The upstream's frames are watched on their way in (see the module doc).
    let mut scan = Scan::default();
    let watched = peer.clone();
    let tap = Handed::new(stream, bytes::Bytes::new(), move |data: &[u8]| {
        scan.feed(data, &watched)
    });
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tap))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "HTTP/2 connection to an upstream ended");
        }
    });
    let _ = tokio::time::timeout(SETTINGS_WAIT, seen.wait_for(|seen| *seen)).await;
    Ok(Arc::new(Conn {
        sender,
        active: AtomicUsize::new(0),
        idle_since: AtomicU64::new(now_ms()),
        peer,
    }))
}

/// The frame types and setting the tap looks for (RFC 9113 §6).
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const FRAME_HEADER: usize = 9;
const SETTING: usize = 6;

/// Where the tap is in the stream of frames coming in.
#[derive(Default)]
struct Scan {
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// The current frame is a SETTINGS frame: its payload, gathered.
    settings: Option<Vec<u8>>,
}

impl Scan {
    fn feed(&mut self, mut data: &[u8], peer: &PeerState) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                if let Some(settings) = self.settings.as_mut() {
                    settings.extend_from_slice(&data[..n]);
                }
                self.payload_left -= n;
                data = &data[n..];
                if self.payload_left == 0 {
                    self.end_frame(peer);
                }
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < FRAME_HEADER {
                continue;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            self.payload_left = u32::from_be_bytes([0, l0, l1, l2]) as usize;
            self.settings = (kind == SETTINGS && flags & ACK == 0).then(Vec::new);
            if kind == GOAWAY {
                peer.going_away.store(true, Ordering::Relaxed);
            }
            if self.payload_left == 0 {
                self.end_frame(peer);
            }
        }
    }

    fn end_frame(&mut self, peer: &PeerState) {
        let Some(settings) = self.settings.take() else {
            return;
        };
        for setting in settings.chunks_exact(SETTING) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                peer.max_streams.store(value, Ordering::Relaxed);
            }
        }
        peer.settings.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerState {
        PeerState {
            max_streams: AtomicU32::new(u32::MAX),
            going_away: AtomicBool::new(false),
            settings: watch::Sender::new(false),
        }
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_scan_finds_the_stream_limit_and_goaway_across_any_split() {
        let mut bytes = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 7, 0, 4, 0, 0, 255, 255]);
        bytes.extend(frame(0x0, 0, &[1; 40]));
        bytes.extend(frame(SETTINGS, ACK, &[]));
        bytes.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 9]));
        bytes.extend(frame(GOAWAY, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for split in 1..bytes.len() {
            let peer = peer();
            let mut scan = Scan::default();
            let mut limits = Vec::new();
            for chunk in bytes.chunks(split) {
                scan.feed(chunk, &peer);
                limits.push(peer.max_streams.load(Ordering::Relaxed));
            }
            assert!(
                limits.contains(&7) || split > 21,
                "split {split}: {limits:?}"
            );
            assert_eq!(peer.max_streams.load(Ordering::Relaxed), 9, "split {split}");
            assert!(peer.going_away.load(Ordering::Relaxed));
            assert!(*peer.settings.borrow());
        }
    }
}
