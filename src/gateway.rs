//! The running gateway: its shared state, and starting and stopping it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, StoreConfig};
use crate::idempotency::redis::RedisStore;
use crate::idempotency::store::{MemoryStore, Store};
use crate::idempotency::Keys;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::Observer;
use crate::retry::RetryBudget;
use crate::upstream::{dns, health, Upstream};
use crate::{admin, listener};

/// How long shutdown waits for in-flight requests (SPEC §12).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often expired idle upstream connections are closed and ended ejections noticed.
/// Requests notice both anyway; this keeps sockets from lingering and the status current
/// once traffic stops.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The listen backlog. The standard library's default of 128 drops connections when many
/// clients connect at once; this is what nginx and HAProxy use on Linux by default.
const LISTEN_BACKLOG: u32 = 4096;

/// State shared by every connection: the config and what baton learns while it runs.
pub struct Gateway {
    pub config: Config,
    /// Counters per route, in the order of `config.routes`.
    pub route_stats: Vec<RouteStats>,
    /// Upstreams in the order of `config.upstreams`.
    pub upstreams: Vec<Upstream>,
    pub observer: Observer,
    /// Idempotency keys of every route.
    pub keys: Keys,
    /// Set once every listener is bound (`/readyz`).
    pub ready: AtomicBool,
}

pub struct RouteStats {
    /// The route's name, as a metrics label.
    pub label: Arc<str>,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub retry_budget: RetryBudget,
}

impl Gateway {
    pub fn new(config: Config) -> io::Result<Gateway> {
        let access_log = AccessLog::open(&config.log.access)?;
        let store = match &config.store {
            StoreConfig::Memory => Store::Memory(MemoryStore::default()),
            StoreConfig::Redis { url } => Store::Redis(
                RedisStore::new(url)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?,
            ),
        };
        Ok(Gateway {
            route_stats: config
                .routes
                .iter()
                .map(|route| RouteStats {
                    label: Arc::from(route.name.as_str()),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    retry_budget: RetryBudget::default(),
                })
                .collect(),
            upstreams: config.upstreams.iter().map(Upstream::new).collect(),
            observer: Observer {
                metrics: Metrics::default(),
                access_log,
            },
            keys: Keys::new(store),
            ready: AtomicBool::new(false),
            config,
        })
    }
}

/// A started gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// The bound address of each listener, in config order (useful with port 0).
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
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

/// Binds every listener and the admin server, then serves until [`Running::shutdown`].
pub async fn start(config: Config) -> io::Result<Running> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = bind(listener.listen).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "listener {:?} cannot listen on {}: {err}",
                    listener.name, listener.listen
                ),
            )
        })?;
        bound.push(socket);
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
    let listeners = bound
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()?;

    let gateway = Arc::new(Gateway::new(config)?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(admin::serve(admin_socket, gateway.clone(), stopped.clone()));
    let named: Vec<usize> = (0..gateway.upstreams.len())
        .filter(|&i| !gateway.config.upstreams[i].names.is_empty())
        .collect();
    if !named.is_empty() {
        let resolver = Arc::new(dns::resolver(&gateway.config.dns).map_err(|err| {
            io::Error::new(err.kind(), format!("cannot set up DNS resolution: {err}"))
        })?);
        for index in named {
            let mut names = dns::Names::new(&gateway.config.upstreams[index]);
            // Resolve before serving, so the first requests have somewhere to go.
            dns::start(&gateway, index, &resolver, &mut names).await;
            tasks.spawn(dns::run(
                gateway.clone(),
                index,
                resolver.clone(),
                names,
                stopped.clone(),
            ));
        }
    }
    for (upstream, config) in gateway.upstreams.iter().zip(&gateway.config.upstreams) {
        if let Some(check) = &config.health {
            for endpoint in &upstream.members().endpoints {
                tasks.spawn(health::run(
                    endpoint.clone(),
                    check.clone(),
                    stopped.clone(),
                ));
            }
        }
    }
    tasks.spawn(upkeep(gateway.clone(), stopped.clone()));
    // Names are resolved by now; connections that arrived meanwhile waited in the backlog.
    for (index, socket) in bound.into_iter().enumerate() {
        tasks.spawn(listener::serve(
            socket,
            index,
            gateway.clone(),
            stopped.clone(),
        ));
    }
    gateway.ready.store(true, Ordering::Release);
    for (listener, addr) in gateway.config.listeners.iter().zip(&listeners) {
        tracing::info!(listener = %listener.name, %addr, "listening");
    }
    tracing::info!(addr = %admin, "admin server listening");
    Ok(Running {
        gateway,
        listeners,
        admin,
        stop,
        tasks,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]), and
    /// flushes the access log.
    pub async fn shutdown(mut self) {
        self.gateway.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let gateway = self.gateway.clone();
        // Closing joins the writer thread; keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || gateway.observer.access_log.close()).await;
    }
}

/// Closes expired idle upstream connections and ends ran-out ejections, until shutdown.
async fn upkeep(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop_requested(&mut stopped) => return,
        }
        gateway.keys.purge();
        for upstream in &gateway.upstreams {
            let now = crate::upstream::endpoint::now_ms();
            for endpoint in &upstream.members().endpoints {
                endpoint.pool.purge();
                endpoint.is_ejected(now);
            }
        }
    }
}

/// Resolves once shutdown was requested (or the gateway handle is gone).
pub async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
