//! Why baton answered a request itself: the closed set of cause codes of SPEC §4.
//!
//! Every response baton generates carries exactly one [`Cause`]. Every method here matches
//! exhaustively, with no wildcard arm, so a new cause forces a decision about its status,
//! its delivery, its retry rule and the words `baton explain` prints for it ([`explain`]).

use std::fmt;

use http::{Method, StatusCode};

mod explain;
pub use explain::Explanation;

/// Whether any byte of the request reached an upstream (the `Baton-Delivery` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delivery {
    /// No byte reached any upstream: a retry cannot duplicate anything.
    None,
    /// An upstream received the request and may have acted on it.
    Sent,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::None => "none",
            Delivery::Sent => "sent",
        }
    }
}

/// The status logged for a client that went away before it was answered.
const CLIENT_CLOSED_STATUS: u16 = 499;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    UpstreamConnectRefused,
    UpstreamUnreachable,
    UpstreamDnsFailed,
    UpstreamTlsFailed,
    UpstreamReset,
    UpstreamInvalidResponse,
    UpstreamProtocolError,
    UpstreamConnectTimeout,
    UpstreamResponseTimeout,
    NoHealthyUpstream,
    UpstreamOverloaded,
    Maintenance,
    IdempotencyStoreUnavailable,
    RateLimited,
    IdempotencyKeyInFlight,
    IdempotencyOutcomeUnknown,
    IdempotencyKeyReused,
    NoRoute,
    RequestTooLarge,
    HeadersTooLarge,
    BadRequest,
    ClientTimeout,
    /// The request said `only-if-cached` and no stored response could answer it.
    NotCached,
    /// Mid-body: the upstream's body ended before its declared length.
    UpstreamBodyTruncated,
    /// Mid-body: the upstream sent nothing for `timeouts.idle` while streaming the body.
    UpstreamIdleTimeout,
    /// Mid-body: the client went away before the exchange finished.
    ClientClosed,
    /// Baton itself failed (a panic caught on the request's path).
    InternalError,
}

impl Cause {
    pub const ALL: [Cause; 27] = [
        Cause::UpstreamConnectRefused,
        Cause::UpstreamUnreachable,
        Cause::UpstreamDnsFailed,
        Cause::UpstreamTlsFailed,
        Cause::UpstreamReset,
        Cause::UpstreamInvalidResponse,
        Cause::UpstreamProtocolError,
        Cause::UpstreamConnectTimeout,
        Cause::UpstreamResponseTimeout,
        Cause::NoHealthyUpstream,
        Cause::UpstreamOverloaded,
        Cause::Maintenance,
        Cause::IdempotencyStoreUnavailable,
        Cause::RateLimited,
        Cause::IdempotencyKeyInFlight,
        Cause::IdempotencyOutcomeUnknown,
        Cause::IdempotencyKeyReused,
        Cause::NoRoute,
        Cause::RequestTooLarge,
        Cause::HeadersTooLarge,
        Cause::BadRequest,
        Cause::ClientTimeout,
        Cause::NotCached,
        Cause::UpstreamBodyTruncated,
        Cause::UpstreamIdleTimeout,
        Cause::ClientClosed,
        Cause::InternalError,
    ];

