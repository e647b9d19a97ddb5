//! TLS to upstreams (the upstream's `tls` table): the server's certificate verified against
//! `ca` or the system's roots, SNI from `sni` or the endpoint's host name, and a client
//! certificate when the upstream asks for one (mTLS). Sessions resume from a cache per
//! upstream, so a new connection to a known endpoint costs an abbreviated handshake.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{load_certificates, load_private_key, provider};
use crate::transport::Stream;

/// An upstream's `tls` settings as configured (paths resolved), compared on reload: the
/// connections of an upstream whose settings changed are not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsSettings {
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
    pub verify: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// ALPN protocols offered, preferred first.
    pub alpn: Vec<Vec<u8>>,
}

/// Which setting a problem is about.
#[derive(Debug)]
pub enum SettingError {
    Sni(String),
    Ca(String),
    Cert(String),
    Key(String),
}

/// What an upstream's connections need for their TLS handshakes.
#[derive(Clone)]
pub struct ClientTls {
    pub settings: ClientTlsSettings,
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
}

/// Two are the same when their settings are: the files they name are read again when a
/// config is loaded, but connections made with the old contents stay valid.
impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.settings == other.settings
    }
}

impl Eq for ClientTls {}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

impl ClientTls {
    /// Reads the files `settings` names and builds the client configuration.
    pub fn new(settings: ClientTlsSettings) -> Result<ClientTls, SettingError> {
        let sni = match &settings.sni {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                SettingError::Sni(format!("{name:?} is not a host name or IP address"))
            })?),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| SettingError::Ca(err.to_string()))?;
        let builder = if settings.verify {
            let roots = match &settings.ca {
                Some(ca) => {
                    let mut roots = RootCertStore::empty();
                    for cert in load_certificates(ca).map_err(SettingError::Ca)? {
                        roots.add(cert).map_err(|err| {
                            SettingError::Ca(format!(
                                "{} holds a certificate that cannot be used: {err}",
                                ca.display()
                            ))
                        })?;
                    }
                    Arc::new(roots)
                }
                None => system_roots().map_err(SettingError::Ca)?,
            };
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified))
        };
        let mut config = match (&settings.cert, &settings.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = load_certificates(cert).map_err(SettingError::Cert)?;
                let key_der = load_private_key(key).map_err(SettingError::Key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|err| {
                        SettingError::Key(format!(
                            "{} cannot be used with the certificate in {}: {err}",
                            key.display(),
                            cert.display()
                        ))
                    })?
            }
            (Some(_), None) => {
                return Err(SettingError::Cert(
                    "a client certificate needs its `key` too".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(SettingError::Key(
                    "a client key needs its `cert` too".into(),
                ))
            }
        };
        config.alpn_protocols = settings.alpn.clone();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
            settings,
        })
    }

    /// Runs the client side of a handshake on `tcp` with an endpoint at `ip`, found under
    /// the host name `host` when it was given as one. The name verified (and sent as SNI)
    /// is `sni`, else `host`, else the address itself.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: Option<&str>,
        ip: IpAddr,
    ) -> io::Result<Stream> {
        let name = match (&self.sni, host) {
            (Some(sni), _) => sni.clone(),
            (None, Some(host)) => ServerName::try_from(host.to_owned())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid host name"))?,
            (None, None) => ServerName::IpAddress(ip.into()),
        };
        let tls = self.connector.connect(name, tcp).await?;
        Ok(Stream::tls(tls))
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "the system has no trusted root certificates (install ca-certificates), so set `ca`"
                        .into(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// `verify = false`: any certificate is taken, while the handshake's signatures are still
/// checked (the upstream holds the key of the certificate it showed, whoever it is).
#[derive(Debug)]
struct Unverified;

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
