//! Why baton answered a request itself: the closed set of cause codes of SPEC §4.
//!
//! Every response baton generates carries exactly one [`Cause`]. Every method here matches
//! exhaustively, with no wildcard arm, so a new cause forces a decision about its status,
//! its delivery, its retry rule and the words `baton explain` prints for it.

use std::fmt;

use http::{Method, StatusCode};

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
    /// Mid-body: the upstream's body ended before its declared length.
    UpstreamBodyTruncated,
    /// Mid-body: the upstream sent nothing for `timeouts.idle` while streaming the body.
    UpstreamIdleTimeout,
    /// Mid-body: the client went away before the exchange finished.
    ClientClosed,
    /// Baton itself failed (a panic caught on the request's path).
    InternalError,
}

/// What `baton explain` prints about a cause.
pub struct Explanation {
    pub meaning: &'static str,
    pub likely: &'static str,
    pub fix: &'static str,
    pub client_retry: &'static str,
}

impl Cause {
    pub const ALL: [Cause; 26] = [
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
            | Cause::UpstreamIdleTimeout => StatusCode::GATEWAY_TIMEOUT,
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
            Cause::UpstreamBodyTruncated => "The answer was cut off",
            Cause::UpstreamIdleTimeout => "The answer stalled",
            Cause::ClientClosed => "The client went away",
            Cause::InternalError => "The gateway failed while handling the request",
        }
    }

    /// What `baton explain` prints.
    pub fn explain(self) -> Explanation {
        let e = |meaning, likely, fix, client_retry| Explanation {
            meaning,
            likely,
            fix,
            client_retry,
        };
        match self {
            Cause::UpstreamConnectRefused => e(
                "The endpoint actively refused the TCP connection (RST to SYN): nothing listens on that address and port.",
                "The back-end process is down, restarting or being deployed; it listens on another port; a firewall rejects the connection.",
                "Check that the back-end runs and listens on the configured address (`ss -ltnp`); fix `endpoints` in the upstream; `baton check --probe` tries every endpoint.",
                "Yes: nothing was sent. Baton already moved on to the other endpoints of the upstream before answering.",
            ),
            Cause::UpstreamUnreachable => e(
                "The TCP connection could not be made for a reason other than a refusal or a timeout: no route to the host, network down, address not available.",
                "The endpoint's host is down or off the network; a routing or firewall change; the address is wrong.",
                "Check the route from the baton host to the endpoint (`ip route get ADDR`, `ping`); fix the address in `endpoints`.",
                "Yes: nothing was sent.",
            ),
            Cause::UpstreamDnsFailed => e(
                "The endpoint's host name could not be resolved, and no earlier address is known.",
                "A typo in the host name; the DNS server is down or unreachable; the record was deleted.",
                "Resolve the name from the baton host (`getent hosts NAME`); fix the name or the `[dns]` servers.",
                "Yes: nothing was sent.",
            ),
            Cause::UpstreamTlsFailed => e(
                "The TLS handshake with the endpoint failed, or its certificate did not verify.",
                "An expired or self-signed certificate; a name that does not match `tls.sni`; a wrong `tls.ca`; the endpoint does not speak TLS.",
                "Inspect the endpoint's certificate (`openssl s_client -connect ADDR -servername NAME`); fix `tls.sni` or `tls.ca` in the upstream.",
                "Yes: nothing was sent, but the same failure is likely until the certificate is fixed.",
            ),
            Cause::UpstreamReset => e(
                "The connection to the endpoint was closed or reset after the request was sent and before a complete response head arrived.",
                "The back-end crashed or was killed while handling the request; it closes idle connections sooner than baton expects; a proxy or load balancer in between cut the connection.",
                "Look at the back-end's logs and crash reports for the request ID; if the back-end closes idle connections, lower `keepalive.idle` below its timeout.",
                "Only if the request is idempotent or carries an Idempotency-Key: the back-end may have acted on it.",
            ),
            Cause::UpstreamInvalidResponse => e(
                "The endpoint answered something that is not a valid HTTP/1.1 response head.",
                "A back-end bug that writes to the socket directly; a non-HTTP service on that port; a TLS service spoken to in plain text.",
                "Reproduce with `curl -v` against the endpoint; check that the upstream's port and `protocol` are right.",
                "Only if the request is idempotent or carries an Idempotency-Key: the back-end may have acted on it.",
            ),
            Cause::UpstreamProtocolError => e(
                "The endpoint broke the HTTP/2 protocol (a stream or connection error).",
                "A back-end HTTP/2 bug; a mismatch between `protocol` and what the back-end speaks.",
                "Check the upstream's `protocol`; look at the back-end's HTTP/2 server logs.",
                "Only if the request is idempotent or carries an Idempotency-Key.",
            ),
            Cause::UpstreamConnectTimeout => e(
                "The TCP connection to the endpoint was not established within `timeouts.connect`.",
                "The host is down and packets are dropped; the back-end's listen backlog is full (it is overloaded and not accepting); a firewall drops packets.",
                "Check the back-end's load and accept queue (`ss -ltn`: Recv-Q against Send-Q); check the network path; raise `timeouts.connect` only if the network is really that slow.",
                "Yes: nothing was sent.",
            ),
            Cause::UpstreamResponseTimeout => e(
                "The endpoint accepted the request but sent no response head within `timeouts.response_header` (or the route's `timeouts.total` ran out).",
                "The back-end is overloaded, stuck on a lock or a slow database query, or the request legitimately takes longer than the timeout.",
                "Find the request ID in the back-end's logs and see where it waited; raise `timeouts.response_header` for routes that are slow by design.",
                "Only if the request is idempotent or carries an Idempotency-Key: the back-end may still be working on it.",
            ),
            Cause::NoHealthyUpstream => e(
                "Every endpoint of the upstream is down, ejected, unhealthy or draining, so baton did not send the request anywhere.",
                "All back-ends crashed or are failing their health checks; a deploy took every instance down at once; every endpoint was drained by hand.",
                "Open the admin status page to see each endpoint's state and why; bring a back-end up, or undrain one.",
                "Yes, after Retry-After: nothing was sent.",
            ),
            Cause::UpstreamOverloaded => e(
                "The upstream's `max_inflight` was reached and the request could not wait in the queue (full, or its timeout passed).",
                "A traffic spike; back-ends slowed down so requests pile up; `max_inflight` set too low.",
                "Add back-end capacity, or raise `max_inflight` / `queue` if the back-ends can take more.",
                "Yes, after Retry-After: nothing was sent.",
            ),
            Cause::Maintenance => e(
                "The route is in maintenance mode; baton answers without contacting the upstream.",
                "An operator set `maintenance = true` or toggled it on the admin API.",
                "Set `maintenance = false` (or toggle it on the admin API) when the work is done.",
                "Yes, after Retry-After: nothing was sent.",
            ),
            Cause::IdempotencyStoreUnavailable => e(
                "The store that guards Idempotency-Keys could not be reached, so baton refused to forward a keyed request unguarded.",
                "Redis is down, unreachable or refusing connections.",
                "Check the `[store]` URL and the Redis server; service returns by itself when the store does.",
                "Yes: nothing was sent.",
            ),
            Cause::RateLimited => e(
                "The client exceeded the route's rate limit.",
                "A client sending faster than `rate_limit` allows; many users behind one address when keyed by client IP.",
                "Raise `rate_limit` or key it differently if legitimate traffic is being limited.",
                "Yes, after Retry-After.",
            ),
            Cause::IdempotencyKeyInFlight => e(
                "A request with the same Idempotency-Key is still being processed.",
                "A client retried before its first request finished.",
                "Nothing to fix on the gateway; clients should wait for the first answer.",
                "Yes, later: the first request's answer will then be replayed.",
            ),
            Cause::IdempotencyOutcomeUnknown => e(
                "An earlier request with this Idempotency-Key reached the upstream, but no answer came back, so baton cannot tell whether it took effect.",
                "The back-end failed or timed out after receiving the earlier request.",
                "Check in the back-end whether the operation happened; set `on_unknown = \"forward\"` only if the back-end deduplicates keys itself.",
                "No: check whether the operation happened first.",
            ),
            Cause::IdempotencyKeyReused => e(
                "This Idempotency-Key was already used with a different request (method, host, path or body).",
                "A client bug that reuses keys.",
                "Nothing to fix on the gateway; clients must use a new key for a new request.",
                "No: not with this key.",
            ),
            Cause::NoRoute => e(
                "No route matches the request's host and path.",
                "A typo in the URL; a route missing for this host or path prefix.",
                "Add a `[[routes]]` entry for the host and path, or fix the `host` / `path_prefix` of an existing one.",
                "No: the same request will not match later either.",
            ),
            Cause::RequestTooLarge => e(
                "The request body is larger than the route's `max_body_bytes`.",
                "An upload bigger than the route allows.",
                "Raise `max_body_bytes` on the route if such bodies are legitimate.",
                "No: not with the same body.",
            ),
            Cause::HeadersTooLarge => e(
                "The request line and headers are larger than the listener's `max_header_bytes`.",
                "Oversized cookies; a client or proxy adding many headers.",
                "Raise `max_header_bytes` on the listener if such heads are legitimate.",
                "No: not with the same headers.",
            ),
            Cause::BadRequest => e(
                "The request is malformed or its framing is ambiguous (both Content-Length and Transfer-Encoding, conflicting lengths, a bad chunk size, bare CR or LF, obsolete line folding), so baton refused to forward it.",
                "A broken client; a request-smuggling attempt.",
                "Nothing to fix on the gateway; find the client by its address in the access log.",
                "No: not unchanged.",
            ),
            Cause::ClientTimeout => e(
                "The request head did not arrive within the listener's `header_read_timeout`.",
                "A slow or stalled client; a slowloris attack.",
                "Raise `header_read_timeout` only for clients on very slow links.",
                "Yes.",
            ),
            Cause::UpstreamBodyTruncated => e(
                "The upstream's response body ended before its declared length, or the connection broke while streaming it. The status was already sent, so baton aborted the response to tell the client it is incomplete.",
                "The back-end crashed mid-response; a network interruption.",
                "Look at the back-end's logs for the request ID.",
                "Only if the request is idempotent.",
            ),
            Cause::UpstreamIdleTimeout => e(
                "The upstream sent no body data for `timeouts.idle` while streaming a response. Baton aborted the response.",
                "The back-end stalled mid-response.",
                "Look at the back-end for the request ID; raise `timeouts.idle` for slow streaming responses.",
                "Only if the request is idempotent.",
            ),
            Cause::ClientClosed => e(
                "The client closed the connection before the exchange finished.",
                "A user navigated away or a client timed out.",
                "Nothing on the gateway; if many clients give up, the back-ends are too slow.",
                "Not applicable: the client is gone.",
            ),
            Cause::InternalError => e(
                "Baton itself failed while handling the request: a bug (a panic) that it caught. Every other request and connection went on. `Baton-Delivery` says whether the request had reached an upstream.",
                "A bug in baton, met by this request's particular input or timing.",
                "Find the request ID in baton's log (the panic is logged with it) and report it with that line; `baton_panics_total` counts them.",
                "If `Baton-Delivery` is `none`, yes; if `sent`, only if the request is idempotent or carries an Idempotency-Key.",
            ),
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
