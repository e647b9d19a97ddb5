//! Keep-alive connections to one endpoint, and how they are made.
//!
//! The keep-alive race — the upstream closes an idle connection just as baton reuses it — is
//! the most common cause of needless 502s (SPEC §6). The pool avoids it three ways: an idle
//! connection expires after `keepalive.idle`, and sooner when the upstream announced a
//! shorter `Keep-Alive: timeout=N` (less a safety margin); a connection the upstream has
//! closed is noticed by hyper and skipped; and [`crate::attempt`] retries a request that a
//! pooled connection refused before writing it on a fresh connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use http::HeaderMap;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Endpoint;
use crate::body::RequestBody;
use crate::config::Keepalive;

pub type Sender = SendRequest<RequestBody>;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// How much earlier than the upstream's announced `Keep-Alive: timeout` baton stops reusing
/// a connection: a quarter of the timeout, at most this. The upstream's clock starts when
/// it finished writing; ours when we finished reading, a round trip and a scheduling delay
/// later.
const KEEP_ALIVE_HINT_MARGIN_MAX: Duration = Duration::from_secs(1);

struct Idle {
    sender: Sender,
    expires: Instant,
}

/// Idle connections of one endpoint, most recently used last. Requests take the most
/// recent and give back to the end, in constant time; expired and closed ones are skipped
/// when met and cleared by [`Pool::purge`] every second.
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    keepalive: Keepalive,
}

impl Pool {
    pub fn new(keepalive: Keepalive) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            keepalive,
        }
    }

    /// The most recently used idle connection that has not expired or closed.
    pub fn checkout(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        while let Some(candidate) = idle.pop_back() {
            if candidate.expires > now && !candidate.sender.is_closed() {
                return Some(candidate.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed. `hint` is the upstream's
    /// `Keep-Alive: timeout`.
    fn checkin(&self, sender: Sender, hint: Option<Duration>) {
        if sender.is_closed() || self.keepalive.max_idle_per_endpoint == 0 {
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
        let now = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.keepalive.max_idle_per_endpoint {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            expires: now + keep,
        });
    }

    /// Drops idle connections that expired or closed; dropping a connection's sender ends
    /// its task and closes the socket.
    pub fn purge(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| c.expires > now && !c.sender.is_closed());
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// The `timeout=N` of a `Keep-Alive` response header (RFC 2068 §19.7.1.1).
pub fn keep_alive_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(KEEP_ALIVE)?.to_str().ok()?;
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("timeout") {
            seconds.trim().parse::<u64>().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

/// Opens a TCP connection and an HTTP/1.1 client connection on it. The connection task
/// runs until the upstream closes or the last sender is dropped.
pub async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(%addr, error = %err, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A connection in use by one exchange, and the endpoint's in-flight count while it is.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    sender: Option<Sender>,
    keep_alive_hint: Option<Duration>,
}

impl Lease {
    /// Counts an exchange in flight on `endpoint` until the lease is dropped.
    pub fn new(endpoint: Arc<Endpoint>) -> Lease {
        endpoint.inflight.fetch_add(1, Ordering::Relaxed);
        Lease {
            endpoint,
            sender: None,
            keep_alive_hint: None,
        }
    }

    /// The connection to return to the pool when the exchange completes.
    pub fn with_sender(mut self, sender: Sender) -> Lease {
        self.sender = Some(sender);
        self
    }

    pub fn set_keep_alive_hint(&mut self, hint: Option<Duration>) {
        self.keep_alive_hint = hint;
    }

    /// The response body failed with `cause`: it counts against the endpoint.
    pub fn record_failure(&self, cause: crate::cause::Cause) {
        self.endpoint
            .record_failure(cause, super::endpoint::now_ms());
    }

    /// The exchange completed: the connection may serve the next request.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.endpoint.pool.checkin(sender, self.keep_alive_hint);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
