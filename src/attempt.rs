//! One try of a request against one endpoint: connect (or reuse a connection), send, and
//! wait for the response head, over HTTP/1.1 or HTTP/2 as the upstream speaks. Failures
//! come back classified, with their delivery, and with whether the request is still whole
//! (none of it was sent), so that it can go elsewhere. The request is borrowed: its head
//! stays with the caller for another try.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::cause::{Cause, Delivery};
use crate::config::runtime::Protocol;
use crate::forward::Forwarding;
use crate::transport::Stream;
use crate::upstream::client::Incoming;
use crate::upstream::h1::{Conn, SendError};
use crate::upstream::h2::H2Failure;
use crate::upstream::pool::{ConnectError, Lease};
use crate::upstream::Endpoint;

/// A response head from the endpoint; its body holds the connection it came on.
pub struct Success {
    pub response: Response<Incoming>,
    pub lease: Lease,
    pub connect: Option<Duration>,
}

/// A failed try.
pub struct Failure {
    pub cause: Cause,
    pub delivery: Delivery,
    /// None of the request reached the endpoint: it is whole, body and all. Otherwise
    /// its head is, and it can go again with a kept copy of its body.
    pub intact: bool,
    pub connect: Option<Duration>,
    /// What the cause alone does not say, for the operator: why a TLS handshake failed
    /// (an expired certificate, a name mismatch).
    pub detail: Option<Arc<str>>,
}

impl Failure {
    fn connect(err: ConnectError, connect: Option<Duration>) -> Failure {
        let detail = matches!(err, ConnectError::Tls(_)).then(|| Arc::from(err.to_string()));
        Failure {
            cause: err.cause(),
            delivery: Delivery::None,
            intact: true,
            connect,
            detail,
        }
    }

    fn send(error: SendError, connect: Option<Duration>) -> Failure {
        let (cause, delivery, intact) = match error {
            SendError::NotSent(cause) => (cause, Delivery::None, true),
            SendError::Sent(cause) => (cause, Delivery::Sent, false),
            SendError::Unprocessed(cause) => (cause, Delivery::None, false),
        };
        Failure {
            cause,
            delivery,
            intact,
            connect,
            detail: None,
        }
    }
}

/// A refused or unreachable endpoint is ordinary (its cause says it all, and outlier
/// detection acts on it); a failed TLS handshake is a certificate or configuration problem
/// whose reason — an expired certificate, a name mismatch — only the error tells, so it
/// is logged where an operator sees it.
fn log_connect_failure(endpoint: &Endpoint, err: &ConnectError) {
    match err {
        ConnectError::Tls(_) => {
            tracing::warn!(endpoint = %endpoint.addr, error = %err, "TLS to the upstream failed")
        }
        ConnectError::Tcp(_) => {
            tracing::debug!(endpoint = %endpoint.addr, error = %err, "connect failed")
        }
    }
}

/// A new connection to `endpoint` within `limit`.
async fn connect(endpoint: &Endpoint, limit: Option<Duration>) -> Result<Stream, ConnectError> {
    let connecting = endpoint
        .pool
        .connect(endpoint.addr, endpoint.host.as_deref());
    match limit {
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .unwrap_or_else(|_| Err(ConnectError::Tcp(std::io::ErrorKind::TimedOut.into()))),
        None => connecting.await,
    }
}

/// Sends `request` to `endpoint`, at `now`. `connect_timeout` bounds a new connection;
/// `head_deadline` bounds the wait for the response head.
///
/// HTTP/1.1 is inline here rather than a function of its own: each level of `async fn`
/// moves its state and what it returns once more, on every request.
pub async fn attempt(
    endpoint: &Arc<Endpoint>,
    request: &mut Request<RequestBody>,
    forwarding: &Forwarding,
    connect_timeout: Option<Duration>,
    head_deadline: Option<Instant>,
    now: Instant,
) -> Result<Success, Failure> {
    if endpoint.pool.protocol() != Protocol::Http1 {
        return Box::pin(attempt_h2(
            endpoint,
            request,
            forwarding,
            connect_timeout,
            head_deadline,
        ))
        .await;
    }
    let mut pooled = endpoint.pool.checkout(now);
    loop {
        let reused = pooled.is_some();
        let mut connect_time = None;
        let conn = match pooled.take() {
            Some(conn) => conn,
            None => {
                let started = Instant::now();
                // Boxed: most requests find a pooled connection, and the connect state
                // inline would enlarge every request's future (measured: 150 instructions
                // a request more in copies).
                let connected = Box::pin(connect(endpoint, connect_timeout)).await;
                connect_time = Some(started.elapsed());
                match connected {
                    Ok(stream) => Conn::new(stream),
                    Err(err) => {
                        log_connect_failure(endpoint, &err);
                        return Err(Failure::connect(err, connect_time));
                    }
                }
            }
        };
        let lease = Lease::new(endpoint.clone());
        match conn
            .send(
                request,
                forwarding,
                &endpoint.host_header,
                head_deadline,
                endpoint,
            )
            .await
        {
            Ok(response) => {
                return Ok(Success {
                    response: response.map(Incoming::H1),
                    lease,
                    connect: connect_time,
                });
            }
            Err(SendError::NotSent(cause)) if reused => {
                tracing::debug!(endpoint = %endpoint.addr, %cause, "pooled connection was dead; retrying on a fresh one");
            }
            Err(error) => return Err(Failure::send(error, connect_time)),
        }
    }
}

async fn attempt_h2(
    endpoint: &Arc<Endpoint>,
    request: &mut Request<RequestBody>,
    forwarding: &Forwarding,
    connect_timeout: Option<Duration>,
    head_deadline: Option<Instant>,
) -> Result<Success, Failure> {
    let mut connect_time = None;
    let lease = Lease::new(endpoint.clone());
    let sent = endpoint
        .pool
        .h2
        .send(
            async || {
                let started = Instant::now();
                let connected = connect(endpoint, connect_timeout).await;
                connect_time = Some(started.elapsed());
                connected
            },
            connect_timeout,
            endpoint.pool.is_tls(),
            request,
            forwarding,
            &endpoint.host_header,
            head_deadline,
        )
        .await;
    match sent {
        Ok((response, slot)) => Ok(Success {
            response: response.map(|body| Incoming::H2(body, slot)),
            lease,
            connect: connect_time,
        }),
        Err(H2Failure::Connect(err)) => {
            log_connect_failure(endpoint, &err);
            Err(Failure::connect(err, connect_time))
        }
        Err(H2Failure::Send(error)) => Err(Failure::send(error, connect_time)),
    }
}
