//! The background refresh of a stale cached response, which goes through the admission
//! and upstream stages with no client waiting.

use std::sync::Arc;
use std::time::Duration;

use crate::body::{Keep, ResponseBody};
use crate::cache::{After, Pending};
use crate::failover::{try_endpoints, Outgoing};
use crate::forward;
use crate::gateway::{Gateway, Snapshot};
use crate::observe::Exchange;

/// The longest a request waits for another's fetch of the same URI before it goes
/// upstream itself (bounded by the route's `response_header` timeout).
pub(super) const FILL_PATIENCE: Duration = Duration::from_secs(30);

/// Refreshes a stale stored response in the background (`stale-while-revalidate`): the
/// request goes upstream as any other, and its answer is stored, read to the end with no
/// client waiting for it. It is logged as a request of its own, `cache` `refresh`.
pub(super) async fn refresh_in_background(
    gateway: Arc<Gateway>,
    snapshot: Arc<Snapshot>,
    route_index: usize,
    mut outgoing: Outgoing,
    pending: Box<Pending>,
    mut exchange: Exchange,
) {
    let route = &snapshot.config.routes[route_index];
    let upstream = &snapshot.upstreams[route.upstream];
    let deadline = route.timeouts.total.map(|total| exchange.started + total);
    let sent = try_endpoints(
        &gateway,
        upstream,
        &snapshot.routes[route_index],
        route,
        None,
        &mut outgoing,
        &mut exchange,
    )
    .await;
    let success = match sent {
        Ok(success) => success,
        Err(error) => {
            exchange.status = error.cause.status().as_u16();
            exchange.cause = Some(error.cause);
            exchange.delivery = exchange.delivery.max(error.delivery);
            exchange.finish(0, None);
            return;
        }
    };
    let mut response = success.response;
    forward::prepare_response_headers(response.headers_mut(), false, &exchange.request_id);
    exchange.status = response.status().as_u16();
    let mut lead = None;
    if let Some(config) = &route.cache {
        let length = http_body::Body::size_hint(response.body()).exact();
        let (after, note) =
            pending.after_response(config, response.status(), response.headers(), length);
        exchange.cache = Some(note);
        if let After::Forward(filling) = after {
            lead = filling;
        }
    }
    let mut body = ResponseBody::upstream(
        response.into_body(),
        route.timeouts.idle,
        deadline,
        success.lease,
        exchange,
        lead.map(Keep::Cache),
    );
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if frame.is_err() {
            break;
        }
    }
}
