//! Raw HTTP/1.1 reading and writing for the test upstreams and clients: real bytes on real
//! sockets, so tests can send what no well-behaved client library would.

#![allow(dead_code)]

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A parsed message head (request or response).
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn framing(&self) -> Framing {
        if self
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(length) = self.header("content-length") {
            Framing::Length(length.trim().parse().unwrap_or(0))
        } else {
            Framing::None
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Buffered reader over a stream; keeps bytes read past the current message.
pub struct Reader<S> {
    pub stream: S,
    buf: Vec<u8>,
}

const HEAD_END: &[u8] = b"\r\n\r\n";

impl<S: AsyncRead + AsyncWrite + Unpin> Reader<S> {
    pub fn new(stream: S) -> Self {
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one head; `None` on a clean EOF before any byte.
    async fn read_head_bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = find(&self.buf, HEAD_END) {
                let head: Vec<u8> = self.buf.drain(..pos + 4).collect();
                return Ok(Some(head));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    pub async fn read_request_head(&mut self) -> io::Result<Option<Head>> {
        let Some(bytes) = self.read_head_bytes().await? else {
            return Ok(None);
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        request
            .parse(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(Head {
            method: request.method.unwrap_or("").to_owned(),
            version: request.version.unwrap_or(0),
            path: request.path.unwrap_or("").to_owned(),
            status: 0,
            headers: collect(request.headers),
        }))
    }

    pub async fn read_response_head(&mut self) -> io::Result<Option<Head>> {
        let Some(bytes) = self.read_head_bytes().await? else {
            return Ok(None);
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(Head {
            status: response.code.unwrap_or(0),
            version: response.version.unwrap_or(0),
            headers: collect(response.headers),
            ..Head::default()
        }))
    }

    /// Reads a request body, handing each piece to `sink`; returns its length.
    pub async fn read_request_body(
        &mut self,
        head: &Head,
        sink: impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        self.read_body(head.framing(), sink).await.map(|(n, _)| n)
    }

    /// Reads a response body; returns the bytes and whether the body was complete.
    pub async fn read_response_body(&mut self, head: &Head, method: &str) -> (Vec<u8>, bool) {
        let framing = match head.framing() {
            _ if method == "HEAD" || head.status == 204 || head.status == 304 => Framing::None,
            Framing::None => Framing::UntilClose,
            other => other,
        };
        let mut body = Vec::new();
        match self
            .read_body(framing, |piece| body.extend_from_slice(piece))
            .await
        {
            Ok((_, complete)) => (body, complete),
            Err(_) => (body, false),
        }
    }

    async fn read_body(
        &mut self,
        framing: Framing,
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<(u64, bool)> {
        match framing {
            Framing::None => Ok((0, true)),
            Framing::UntilClose => {
                let mut total = 0;
                loop {
                    if !self.buf.is_empty() {
                        total += self.buf.len() as u64;
                        sink(&self.buf);
                        self.buf.clear();
                    }
                    if self.fill().await? == 0 {
                        return Ok((total, true));
                    }
                }
            }
            Framing::Length(length) => {
                let mut remaining = length;
                while remaining > 0 {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        return Ok((length - remaining, false));
                    }
                    let take = remaining.min(self.buf.len() as u64) as usize;
                    sink(&self.buf[..take]);
                    self.buf.drain(..take);
                    remaining -= take as u64;
                }
                Ok((length, true))
            }
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = match self.read_line().await? {
                        Some(line) => line,
                        None => return Ok((total, false)),
                    };
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        loop {
                            match self.read_line().await? {
                                Some(line) if line.is_empty() => return Ok((total, true)),
                                Some(_) => continue,
                                None => return Ok((total, false)),
                            }
                        }
                    }
                    let mut remaining = size;
                    while remaining > 0 {
                        if self.buf.is_empty() && self.fill().await? == 0 {
                            return Ok((total, false));
                        }
                        let take = remaining.min(self.buf.len() as u64) as usize;
                        sink(&self.buf[..take]);
                        self.buf.drain(..take);
                        remaining -= take as u64;
                        total += take as u64;
                    }
                    match self.read_line().await? {
                        Some(line) if line.is_empty() => {}
                        _ => return Ok((total, false)),
                    }
                }
            }
        }
    }

    async fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..pos]).into_owned()));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes and flushes (a TLS stream holds back what is not flushed).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Bytes already read past the last message.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
