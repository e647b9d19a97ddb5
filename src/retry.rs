//! The retry policy (SPEC §6): which failures may be tried again, how long to wait before
//! the next try, and the budget that keeps retries from swamping a struggling upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

use crate::cause::{Cause, Delivery};
use crate::config::runtime::Retry;
use crate::slots::take_turn;
use crate::upstream::endpoint::now_ms;

/// The window over which the budget counts requests and retries.
const WINDOW_SECONDS: u64 = 10;

/// Whether a failed try may be tried again. Nothing sent: always. Sent: only for idempotent
/// methods (or any, with `non_idempotent`), and only if the body can be sent again.
pub fn may_retry(
    cause: Cause,
    delivery: Delivery,
    method: &Method,
    policy: &Retry,
    body_kept: bool,
) -> bool {
    match delivery {
        Delivery::None => cause.counts_against_endpoint() || cause == Cause::UpstreamDnsFailed,
        Delivery::Sent => {
            let method_allows = policy.non_idempotent || cause.retryable(method);
            let after_send = cause.retryable(&Method::GET);
            body_kept && method_allows && after_send
        }
    }
}

/// How long to wait before retry number `n` (0 for the first): a random time up to
/// `backoff` × 2^n, at most `max_backoff` ("full jitter").
pub fn backoff(policy: &Retry, n: u32) -> Duration {
    let ceiling = policy
        .backoff
        .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
        .min(policy.max_backoff);
    ceiling.mul_f64(crate::upstream::balance::unit_random())
}

/// One second of the budget's window.
#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Requests and retries of one route over the last `WINDOW_SECONDS` (10 s): retries may be at
/// most `budget_percent` of the requests, plus `min_per_second`.
#[derive(Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        if take_turn(&bucket.second, second) {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    fn now_second() -> u64 {
        now_ms() / 1000
    }

    /// Counts a request made at `now_ms` (see `upstream::endpoint::now_ms`).
    pub fn record_request(&self, now_ms: u64) {
        self.bucket(now_ms / 1000)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_spend(&self, policy: &Retry) -> bool {
        let now = Self::now_second();
        let (mut requests, mut retries) = (0, 0);
        for bucket in &self.buckets {
            let second = bucket.second.load(Ordering::Acquire);
            if second + WINDOW_SECONDS > now && second <= now {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = requests * u64::from(policy.budget_percent) / 100
            + u64::from(policy.min_per_second) * WINDOW_SECONDS;
        if retries >= allowed {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Retry {
        Retry {
            attempts: 3,
            non_idempotent: false,
            budget_percent: 20,
            min_per_second: 1,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
        }
    }

    #[test]
    fn what_may_be_retried() {
        let p = policy();
        assert!(may_retry(
            Cause::UpstreamConnectRefused,
            Delivery::None,
            &Method::POST,
            &p,
            false
        ));
        assert!(may_retry(
            Cause::UpstreamReset,
            Delivery::Sent,
            &Method::GET,
            &p,
            true
        ));
        assert!(!may_retry(
            Cause::UpstreamReset,
            Delivery::Sent,
            &Method::GET,
            &p,
            false
        ));
        assert!(!may_retry(
            Cause::UpstreamReset,
            Delivery::Sent,
            &Method::POST,
            &p,
            true
        ));
        let any = Retry {
            non_idempotent: true,
            ..p
        };
        assert!(may_retry(
            Cause::UpstreamReset,
            Delivery::Sent,
            &Method::POST,
            &any,
            true
        ));
        assert!(!may_retry(
            Cause::ClientClosed,
            Delivery::None,
            &Method::GET,
            &p,
            true
        ));
        assert!(!may_retry(
            Cause::RequestTooLarge,
            Delivery::Sent,
            &Method::PUT,
            &p,
            true
        ));
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let p = policy();
        for n in 0..10 {
            let ceiling = (Duration::from_millis(25) * 2u32.pow(n)).min(Duration::from_millis(250));
            for _ in 0..50 {
                assert!(backoff(&p, n) <= ceiling);
            }
        }
        assert!(backoff(&p, 40) <= Duration::from_millis(250));
    }

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::default();
        let p = policy();
        for _ in 0..100 {
            budget.record_request(now_ms());
        }
        // 20% of 100, plus 1 per second over the 10 s window.
        let spent = (0..100).take_while(|_| budget.try_spend(&p)).count();
        assert_eq!(spent, 30);
    }
}
