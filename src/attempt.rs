//! One try of a request against one endpoint: connect (or reuse a pooled connection), send,
//! and wait for the response head. Failures come back classified, with their delivery, and
//! with the request itself when none of it was sent, so that it can go elsewhere.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::cause::{Cause, Delivery};
use crate::forward::Forwarding;
use crate::upstream::h1::{self, Conn, SendError};
use crate::upstream::pool::{ConnectError, Lease};
use crate::upstream::Endpoint;

/// A response head from the endpoint; its body holds the connection it came on.
pub struct Success {
    pub response: Response<h1::Body>,
    pub lease: Lease,
    pub connect: Option<Duration>,
}

/// A failed try.
pub struct Failure {
    pub cause: Cause,
    pub delivery: Delivery,
    /// The request, when none of it reached the endpoint.
    pub request: Option<Request<RequestBody>>,
    /// The head of a request that was sent, to send again with a kept copy of its body.
    pub sent_head: Option<Box<http::request::Parts>>,
    pub connect: Option<Duration>,
}

/// Sends `request` to `endpoint`. `connect_timeout` bounds a new connection;
/// `head_deadline` bounds the wait for the response head.
pub async fn attempt(
    endpoint: &Arc<Endpoint>,
    mut request: Request<RequestBody>,
    forwarding: &Forwarding,
    connect_timeout: Option<Duration>,
    head_deadline: Option<Instant>,
) -> Result<Success, Failure> {
    let mut pooled = endpoint.pool.checkout();
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
                let connect = Box::pin(
                    endpoint
                        .pool
                        .connect(endpoint.addr, endpoint.host.as_deref()),
                );
                let connected = match connect_timeout {
                    Some(limit) => {
                        tokio::time::timeout(limit, connect)
                            .await
                            .unwrap_or_else(|_| {
                                Err(ConnectError::Tcp(std::io::ErrorKind::TimedOut.into()))
                            })
                    }
                    None => connect.await,
                };
                connect_time = Some(started.elapsed());
                match connected {
                    Ok(stream) => Conn::new(stream),
                    Err(err) => {
                        tracing::debug!(endpoint = %endpoint.addr, error = %err, "connect failed");
                        return Err(Failure {
                            cause: err.cause(),
                            delivery: Delivery::None,
                            request: Some(request),
                            sent_head: None,
                            connect: connect_time,
                        });
                    }
                }
            }
        };
        let lease = Lease::new(endpoint.clone());
        match conn
            .send(request, forwarding, &endpoint.host_header, head_deadline)
            .await
        {
            Ok(response) => {
                return Ok(Success {
                    response,
                    lease,
                    connect: connect_time,
                });
            }
            Err(SendError::NotSent(returned, cause)) if reused => {
                tracing::debug!(endpoint = %endpoint.addr, %cause, "pooled connection was dead; retrying on a fresh one");
                request = *returned;
            }
            Err(SendError::NotSent(returned, cause)) => {
                return Err(Failure {
                    cause,
                    delivery: Delivery::None,
                    request: Some(*returned),
                    sent_head: None,
                    connect: connect_time,
                })
            }
            Err(SendError::Sent(cause, head)) => {
                // The upstream's TLS layer refused the connection: the request went out
                // but nothing behind it saw it (see `classify::upstream_read_error`).
                let delivery = match cause {
                    Cause::UpstreamTlsFailed => Delivery::None,
                    _ => Delivery::Sent,
                };
                return Err(Failure {
                    cause,
                    delivery,
                    request: None,
                    sent_head: Some(head),
                    connect: connect_time,
                });
            }
        }
    }
}
