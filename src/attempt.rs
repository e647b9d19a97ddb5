//! One try of a request against one endpoint: connect (or reuse a pooled connection), send,
//! and wait for the response head. Failures come back classified, with their delivery, and
//! with the request itself when none of it was sent, so that it can go elsewhere.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::cause::{Cause, Delivery};
use crate::classify;
use crate::upstream::pool::{self, Lease, Sender};
use crate::upstream::Endpoint;

/// A response head from the endpoint, and the connection it came on.
pub struct Success {
    pub response: Response<Incoming>,
    pub lease: Lease,
    pub connect: Option<Duration>,
}

/// A failed try.
pub struct Failure {
    pub cause: Cause,
    pub delivery: Delivery,
    /// The request, when none of it reached the endpoint.
    pub request: Option<Request<RequestBody>>,
    pub connect: Option<Duration>,
}

/// Sends `request` to `endpoint`. `connect_timeout` bounds a new connection;
/// `head_deadline` bounds the wait for the response head.
pub async fn attempt(
    endpoint: &Arc<Endpoint>,
    mut request: Request<RequestBody>,
    connect_timeout: Option<Duration>,
    head_deadline: Option<Instant>,
) -> Result<Success, Failure> {
    let mut pooled = endpoint.pool.checkout();
    loop {
        let reused = pooled.is_some();
        let mut connect_time = None;
        let mut sender = match pooled.take() {
            Some(sender) => sender,
            None => {
                let started = Instant::now();
                // Boxed: most requests find a pooled connection, and the connect state
                // inline would enlarge every request's future.
                let connect = Box::pin(pool::connect(endpoint.addr));
                let connected = match connect_timeout {
                    Some(limit) => tokio::time::timeout(limit, connect)
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                    None => connect.await,
                };
                connect_time = Some(started.elapsed());
                match connected {
                    Ok(sender) => sender,
                    Err(err) => {
                        tracing::debug!(endpoint = %endpoint.addr, error = %err, "connect failed");
                        return Err(Failure {
                            cause: classify::connect_error(&err),
                            delivery: Delivery::None,
                            request: Some(request),
                            connect: connect_time,
                        });
                    }
                }
            }
        };
        if reused && sender.ready().await.is_err() {
            // Closed while idle: nothing was sent, go fresh.
            continue;
        }
        let lease = Lease::new(endpoint.clone());
        match send(&mut sender, request, head_deadline).await {
            Ok(response) => {
                let mut lease = lease;
                lease.set_keep_alive_hint(pool::keep_alive_timeout(response.headers()));
                let lease = lease.with_sender(sender);
                return Ok(Success {
                    response,
                    lease,
                    connect: connect_time,
                });
            }
            Err(SendFailure::NotSent(returned, cause)) if reused => {
                tracing::debug!(endpoint = %endpoint.addr, %cause, "pooled connection was dead; retrying on a fresh one");
                request = *returned;
            }
            Err(SendFailure::NotSent(returned, cause)) => {
                return Err(Failure {
                    cause,
                    delivery: Delivery::None,
                    request: Some(*returned),
                    connect: connect_time,
                })
            }
            Err(SendFailure::Sent(cause)) => {
                return Err(Failure {
                    cause,
                    delivery: Delivery::Sent,
                    request: None,
                    connect: connect_time,
                })
            }
        }
    }
}

enum SendFailure {
    /// The connection gave the request back untouched.
    NotSent(Box<Request<RequestBody>>, Cause),
    Sent(Cause),
}

async fn send(
    sender: &mut Sender,
    request: Request<RequestBody>,
    head_deadline: Option<Instant>,
) -> Result<Response<Incoming>, SendFailure> {
    let exchange = sender.try_send_request(request);
    let result = match head_deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => return Err(SendFailure::Sent(Cause::UpstreamResponseTimeout)),
        },
        None => exchange.await,
    };
    result.map_err(|mut err| {
        let cause = classify::send_error(err.error());
        match err.take_message() {
            Some(request) => SendFailure::NotSent(Box::new(request), cause),
            None => SendFailure::Sent(cause),
        }
    })
}
