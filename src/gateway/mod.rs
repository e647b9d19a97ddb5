//! The running gateway: the state every request reads (this module), starting and stopping
//! it ([`run`]), and reloading its config ([`reload`]).
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
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::RouteCache;
use crate::config::{Config, StoreConfig};
use crate::idempotency::redis::RedisStore;
use crate::idempotency::store::{MemoryStore, Store};
use crate::idempotency::Keys;
use crate::limit::rate::{Buckets, Rates, SharedBuckets};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Cached, CodeCounters, Metrics, ResultCounters};
use crate::observe::window::Window;
use crate::observe::Observer;
use crate::retry::RetryBudget;
use crate::route::RouteTable;
use crate::store::redis::Redis;
use crate::upstream::Upstream;

mod reload;
mod run;

use run::Control;
pub use run::{bind, start, stop_requested, Running, SHUTDOWN_GRACE};

/// The memory store's `max_bytes` is shared: rate-limit keys take this fraction (an eighth:
/// 8 MiB of the default 64 MiB, about 200,000 keys), idempotency records the rest.
const RATE_SHARE: usize = 8;

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
    /// Each route's cache, in the order of `config.routes`; kept across a reload for a
    /// route of the same name whose cache has the same bounds.
    pub caches: Vec<Option<Arc<RouteCache>>>,
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
    /// What the route's cache answered, for the status pages and `baton_cache_total`.
    pub cache: crate::cache::Counters,
    pub cache_results: ResultCounters<{ crate::cache::OUTCOMES }>,
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
            cache: crate::cache::Counters::default(),
            cache_results: ResultCounters::default(),
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
        let caches = config
            .routes
            .iter()
            .map(|route| {
                let cache = route.cache.as_ref()?;
                let kept = old.and_then(|old| {
                    let &index = old.route_index.get(route.name.as_str())?;
                    old.caches[index].clone().filter(|c| c.fits(cache))
                });
                Some(kept.unwrap_or_else(|| Arc::new(RouteCache::new(cache))))
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
            caches,
        }
    }

    /// The position of the route named `name`.
    pub fn route_position(&self, name: &str) -> Option<usize> {
        self.route_index.get(name).copied()
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
}
