//! Starting the gateway — binding its listeners and admin server, resolving and checking
//! its upstreams — and stopping it, with the background upkeep in between.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{self, Config};
use crate::listener::ListenerState;
use crate::upstream::{dns, health};
use crate::{admin, listener};

use super::{Gateway, Snapshot};

/// How long shutdown waits for in-flight requests (SPEC §12).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often expired idle upstream connections are closed and ended ejections noticed.
/// Requests notice both anyway; this keeps sockets from lingering and the status current
/// once traffic stops.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The listen backlog. The standard library's default of 128 drops connections when many
/// clients connect at once; this is what nginx and HAProxy use on Linux by default.
const LISTEN_BACKLOG: u32 = 4096;

/// Listeners and background tasks, changed by reloads and stopped at shutdown.
pub(super) struct Control {
    pub(super) listeners: Vec<RunningListener>,
    pub(super) tasks: JoinSet<()>,
    /// Tells the admin server and upkeep to stop.
    pub(super) stop: watch::Sender<bool>,
}

pub(super) struct RunningListener {
    pub(super) state: Arc<ListenerState>,
    /// As configured (port 0 stays 0), to tell whether a reload keeps it.
    pub(super) listen: SocketAddr,
    pub(super) addr: SocketAddr,
    pub(super) retire: watch::Sender<bool>,
}

/// A started gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// The bound address of each listener, in config order (useful with port 0).
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

/// Binds a TCP listener with an explicit backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub(super) fn bind_listener(listener: &config::Listener) -> io::Result<TcpListener> {
    bind(listener.listen).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "listener {:?} cannot listen on {}: {err}",
                listener.name, listener.listen
            ),
        )
    })
}

pub(super) fn spawn_listener(
    gateway: &Arc<Gateway>,
    config: config::Listener,
    socket: TcpListener,
    tasks: &mut JoinSet<()>,
) -> io::Result<RunningListener> {
    let addr = socket.local_addr()?;
    let listen = config.listen;
    let state = Arc::new(ListenerState::new(config, &gateway.observer.metrics)?);
    let retire = watch::Sender::new(false);
    tasks.spawn(listener::serve(
        socket,
        state.clone(),
        gateway.clone(),
        retire.subscribe(),
    ));
    tracing::info!(listener = %state.name, %addr, "listening");
    Ok(RunningListener {
        state,
        listen,
        addr,
        retire,
    })
}

/// Resolves the host names of upstreams `indices` of `snapshot` (so that their first
/// requests have somewhere to go), then starts their lookups and health checks.
pub(super) async fn start_upstreams(
    snapshot: &Snapshot,
    indices: &[usize],
    tasks: &mut JoinSet<()>,
) -> Result<(), Vec<String>> {
    let named = indices
        .iter()
        .any(|&i| !snapshot.config.upstreams[i].names.is_empty());
    let resolver = if named {
        Some(Arc::new(dns::resolver(&snapshot.config.dns).map_err(
            |err| vec![format!("cannot set up DNS resolution: {err}")],
        )?))
    } else {
        None
    };
    for &index in indices {
        let upstream = &snapshot.upstreams[index];
        let config = &snapshot.config.upstreams[index];
        if let (Some(resolver), false) = (&resolver, config.names.is_empty()) {
            let mut names = dns::Names::new(config, upstream);
            dns::start(upstream, config, &snapshot.config.dns, resolver, &mut names).await;
            tasks.spawn(dns::run(
                upstream.clone(),
                config.clone(),
                snapshot.config.dns.clone(),
                resolver.clone(),
                names,
            ));
        }
        if let Some(check) = &config.health {
            for endpoint in &upstream.members().endpoints {
                tasks.spawn(health::run(
                    endpoint.clone(),
                    check.clone(),
                    upstream.retired(),
                ));
            }
        }
    }
    Ok(())
}

/// Binds every listener and the admin server, then serves until [`Running::shutdown`].
pub async fn start(config: Config) -> io::Result<Running> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        bound.push((listener.clone(), bind_listener(listener)?));
    }
    let admin_socket = bind(config.admin.listen).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "admin server cannot listen on {}: {err}",
                config.admin.listen
            ),
        )
    })?;
    let admin = admin_socket.local_addr()?;

    let gateway = Arc::new(Gateway::new(config)?);
    let mut control = gateway.control.lock().await;
    let stopped = control.stop.subscribe();
    control
        .tasks
        .spawn(admin::serve(admin_socket, gateway.clone(), stopped.clone()));
    let snapshot = gateway.current();
    let all: Vec<usize> = (0..snapshot.upstreams.len()).collect();
    start_upstreams(&snapshot, &all, &mut control.tasks)
        .await
        .map_err(|errors| io::Error::other(errors.join("; ")))?;
    control.tasks.spawn(upkeep(gateway.clone(), stopped));
    // Names are resolved by now; connections that arrived meanwhile waited in the backlog.
    let mut listeners = Vec::new();
    for (config, socket) in bound {
        let running = spawn_listener(&gateway, config, socket, &mut control.tasks)?;
        listeners.push(running.addr);
        control.listeners.push(running);
    }
    gateway.set_listener_addrs(&control);
    drop(control);
    gateway.ready.store(true, Ordering::Release);
    tracing::info!(addr = %admin, "admin server listening");
    Ok(Running {
        gateway,
        listeners,
        admin,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]), and
    /// flushes the access log.
    pub async fn shutdown(self) {
        let gateway = self.gateway;
        gateway.ready.store(false, Ordering::Release);
        let mut control = gateway.control.lock().await;
        control.stop.send_replace(true);
        for running in &control.listeners {
            running.retire.send_replace(true);
        }
        for upstream in &gateway.current().upstreams {
            upstream.retire();
        }
        while control.tasks.join_next().await.is_some() {}
        drop(control);
        let closing = gateway.clone();
        // Closing joins the writer thread; keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || closing.observer.access_log.close()).await;
    }
}

/// Closes expired idle upstream connections, ends ran-out ejections and takes each
/// upstream's figures into its history, until shutdown.
async fn upkeep(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop_requested(&mut stopped) => return,
        }
        gateway.keys.purge();
        let now = crate::upstream::endpoint::now_ms();
        for upstream in &gateway.current().upstreams {
            for endpoint in &upstream.members().endpoints {
                endpoint.pool.purge();
                endpoint.is_ejected(now);
            }
            upstream.sample_history(now);
        }
    }
}

/// Resolves once shutdown was requested (or the gateway handle is gone).
pub async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
