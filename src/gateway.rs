//! The running gateway: its shared state, starting and stopping it, and reloading its config.
//!
//! Everything built from the config file — routes, upstreams and their endpoints — lives in
//! a [`Snapshot`]. A request takes the current snapshot once and works on it to the end; a
//! reload builds the next snapshot beside it (taking over the endpoints, health and
//! counters that persist), binds the listeners it adds, and swaps it in whole.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{self, Config, StoreConfig};
use crate::idempotency::redis::RedisStore;
use crate::idempotency::store::{MemoryStore, Store};
use crate::idempotency::Keys;
use crate::limit::rate::{Buckets, Rates, SharedBuckets};
use crate::listener::ListenerState;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Cached, CodeCounters, Metrics, ResultLabel};
use crate::observe::window::Window;
use crate::observe::Observer;
use crate::retry::RetryBudget;
use crate::route::RouteTable;
use crate::store::redis::Redis;
use crate::upstream::{dns, health, Upstream};
use crate::{admin, listener};

/// How long shutdown waits for in-flight requests (SPEC §12).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often expired idle upstream connections are closed and ended ejections noticed.
/// Requests notice both anyway; this keeps sockets from lingering and the status current
/// once traffic stops.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The memory store's `max_bytes` is shared: rate-limit keys take this fraction (an eighth:
/// 8 MiB of the default 64 MiB, about 200,000 keys), idempotency records the rest.
const RATE_SHARE: usize = 8;
/// The listen backlog. The standard library's default of 128 drops connections when many
/// clients connect at once; this is what nginx and HAProxy use on Linux by default.
const LISTEN_BACKLOG: u32 = 4096;

/// State shared by every connection. What the config file decides is in [`Snapshot`];
/// what outlives a reload (metrics, the access log, idempotency keys) is here.
pub struct Gateway {
    current: ArcSwap<Snapshot>,
    pub observer: Observer,
    /// Idempotency keys of every route.
    pub keys: Keys,
    /// Rate-limit state of every route.
    pub rates: Rates,
    /// Set once every listener is bound (`/readyz`).
    pub ready: AtomicBool,
    /// The outcome of the last reload, for the status page.
    pub last_reload: Mutex<Option<ReloadRecord>>,
    /// Each listener's name and bound address.
    bound: Mutex<Vec<(String, SocketAddr)>>,
    /// Listeners and background tasks; held by a reload from start to end, so reloads
    /// run one at a time.
    control: tokio::sync::Mutex<Control>,
}

/// The config and everything built from it.
pub struct Snapshot {
    pub config: Config,
    /// In the order of `config.routes`.
    pub routes: Vec<Arc<RouteState>>,
    /// `config.routes` indexed for [`RouteTable::select`].
    pub route_table: RouteTable,
    /// In the order of `config.upstreams`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Positions in `config.routes` and `config.upstreams` by name.
    route_index: HashMap<Box<str>, usize>,
    upstream_index: HashMap<Box<str>, usize>,
}

/// What baton keeps about a route; a reload keeps it for a route of the same name.
pub struct RouteState {
    /// The route's name, as a metrics label.
    pub label: Arc<str>,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub retry_budget: RetryBudget,
    /// Requests of the last minute, for the status pages.
    pub recent: Window,
    /// The route's `requests` counters and `request_duration_seconds` histogram.
    pub codes: CodeCounters,
    pub duration: Cached<Histogram>,
    /// Maintenance as set by the admin API: [`FOLLOW_CONFIG`], [`ON`] or [`OFF`].
    maintenance: AtomicU8,
}

const FOLLOW_CONFIG: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

impl RouteState {
    fn new(name: &str) -> RouteState {
        RouteState {
            label: Arc::from(name),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retry_budget: RetryBudget::default(),
            recent: Window::default(),
            codes: CodeCounters::default(),
            duration: Cached::default(),
            maintenance: AtomicU8::new(FOLLOW_CONFIG),
        }
    }

    /// Whether the route is in maintenance: as the admin API set it, else as configured.
    pub fn maintenance(&self, configured: bool) -> bool {
        match self.maintenance.load(Ordering::Relaxed) {
            ON => true,
            OFF => false,
            _ => configured,
        }
    }

    /// Sets maintenance from the admin API; it holds until a reload changes the route's
    /// `maintenance` in the file.
    pub fn set_maintenance(&self, on: bool) {
        self.maintenance
            .store(if on { ON } else { OFF }, Ordering::Relaxed);
    }

    /// Whether the admin API decides, not the file.
    pub fn maintenance_overridden(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed) != FOLLOW_CONFIG
    }
}

