//! TLS on listeners: the certificates a listener serves, chosen by SNI, and the handshake
//! that turns an accepted socket into a [`Stream`]. Sessions resume by ticket (stateless;
//! TLS 1.2 and 1.3) or by ID (TLS 1.2), and a listener keeps its ticket keys and session
//! cache across reloads, so a reload does not turn every returning client into a full
//! handshake.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::provider;
use crate::transport::Stream;

/// ALPN protocols a listener offers, preferred first (RFC 7301; RFC 9113 §3.2).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// TLS 1.2 sessions a listener remembers by ID (TLS 1.3 and ticket resumption keep no
/// state here).
const SESSION_CACHE_SIZE: usize = 4096;
/// The first byte of every TLS record that opens a handshake (RFC 8446 §5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// A name a certificate is chosen for: exact, or `*.example.com` for one label before
/// `example.com` (as a certificate's own wildcard matches, RFC 6125 §6.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniName {
    Exact(String),
    /// The name after `*.`.
    Wildcard(String),
}

impl SniName {
    /// Parses `a.example.com` or `*.example.com` (lowercased); `None` when it is neither.
    pub fn parse(text: &str) -> Option<SniName> {
        let text = text.trim().to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return None;
        }
        Some(if wildcard {
            SniName::Wildcard(name.to_owned())
        } else {
            SniName::Exact(name.to_owned())
        })
    }
}

/// A listener's certificates: the default one, and more by SNI.
#[derive(Clone)]
pub struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn new(default: Arc<CertifiedKey>) -> Certificates {
        Certificates {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    /// Adds a certificate for `name`; a name given twice keeps the first.
    pub fn add(&mut self, name: SniName, key: Arc<CertifiedKey>) {
        let (map, name) = match name {
            SniName::Exact(name) => (&mut self.exact, name),
            SniName::Wildcard(name) => (&mut self.wildcard, name),
        };
        map.entry(name).or_insert(key);
    }

    /// The certificate for a client that asked for `server_name`: an exact name first,
    /// then a wildcard, then the default (also for clients that sent no name).
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .unwrap_or(&self.default)
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
    }
}

/// What a TLS listener keeps across reloads so that sessions resume across them: the
/// ticket keys (rotated by rustls every 6 hours) and the TLS 1.2 session cache.
pub struct Sessions {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Sessions {
    pub fn new() -> io::Result<Sessions> {
        Ok(Sessions {
            ticketer: rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        })
    }

    /// The acceptor for a listener serving `certificates`.
    pub fn acceptor(&self, certificates: &Certificates) -> io::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certificates.clone()));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.ticketer = self.ticketer.clone();
        config.session_storage = self.cache.clone();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// How a TLS handshake with a client went.
pub enum Handshake {
    Done {
        stream: Stream,
        resumed: bool,
    },
    /// The client spoke plain HTTP (or anything but TLS); it has been told to use https.
    Plaintext,
    TimedOut,
    Failed(io::Error),
}

impl Handshake {
    /// The `result` label of `baton_tls_handshakes_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Handshake::Done { resumed: false, .. } => "ok",
            Handshake::Done { resumed: true, .. } => "resumed",
            Handshake::Plaintext => "plaintext",
            Handshake::TimedOut => "timeout",
            Handshake::Failed(_) => "failed",
        }
    }
}

/// The answer to plain HTTP on a TLS port: short, and closing.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
baton-error: bad-request\r\n\
baton-delivery: none\r\n\
cache-control: no-store\r\n\
connection: close\r\n\
content-length: 57\r\n\
\r\n\
This port speaks HTTPS: use an https:// address instead.\n";
/// How long the plaintext answer waits for the client's request to stop coming before the
/// socket closes (closing with unread data resets the connection, which can destroy the
/// answer before it is read).
const PLAINTEXT_LINGER: Duration = Duration::from_secs(1);

/// Runs the server side of a handshake on `tcp`, all within `timeout`. A client that
/// starts with anything but a TLS handshake record gets a short 400 saying to use https.
pub async fn accept(tcp: TcpStream, acceptor: &TlsAcceptor, timeout: Duration) -> Handshake {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => return Handshake::TimedOut,
        Ok(Err(err)) => return Handshake::Failed(err),
        Ok(Ok(0)) => return Handshake::Failed(io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) if first[0] != HANDSHAKE_RECORD => {
            answer_plaintext(tcp).await;
            return Handshake::Plaintext;
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => Handshake::TimedOut,
        Ok(Err(err)) => Handshake::Failed(err),
        Ok(Ok(tls)) => {
            let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
            Handshake::Done {
                stream: Stream::tls(tls),
                resumed,
            }
        }
    }
}

async fn answer_plaintext(mut tcp: TcpStream) {
    if tcp.write_all(PLAINTEXT_ANSWER).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let discard = async {
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(PLAINTEXT_LINGER, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_parse_as_exact_or_one_label_wildcards() {
        assert_eq!(
            SniName::parse("A.Example.com"),
            Some(SniName::Exact("a.example.com".into()))
        );
        assert_eq!(
            SniName::parse("*.example.com"),
            Some(SniName::Wildcard("example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "a b",
            "*.*.example.com",
            "a.*.com",
            "ex_ample.com",
        ] {
            assert_eq!(SniName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_plaintext_answer_declares_its_length() {
        let text = std::str::from_utf8(PLAINTEXT_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
