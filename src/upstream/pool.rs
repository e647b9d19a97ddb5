//! Keep-alive connections to one endpoint, and how they are made.
//!
//! The keep-alive race — the upstream closes an idle connection just as baton reuses it — is
//! the most common cause of needless 502s (SPEC §6). The pool avoids it three ways: an idle
//! connection expires after `keepalive.idle`, and sooner when the upstream announced a
//! shorter `Keep-Alive: timeout=N` (less a safety margin); a connection the upstream has
//! closed is noticed when taken from the pool (its socket turned readable) and skipped; and
//! [`crate::attempt`] retries a request that a pooled connection refused before writing it
//! on a fresh connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::Conn;
use super::h2;
use super::Endpoint;
use crate::cause::Cause;
use crate::classify;
use crate::config::runtime::Protocol;
use crate::config::Keepalive;
use crate::tls::ClientTls;
use crate::transport::Stream;

/// How much earlier than the upstream's announced `Keep-Alive: timeout` baton stops reusing
/// a connection: a quarter of the timeout, at most this. The upstream's clock starts when
/// it finished writing; ours when we finished reading, a round trip and a scheduling delay
/// later.
const KEEP_ALIVE_HINT_MARGIN_MAX: Duration = Duration::from_secs(1);

struct Idle {
    conn: Conn,
    expires: Instant,
}

/// Idle connections of one endpoint, most recently used last. Requests take the most
/// recent and give back to the end, in constant time; expired and closed ones are skipped
/// when met and cleared by [`Pool::purge`] every second.
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    keepalive: Keepalive,
    /// TLS to the endpoint, when its upstream has `tls`; a reload with the same settings
    /// swaps in what its files hold now.
    tls: ArcSwapOption<ClientTls>,
    protocol: AtomicU8,
    /// The endpoint's HTTP/2 connections, for `protocol = "h2"` or `"h2c"`.
    pub h2: h2::Connections,
}

/// Why a new connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    Tcp(io::Error),
    Tls(io::Error),
}

impl ConnectError {
    pub fn cause(&self) -> Cause {
        match self {
            ConnectError::Tcp(err) => classify::connect_error(err),
            ConnectError::Tls(_) => Cause::UpstreamTlsFailed,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tcp(err) => write!(f, "connect: {err}"),
            ConnectError::Tls(err) => write!(f, "TLS handshake: {err}"),
        }
    }
}

impl Pool {
    pub fn new(keepalive: Keepalive) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            keepalive,
            tls: ArcSwapOption::empty(),
            protocol: AtomicU8::new(Protocol::Http1 as u8),
            h2: h2::Connections::default(),
        }
    }

    /// How connections are made: with TLS or without, and the protocol they speak.
    pub fn set_transport(&self, tls: Option<ClientTls>, protocol: Protocol) {
        self.tls.store(tls.map(Arc::new));
        self.protocol.store(protocol as u8, Ordering::Relaxed);
    }

    pub fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            p if p == Protocol::H2 as u8 => Protocol::H2,
            p if p == Protocol::H2c as u8 => Protocol::H2c,
            _ => Protocol::Http1,
        }
    }

    /// Whether connections are made with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.load().is_some()
    }

    /// A new connection to `addr` (found under the host name `host`, if it was): TCP,
    /// then the TLS handshake when the upstream has `tls`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<Stream, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let Some(tls) = self.tls.load_full() else {
            return Ok(Stream::Tcp(tcp));
        };
        let stream = tls
            .handshake(tcp, host, addr.ip())
            .await
            .map_err(ConnectError::Tls)?;
        if self.protocol() == Protocol::H2 && !stream.alpn_is(b"h2") {
            return Err(ConnectError::Tls(io::Error::other(
                "the upstream did not agree to HTTP/2 by ALPN",
            )));
        }
        Ok(stream)
    }

    /// The most recently used idle connection that has not expired or closed by `now`.
    pub fn checkout(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(candidate) = idle.pop_back() {
            if candidate.expires > now && candidate.conn.is_open() {
                return Some(candidate.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed at `now`. `hint` is the upstream's
    /// `Keep-Alive: timeout`.
    pub(super) fn checkin(&self, conn: Conn, hint: Option<Duration>, now: Instant) {
        if self.keepalive.max_idle_per_endpoint == 0 {
            return;
        }
        let mut keep = self.keepalive.idle;
        if let Some(hint) = hint {
            let margin = (hint / 4).min(KEEP_ALIVE_HINT_MARGIN_MAX);
            keep = keep.min(hint.saturating_sub(margin));
        }
        if keep.is_zero() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.keepalive.max_idle_per_endpoint {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            expires: now + keep,
        });
    }

    /// Drops (and so closes) idle connections that expired or that the upstream closed.
    pub fn purge(&self) {
        self.h2.purge(self.keepalive.idle);
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| c.expires > now && c.conn.is_open());
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// A connection in use by one exchange, and the endpoint's in-flight count while it is.
pub struct Lease {
    endpoint: Arc<Endpoint>,
}

impl Lease {
    /// Counts an exchange in flight on `endpoint` until the lease is dropped.
    pub fn new(endpoint: Arc<Endpoint>) -> Lease {
        endpoint.inflight.fetch_add(1, Ordering::Relaxed);
        Lease { endpoint }
    }

    /// The response body failed with `cause`: it counts against the endpoint.
    pub fn record_failure(&self, cause: crate::cause::Cause) {
        self.endpoint
            .record_failure(cause, super::endpoint::now_ms());
    }

    /// The exchange completed at `now`; the connection, when it may serve the next
    /// request, goes back to the pool with the upstream's `Keep-Alive: timeout`.
    pub fn release(self, reusable: Option<(Conn, Option<Duration>)>, now: Instant) {
        if let Some((conn, hint)) = reusable {
            self.endpoint.pool.checkin(conn, hint, now);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
