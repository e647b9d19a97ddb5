//! Active health checks (SPEC §7): one task per endpoint sends `GET health.path` on a fresh
//! connection every `interval`, with jitter so that the checks of many baton instances do
//! not arrive together, and marks the endpoint unhealthy or healthy again.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use super::balance::unit_random;
use super::endpoint::{now_ms, Endpoint};
use super::pool::Pool;
use crate::config::runtime::Protocol;
use crate::config::HealthCheck;
use crate::gateway::stop_requested;

/// How far a check may move from its beat, as a share of the interval, either way.
const JITTER: f64 = 0.1;

/// Checks `endpoint` until `stopped`. The first check comes at a random point of the
/// first interval.
pub async fn run(endpoint: Arc<Endpoint>, check: HealthCheck, mut stopped: watch::Receiver<bool>) {
    let mut wait = check.interval.mul_f64(unit_random());
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop_requested(&mut stopped) => return,
        }
        if endpoint.is_retired() {
            return;
        }
        let passed = probe(&endpoint, &check).await;
        endpoint.record_check(passed, check.healthy, check.unhealthy, now_ms());
        wait = check
            .interval
            .mul_f64(1.0 + JITTER * (2.0 * unit_random() - 1.0));
    }
}

/// One check: a status in `expect` within `timeout`.
async fn probe(endpoint: &Endpoint, check: &HealthCheck) -> bool {
    let host = endpoint.host.as_deref();
    match request(
        &endpoint.pool,
        endpoint.addr,
        host,
        &endpoint.host_header,
        check,
    )
    .await
    {
        Ok(status) if check.expects(status) => true,
        Ok(status) => {
            tracing::debug!(endpoint = %endpoint.addr, status, "health check failed");
            false
        }
        Err(err) => {
            tracing::debug!(endpoint = %endpoint.addr, error = %err, "health check failed");
            false
        }
    }
}

/// Sends `GET check.path` to `addr` (found under the host name `host`, if it was) on a
/// fresh connection made by `pool` as requests' are; the status, or why there is none
/// within `check.timeout`.
pub async fn request(
    pool: &Pool,
    addr: SocketAddr,
    host: Option<&str>,
    host_header: &HeaderValue,
    check: &HealthCheck,
) -> Result<u16, String> {
    let outcome = tokio::time::timeout(check.timeout, async {
        let stream = pool
            .connect(addr, host)
            .await
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let status = match pool.protocol() {
            Protocol::Http1 => {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                        .await
                        .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                let request = Request::get(check.path.as_str())
                    .header(HOST, host_header.clone())
                    .header(CONNECTION, HeaderValue::from_static("close"))
                    .header(USER_AGENT, HeaderValue::from_static("baton-health-check"))
                    .body(Empty::new())
                    .map_err(std::io::Error::other)?;
                sender
                    .send_request(request)
                    .await
                    .map_err(std::io::Error::other)?
                    .status()
            }
            Protocol::H2 | Protocol::H2c => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                        TokioExecutor::new(),
                        TokioIo::new(stream),
                    )
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                let scheme = if pool.is_tls() { "https" } else { "http" };
                let uri = format!(
                    "{scheme}://{}{}",
                    host_header.to_str().unwrap_or("localhost"),
                    check.path
                );
                let request = Request::get(uri)
                    .header(USER_AGENT, HeaderValue::from_static("baton-health-check"))
                    .body(Empty::new())
                    .map_err(std::io::Error::other)?;
                sender
                    .send_request(request)
                    .await
                    .map_err(std::io::Error::other)?
                    .status()
            }
        };
        Ok::<_, std::io::Error>(status.as_u16())
    })
    .await;
    match outcome {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}
