//! Limits that protect upstreams: admission (`max_inflight` and its queue) and the
//! `"auto"` controller that finds the limit (SPEC §9).

pub mod adaptive;
pub mod admission;

use std::time::Duration;

use tokio::time::Instant;

use crate::cause::Cause;
use crate::gateway::Gateway;
use crate::listener::ClientConn;
use crate::observe::metrics::UpstreamLabel;
use crate::observe::Exchange;
use crate::proxy::ProxyError;
use crate::upstream::endpoint::ms_at;
use crate::upstream::Upstream;

/// The `Retry-After` of an `upstream-overloaded` answer: overload is measured in queue
/// timeouts, so a client may come back soon.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The admission stage: when `upstream` has `max_inflight`, waits for a place (the
/// exchange holds it until it ends) or refuses with 503 `upstream-overloaded`, nothing
/// sent. `deadline` is the request's total timeout. A client seen to go away while it
/// waits (`watch`: its request body was read whole) leaves the queue.
pub(crate) async fn admit(
    gateway: &Gateway,
    upstream: &Upstream,
    deadline: Option<Instant>,
    conn: &ClientConn,
    watch: bool,
    exchange: &mut Exchange,
) -> Result<(), ProxyError> {
    let Some(admission) = &upstream.admission else {
        return Ok(());
    };
    let arrived = Instant::now();
    let admitted = tokio::select! {
        admitted = admission.admit(deadline) => admitted,
        () = conn.closed(), if watch => {
            exchange.queue_wait = Some(arrived.elapsed());
            return Err(ProxyError::closing(Cause::ClientClosed));
        }
    };
    let now = Instant::now();
    let waited = now.saturating_duration_since(arrived);
    exchange.queue_wait = Some(waited);
    admission
        .wait_histogram
        .get(&gateway.observer.metrics.queue_wait, || UpstreamLabel {
            upstream: upstream.name.clone(),
        })
        .observe(waited.as_secs_f64());
    let refused = admitted.as_ref().err().map(|_| Cause::UpstreamOverloaded);
    admission.recent_waits.record(ms_at(now), waited, refused);
    match admitted {
        Ok(permit) => {
            exchange.permit = Some(permit);
            Ok(())
        }
        Err(_) => Err(ProxyError {
            retry_after: Some(OVERLOADED_RETRY_AFTER),
            ..ProxyError::from(Cause::UpstreamOverloaded)
        }),
    }
}
