//! A raw HTTP/2 client (h2c with prior knowledge) that writes frames by hand, so that tests
//! can send what no client library would: streams reset in a burst, header blocks that
//! never end.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
/// RST_STREAM's error code CANCEL (RFC 9113 §7).
const CANCEL: u32 = 0x8;

/// One frame as read.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The HPACK block of `GET /` for `authority`: indexed `:method GET`, `:scheme http`,
/// `:path /`, and `:authority` as a literal without indexing.
pub fn get_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    block
}

/// A complete `GET /` on `stream`.
pub fn get(stream: u32) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &get_block("h2.test"),
    )
}

/// `RST_STREAM(CANCEL)` on `stream`.
pub fn reset(stream: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
}

/// A client connection past the preface and the SETTINGS exchange.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The server's SETTINGS, as (identifier, value).
    pub settings: Vec<(u16, u32)>,
}

impl Client {
    /// Connects, sends the preface and empty SETTINGS, and acknowledges the server's.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        let mut client = Client {
            stream,
            buf: Vec::new(),
            settings: Vec::new(),
        };
        let first = client
            .read_frame(Duration::from_secs(5))
            .await
            .expect("the server's SETTINGS");
        assert_eq!(first.kind, SETTINGS, "{first:?}");
        client.settings = first
            .payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        client.send(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame within `within`; `None` at EOF, on a reset, or when time is up.
    /// A PING is answered, as every client must (hyper's graceful shutdown waits for it).
    pub async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        let frame = self.read_any_frame(within).await?;
        if frame.kind == PING && frame.flags & ACK == 0 {
            let _ = self.send(&self::frame(PING, ACK, 0, &frame.payload)).await;
        }
        Some(frame)
    }

    async fn read_any_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        tokio::time::timeout_at(deadline, next_frame(&mut self.stream, &mut self.buf))
            .await
            .ok()
            .flatten()
    }

    /// Reads the answer on `stream`: its `:status` is not decoded, so this returns the
    /// frames up to the one that ends the stream.
    pub async fn read_answer(&mut self, stream: u32, within: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.read_frame(within).await {
            let ends = frame.stream == stream
                && matches!(frame.kind, HEADERS | DATA)
                && frame.flags & END_STREAM != 0;
            let reset = frame.stream == stream && frame.kind == RST_STREAM;
            frames.push(frame);
            if ends || reset {
                break;
            }
        }
        frames
    }

    /// Reads frames until the server closes the connection; returns the GOAWAY's error code
    /// if one came, and whether the connection closed within `within`.
    pub async fn until_closed(&mut self, within: Duration) -> (Option<u32>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut goaway = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return (goaway, false);
            }
            match self.read_frame(left).await {
                Some(frame) if frame.kind == GOAWAY => {
                    goaway = Some(u32::from_be_bytes([
                        frame.payload[4],
                        frame.payload[5],
                        frame.payload[6],
                        frame.payload[7],
                    ]));
                }
                Some(_) => {}
                None => return (goaway, tokio::time::Instant::now() < deadline),
            }
        }
    }
}

