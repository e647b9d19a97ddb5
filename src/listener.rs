//! The shell at the edge: accept client connections, serve each with [`server::serve`]
//! (HTTP/1.1, or h2c with prior knowledge), and drain them gracefully at shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Listener;
use crate::forward;
use crate::gateway::{stop_requested, Gateway, SHUTDOWN_GRACE};
use crate::guard;
use crate::observe::metrics::{HandshakeLabels, ListenerLabel, Metrics};
use crate::observe::Exchange;
use crate::respond::{self, ErrorReply};
use crate::server::{self, Limits, Refusal, Refuse, Setup};
use crate::tls::{self, Handshake, Sessions};
use crate::transport::Stream;
use crate::upstream::h1;

/// Pause after a failed accept (out of file descriptors, typically) before trying again,
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What a request handler knows about the connection it came on.
pub struct ClientConn {
    pub peer: SocketAddr,
    /// The peer's address as a header value, for `X-Forwarded-For`.
    pub peer_ip: http::HeaderValue,
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    pub listener: Arc<ListenerState>,
    /// The upstream's connection after it accepted an upgrade, for the tunnel that follows
    /// the `101` to the client.
    upgraded: Mutex<Option<h1::Conn>>,
    /// The socket of an HTTP/1.1 connection, to see the client go away while its request
    /// waits (an HTTP/2 stream's handler is dropped when its client goes).
    socket: OnceLock<Weak<Stream>>,
}

impl ClientConn {
    /// Remembers the connection's socket (HTTP/1.1), for [`ClientConn::closed`].
    pub fn set_socket(&self, socket: &Arc<Stream>) {
        let _ = self.socket.set(Arc::downgrade(socket));
    }

    /// Resolves when the client closed its connection; never, when that cannot be seen (an
    /// HTTP/2 connection, or bytes of a next request arrived). Only for a request whose
    /// body was read in full: nothing else may be reading the socket.
    pub async fn closed(&self) {
        let Some(socket) = self.socket.get().and_then(Weak::upgrade) else {
            return std::future::pending().await;
        };
        if !std::future::poll_fn(|cx| socket.poll_closed(cx)).await {
            std::future::pending::<()>().await;
        }
    }

    pub fn set_upgraded(&self, upstream: h1::Conn) {
        *self.upgraded.lock().unwrap_or_else(PoisonError::into_inner) = Some(upstream);
    }

    pub fn take_upgraded(&self) -> Option<h1::Conn> {
        self.upgraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// A listener while it runs; a reload that keeps it swaps in its new settings and
/// certificates.
pub struct ListenerState {
    pub name: String,
    pub config: ArcSwap<Listener>,
    /// The handshake for the current certificates, on a listener that serves HTTPS.
    tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// Session resumption state, kept across reloads.
    sessions: Sessions,
    open: Gauge,
}

impl ListenerState {
    pub fn new(config: Listener, metrics: &Metrics) -> std::io::Result<ListenerState> {
        let open = metrics
            .connections_open
            .get_or_create(&ListenerLabel {
                listener: config.name.clone(),
            })
            .clone();
        let sessions = Sessions::new()?;
        let tls = match &config.tls {
            Some(certificates) => Some(Arc::new(sessions.acceptor(certificates)?)),
            None => None,
        };
        Ok(ListenerState {
            name: config.name.clone(),
            config: ArcSwap::from_pointee(config),
            tls: ArcSwapOption::new(tls),
            sessions,
            open,
        })
    }

    /// Swaps in a reloaded config: connections accepted from now on take its settings
    /// and certificates; open ones go on as they are.
    pub fn update(&self, config: Listener) {
        let tls = match &config.tls {
            None => None,
            Some(certificates) => match self.sessions.acceptor(certificates) {
                Ok(acceptor) => Some(Arc::new(acceptor)),
                Err(err) => {
                    tracing::error!(listener = %self.name, error = %err, "the reloaded certificates cannot be used; the old ones stay");
                    return;
                }
            },
        };
        self.config.store(Arc::new(config));
        self.tls.store(tls);
    }
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
    // Every connection task holds a sender; when all are gone, `recv` returns `None`.
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
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
        let config = state.config.load();
        let acceptor = state.tls.load_full();
        let setup = Setup {
            gateway: gateway.clone(),
            conn: Arc::new(ClientConn {
                peer,
                peer_ip: forward::ip_header(peer.ip()),
                tls: acceptor.is_some(),
                listener: state.clone(),
                upgraded: Mutex::new(None),
                socket: OnceLock::new(),
            }),
            limits: Limits {
                max_head_bytes: config.max_header_bytes,
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                max_concurrent_streams: config.max_concurrent_streams,
            },
            refuse: refuser(gateway.clone(), peer),
            stopped: stopped.clone(),
        };
        let open = state.open.clone();
        let open_tx = open_tx.clone();
        open.inc();
        let panics = gateway.observer.metrics.panics.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let serving = async move {
                let stream = match acceptor {
                    None => Stream::Tcp(stream),
                    Some(acceptor) => {
                        let timeout = setup.limits.header_read_timeout;
                        // Boxed: a handshake's state is a few kilobytes, which a
                        // task would otherwise keep for as long as its connection is open.
                        let handshake = handshake(&state, &setup, stream, &acceptor, timeout);
                        let Some(stream) = Box::pin(handshake).await else {
                            return;
                        };
                        stream
                    }
                };
                server::serve(stream, setup).await;
            };
            // A panic outside a request's handling (writing an answer, streaming a body)
            // ends only this connection, which is how a client learns an answer is cut off.
            if let Err(panic) = guard::catch(serving).await {
                panics.inc();
                tracing::error!(%peer, panic, "panic while serving a connection; it was closed");
            }
            open.dec();
            drop(open_tx);
        });
    }
    drop(socket);
    drop(open_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(listener = %state.name, "connections still open after the shutdown grace period; closing them");
    }
}

/// The TLS handshake of a new connection, counted in `baton_tls_handshakes_total`.
async fn handshake(
    state: &ListenerState,
    setup: &Setup,
    tcp: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    timeout: Duration,
) -> Option<Stream> {
    let handshake = tls::accept(tcp, acceptor, timeout).await;
    setup
        .gateway
        .observer
        .metrics
        .tls_handshakes
        .get_or_create(&HandshakeLabels {
            listener: state.name.clone(),
            result: handshake.result(),
        })
        .inc();
    match handshake {
        Handshake::Done { stream, .. } => Some(stream),
        Handshake::Failed(err) => {
            tracing::debug!(listener = %state.name, peer = %setup.conn.peer, error = %err, "TLS handshake failed");
            None
        }
        Handshake::TimedOut | Handshake::Plaintext => None,
    }
}

/// Answers a head the server refused, through the same error responses, metrics and
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
                grpc: false,
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
