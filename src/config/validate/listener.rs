//! Validating `[[listeners]]`: the address, trusted proxies, the limits on client
//! connections, and the certificates of an HTTPS listener, read from their files now so
//! that `baton check` and every reload name a bad one at its key.

use std::ops::Range;
use std::sync::Arc;

use ipnet::IpNet;
use rustls::sign::CertifiedKey;
use toml::Spanned;

use super::Validator;
use crate::config::raw::RawListener;
use crate::config::runtime::*;
use crate::tls::{LoadError, SniName};

impl Validator<'_> {
    /// Reads the certificate chain and key named by `cert` and `key` (relative to the
    /// config file), recording a problem at the file it is about.
    fn certified_key(
        &mut self,
        table: &str,
        span: Range<usize>,
        cert: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
    ) -> Option<Arc<CertifiedKey>> {
        let (Some(cert), Some(key)) = (cert, key) else {
            self.error(
                Some(span),
                format!("`{table}` needs both `cert` (a PEM certificate chain) and `key` (its PEM private key)"),
            );
            return None;
        };
        let cert_path = self.base_dir.join(cert.get_ref());
        let key_path = self.base_dir.join(key.get_ref());
        match crate::tls::load_certified_key(&cert_path, &key_path) {
            Ok(loaded) => Some(loaded),
            Err(LoadError::Cert(message)) => {
                self.error(Some(cert.span()), format!("`{table}.cert`: {message}"));
                None
            }
            Err(LoadError::Key(message)) => {
                self.error(Some(key.span()), format!("`{table}.key`: {message}"));
                None
            }
        }
    }
}

pub(super) fn build_listener(
    v: &mut Validator,
    index: usize,
    raw: &Spanned<RawListener>,
) -> Option<Listener> {
    let listener = raw.get_ref();
    let Some(listen) = &listener.listen else {
        v.error(
            Some(raw.span()),
            "a listener needs `listen`, e.g. listen = \"0.0.0.0:8080\"",
        );
        return None;
    };
    let listen = v.socket_addr("listen", listen)?;
    let mut trusted_proxies = Vec::new();
    for cidr in &listener.trusted_proxies {
        let text = cidr.get_ref();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => v.error(
                Some(cidr.span()),
                format!("{text:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address"),
            ),
        }
    }
    let max_header_bytes = match &listener.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(size) if size.get_ref().0 < MIN_MAX_HEADER_BYTES => {
            v.error(
                Some(size.span()),
                format!("`max_header_bytes` must be at least {MIN_MAX_HEADER_BYTES} bytes (8KiB)"),
            );
            return None;
        }
        Some(size) => size.get_ref().0,
    };
    let tls = build_listener_tls(v, raw)?;
    let max_concurrent_streams = match &listener.max_concurrent_streams {
        None => DEFAULT_MAX_CONCURRENT_STREAMS,
        Some(n) if *n.get_ref() == 0 => {
            v.error(
                Some(n.span()),
                "`max_concurrent_streams` must be at least 1",
            );
            return None;
        }
        Some(n) => *n.get_ref(),
    };
    Some(Listener {
        name: listener
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| format!("listener-{}", index + 1)),
        listen,
        tls,
        trusted_proxies,
        header_read_timeout: listener
            .header_read_timeout
            .map_or(DEFAULT_HEADER_READ_TIMEOUT, |d| d.0),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        idle_timeout: listener
            .idle_timeout
            .map_or(DEFAULT_CLIENT_IDLE_TIMEOUT, |d| d.0),
        max_concurrent_streams,
    })
}

/// A listener's certificates, read from their files now. `Some(None)`: no `tls`; `None`:
/// a problem was recorded.
fn build_listener_tls(
    v: &mut Validator,
    raw: &Spanned<RawListener>,
) -> Option<Option<Certificates>> {
    let listener = raw.get_ref();
    let Some(tls) = &listener.tls else {
        if let Some(first) = listener.certs.first() {
            v.error(
                Some(first.span()),
                "`listeners.certs` adds certificates to a TLS listener: set `tls = { cert, key }` on the listener first",
            );
            return None;
        }
        return Some(None);
    };
    let default = v.certified_key("tls", tls.span(), &tls.get_ref().cert, &tls.get_ref().key);
    let mut extra = Vec::new();
    for entry in &listener.certs {
        let sni_cert = entry.get_ref();
        let name = match &sni_cert.sni {
            None => {
                v.error(
                    Some(entry.span()),
                    "each `listeners.certs` entry needs `sni`, the name it serves: \"a.example.com\" or \"*.example.com\"",
                );
                None
            }
            Some(sni) => {
                let parsed = SniName::parse(sni.get_ref());
                if parsed.is_none() {
                    v.error(
                        Some(sni.span()),
                        format!(
                            "`sni` must be a host name such as \"a.example.com\" or \"*.example.com\", not {:?}",
                            sni.get_ref()
                        ),
                    );
                }
                parsed
            }
        };
        let key = v.certified_key("certs", entry.span(), &sni_cert.cert, &sni_cert.key);
        if let (Some(name), Some(key)) = (name, key) {
            extra.push((name, key));
        }
    }
    let mut certificates = Certificates::new(default?);
    for (name, key) in extra {
        certificates.add(name, key);
    }
    Some(Some(certificates))
}