/// A real HTTP/2 upstream (hyper's server), h2c or over TLS, that answers `200 h2 ok`
/// after `delay`, allowing `max_streams` streams per connection, and counts what it saw.
pub struct H2Upstream {
    pub addr: SocketAddr,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<http::request::Parts>>>,
    /// The most streams open at once on one connection.
    pub most_streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Upstream {
    pub async fn start(
        delay: Duration,
        max_streams: u32,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> H2Upstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<http::request::Parts>>> = Arc::default();
        let most_streams = Arc::new(AtomicUsize::new(0));
        let (c, r, m) = (connections.clone(), requests.clone(), most_streams.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, m, acceptor) = (r.clone(), m.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let open = Arc::new(AtomicUsize::new(0));
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (r, m, open) = (r.clone(), m.clone(), open.clone());
                            async move {
                                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                                m.fetch_max(now, Ordering::SeqCst);
                                let (parts, body) = request.into_parts();
                                r.lock().unwrap().push(parts);
                                let _ = http_body_util::BodyExt::collect(body).await;
                                tokio::time::sleep(delay).await;
                                open.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"h2 ok")),
                                ))
                            }
                        },
                    );
                    let mut builder = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    builder.max_concurrent_streams(max_streams);
                    match acceptor {
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        H2Upstream {
            addr,
            connections,
            requests,
            most_streams,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a raw HTTP/2 upstream does with the streams of each connection.
#[derive(Clone, Copy, Debug)]
pub enum RawScenario {
    /// The connection's first stream is refused with `REFUSED_STREAM`; the rest answered.
    RefuseFirst,
    /// Each connection answers `answered` streams, then meets the next with a graceful
    /// `GOAWAY` naming the last answered stream, and closes.
    GoawayAfter(usize),
}

/// An HTTP/2 upstream (h2c) that writes its frames by hand, to refuse streams and go away
/// exactly as a test needs. Counts the streams it answered (processed) and turned away.
pub struct RawH2Upstream {
    pub addr: SocketAddr,
    pub answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub turned_away: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawH2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawH2Upstream {
    pub async fn start(scenario: RawScenario) -> RawH2Upstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let turned_away = Arc::new(AtomicUsize::new(0));
        let (a, t) = (answered.clone(), turned_away.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (a, t) = (a.clone(), t.clone());
                tokio::spawn(async move {
                    let mut conn = RawServerConn {
                        stream: tcp,
                        buf: Vec::new(),
                    };
                    if !conn.handshake().await {
                        return;
                    }
                    let mut streams_seen = 0usize;
                    let mut last_answered = 0u32;
                    while let Some(frame) = conn.read_frame().await {
                        match frame.kind {
                            HEADERS => {
                                streams_seen += 1;
                                match scenario {
                                    RawScenario::RefuseFirst if streams_seen == 1 => {
                                        t.fetch_add(1, Ordering::SeqCst);
                                        let refused = frame_bytes(
                                            RST_STREAM,
                                            0,
                                            frame.stream,
                                            &0x7u32.to_be_bytes(),
                                        );
                                        let _ = conn.stream.write_all(&refused).await;
                                    }
                                    RawScenario::GoawayAfter(n) if streams_seen > n => {
                                        t.fetch_add(1, Ordering::SeqCst);
                                        let mut payload = last_answered.to_be_bytes().to_vec();
                                        payload.extend_from_slice(&0u32.to_be_bytes());
                                        let _ = conn
                                            .stream
                                            .write_all(&frame_bytes(GOAWAY, 0, 0, &payload))
                                            .await;
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        return;
                                    }
                                    _ => {
                                        a.fetch_add(1, Ordering::SeqCst);
                                        last_answered = frame.stream;
                                        let mut answer = frame_bytes(
                                            HEADERS,
                                            END_HEADERS,
                                            frame.stream,
                                            &[0x88],
                                        );
                                        answer.extend(frame_bytes(
                                            DATA,
                                            END_STREAM,
                                            frame.stream,
                                            b"raw ok",
                                        ));
                                        if conn.stream.write_all(&answer).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            PING if frame.flags & ACK == 0 => {
                                let _ = conn
                                    .stream
                                    .write_all(&frame_bytes(PING, ACK, 0, &frame.payload))
                                    .await;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        RawH2Upstream {
            addr,
            answered,
            turned_away,
            task,
        }
    }

    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn turned_away(&self) -> usize {
        self.turned_away.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    frame(kind, flags, stream, payload)
}

/// The server side of a raw connection.
struct RawServerConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawServerConn {
    /// Reads the client's preface and sends SETTINGS (and the ACK of the client's).
    async fn handshake(&mut self) -> bool {
        while self.buf.len() < PREFACE.len() {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
        if &self.buf[..PREFACE.len()] != PREFACE {
            return false;
        }
        self.buf.drain(..PREFACE.len());
        let mut hello = frame(SETTINGS, 0, 0, &[]);
        hello.extend(frame(SETTINGS, ACK, 0, &[]));
        self.stream.write_all(&hello).await.is_ok()
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        next_frame(&mut self.stream, &mut self.buf).await
    }
}

/// The next whole frame from `stream`, after what `buf` holds; `None` at EOF or on an error.
async fn next_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + len {
                let frame = Frame {
                    kind: buf[3],
                    flags: buf[4],
                    stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                    payload: buf[9..9 + len].to_vec(),
                };
                buf.drain(..9 + len);
                return Some(frame);
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}
