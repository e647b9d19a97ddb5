//! The shell at the edge: accept client connections, serve HTTP/1.1 and h2c (prior
//! knowledge) on them, and drain them gracefully at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Listener;
use crate::forward;
use crate::gate::{ConnState, Gate, InFlight, Limits, Refusal, Refuse};
use crate::gateway::{stop_requested, Gateway, SHUTDOWN_GRACE};
use crate::observe::metrics::{ListenerLabel, Metrics};
use crate::observe::Exchange;
use crate::proxy;
use crate::respond::{self, ErrorReply};

/// hyper's smallest allowed read buffer.
const HYPER_MIN_BUF: usize = 8 * 1024;

/// Pause after a failed accept (out of file descriptors, typically) before trying again,
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What a request handler knows about the connection it came on.
pub struct ClientConn {
    pub peer: SocketAddr,
    /// The peer's address as a header value, for `X-Forwarded-For`.
    pub peer_ip: http::HeaderValue,
    pub listener: Arc<ListenerState>,
    /// Shared with the connection's [`Gate`].
    pub state: Arc<ConnState>,
}

/// A listener while it runs; a reload that keeps it swaps in its new settings.
pub struct ListenerState {
    pub name: String,
    pub config: ArcSwap<Listener>,
    open: Gauge,
}

impl ListenerState {
    pub fn new(config: Listener, metrics: &Metrics) -> ListenerState {
        let open = metrics
            .connections_open
            .get_or_create(&ListenerLabel {
                listener: config.name.clone(),
            })
            .clone();
        ListenerState {
            name: config.name.clone(),
            config: ArcSwap::from_pointee(config),
            open,
        }
    }
}

fn connection_builder(config: &Listener) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The gate enforces the head timeout and size, with a proper answer; hyper's own
        // limits stay out of its way. The gate's header count limit is hyper's default
        // (`gate::MAX_HEADERS`): setting it explicitly would make hyper allocate and fill a
        // header index per request instead of using its array on the stack.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes.saturating_mul(2).max(HYPER_MIN_BUF));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves a listener until `stopped` turns true (shutdown, or a reload removed it), then
/// waits up to [`SHUTDOWN_GRACE`] for its connections to finish their requests. Each
/// connection takes the listener's settings as they are when it is accepted.
pub async fn serve(
    socket: TcpListener,
    state: Arc<ListenerState>,
    gateway: Arc<Gateway>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = connection_builder(&state.config.load());
    let mut built_for = state.config.load_full();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listener = %state.name, error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let config = state.config.load_full();
        if !Arc::ptr_eq(&config, &built_for) {
            builder = connection_builder(&config);
            built_for = config.clone();
        }
        let conn = Arc::new(ClientConn {
            peer,
            peer_ip: forward::ip_header(peer.ip()),
            listener: state.clone(),
            state: Arc::default(),
        });
        let stream = Gate::new(
            stream,
            Limits {
                max_head_bytes: config.max_header_bytes,
                header_read_timeout: config.header_read_timeout,
            },
            conn.state.clone(),
            refuser(gateway.clone(), peer),
        );
        let handler_gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = handler_gateway.clone();
            let conn = conn.clone();
            // Counted now, as hyper hands the request over, not when the handler first
            // runs: the gate must not end the connection in between.
            let in_flight = InFlight::enter(&conn.state);
            async move { Ok::<_, Infallible>(proxy::handle(gateway, &conn, request, in_flight).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = state.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
            open.dec();
        });
    }
    drop(socket);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %state.name, "connections still open after the shutdown grace period; closing them");
    }
}

/// Answers a head the [`Gate`] refused, through the same error responses, metrics and
/// access log as every other generated error.
fn refuser(gateway: Arc<Gateway>, peer: SocketAddr) -> Refuse {
    Arc::new(move |refusal: Refusal| {
        let cause = refusal.cause.unwrap_or(crate::cause::Cause::BadRequest);
        let method = refusal
            .method
            .as_deref()
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or_default();
        let uri = refusal
            .path
            .as_deref()
            .and_then(|p| p.parse::<http::Uri>().ok())
            .unwrap_or_default();
        let request_id = refusal
            .request_id
            .filter(forward::valid_request_id)
            .unwrap_or_else(forward::new_request_id);
        let mut exchange = Exchange::new(
            gateway.clone(),
            forward::ip_header(peer.ip()),
            method.clone(),
            uri,
            request_id,
        );
        let response = respond::error_response(
            &ErrorReply {
                cause,
                delivery: crate::cause::Delivery::None,
                request_id: exchange.request_id.to_str().unwrap_or(""),
                method: &method,
                accept: refusal.accept.as_ref(),
                retry_after: None,
                close: true,
            },
            &gateway.current().config.error_pages,
        );
        let bytes = respond::to_http1(&response);
        exchange.status = response.status().as_u16();
        exchange.cause = Some(cause);
        let body_len = response.body().full_bytes().map_or(0, |b| b.len() as u64);
        exchange.finish(body_len, None);
        bytes
    })
}
