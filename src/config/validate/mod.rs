//! Turning the raw config into the runtime one: every default applied, every value checked.
//!
//! Validation collects every problem it finds rather than stopping at the first, each with
//! the span of the key it is about, so `baton check` can list them all at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawConfig;
use super::runtime::*;
use crate::cause::Cause;

mod listener;
mod route;
mod upstream;

use listener::build_listener;
use route::build_route;
use upstream::build_upstream;

/// Collects problems while the raw config is turned into the runtime one.
pub(super) struct Validator<'a> {
    problems: Vec<Problem>,
    base_dir: &'a Path,
}

impl Validator<'_> {
    pub(super) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.problems.push(Problem {
            span,
            message: message.into(),
        });
    }

    /// A percentage key: its value when it is 0 to 100, else an error and `default`.
    fn percent(&mut self, raw: Option<&Spanned<u32>>, key: &str, default: u32) -> u32 {
        match raw {
            None => default,
            Some(percent) if *percent.get_ref() > 100 => {
                self.error(
                    Some(percent.span()),
                    format!("`{key}` is a percentage, 0 to 100"),
                );
                default
            }
            Some(percent) => *percent.get_ref(),
        }
    }

    pub(super) fn socket_addr(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    Some(value.span()),
                    format!(
                        "`{key}` must be an IP address and port such as \"127.0.0.1:8080\" or \"[::1]:8080\", not {:?}",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }
}