impl Snapshot {
    /// Builds the snapshot for `config`, taking over from `old` the state of routes and
    /// upstreams that persist.
    fn new(config: Config, old: Option<&Snapshot>) -> Snapshot {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let previous = old.and_then(|old| {
                    let &index = old.route_index.get(route.name.as_str())?;
                    Some((&old.config.routes[index], &old.routes[index]))
                });
                match previous {
                    Some((old_route, state)) => {
                        // A changed `maintenance` in the file is the newer decision.
                        if old_route.maintenance != route.maintenance {
                            state.maintenance.store(FOLLOW_CONFIG, Ordering::Relaxed);
                        }
                        state.clone()
                    }
                    None => Arc::new(RouteState::new(&route.name)),
                }
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| {
                let previous = old.and_then(|old| {
                    let &index = old.upstream_index.get(upstream.name.as_str())?;
                    Some((&old.upstreams[index], &old.config.upstreams[index]))
                });
                match previous {
                    Some((same, old_config))
                        if old_config == upstream
                            && (upstream.names.is_empty()
                                || old.is_some_and(|o| o.config.dns == config.dns)) =>
                    {
                        same.clone()
                    }
                    Some((old_upstream, old_config)) => {
                        Arc::new(Upstream::after(upstream, Some((old_upstream, old_config))))
                    }
                    None => Arc::new(Upstream::new(upstream)),
                }
            })
            .collect();
        Snapshot {
            route_table: RouteTable::new(&config.routes),
            route_index: index_by_name(config.routes.iter().map(|r| r.name.as_str())),
            upstream_index: index_by_name(config.upstreams.iter().map(|u| u.name.as_str())),
            config,
            routes,
            upstreams,
        }
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(*self.upstream_index.get(name)?)
    }
}

/// Each name's position: what a reload finds the state to carry over by, in one lookup
/// per route or upstream however many there are.
fn index_by_name<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<Box<str>, usize> {
    names
        .enumerate()
        .map(|(index, name)| (Box::from(name), index))
        .collect()
}

/// What the last reload did, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub ok: bool,
    /// What changed, or why the file was refused.
    pub messages: Vec<String>,
}

/// Listeners and background tasks, changed by reloads and stopped at shutdown.
struct Control {
    listeners: Vec<RunningListener>,
    tasks: JoinSet<()>,
    /// Tells the admin server and upkeep to stop.
    stop: watch::Sender<bool>,
}

struct RunningListener {
    state: Arc<ListenerState>,
    /// As configured (port 0 stays 0), to tell whether a reload keeps it.
    listen: SocketAddr,
    addr: SocketAddr,
    retire: watch::Sender<bool>,
}

impl Gateway {
    fn new(config: Config) -> io::Result<Gateway> {
        let access_log = AccessLog::open(&config.log.access)?;
        let metrics = Metrics::default();
        let (store, rates) = match &config.store {
            StoreConfig::Memory { max_bytes } => {
                let max_bytes = usize::try_from(*max_bytes).unwrap_or(usize::MAX);
                let rate_bytes = max_bytes / RATE_SHARE;
                let store = Store::Memory(MemoryStore::new(
                    max_bytes - rate_bytes,
                    metrics.store_evictions.clone(),
                ));
                let buckets = Buckets::new(rate_bytes, metrics.store_evictions.clone());
                (store, Rates::Local(buckets))
            }
            StoreConfig::Redis { url } => {
                let redis = Arc::new(
                    Redis::new(url, metrics.store_errors.clone())
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?,
                );
                (
                    Store::Redis(RedisStore::new(redis.clone())),
                    Rates::Shared(SharedBuckets::new(redis)),
                )
            }
        };
        Ok(Gateway {
            current: ArcSwap::from_pointee(Snapshot::new(config, None)),
            observer: Observer::new(metrics, access_log),
            keys: Keys::new(store),
            rates,
            ready: AtomicBool::new(false),
            last_reload: Mutex::new(None),
            bound: Mutex::new(Vec::new()),
            control: tokio::sync::Mutex::new(Control {
                listeners: Vec::new(),
                tasks: JoinSet::new(),
                stop: watch::Sender::new(false),
            }),
        })
    }

