//! `baton demo` (SPEC §1): a gateway in front of three built-in back-ends on loopback —
//! `steady` (always fine), `flaky` (goes down and comes back) and `broken` (now and then
//! answers malformed HTTP) — and, for `--for`, a built-in load and a summary of what the
//! clients saw and what baton absorbed.
//!
//! Two routes: `app` (`/`) over all three, and `news` (`/news/`) whose only back-end is
//! `flaky`; both cache. News pages are fresh for two seconds, and while `flaky` is down
//! `news` answers with the pages it holds, stale (`stale_if_error`), instead of a 502.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::gateway::{self, Running};
use crate::observe::metrics::RouteLabel;
use crate::observe::window::Window;
use crate::upstream::endpoint::now_ms;

/// How long `flaky` is up, then down, in each of its cycles.
const FLAKY_UP: Duration = Duration::from_secs(8);
const FLAKY_DOWN: Duration = Duration::from_secs(4);
/// `broken` answers one request in this many with malformed HTTP.
const BROKEN_EVERY: u64 = 5;
/// The built-in load: clients, each with one keep-alive connection, and their pause
/// between requests.
const CLIENTS: usize = 8;
const CLIENT_PAUSE: Duration = Duration::from_millis(10);
/// The longest request head a back-end reads.
const MAX_HEAD: usize = 16 << 10;
/// One request in this many is for a news page, one of [`NEWS_PAGES`].
const NEWS_EVERY: u64 = 4;
const NEWS_PAGES: u64 = 5;

pub struct Options {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// The demo's back-ends and the gateway in front of them.
pub struct Demo {
    pub running: Running,
    pub backends: Backends,
    /// The config file the demo runs, removed at shutdown.
    pub config: std::path::PathBuf,
}

/// What the built-in back-ends did.
pub struct Backends {
    pub steady: SocketAddr,
    pub flaky: SocketAddr,
    pub broken: SocketAddr,
    flaky_downs: Arc<AtomicU64>,
    malformed: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

/// Starts the back-ends and the gateway.
pub async fn start(options: &Options) -> std::io::Result<Demo> {
    let backends = Backends::start().await?;
    let config = format!(
        r#"# The config `baton demo` runs.
[admin]
listen = "{admin}"

[log]
access = "off"
level = "warn"

[[listeners]]
name = "public"
listen = "{listen}"

[[routes]]
name = "app"
upstream = "app"
cache = {{ stale_if_error = "1m" }}

[[routes]]
name = "news"
path_prefix = "/news/"
upstream = "news"
cache = {{ stale_if_error = "1m" }}

[upstreams.news]
endpoints = ["{flaky}"]
health = {{ path = "/healthz", interval = "1s", timeout = "500ms", healthy = 2, unhealthy = 2 }}

[upstreams.app]
endpoints = ["{steady}", "{flaky}", "{broken}"]
health = {{ path = "/healthz", interval = "1s", timeout = "500ms", healthy = 2, unhealthy = 2 }}
outlier = {{ consecutive_failures = 3, base_ejection = "5s", max_ejection = "30s" }}

[status_page]
path = "/.baton/status"
"#,
        admin = options.admin,
        listen = options.listen,
        steady = backends.steady,
        flaky = backends.flaky,
        broken = backends.broken,
    );
    // A real file, so that the operator can edit it and reload.
    let dir = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("baton.toml");
    std::fs::write(&path, &config)?;
    let started = match crate::config::load(&path) {
        Ok(parsed) => gateway::start(parsed).await,
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Err(std::io::Error::other(text.join("; ")))
        }
    };
    let running = started.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    Ok(Demo {
        running,
        backends,
        config: path,
    })
}

impl Demo {
    /// What to open, for the operator.
    pub fn urls(&self) -> String {
        let gateway = self.running.listeners[0];
        let admin = self.running.admin;
        format!(
            "baton demo: a gateway in front of three built-in back-ends\n\
             \n  gateway         http://{gateway}/\
             \n  status page     http://{admin}/\
             \n  public status   http://{gateway}/.baton/status\
             \n  metrics         http://{admin}/metrics\
             \n\n  back-ends       steady  {} (always fine)\
             \n                  flaky   {} (down {} s of every {} s)\
             \n                  broken  {} (one answer in {BROKEN_EVERY} is malformed HTTP)\n\
             \n  config          {} (edit it, then: curl -X POST http://{admin}/reload)\n\
             \nTry: curl -i http://{gateway}/ and http://{gateway}/news/1 (cached; stale while flaky is down)\n",
            self.backends.steady,
            self.backends.flaky,
            FLAKY_DOWN.as_secs(),
            (FLAKY_UP + FLAKY_DOWN).as_secs(),
            self.backends.broken,
            self.config.display(),
        )
    }