/// Turns `0s` into "no limit".
fn limit(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

impl Config {
    /// Validates a parsed file. `base_dir` resolves relative paths (error page templates).
    pub fn from_raw(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<Problem>> {
        let mut v = Validator {
            problems: Vec::new(),
            base_dir,
        };
        let store = build_store(&mut v, &raw);
        let dns = build_dns(&mut v, &raw);
        let admin = build_admin(&mut v, &raw);
        let status_page = build_status_page(&mut v, &raw);
        let log = build_log(&mut v, &raw);

        if raw.listeners.is_empty() {
            v.error(
                None,
                "no [[listeners]]: add one, e.g. listen = \"0.0.0.0:8080\"",
            );
        }
        let mut listeners = Vec::new();
        let mut listener_names = HashSet::new();
        for (index, listener) in raw.listeners.iter().enumerate() {
            if let Some(built) = build_listener(&mut v, index, listener) {
                if !listener_names.insert(built.name.clone()) {
                    v.error(
                        Some(listener.span()),
                        format!("two listeners are named {:?}", built.name),
                    );
                }
                listeners.push(built);
            }
        }

        let mut upstreams = Vec::new();
        let mut upstream_index = HashMap::new();
        for (name, upstream) in &raw.upstreams {
            if let Some(built) = build_upstream(&mut v, name, upstream) {
                upstream_index.insert(built.name.clone(), upstreams.len());
                upstreams.push(built);
            }
        }

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (index, route) in raw.routes.iter().enumerate() {
            if let Some(built) = build_route(&mut v, index, route, &upstream_index) {
                if !route_names.insert(built.name.clone()) {
                    v.error(
                        Some(route.span()),
                        format!("two routes are named {:?}", built.name),
                    );
                }
                routes.push(built);
            }
        }

        let error_pages = build_error_pages(&mut v, &raw);

        match (admin, v.problems.is_empty()) {
            (Some(admin), true) => Ok(Config {
                admin,
                log,
                store,
                dns,
                listeners,
                routes,
                upstreams,
                error_pages,
                status_page,
                source: None,
            }),
            _ => Err(v.problems),
        }
    }
}

/// Where the token lives: `env:NAME` reads it from the environment when the config is
/// loaded (so the file need not hold the secret); anything else is the token itself.
const TOKEN_FROM_ENV: &str = "env:";

fn build_admin(v: &mut Validator, raw: &RawConfig) -> Option<Admin> {
    let listen = match &raw.admin.listen {
        Some(listen) => v.socket_addr("admin.listen", listen)?,
        None => DEFAULT_ADMIN_LISTEN.parse().ok()?,
    };
    let token = raw.admin.token.as_ref().and_then(|token| {
        let text = token.get_ref();
        let value = match text.strip_prefix(TOKEN_FROM_ENV) {
            Some(name) => match std::env::var(name) {
                Ok(value) => value,
                Err(_) => {
                    v.error(
                        Some(token.span()),
                        format!("`admin.token` names the environment variable {name:?}, which is not set"),
                    );
                    return None;
                }
            },
            None => text.clone(),
        };
        if value.trim().is_empty() {
            v.error(Some(token.span()), "`admin.token` is empty");
            return None;
        }
        Some(value)
    });
    if token.is_none() && raw.admin.token.is_none() && !listen.ip().is_loopback() {
        v.error(
            raw.admin.listen.as_ref().map(Spanned::span),
            format!(
                "the admin server on {listen} is reachable from other hosts: set `admin.token` (e.g. token = \"env:BATON_ADMIN_TOKEN\") or listen on loopback"
            ),
        );
    }
    Some(Admin { listen, token })
}

fn build_status_page(v: &mut Validator, raw: &RawConfig) -> Option<StatusPage> {
    let page = raw.status_page.as_ref()?;
    let path = match &page.get_ref().path {
        None => DEFAULT_STATUS_PAGE_PATH.to_owned(),
        Some(path) if path.get_ref().starts_with('/') && !path.get_ref().contains(['?', '#']) => {
            path.get_ref().clone()
        }
        Some(path) => {
            v.error(
                Some(path.span()),
                format!(
                    "`status_page.path` must be a path starting with \"/\", such as \"/.baton/status\", not {:?}",
                    path.get_ref()
                ),
            );
            return None;
        }
    };
    Some(StatusPage { path })
}

fn build_log(v: &mut Validator, raw: &RawConfig) -> Log {
    let access = match raw.log.access.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("stdout") => AccessLogTarget::Stdout,
        Some("off") => AccessLogTarget::Off,
        Some(path) => AccessLogTarget::File(v.base_dir.join(path)),
    };
    let level = match &raw.log.level {
        None => tracing::Level::INFO,
        Some(level) => match level.get_ref().parse() {
            Ok(parsed) => parsed,
            Err(_) => {
                v.error(
                    Some(level.span()),
                    format!(
                        "`log.level` must be one of error, warn, info, debug, trace, not {:?}",
                        level.get_ref()
                    ),
                );
                tracing::Level::INFO
            }
        },
    };
    Log { access, level }
}

/// The default `[store] max_bytes`: room for about 200,000 small answers.
const DEFAULT_STORE_MAX_BYTES: u64 = 64 << 20;
/// The least `[store] max_bytes`: below it, hardly a key with its answer fits.
const MIN_STORE_MAX_BYTES: u64 = 64 << 10;

fn build_store(v: &mut Validator, raw: &RawConfig) -> StoreConfig {
    let url = raw.store.url.as_ref();
    let max_bytes = raw.store.max_bytes.as_ref();
    let memory = |v: &mut Validator| {
        let bytes = max_bytes.map_or(DEFAULT_STORE_MAX_BYTES, |b| b.get_ref().0);
        if let Some(spanned) = max_bytes.filter(|_| bytes < MIN_STORE_MAX_BYTES) {
            v.error(
                Some(spanned.span()),
                format!("`store.max_bytes` must be at least {MIN_STORE_MAX_BYTES} bytes (64KiB)"),
            );
        }
        StoreConfig::Memory {
            max_bytes: bytes.max(MIN_STORE_MAX_BYTES),
        }
    };
    if let (Some(b), Some(max)) = (raw.store.backend.as_ref(), max_bytes) {
        if b.get_ref() == "redis" {
            v.error(
                Some(max.span()),
                "`store.max_bytes` bounds the memory backend; Redis is bounded by its own `maxmemory`",
            );
        }
    }
    match raw
        .store
        .backend
        .as_ref()
        .map(|b| (b, b.get_ref().as_str()))
    {
        None | Some((_, "memory")) => {
            if let Some(url) = url {
                v.error(
                    Some(url.span()),
                    "`store.url` only applies with backend = \"redis\"",
                );
            }
            memory(v)
        }
        Some((backend, "redis")) => match url {
            Some(url) if redis::Client::open(url.get_ref().as_str()).is_ok() => {
                StoreConfig::Redis {
                    url: url.get_ref().clone(),
                }
            }
            Some(url) => {
                v.error(
                    Some(url.span()),
                    format!(
                        "{:?} is not a Redis URL such as \"redis://127.0.0.1:6379/0\"",
                        url.get_ref()
                    ),
                );
                memory(v)
            }
            None => {
                v.error(
                    Some(backend.span()),
                    "backend = \"redis\" needs `store.url`, e.g. \"redis://127.0.0.1:6379/0\"",
                );
                memory(v)
            }
        },
        Some((backend, other)) => {
            v.error(
                Some(backend.span()),
                format!("`store.backend` must be \"memory\" or \"redis\", not {other:?}"),
            );
            memory(v)
        }
    }
}

fn build_dns(v: &mut Validator, raw: &RawConfig) -> Dns {
    let mut servers = Vec::new();
    for server in raw.dns.servers.iter().flatten() {
        let text = server.get_ref();
        let parsed = text.parse::<SocketAddr>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(addr) => servers.push(addr),
            Err(_) => v.error(
                Some(server.span()),
                format!("a DNS server is an IP address with an optional port, such as \"10.0.0.2\" or \"127.0.0.1:5353\", not {text:?}"),
            ),
        }
    }
    if raw.dns.servers.as_ref().is_some_and(Vec::is_empty) {
        v.error(
            None,
            "`dns.servers` is empty: list at least one server, or leave it out for the system's",
        );
    }
    let min_ttl = raw.dns.min_ttl.map_or(DEFAULT_MIN_TTL, |d| d.0);
    let max_ttl = raw
        .dns
        .max_ttl
        .as_ref()
        .map_or(DEFAULT_MAX_TTL, |d| d.get_ref().0);
    if max_ttl < min_ttl || max_ttl.is_zero() {
        v.error(
            raw.dns.max_ttl.as_ref().map(|d| d.span()),
            "`dns.max_ttl` must be more than 0s and at least `dns.min_ttl`",
        );
    }
    Dns {
        servers,
        min_ttl,
        max_ttl,
    }
}

fn build_error_pages(v: &mut Validator, raw: &RawConfig) -> HashMap<String, String> {
    let mut pages = HashMap::new();
    for (key, path) in &raw.error_pages {
        let name = key.get_ref();
        let known_status = name
            .parse::<u16>()
            .is_ok_and(|code| Cause::ALL.iter().any(|c| c.status().as_u16() == code));
        if !known_status && Cause::from_code(name).is_none() {
            v.error(
                Some(key.span()),
                format!(
                    "error page key {name:?} is neither a status baton generates nor a cause code (see `baton explain`)"
                ),
            );
            continue;
        }
        let file = v.base_dir.join(path.get_ref());
        match std::fs::read_to_string(&file) {
            Ok(template) => {
                pages.insert(name.clone(), template);
            }
            Err(err) => v.error(
                Some(path.span()),
                format!("cannot read error page {}: {err}", file.display()),
            ),
        }
    }
    pages
}
