//! Where low-level failures (io, hyper) become a [`Cause`].
//!
//! Source errors are classified as they are, never flattened to strings first: a timeout
//! stays a timeout (504), a refusal a refusal (502).

use std::error::Error as StdError;
use std::io;

use crate::cause::Cause;

/// A failed TCP connect.
pub fn connect_error(err: &io::Error) -> Cause {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => Cause::UpstreamConnectRefused,
        io::ErrorKind::TimedOut => Cause::UpstreamConnectTimeout,
        _ => Cause::UpstreamUnreachable,
    }
}

/// A failed read of an upstream's response head. A TLS alert from the upstream means its
/// TLS layer refused the connection: in TLS 1.3 a client certificate it does not accept is
/// reported only after the client finished its side of the handshake, when the request
/// is already on its way, but the application behind never saw it.
pub fn upstream_read_error(err: &io::Error) -> Cause {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(_)) => Cause::UpstreamTlsFailed,
        _ => Cause::UpstreamReset,
    }
}

/// A failed read of the client's request body: broken framing (a bad chunk size, a body
/// shorter than its length) is the client's fault (400); anything else means it went away.
pub fn client_body_error(err: &hyper::Error) -> Cause {
    if err.is_parse() {
        return Cause::BadRequest;
    }
    if err.is_timeout() {
        return Cause::ClientTimeout;
    }
    match find_source::<io::Error>(err).map(io::Error::kind) {
        Some(io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => Cause::BadRequest,
        _ => Cause::ClientClosed,
    }
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_error(&refused), Cause::UpstreamConnectRefused);
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(connect_error(&timed_out), Cause::UpstreamConnectTimeout);
        let unreachable = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(connect_error(&unreachable), Cause::UpstreamUnreachable);
    }

    #[test]
    fn upstream_read_errors() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let alert = io::Error::new(io::ErrorKind::InvalidData, alert);
        assert_eq!(upstream_read_error(&alert), Cause::UpstreamTlsFailed);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(upstream_read_error(&reset), Cause::UpstreamReset);
    }
}