    /// The config now and what was built from it.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The bound address of each listener now, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn set_listener_addrs(&self, control: &Control) {
        if let Ok(mut bound) = self.bound.lock() {
            *bound = control
                .listeners
                .iter()
                .map(|l| (l.state.name.clone(), l.addr))
                .collect();
        }
    }

    /// Reads the config file again and swaps it in (SPEC §12). On any problem — the file
    /// is invalid, changes what only a restart can, or names an address that cannot be
    /// bound — nothing changes and the problems are returned, one message each.
    pub async fn reload(self: &Arc<Gateway>) -> Result<Vec<String>, Vec<String>> {
        let mut control = self.control.lock().await;
        let result = self.reload_locked(&mut control).await;
        let ok = result.is_ok();
        let messages = match &result {
            Ok(messages) | Err(messages) => messages.clone(),
        };
        self.observer
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if ok {
            tracing::info!(changes = ?messages, "config reloaded");
        } else {
            tracing::error!(errors = ?messages, "config reload refused; the old config keeps serving");
        }
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(ReloadRecord {
                at: SystemTime::now(),
                ok,
                messages,
            });
        }
        result
    }

    async fn reload_locked(
        self: &Arc<Gateway>,
        control: &mut Control,
    ) -> Result<Vec<String>, Vec<String>> {
        let old = self.current();
        let Some(path) = old.config.source.clone() else {
            return Err(vec!["baton was not started from a config file".to_owned()]);
        };
        let read = path.clone();
        let config = tokio::task::spawn_blocking(move || config::load(&read))
            .await
            .map_err(|err| vec![format!("reading the config failed: {err}")])?
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let file = path.display();
        let mut refused = Vec::new();
        if config.admin.listen != old.config.admin.listen {
            refused.push(format!("{file}: `admin.listen` cannot change on reload; restart baton to move the admin server"));
        }
        if config.store != old.config.store {
            refused.push(format!("{file}: `[store]` cannot change on reload; restart baton to change where idempotency keys are kept"));
        }
        if config.log.level != old.config.log.level {
            refused.push(format!(
                "{file}: `log.level` cannot change on reload; restart baton to change it"
            ));
        }
        if !refused.is_empty() {
            return Err(refused);
        }

        // Bind what is new before anything changes, so that a taken address refuses the
        // whole reload.
        let mut added = Vec::new();
        for listener in &config.listeners {
            let kept = control
                .listeners
                .iter()
                .any(|l| l.state.name == listener.name && l.listen == listener.listen);
            if !kept {
                let socket = bind_listener(listener).map_err(|err| vec![err.to_string()])?;
                added.push((listener.clone(), socket));
            }
        }
        self.observer
            .access_log
            .reopen(&config.log.access)
            .map_err(|err| vec![err.to_string()])?;

        let snapshot = Arc::new(Snapshot::new(config, Some(&old)));
        let fresh: Vec<usize> = (0..snapshot.upstreams.len())
            .filter(|&i| {
                let upstream = &snapshot.upstreams[i];
                !old.upstream(&upstream.name)
                    .is_some_and(|u| Arc::ptr_eq(u, upstream))
            })
            .collect();
        if let Err(errors) = start_upstreams(&snapshot, &fresh, &mut control.tasks).await {
            // Nothing else changed yet; the log goes back to where it was.
            let _ = self.observer.access_log.reopen(&old.config.log.access);
            return Err(errors);
        }

        self.current.store(snapshot.clone());
        let mut messages = Vec::new();

        // Retire what the new config no longer has.
        for upstream in &old.upstreams {
            let successor = snapshot.upstream(&upstream.name);
            if successor.is_some_and(|u| Arc::ptr_eq(u, upstream)) {
                continue;
            }
            upstream.retire();
            for endpoint in &upstream.members().endpoints {
                let taken_over = successor.is_some_and(|s| {
                    s.members()
                        .endpoints
                        .iter()
                        .any(|e| Arc::ptr_eq(e, endpoint))
                });
                if !taken_over {
                    endpoint.retire();
                }
            }
            if successor.is_none() {
                messages.push(format!("upstream {} removed", upstream.name));
            }
        }
        for &index in &fresh {
            let name = &snapshot.upstreams[index].name;
            let verb = if old.upstream(name).is_some() {
                "changed"
            } else {
                "added"
            };
            messages.push(format!("upstream {name} {verb}"));
        }
        let mut kept = Vec::new();
        for running in control.listeners.drain(..) {
            match snapshot
                .config
                .listeners
                .iter()
                .find(|l| l.name == running.state.name && l.listen == running.listen)
            {
                Some(listener) => {
                    running.state.update(listener.clone());
                    kept.push(running);
                }
                None => {
                    messages.push(format!(
                        "listener {} on {} removed",
                        running.state.name, running.addr
                    ));
                    running.retire.send_replace(true);
                }
            }
        }
        control.listeners = kept;
        for (listener, socket) in added {
            let running = spawn_listener(self, listener, socket, &mut control.tasks)
                .map_err(|err| vec![err.to_string()])?;
            messages.push(format!(
                "listener {} on {} added",
                running.state.name, running.addr
            ));
            control.listeners.push(running);
        }
        self.set_listener_addrs(control);
        // Finished tasks of retired upstreams and listeners.
        while control.tasks.try_join_next().is_some() {}
        messages.push(format!(
            "{} listener{}, {} route{}, {} upstream{}",
            snapshot.config.listeners.len(),
            plural(snapshot.config.listeners.len()),
            snapshot.config.routes.len(),
            plural(snapshot.config.routes.len()),
            snapshot.config.upstreams.len(),
            plural(snapshot.config.upstreams.len()),
        ));
        Ok(messages)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
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

fn bind_listener(listener: &config::Listener) -> io::Result<TcpListener> {
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

fn spawn_listener(
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
async fn start_upstreams(
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
