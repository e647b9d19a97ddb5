//! Test support: misbehaving upstreams on real sockets, baton started in-process or as a
//! process, and raw HTTP clients.

#![allow(dead_code)]

pub mod browser;
pub mod dns;
pub mod h2;
pub mod http;
pub mod origin;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

pub use self::http::{Head, Reader};

/// What a test upstream does with each request it receives.
#[derive(Clone)]
enum Behavior {
    Ok {
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
    Http10(Vec<u8>),
    Health(Vec<u8>, Arc<std::sync::atomic::AtomicBool>),
    /// Answers 200 and the body until the switch is on, then garbage.
    Breakable(Vec<u8>, Arc<std::sync::atomic::AtomicBool>),
    ResetBeforeHead,
    Garbage,
    /// Answers every n-th request (after reading all of it) with garbage, the others 200.
    GarbageEvery(usize),
    SlowHead(Duration),
    TruncateBody,
    StallBody,
    Hang,
    Download(u64),
    Sink,
    KeepAliveTimeout(Duration),
    Echo,
    /// Answers every request with these bytes, as they are; closes after when `close`.
    Raw {
        bytes: Vec<u8>,
        close: bool,
    },
    /// Answers 413 on the request head without reading the body, then closes.
    EarlyAnswer,
    /// Sends `100 Continue` on the request head, unasked, then reads the body and answers
    /// like [`Behavior::Sink`].
    ContinueFirst,
    /// Works on a few requests at once and queues the rest inside itself.
    Workers(Arc<Workers>),
}

/// A back-end of limited capacity: `workers` requests at once, each taking `service`, the
/// rest waiting inside it (as a thread pool's queue does). Counts what is inside it.
pub struct Workers {
    permits: tokio::sync::Semaphore,
    service: Duration,
    inside: AtomicUsize,
    max_inside: AtomicUsize,
    /// How many requests were inside as each one arrived.
    arrivals: Mutex<Vec<usize>>,
}

impl Workers {
    /// The most requests that were inside at once.
    pub fn max_inside(&self) -> usize {
        self.max_inside.load(Ordering::SeqCst)
    }

    /// How many were inside as each request arrived, in order.
    pub fn arrivals(&self) -> Vec<usize> {
        self.arrivals.lock().unwrap().clone()
    }

    async fn serve(&self) {
        struct Inside<'a>(&'a AtomicUsize);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        let _inside = Inside(&self.inside);
        self.max_inside.fetch_max(now, Ordering::SeqCst);
        self.arrivals.lock().unwrap().push(now);
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        tokio::time::sleep(self.service).await;
    }
}

