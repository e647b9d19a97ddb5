//! Certificates made for a test: a CA of its own and leaf certificates it signs, written
//! as PEM files into the test's scratch directory (none is committed).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{Head, Reader, TempDir, Upstream};

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A leaf certificate and its key, as files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// Writes the CA certificate to `dir` as `file`.
    pub fn write(&self, dir: &TempDir, file: &str) -> PathBuf {
        dir.file(file, &self.pem)
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), with a fresh P-256 key,
    /// written to `dir` as `<stem>.pem` and `<stem>.key`.
    pub fn leaf(&self, dir: &TempDir, stem: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: dir.file(&format!("{stem}.pem"), &cert.pem()),
            key: dir.file(&format!("{stem}.key"), &key.serialize_pem()),
        }
    }
}

/// A TLS client that trusts `ca` and offers `alpn`; its session cache lets a second
/// connection resume the first one's session.
pub fn client(ca: &TestCa, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Connects over TLS to `addr`, asking for `name`.
pub async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The leaf certificate a TLS client was shown, DER.
pub fn peer_leaf(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate of a PEM file, DER.
pub fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Runs a command line tool to its end (off the test's runtime, which serves baton) and
/// returns its exit code, stdout and stderr. Panics with how to install it if missing.
pub async fn run(program: &str, args: Vec<String>) -> (i32, String, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|err| {
                panic!("cannot run {program} ({err}); install it: apt-get install {program}")
            });
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A server configuration for `leaf`, offering `alpn`; with `client_ca`, clients must show
/// a certificate it signed.
pub fn server_config(
    leaf: &Leaf,
    client_ca: Option<&TestCa>,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

impl Upstream {
    /// Answers 200 with `body` over TLS with the certificate `leaf`; with `client_ca`, only
    /// to clients that show a certificate it signed (mTLS). Connections that fail their
    /// handshake are counted as connections, and see no request.
    pub async fn ok_tls(body: &str, leaf: &Leaf, client_ca: Option<&TestCa>) -> Upstream {
        let config = server_config(leaf, client_ca, &[b"http/1.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let body = body.as_bytes().to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut upstream = Self::idle(listener.local_addr().unwrap());
        let seen = upstream.seen.clone();
        let body_bytes = upstream.body_bytes.clone();
        let connections = upstream.connections.clone();
        upstream.task = Some(tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, body, seen, body_bytes) = (
                    acceptor.clone(),
                    body.clone(),
                    seen.clone(),
                    body_bytes.clone(),
                );
                tasks.spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_ok(stream, &body, &seen, &body_bytes).await;
                    }
                });
            }
        }));
        upstream
    }
}

/// Answers every request on `stream` with 200 and `body`, on any stream (TLS).
async fn serve_ok<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    body: &[u8],
    seen: &Mutex<Vec<Head>>,
    body_bytes: &AtomicU64,
) {
    let mut reader = Reader::new(stream);
    while let Ok(Some(head)) = reader.read_request_head().await {
        seen.lock().unwrap().push(head.clone());
        let read = reader
            .read_request_body(&head, |piece| {
                body_bytes.fetch_add(piece.len() as u64, Ordering::SeqCst);
            })
            .await;
        if read.is_err() {
            return;
        }
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        if reader.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