    /// Drives the built-in load through the gateway for `duration`; the summary.
    pub async fn load(&self, duration: Duration) -> Summary {
        let addr = self.running.listeners[0];
        let deadline = Instant::now() + duration;
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            clients.spawn(client(addr, deadline));
        }
        let mut seen = ClientTally::default();
        while let Some(done) = clients.join_next().await {
            if let Ok(tally) = done {
                seen.merge(tally);
            }
        }
        self.summary(duration, seen)
    }

    fn summary(&self, duration: Duration, mut seen: ClientTally) -> Summary {
        let gateway = &self.running.gateway;
        let snapshot = gateway.current();
        let upstream = &snapshot.upstreams[0];
        let endpoints = upstream.members().endpoints.clone();
        let name = |addr: SocketAddr| match addr {
            a if a == self.backends.steady => "steady",
            a if a == self.backends.flaky => "flaky",
            _ => "broken",
        };
        let per_endpoint = |count: &dyn Fn(&crate::upstream::Endpoint) -> u64| {
            endpoints
                .iter()
                .map(|e| (name(e.addr), count(e)))
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>()
        };
        let recent = Window::merged(endpoints.iter().map(|e| &e.recent), now_ms());
        seen.latencies.sort_unstable();
        let quantile = |q: f64| {
            let n = seen.latencies.len();
            (n > 0).then(|| seen.latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
        };
        Summary {
            duration,
            requests: seen.requests,
            client_errors: seen.errors,
            stale: seen.stale,
            p50: quantile(0.5),
            p99: quantile(0.99),
            failed_attempts: endpoints
                .iter()
                .map(|e| e.failed.load(Ordering::Relaxed))
                .sum(),
            failed_by_cause: recent
                .causes
                .iter()
                .map(|(cause, n)| (cause.code(), *n))
                .collect(),
            retries: gateway
                .observer
                .metrics
                .retries
                .get_or_create(&RouteLabel {
                    route: snapshot.routes[0].label.clone(),
                })
                .get(),
            ejections: per_endpoint(&|e| e.ejected_total.load(Ordering::Relaxed)),
            unhealthy: per_endpoint(&|e| e.unhealthy_total.load(Ordering::Relaxed)),
            flaky_downs: self.backends.flaky_downs.load(Ordering::Relaxed),
            malformed: self.backends.malformed.load(Ordering::Relaxed),
        }
    }

    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
        self.backends.tasks.shutdown().await;
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What `baton demo --for` prints.
#[derive(Debug)]
pub struct Summary {
    pub duration: Duration,
    pub requests: u64,
    /// Answers other than 200, and connections that failed, as clients saw them.
    pub client_errors: Vec<(String, u64)>,
    /// Pages answered from the cache, stale, because no back-end could answer.
    pub stale: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub failed_attempts: u64,
    /// Over the last minute.
    pub failed_by_cause: Vec<(&'static str, u64)>,
    pub retries: u64,
    pub ejections: Vec<(&'static str, u64)>,
    pub unhealthy: Vec<(&'static str, u64)>,
    pub flaky_downs: u64,
    pub malformed: u64,
}

impl Summary {
    pub fn errors_seen(&self) -> u64 {
        self.client_errors.iter().map(|(_, n)| n).sum()
    }
}

fn listing(items: &[(&'static str, u64)]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = items
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    format!(" ({})", parts.join(", "))
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
            )
        };
        let seconds = self.duration.as_secs_f64();
        writeln!(
            f,
            "\nbaton demo: {seconds:.0} s of load from {CLIENTS} clients\n"
        )?;
        writeln!(
            f,
            "  requests                 {} ({:.0}/s)",
            self.requests,
            self.requests as f64 / seconds.max(0.001)
        )?;
        let errors = self.errors_seen();
        let detail: Vec<String> = self
            .client_errors
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        if errors == 0 {
            writeln!(f, "  errors seen by clients   0")?;
        } else {
            writeln!(
                f,
                "  errors seen by clients   {errors} ({})",
                detail.join(", ")
            )?;
        }
        writeln!(
            f,
            "  latency                  p50 {}, p99 {}",
            ms(self.p50),
            ms(self.p99)
        )?;
        writeln!(f, "\n  what baton absorbed")?;
        writeln!(
            f,
            "    failed attempts        {}{}",
            self.failed_attempts,
            listing(&self.failed_by_cause)
        )?;
        writeln!(f, "    retries                {}", self.retries)?;
        writeln!(
            f,
            "    served stale           {} (news pages from the cache while flaky was down)",
            self.stale
        )?;
        let total = |items: &[(&str, u64)]| items.iter().map(|(_, n)| n).sum::<u64>();
        writeln!(
            f,
            "    ejections              {}{}",
            total(&self.ejections),
            listing(&self.ejections)
        )?;
        writeln!(
            f,
            "    marked unhealthy       {}{}",
            total(&self.unhealthy),
            listing(&self.unhealthy)
        )?;
        writeln!(
            f,
            "\n  back-ends: flaky went down {} time{}; broken sent {} malformed answer{}",
            self.flaky_downs,
            if self.flaky_downs == 1 { "" } else { "s" },
            self.malformed,
            if self.malformed == 1 { "" } else { "s" },
        )
    }
}

#[derive(Default)]
struct ClientTally {
    requests: u64,
    /// Answers the cache gave stale instead of an error.
    stale: u64,
    errors: Vec<(String, u64)>,
    latencies: Vec<Duration>,
}

impl ClientTally {
    fn error(&mut self, what: String) {
        self.add_errors(what, 1);
    }

    fn add_errors(&mut self, what: String, count: u64) {
        match self.errors.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += count,
            None => self.errors.push((what, count)),
        }
    }

    fn merge(&mut self, other: ClientTally) {
        self.requests += other.requests;
        self.stale += other.stale;
        self.latencies.extend(other.latencies);
        for (what, n) in other.errors {
            self.add_errors(what, n);
        }
    }
}

/// One client of the built-in load: GET `/`, and now and then a news page, on a keep-alive
/// connection until `deadline`.
async fn client(addr: SocketAddr, deadline: Instant) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut sender = None;
    while Instant::now() < deadline {
        if sender.is_none() {
            sender = match connect(addr).await {
                Ok(connected) => Some(connected),
                Err(err) => {
                    tally.requests += 1;
                    tally.error(format!("connection failed: {err}"));
                    tokio::time::sleep(CLIENT_PAUSE).await;
                    continue;
                }
            };
        }
        let Some(open) = sender.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let path = match tally.requests % NEWS_EVERY {
            0 => format!("/news/{}", tally.requests / NEWS_EVERY % NEWS_PAGES + 1),
            _ => "/".to_owned(),
        };
        let request = Request::get(path)
            .header(http::header::HOST, "demo.local")
            .body(Empty::<Bytes>::new());
        let Ok(request) = request else { break };
        tally.requests += 1;
        let outcome = match open.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let stale = response
                    .headers()
                    .get(crate::cache::CACHE_STATUS)
                    .is_some_and(|v| v.as_bytes().ends_with(b"detail=stale-if-error"));
                tally.stale += u64::from(stale);
                match response.into_body().collect().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(_) => Err(format!("status {}", status.as_u16())),
                    Err(err) => Err(format!("body cut off: {err}")),
                }
            }
            Err(err) => Err(format!("request failed: {err}")),
        };
        match outcome {
            Ok(()) => tally.latencies.push(started.elapsed()),
            Err(what) => {
                tally.error(what);
                sender = None;
            }
        }
        tokio::time::sleep(CLIENT_PAUSE).await;
    }
    tally
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| err.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

