//! What idempotency keys and rate limits share when several baton instances work together:
//! one Redis connection ([`redis::Redis`]).

pub mod redis;