    /// The cause code, as in `Baton-Error` and the access log.
    /// The cause's place in [`Cause::ALL`], for tables indexed by cause.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn code(self) -> &'static str {
        match self {
            Cause::UpstreamConnectRefused => "upstream-connect-refused",
            Cause::UpstreamUnreachable => "upstream-unreachable",
            Cause::UpstreamDnsFailed => "upstream-dns-failed",
            Cause::UpstreamTlsFailed => "upstream-tls-failed",
            Cause::UpstreamReset => "upstream-reset",
            Cause::UpstreamInvalidResponse => "upstream-invalid-response",
            Cause::UpstreamProtocolError => "upstream-protocol-error",
            Cause::UpstreamConnectTimeout => "upstream-connect-timeout",
            Cause::UpstreamResponseTimeout => "upstream-response-timeout",
            Cause::NoHealthyUpstream => "no-healthy-upstream",
            Cause::UpstreamOverloaded => "upstream-overloaded",
            Cause::Maintenance => "maintenance",
            Cause::IdempotencyStoreUnavailable => "idempotency-store-unavailable",
            Cause::RateLimited => "rate-limited",
            Cause::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Cause::IdempotencyOutcomeUnknown => "idempotency-outcome-unknown",
            Cause::IdempotencyKeyReused => "idempotency-key-reused",
            Cause::NoRoute => "no-route",
            Cause::RequestTooLarge => "request-too-large",
            Cause::HeadersTooLarge => "headers-too-large",
            Cause::BadRequest => "bad-request",
            Cause::ClientTimeout => "client-timeout",
            Cause::NotCached => "not-cached",
            Cause::UpstreamBodyTruncated => "upstream-body-truncated",
            Cause::UpstreamIdleTimeout => "upstream-idle-timeout",
            Cause::ClientClosed => "client-closed",
            Cause::InternalError => "internal-error",
        }
    }

    pub fn from_code(code: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|cause| cause.code() == code)
    }

    /// The status of the response baton generates for this cause (SPEC §4). The three
    /// mid-body causes never produce a response of their own: the status is already sent,
    /// so theirs is what the failure would have been before the head went out, and 499 for
    /// a client that left before it could be answered.
    pub fn status(self) -> StatusCode {
        match self {
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamDnsFailed
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::UpstreamBodyTruncated => StatusCode::BAD_GATEWAY,
            Cause::UpstreamConnectTimeout
            | Cause::UpstreamResponseTimeout
            | Cause::UpstreamIdleTimeout
            | Cause::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Cause::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Cause::IdempotencyKeyInFlight | Cause::IdempotencyOutcomeUnknown => {
                StatusCode::CONFLICT
            }
            Cause::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Cause::NoRoute => StatusCode::NOT_FOUND,
            Cause::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Cause::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Cause::BadRequest => StatusCode::BAD_REQUEST,
            // Nobody receives it: the client is gone. 499 is the code operators know from
            // nginx logs for exactly this.
            Cause::ClientClosed => {
                StatusCode::from_u16(CLIENT_CLOSED_STATUS).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Cause::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Cause::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The delivery this cause implies when nothing more specific is known: failures up to
    /// and including the connect are `none`; failures after the request was written are
    /// `sent`; an internal error, what the exchange had reached (the caller knows). An attempt that knows better (a pooled connection found dead before any byte
    /// was written) overrides it.
    pub fn delivery(self) -> Delivery {
        match self {
            Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::UpstreamResponseTimeout
            | Cause::UpstreamBodyTruncated
            | Cause::UpstreamIdleTimeout => Delivery::Sent,
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamDnsFailed
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamConnectTimeout
            | Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable
            | Cause::RateLimited
            | Cause::IdempotencyKeyInFlight
            | Cause::IdempotencyOutcomeUnknown
            | Cause::IdempotencyKeyReused
            | Cause::NoRoute
            | Cause::RequestTooLarge
            | Cause::HeadersTooLarge
            | Cause::BadRequest
            | Cause::ClientTimeout
            | Cause::NotCached
            | Cause::ClientClosed
            | Cause::InternalError => Delivery::None,
        }
    }

    /// Whether baton itself may try this failure again on another endpoint (SPEC §6):
    /// failures before sending for any method; failures after sending only for idempotent
    /// methods (and, once the retry policy lands, only with a fully buffered body).
    pub fn retryable(self, method: &Method) -> bool {
        match self {
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamDnsFailed
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamConnectTimeout => true,
            Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::UpstreamResponseTimeout => is_idempotent(method),
            Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable
            | Cause::RateLimited
            | Cause::IdempotencyKeyInFlight
            | Cause::IdempotencyOutcomeUnknown
            | Cause::IdempotencyKeyReused
            | Cause::NoRoute
            | Cause::RequestTooLarge
            | Cause::HeadersTooLarge
            | Cause::BadRequest
            | Cause::ClientTimeout
            | Cause::NotCached
            | Cause::UpstreamBodyTruncated
            | Cause::UpstreamIdleTimeout
            | Cause::ClientClosed
            | Cause::InternalError => false,
        }
    }

    /// Whether the endpoint did not answer in time: it is not tried again for the same
    /// request (SPEC §6).
    pub fn is_timeout(self) -> bool {
        match self {
            Cause::UpstreamConnectTimeout | Cause::UpstreamResponseTimeout => true,
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamDnsFailed
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable
            | Cause::RateLimited
            | Cause::IdempotencyKeyInFlight
            | Cause::IdempotencyOutcomeUnknown
            | Cause::IdempotencyKeyReused
            | Cause::NoRoute
            | Cause::RequestTooLarge
            | Cause::HeadersTooLarge
            | Cause::BadRequest
            | Cause::ClientTimeout
            | Cause::NotCached
            | Cause::UpstreamBodyTruncated
            | Cause::UpstreamIdleTimeout
            | Cause::ClientClosed
            | Cause::InternalError => false,
        }
    }

    /// Whether the failure came after the response head went out (SPEC §4): it cannot
    /// change the status, and the attempt it ends had already answered.
    pub fn is_mid_body(self) -> bool {
        match self {
            Cause::UpstreamBodyTruncated | Cause::UpstreamIdleTimeout | Cause::ClientClosed => true,
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamDnsFailed
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::UpstreamConnectTimeout
            | Cause::UpstreamResponseTimeout
            | Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable
            | Cause::RateLimited
            | Cause::IdempotencyKeyInFlight
            | Cause::IdempotencyOutcomeUnknown
            | Cause::IdempotencyKeyReused
            | Cause::NoRoute
            | Cause::RequestTooLarge
            | Cause::HeadersTooLarge
            | Cause::BadRequest
            | Cause::ClientTimeout
            | Cause::NotCached
            | Cause::InternalError => false,
        }
    }

    /// Whether this failure counts against the endpoint for passive outlier detection
    /// (SPEC §7): connect failures, resets, invalid responses and timeouts. The client's own
    /// faults and baton's own decisions do not.
    pub fn counts_against_endpoint(self) -> bool {
        match self {
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamTlsFailed
            | Cause::UpstreamReset
            | Cause::UpstreamInvalidResponse
            | Cause::UpstreamProtocolError
            | Cause::UpstreamConnectTimeout
            | Cause::UpstreamResponseTimeout
            | Cause::UpstreamBodyTruncated
            | Cause::UpstreamIdleTimeout => true,
            Cause::UpstreamDnsFailed
            | Cause::NoHealthyUpstream
            | Cause::UpstreamOverloaded
            | Cause::Maintenance
            | Cause::IdempotencyStoreUnavailable
            | Cause::RateLimited
            | Cause::IdempotencyKeyInFlight
            | Cause::IdempotencyOutcomeUnknown
            | Cause::IdempotencyKeyReused
            | Cause::NoRoute
            | Cause::RequestTooLarge
            | Cause::HeadersTooLarge
            | Cause::BadRequest
            | Cause::ClientTimeout
            | Cause::NotCached
            | Cause::ClientClosed
            | Cause::InternalError => false,
        }
    }

    /// A short title, for the problem+json `title` and the HTML page heading.
    pub fn title(self) -> &'static str {
        match self {
            Cause::UpstreamConnectRefused => "The site's server refused the connection",
            Cause::UpstreamUnreachable => "The site's server could not be reached",
            Cause::UpstreamDnsFailed => "The site's server could not be found",
            Cause::UpstreamTlsFailed => "A secure connection to the site's server failed",
            Cause::UpstreamReset => "The site's server dropped the connection",
            Cause::UpstreamInvalidResponse => "The site's server sent an invalid answer",
            Cause::UpstreamProtocolError => "The site's server broke the protocol",
            Cause::UpstreamConnectTimeout => "The site's server did not pick up in time",
            Cause::UpstreamResponseTimeout => "The site's server took too long to answer",
            Cause::NoHealthyUpstream => "The site is temporarily unavailable",
            Cause::UpstreamOverloaded => "The site is too busy right now",
            Cause::Maintenance => "The site is down for maintenance",
            Cause::IdempotencyStoreUnavailable => "The site cannot safely take this request now",
            Cause::RateLimited => "Too many requests",
            Cause::IdempotencyKeyInFlight => "This request is still being processed",
            Cause::IdempotencyOutcomeUnknown => "The outcome of an earlier try is unknown",
            Cause::IdempotencyKeyReused => "This idempotency key was used for another request",
            Cause::NoRoute => "Page not found",
            Cause::RequestTooLarge => "The request is too large",
            Cause::HeadersTooLarge => "The request headers are too large",
            Cause::BadRequest => "The request was malformed",
            Cause::ClientTimeout => "The request took too long to arrive",
            Cause::NotCached => "The page is not in the cache",
            Cause::UpstreamBodyTruncated => "The answer was cut off",
            Cause::UpstreamIdleTimeout => "The answer stalled",
            Cause::ClientClosed => "The client went away",
            Cause::InternalError => "The gateway failed while handling the request",
        }
    }
}

/// Idempotent methods of RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_the_place_in_all() {
        for (i, cause) in Cause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i, "{cause:?}");
        }
    }

    /// The table of SPEC §4, row by row.
    #[test]
    fn statuses_and_deliveries_match_the_spec() {
        let table: &[(&str, u16, Delivery)] = &[
            ("upstream-connect-refused", 502, Delivery::None),
            ("upstream-unreachable", 502, Delivery::None),
            ("upstream-dns-failed", 502, Delivery::None),
            ("upstream-tls-failed", 502, Delivery::None),
            ("upstream-reset", 502, Delivery::Sent),
            ("upstream-invalid-response", 502, Delivery::Sent),
            ("upstream-protocol-error", 502, Delivery::Sent),
            ("upstream-connect-timeout", 504, Delivery::None),
            ("upstream-response-timeout", 504, Delivery::Sent),
            ("no-healthy-upstream", 503, Delivery::None),
            ("upstream-overloaded", 503, Delivery::None),
            ("maintenance", 503, Delivery::None),
            ("idempotency-store-unavailable", 503, Delivery::None),
            ("rate-limited", 429, Delivery::None),
            ("idempotency-key-in-flight", 409, Delivery::None),
            ("idempotency-outcome-unknown", 409, Delivery::None),
            ("idempotency-key-reused", 422, Delivery::None),
            ("no-route", 404, Delivery::None),
            ("request-too-large", 413, Delivery::None),
            ("headers-too-large", 431, Delivery::None),
            ("bad-request", 400, Delivery::None),
            ("client-timeout", 408, Delivery::None),
            ("not-cached", 504, Delivery::None),
            ("upstream-body-truncated", 502, Delivery::Sent),
            ("upstream-idle-timeout", 504, Delivery::Sent),
            ("client-closed", 499, Delivery::None),
            ("internal-error", 500, Delivery::None),
        ];
        assert_eq!(table.len(), Cause::ALL.len(), "every cause is in the table");
        for &(code, status, delivery) in table {
            let cause = Cause::from_code(code).expect(code);
            assert_eq!(cause.code(), code);
            assert_eq!(cause.status().as_u16(), status, "{code}");
            assert_eq!(cause.delivery(), delivery, "{code}");
        }
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        for cause in Cause::ALL {
            assert_eq!(Cause::from_code(cause.code()), Some(cause));
        }
        assert_eq!(Cause::from_code("no-such-cause"), None);
    }

    #[test]
    fn only_idempotent_methods_retry_after_sending() {
        assert!(Cause::UpstreamConnectRefused.retryable(&Method::POST));
        assert!(Cause::UpstreamReset.retryable(&Method::GET));
        assert!(!Cause::UpstreamReset.retryable(&Method::POST));
        assert!(!Cause::UpstreamResponseTimeout.retryable(&Method::PATCH));
        assert!(!Cause::BadRequest.retryable(&Method::GET));
    }
}
