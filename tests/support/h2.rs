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
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
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