/// A real upstream server on 127.0.0.1 with one behavior, counting the requests it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Head>>>,
    body_bytes: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
    _held: Vec<TcpStream>,
    _listener: Option<std::net::TcpListener>,
    /// A port bound but not listening: connections are refused, and no other server can
    /// take the port while the test runs.
    _reserved: Option<TcpSocket>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Upstream {
    /// Answers 200 with `body` on keep-alive connections.
    pub async fn ok(body: &str) -> Upstream {
        Self::start(Behavior::Ok {
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
        })
        .await
    }

    /// Answers 200 with `body` and extra response headers.
    pub async fn ok_with_headers(body: &str, headers: &[(&str, &str)]) -> Upstream {
        Self::start(Behavior::Ok {
            body: body.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        })
        .await
    }

    /// Answers `HTTP/1.0 200` with `body` and closes the connection.
    pub async fn http10(body: &str) -> Upstream {
        Self::start(Behavior::Http10(body.as_bytes().to_vec())).await
    }

    /// Answers `/healthz` with 200 while the returned switch is on and 500 while it is
    /// off, and everything else with 200 and `body`.
    pub async fn with_health(body: &str) -> (Upstream, Arc<std::sync::atomic::AtomicBool>) {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let upstream =
            Self::start(Behavior::Health(body.as_bytes().to_vec(), healthy.clone())).await;
        (upstream, healthy)
    }

    /// Answers 200 and `body` until the returned switch is turned on, then bytes that are
    /// not HTTP.
    pub async fn breakable(body: &str) -> (Upstream, Arc<std::sync::atomic::AtomicBool>) {
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream = Self::start(Behavior::Breakable(
            body.as_bytes().to_vec(),
            broken.clone(),
        ))
        .await;
        (upstream, broken)
    }

    /// A back-end that works on `workers` requests at once, `service` each, and queues
    /// the rest inside itself; answers 200 `done`.
    pub async fn workers(workers: usize, service: Duration) -> (Upstream, Arc<Workers>) {
        let state = Arc::new(Workers {
            permits: tokio::sync::Semaphore::new(workers),
            service,
            inside: AtomicUsize::new(0),
            max_inside: AtomicUsize::new(0),
            arrivals: Mutex::default(),
        });
        (Self::start(Behavior::Workers(state.clone())).await, state)
    }

    /// Requests other than health checks.
    pub fn app_requests(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path != "/healthz")
            .count()
    }

    /// Nothing listens on the port: connections are refused.
    pub async fn refusing() -> Upstream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut upstream = Self::idle(socket.local_addr().unwrap());
        upstream._reserved = Some(socket);
        upstream
    }

    /// Reads the request, then resets the connection without answering.
    pub async fn reset_before_head() -> Upstream {
        Self::start(Behavior::ResetBeforeHead).await
    }

    /// Reads the request, then answers bytes that are not HTTP.
    /// Answers every `n`-th request with malformed HTTP, after reading all of it (so it
    /// may have acted on it), and the others 200 `ok`.
    pub async fn garbage_every(n: usize) -> Upstream {
        Self::start(Behavior::GarbageEvery(n)).await
    }

    pub async fn garbage() -> Upstream {
        Self::start(Behavior::Garbage).await
    }

    /// Reads the request, waits `delay`, then answers 200 "slow".
    pub async fn slow_head(delay: Duration) -> Upstream {
        Self::start(Behavior::SlowHead(delay)).await
    }

    /// Answers a head announcing 1000 bytes, sends 10, and closes.
    pub async fn truncate_body() -> Upstream {
        Self::start(Behavior::TruncateBody).await
    }

    /// Answers a head announcing 1000 bytes, sends 10, and stalls.
    pub async fn stall_body() -> Upstream {
        Self::start(Behavior::StallBody).await
    }

    /// Reads the request and never answers.
    pub async fn hang() -> Upstream {
        Self::start(Behavior::Hang).await
    }

    /// Answers 200 with `size` bytes, streamed.
    pub async fn download(size: u64) -> Upstream {
        Self::start(Behavior::Download(size)).await
    }

    /// Reads the whole request body and answers with its length.
    pub async fn sink() -> Upstream {
        Self::start(Behavior::Sink).await
    }

    /// Answers 200 with `Keep-Alive: timeout=N` and closes a connection idle for N.
    pub async fn keep_alive_timeout(timeout: Duration) -> Upstream {
        Self::start(Behavior::KeepAliveTimeout(timeout)).await
    }

    /// Answers every request with `bytes` verbatim (a response, or anything else).
    pub async fn raw(bytes: &[u8]) -> Upstream {
        Self::start(Behavior::Raw {
            bytes: bytes.to_vec(),
            close: false,
        })
        .await
    }

    /// Like [`Upstream::raw`], closing the connection after each answer.
    pub async fn raw_then_close(bytes: &[u8]) -> Upstream {
        Self::start(Behavior::Raw {
            bytes: bytes.to_vec(),
            close: true,
        })
        .await
    }

    /// Sends `100 Continue` as soon as a request head arrives, then reads the body and
    /// answers with its length.
    pub async fn continue_first() -> Upstream {
        Self::start(Behavior::ContinueFirst).await
    }

    /// Answers `413` as soon as a request head arrives, without reading its body.
    pub async fn early_answer() -> Upstream {
        Self::start(Behavior::EarlyAnswer).await
    }

    /// Accepts an HTTP/1.1 upgrade with 101, then echoes every byte.
    pub async fn upgrade_echo() -> Upstream {
        Self::start(Behavior::Echo).await
    }

    /// A listener whose accept queue is full and never drained: connects time out.
    pub async fn full_backlog() -> Upstream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => held.push(stream),
                _ => break,
            }
        }
        let mut upstream = Self::idle(addr);
        upstream._held = held;
        upstream._listener = Some(listener.into_std().unwrap());
        upstream
    }

    fn idle(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            seen: Arc::default(),
            body_bytes: Arc::default(),
            connections: Arc::default(),
            closed: Arc::default(),
            task: None,
            _held: Vec::new(),
            _listener: None,
            _reserved: None,
        }
    }

    /// Answers 200 with `body`, listening on `addr` (a loopback address and port of the
    /// test's choosing, so that several upstreams can share a port for DNS tests).
    pub async fn ok_on(addr: SocketAddr, body: &str) -> Upstream {
        Self::start_on(
            addr,
            Behavior::Ok {
                body: body.as_bytes().to_vec(),
                headers: Vec::new(),
            },
        )
        .await
    }

    /// Like [`Upstream::slow_head`], on `addr`.
    pub async fn slow_head_on(addr: SocketAddr, delay: Duration) -> Upstream {
        Self::start_on(addr, Behavior::SlowHead(delay)).await
    }

    async fn start(behavior: Behavior) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behavior).await
    }

    async fn start_on(addr: SocketAddr, behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstream = Self::idle(addr);
        let seen = upstream.seen.clone();
        let body_bytes = upstream.body_bytes.clone();
        let connections = upstream.connections.clone();
        let closed = upstream.closed.clone();
        upstream.task = Some(tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let serving = serve(stream, behavior.clone(), seen.clone(), body_bytes.clone());
                let closed = closed.clone();
                tasks.spawn(async move {
                    serving.await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        }));
        upstream
    }

    /// How many request heads this upstream received.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The request heads received, in order.
    pub fn seen(&self) -> Vec<Head> {
        self.seen.lock().unwrap().clone()
    }

    /// Request body bytes received, over all requests.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TCP connections that ended (closed by either side).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

