//! What `baton explain` prints for each cause: what it means, its likely causes, how an
//! operator fixes it, and whether a client may retry.

use super::Cause;

/// What `baton explain` prints about a cause.
pub struct Explanation {
    pub meaning: &'static str,
    pub likely: &'static str,
    pub fix: &'static str,
    pub client_retry: &'static str,
}

impl Cause {
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
                "An expired or self-signed certificate; a name that does not match `tls.sni` (or the endpoint's host name or address when `sni` is unset); a wrong `tls.ca`; the endpoint does not speak TLS; it wants a client certificate (`tls.cert`/`tls.key`) that baton did not show or it does not accept; with `protocol = \"h2\"`, it does not offer HTTP/2 by ALPN.",
                "Inspect the endpoint's certificate (`openssl s_client -connect ADDR -servername NAME -alpn h2`); fix `tls.sni`, `tls.ca` or the client certificate in the upstream; `baton check --probe` shows the handshake error per endpoint.",
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
                "A back-end HTTP/2 bug; a mismatch between `protocol` and what the back-end speaks; a back-end that refused the stream (REFUSED_STREAM) on every endpoint tried, when it is overloaded.",
                "Check the upstream's `protocol`; look at the back-end's HTTP/2 server logs and its concurrent-stream limit.",
                "Only if the request is idempotent or carries an Idempotency-Key, unless Baton-Delivery is none (the stream was refused and nothing was processed).",
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
            Cause::NotCached => e(
                "The request carried `Cache-Control: only-if-cached` and the route's cache held no response that could answer it, so baton answered 504 without contacting the upstream (RFC 9111 §5.2.1.7).",
                "A client that wants only what is cached (an offline mode, a prefetch); the page was never fetched, was evicted, purged, or is too stale to serve.",
                "Nothing on the gateway: this is the client's choice. A longer freshness (`max-age`, `cache.default_ttl`) keeps pages available longer.",
                "Yes, without `only-if-cached` to let baton fetch the page.",
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
