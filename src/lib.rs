//! Baton, an HTTP gateway that keeps 502s rare, harmless and understood.
//!
//! A request travels through one module per stage, in this order:
//!
//! ```text
//! listener ─▶ route ─▶ maintenance ─▶ rate limit ─▶ cache ─▶ idempotency ─▶ read body ─▶ balance ─▶ admission ─▶ attempt ─▶ respond
//! (listener,  (route)  (proxy)        (limit::rate)  (cache)  (idempotency)  ahead        (upstream) (limit::     (attempt)  (body,
//!  server)                                                                   (body)          ▲        admission)    │        respond,
//!                                                                                            └────── retry ◀───────┘        cache store)
//!                                                                                                    (retry)
//! ```
//!
//! - [`listener`] accepts connections (with the TLS handshake of [`tls::server`] on an
//!   HTTPS listener); [`server`] serves HTTP/1.1 on each (checking every request head,
//!   writing every answer) and hands HTTP/2 (by ALPN, or h2c) to hyper's HTTP/2 server
//!   with the limits of [`server`]'s `h2` module;
//! - [`transport`] is the byte stream under both sides, plain TCP or TLS;
//! - [`timer`] keeps a connection's deadline (an idle client's, an upstream's answer's)
//!   in one timer that moves only when the deadline comes sooner;
//! - [`proxy`] is the handler: [`proxy::handle`] wraps the work of `handle_inner` and is the
//!   one place that turns a result into a response;
//! - [`route`] picks the route by host and longest path prefix;
//! - [`forward`] applies the header rules on the way in and out;
//! - [`limit`] holds clients to rate limits ([`limit::rate`], in memory or in Redis) and
//!   upstreams to `max_inflight` ([`limit::admission`], with the `"auto"` controller of
//!   [`limit::adaptive`]); [`store`] is the Redis they share with idempotency keys;
//! - [`cache`] answers GET and HEAD from stored responses (RFC 9111, with RFC 5861's
//!   stale answers), coalesces misses, and stores what may be stored as it streams;
//! - [`idempotency`] keys POSTs and PATCHes so that each is executed once, in memory or
//!   in Redis;
//! - [`codec`] decodes and encodes HTTP/1.1 bodies for both sides, and [`sock`] reads and
//!   writes their TCP sockets;
//! - [`upstream`] holds endpoints and their health ([`upstream::endpoint`],
//!   [`upstream::health`], [`upstream::dns`]), the balancers ([`upstream::balance`]), the
//!   [`upstream::pool`] that makes connections (TCP, then [`tls::client`]) and keeps them,
//!   and the clients behind the seam of [`upstream::client`]: baton's own HTTP/1.1
//!   ([`upstream::h1`]) and hyper's HTTP/2 ([`upstream::h2`]);
//! - [`failover`] tries endpoints until one answers, and [`retry`] decides what may be
//!   tried again, when, and within what budget;
//! - [`attempt`] tries one endpoint; [`classify`] turns io, TLS and hyper errors into a
//!   [`cause::Cause`] (the HTTP/2 client, [`upstream::h2`], classifies its stream errors);
//! - [`guard`] catches a panic around each request and each connection, so that a bug
//!   costs one request a 500 `internal-error` and nothing else;
//! - [`body`] streams bodies both ways and ends the exchange; [`respond`] builds every
//!   error response (a trailers-only status for gRPC); [`observe`] keeps metrics, the access log and the one-minute figures;
//!   [`admin`] serves them, with the status pages of [`status`].
//!
//! [`gateway::start`] is the entry point: it binds the listeners and the admin server from a
//! validated [`config::Config`] and returns a handle to shut it down. Everything built from
//! the config lives in a [`gateway::Snapshot`] that each request takes once; a reload
//! ([`gateway::Gateway::reload`]) builds the next one beside it and swaps it in whole.
//! [`probe`] is `baton check --probe`; [`demo`] is `baton demo`.

pub mod admin;
pub mod attempt;
pub mod body;
pub mod cache;
pub mod cause;
pub mod classify;
pub mod codec;
pub mod config;
pub mod demo;
pub mod failover;
pub mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod guard;
pub mod idempotency;
pub mod limit;
pub mod listener;
pub mod observe;
pub mod probe;
pub mod proxy;
pub mod respond;
pub mod retry;
pub mod route;
pub mod server;
pub mod slots;
pub mod sock;
pub mod spare;
pub mod status;
pub mod store;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use gateway::{start, Running};
