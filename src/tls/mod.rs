//! TLS, both ways: listeners that serve HTTPS ([`server`]) and connections to upstreams
//! that speak TLS ([`client`]). Certificates and keys are PEM files read when the config is
//! loaded, so `baton check` and every reload read them again.
//!
//! The crypto provider is *ring*: it builds in seconds on two cores where aws-lc-rs needs
//! a C toolchain and minutes, and its AES-GCM, ChaCha20-Poly1305, X25519 and P-256 code is
//! the assembly BoringSSL uses. TLS 1.2 and 1.3 only, with the provider's AEAD suites;
//! rustls has no renegotiation, no compression, and no 0-RTT unless asked for.

pub mod client;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as ring_provider;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{ClientTls, ClientTlsSettings};
pub use server::{accept, Certificates, Handshake, Sessions, SniName};

/// The crypto provider every TLS configuration is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider::default_provider())
}

/// Why a certificate and key pair could not be loaded, and which of the two files it is
/// about.
#[derive(Debug)]
pub enum LoadError {
    Cert(String),
    Key(String),
}

/// Reads a PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 RSA or
/// SEC1 EC) and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, LoadError> {
    let chain = load_certificates(cert).map_err(LoadError::Cert)?;
    let der = load_private_key(key).map_err(LoadError::Key)?;
    let signing = ring_provider::sign::any_supported_type(&der)
        .map_err(|err| LoadError::Key(format!("{} is not a usable key: {err}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        LoadError::Key(format!(
            "{} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// The certificates of a PEM file, in order; an error when there is none.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{} is not valid PEM: {err}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 RSA or SEC1 EC.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        format!(
            "{} holds no private key (PKCS#8, RSA or EC in PEM): {err}",
            path.display()
        )
    })
}
