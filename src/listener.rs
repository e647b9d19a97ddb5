//! The shell at the edge: accept client connections, serve HTTP/1.1 and h2c (prior
//! knowledge) on them, and drain them gracefully at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Listener;
use crate::gateway::{stop_requested, Gateway, SHUTDOWN_GRACE};
use crate::observe::metrics::ListenerLabel;
use crate::proxy;

/// Pause after a failed accept (out of file descriptors, typically) before trying again,
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What a request handler knows about the connection it came on.
pub struct ClientConn {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerState>,
}

pub struct ListenerState {
    pub index: usize,
    open: Gauge,
}

impl ListenerState {
    pub fn config<'a>(&self, gateway: &'a Gateway) -> &'a Listener {
        &gateway.config.listeners[self.index]
    }
}

fn connection_builder(config: &Listener) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves listener number `index` of the config until `stopped` turns true, then waits up
/// to [`SHUTDOWN_GRACE`] for its connections to finish their requests.
pub async fn serve(
    socket: TcpListener,
    index: usize,
    gateway: Arc<Gateway>,
    mut stopped: watch::Receiver<bool>,
) {
    let config = &gateway.config.listeners[index];
    let state = Arc::new(ListenerState {
        index,
        open: gateway
            .observer
            .metrics
            .connections_open
            .get_or_create(&ListenerLabel {
                listener: config.name.clone(),
            })
            .clone(),
    });
    let builder = connection_builder(config);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listener = %config.name, error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ClientConn {
            peer,
            listener: state.clone(),
        });
        let handler_gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = handler_gateway.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(proxy::handle(gateway, &conn, request).await) }
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
        tracing::warn!(listener = %config.name, "connections still open after the shutdown grace period; closing them");
    }
}