impl Backends {
    async fn start() -> std::io::Result<Backends> {
        let mut tasks = JoinSet::new();
        let flaky_downs = Arc::new(AtomicU64::new(0));
        let malformed = Arc::new(AtomicU64::new(0));

        let steady = TcpListener::bind("127.0.0.1:0").await?;
        let steady_addr = steady.local_addr()?;
        tasks.spawn(serve(steady, "steady", None));

        let broken = TcpListener::bind("127.0.0.1:0").await?;
        let broken_addr = broken.local_addr()?;
        tasks.spawn(serve(broken, "broken", Some(malformed.clone())));

        let flaky = TcpListener::bind("127.0.0.1:0").await?;
        let flaky_addr = flaky.local_addr()?;
        tasks.spawn(flap(flaky, flaky_downs.clone()));

        Ok(Backends {
            steady: steady_addr,
            flaky: flaky_addr,
            broken: broken_addr,
            flaky_downs,
            malformed,
            tasks,
        })
    }
}

/// `flaky`: serves for [`FLAKY_UP`], then closes its port and every connection for
/// [`FLAKY_DOWN`], and again.
async fn flap(listener: TcpListener, downs: Arc<AtomicU64>) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    loop {
        let socket = match listener.take() {
            Some(socket) => socket,
            None => match gateway::bind(addr) {
                Ok(socket) => socket,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tokio::time::timeout(FLAKY_UP, serve(socket, "flaky", None)).await;
        // The timeout dropped the listener and every connection with it.
        downs.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(FLAKY_DOWN).await;
    }
}

/// Serves a back-end on `listener`; with `malformed`, one answer in [`BROKEN_EVERY`] is
/// not HTTP (counted there). The connections end with the returned future.
async fn serve(listener: TcpListener, name: &'static str, malformed: Option<Arc<AtomicU64>>) {
    let mut connections = JoinSet::new();
    let served = Arc::new(AtomicU64::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let (served, malformed) = (served.clone(), malformed.clone());
        connections.spawn(async move {
            let _ = answer(stream, name, &served, malformed.as_deref()).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Answers requests on one connection until the client closes it.
async fn answer(
    mut stream: TcpStream,
    name: &'static str,
    served: &AtomicU64,
    malformed: Option<&AtomicU64>,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        // Read one head; the demo's clients send no bodies.
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 1024];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let health_check = buffer.starts_with(b"GET /healthz ");
        let news = buffer.starts_with(b"GET /news/");
        buffer.drain(..end);
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        if let (Some(malformed), false) = (malformed, health_check) {
            if n.is_multiple_of(BROKEN_EVERY) {
                malformed.fetch_add(1, Ordering::Relaxed);
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\noops")
                    .await?;
                return Ok(());
            }
        }
        let body = if health_check {
            "ok\n".to_owned()
        } else if news {
            format!("today's news, from {name}\n")
        } else {
            format!("hello from {name}\n")
        };
        // News pages may be kept two seconds; the others are stale at once (the cache keeps
        // them only to answer with should no back-end answer).
        let freshness = if news { "max-age=2" } else { "max-age=0" };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: {freshness}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}