async fn serve(
    stream: TcpStream,
    behavior: Behavior,
    seen: Arc<Mutex<Vec<Head>>>,
    body_bytes: Arc<AtomicU64>,
) {
    let mut reader = Reader::new(stream);
    loop {
        let head = match &behavior {
            Behavior::KeepAliveTimeout(idle) => {
                match tokio::time::timeout(*idle, reader.read_request_head()).await {
                    Ok(head) => head,
                    Err(_) => return, // idle too long: close, as the hint said
                }
            }
            _ => reader.read_request_head().await,
        };
        let Ok(Some(head)) = head else { return };
        seen.lock().unwrap().push(head.clone());
        if let Behavior::ContinueFirst = behavior {
            if reader
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        if let Behavior::EarlyAnswer = behavior {
            let _ = reader
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        let counter = body_bytes.clone();
        let Ok(length) = reader
            .read_request_body(&head, |piece| {
                counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            })
            .await
        else {
            return;
        };
        let result = match &behavior {
            Behavior::Ok { body, headers } => {
                let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n", body.len());
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                let mut bytes = response.into_bytes();
                bytes.extend_from_slice(body);
                reader.write_all(&bytes).await
            }
            Behavior::Health(body, healthy) => {
                let (status, body) = if head.path != "/healthz" {
                    ("200 OK", body.clone())
                } else if healthy.load(Ordering::SeqCst) {
                    ("200 OK", b"healthy".to_vec())
                } else {
                    ("500 Internal Server Error", b"sick".to_vec())
                };
                let mut bytes = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                bytes.extend_from_slice(&body);
                reader.write_all(&bytes).await
            }
            Behavior::Http10(body) => {
                let mut bytes =
                    format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                        .into_bytes();
                bytes.extend_from_slice(body);
                let _ = reader.write_all(&bytes).await;
                return;
            }
            Behavior::KeepAliveTimeout(idle) => {
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout={}\r\n\r\nok",
                    idle.as_secs()
                );
                reader.write_all(response.as_bytes()).await
            }
            Behavior::ResetBeforeHead => {
                let _ = reader.stream.set_zero_linger();
                return;
            }
            Behavior::Garbage => {
                let _ = reader.write_all(b"this is not HTTP at all\r\n\r\n").await;
                return;
            }
            Behavior::GarbageEvery(n) if seen.lock().unwrap().len().is_multiple_of(*n) => {
                let _ = reader.write_all(b"this is not HTTP at all\r\n\r\n").await;
                return;
            }
            Behavior::GarbageEvery(_) => {
                reader
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
            Behavior::Breakable(_, broken) if broken.load(Ordering::SeqCst) => {
                let _ = reader.write_all(b"this is not HTTP at all\r\n\r\n").await;
                return;
            }
            Behavior::Breakable(body, _) => {
                let mut bytes =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                        .into_bytes();
                bytes.extend_from_slice(body);
                reader.write_all(&bytes).await
            }
            Behavior::Workers(workers) => {
                workers.serve().await;
                reader
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
                    .await
            }
            Behavior::SlowHead(delay) => {
                tokio::time::sleep(*delay).await;
                reader
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                    .await
            }
            Behavior::TruncateBody => {
                let _ = reader
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                return;
            }
            Behavior::StallBody => {
                let _ = reader
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                std::future::pending::<()>().await;
                return;
            }
            Behavior::Hang => {
                std::future::pending::<()>().await;
                return;
            }
            Behavior::Download(size) => download(&mut reader, *size).await,
            Behavior::Raw { bytes, close } => {
                let written = reader.write_all(bytes).await;
                if *close {
                    return;
                }
                written
            }
            Behavior::EarlyAnswer => return,
            Behavior::Sink | Behavior::ContinueFirst => {
                let text = length.to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                reader.write_all(response.as_bytes()).await
            }
            Behavior::Echo => {
                let _ = reader
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                    )
                    .await;
                let leftover = reader.buffered().to_vec();
                let mut stream = reader.stream;
                if stream.write_all(&leftover).await.is_err() {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

const DOWNLOAD_CHUNK: usize = 64 * 1024;

async fn download(reader: &mut Reader<TcpStream>, size: u64) -> std::io::Result<()> {
    reader
        .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").as_bytes())
        .await?;
    let chunk = vec![b'x'; DOWNLOAD_CHUNK];
    let mut remaining = size;
    while remaining > 0 {
        let take = remaining.min(DOWNLOAD_CHUNK as u64) as usize;
        reader.write_all(&chunk[..take]).await?;
        remaining -= take as u64;
    }
    Ok(())
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "baton-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Baton started in-process from config text. Listener and admin addresses in the text
/// should use port 0.
pub struct Baton {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    running: Option<baton::Running>,
}

impl Baton {
    /// A raw HTTP/1.1 client connection to the listener.
    pub async fn connect(&self) -> Reader<TcpStream> {
        Reader::new(TcpStream::connect(self.addr).await.unwrap())
    }

    pub async fn start(config: &str) -> Baton {
        Self::start_in(TempDir::new(), config).await
    }

    /// Starts with a config that may refer to files in `dir`; it is written there as
    /// `baton.toml`, which a reload reads again.
    pub async fn start_in(dir: TempDir, config: &str) -> Baton {
        let path = dir.file("baton.toml", config);
        let config = baton::config::load(&path)
            .unwrap_or_else(|errors| panic!("bad test config: {errors:?}"));
        Self::start_config(config, dir).await
    }

    /// Replaces the config file (the next reload reads it).
    pub fn write_config(&self, config: &str) {
        self.dir.file("baton.toml", config);
    }

    async fn start_config(config: baton::config::Config, dir: TempDir) -> Baton {
        let running = baton::start(config).await.expect("baton starts");
        Baton {
            addr: running.listeners[0],
            admin: running.admin,
            dir,
            running: Some(running),
        }
    }

    /// One upstream, one catch-all route; `extra_route` and `extra_upstream` are appended to
    /// the route and upstream tables.
    pub async fn in_front_of(
        addrs: &[SocketAddr],
        extra_route: &str,
        extra_upstream: &str,
    ) -> Baton {
        Self::start(&simple_config(addrs, extra_route, extra_upstream)).await
    }

    /// Shuts baton down; the scratch directory lives on in the returned value.
    pub async fn stop(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.dir
    }

    pub fn gateway(&self) -> &std::sync::Arc<baton::gateway::Gateway> {
        &self.running.as_ref().unwrap().gateway
    }
}

pub fn simple_config(addrs: &[SocketAddr], extra_route: &str, extra_upstream: &str) -> String {
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "main"
upstream = "app"
{extra_route}

[upstreams.app]
endpoints = [{}]
{extra_upstream}
"#,
        endpoints.join(", ")
    )
}

/// A response as a client saw it.
#[derive(Debug)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
    /// False when the body ended before its framing said it would.
    pub complete: bool,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut reader = Reader::new(stream);
    reader.write_all(bytes).await.unwrap();
    read_response(&mut reader, "GET").await
}

pub async fn read_response<S>(reader: &mut Reader<S>, method: &str) -> Response
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = reader
        .read_response_head()
        .await
        .expect("a response head")
        .expect("a response before EOF");
    let (body, complete) = reader.read_response_body(&head, method).await;
    Response {
        head,
        body,
        complete,
    }
}

/// A request with `Connection: close` and the given extra header lines.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut text =
        format!("{method} {path} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        text.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut reader = Reader::new(stream);
    reader.write_all(&bytes).await.unwrap();
    read_response(&mut reader, method).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"").await
}

/// GET from the admin server.
pub async fn admin_get(baton: &Baton, path: &str) -> Response {
    get(baton.admin, path).await
}

/// POST to the admin server, with extra header lines.
pub async fn admin_post(baton: &Baton, path: &str, headers: &[(&str, &str)]) -> Response {
    request(baton.admin, "POST", path, headers, b"").await
}

/// The admin server's `/status.json`.
pub async fn status_json(baton: &Baton) -> serde_json::Value {
    let response = admin_get(baton, "/status.json").await;
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.body).expect("status.json is JSON")
}

/// Baton as a separate process (the built binary), for what only a process shows: its
/// memory, its exit code, its answer to signals.
pub struct BatonProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl BatonProcess {
    /// Writes `config` to a file and runs `baton run -c FILE`; waits until it listens.
    pub fn start(config: &str) -> BatonProcess {
        Self::start_in(TempDir::new(), config)
    }

    /// Like [`BatonProcess::start`], with the config written into `dir`, where the files it
    /// names are.
    pub fn start_in(dir: TempDir, config: &str) -> BatonProcess {
        use std::io::BufRead;
        let path = dir.file("baton.toml", config);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["run", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baton runs");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found_tx, found_rx) = std::sync::mpsc::channel();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = found_tx.send((line.contains("admin"), addr));
                }
                collected.lock().unwrap().push(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        while addr.is_none() || admin.is_none() {
            let (is_admin, found) = found_rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("baton did not start: {:?}", lines.lock().unwrap()));
            let parsed: SocketAddr = found.parse().unwrap();
            if is_admin {
                admin = Some(parsed);
            } else {
                addr = Some(parsed);
            }
        }
        BatonProcess {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            dir,
            stderr_lines: lines,
        }
    }

    /// Peak resident memory so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    pub fn signal(&self, name: &str) {
        // The shell's own `kill`, so no extra package is needed.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr_lines.lock().unwrap().clone()
    }
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a masked WebSocket text frame ("hello") three times over an upgraded `stream`
/// and checks each comes back byte for byte (the test upstream echoes).
pub async fn assert_websocket_echo<S>(stream: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let frame = [
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    for _ in 0..3 {
        stream.write_all(&frame).await.unwrap();
        stream.flush().await.unwrap();
        let mut echoed = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("the echo within 5 s")
            .unwrap();
        assert_eq!(echoed, frame);
    }
}
