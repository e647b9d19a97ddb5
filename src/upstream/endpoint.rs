//! One address of an upstream, and what baton knows of its health (SPEC §7).
//!
//! An endpoint is usable unless it is draining (by hand), unhealthy (active checks) or
//! ejected (passive outlier detection: `outlier.consecutive_failures` failures in a row, or
//! `failure_percent` of at least `min_requests` attempts within `failure_window`, for
//! `base_ejection` × the number of times it was ejected, at most `max_ejection`, and never
//! more than `max_ejected_percent` of the upstream at once). The upstream's last usable
//! endpoint is not ejected while it still answers some requests: it is `degraded` and keeps
//! its traffic, since a partly working back-end beats a certain 503. Every flag is an
//! atomic, so checking an endpoint on the request path takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

pub use super::outlier::OutlierPolicy;
use super::outlier::{FailureRate, Rate};
use super::pool::Pool;
use crate::cause::Cause;
use crate::config::{EndpointConfig, Keepalive};
use crate::observe::metrics::Cached;
use crate::observe::window::Window;

/// Milliseconds on baton's monotonic clock (tokio's, so tests may pause it), from 1.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `at`, for a caller that has just read the clock anyway.
pub fn ms_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| at);
    at.saturating_duration_since(start).as_millis() as u64 + 1
}

/// How fast the latency estimate forgets: the weight of the past halves about every 7 s.
const LATENCY_DECAY: Duration = Duration::from_secs(10);
/// The latency a failure counts as in the estimate.
const FAILURE_LATENCY: Duration = Duration::from_secs(1);
/// The least share a ramping endpoint gets, so that it is tried at all.
const MIN_RAMP: f64 = 0.1;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An endpoint's state, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Draining,
    Unhealthy,
    Ejected,
    /// It fails enough to be ejected, but is the upstream's last usable endpoint.
    Degraded,
    Healthy,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draining => "draining",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
            State::Degraded => "degraded",
            State::Healthy => "healthy",
        }
    }
}

pub struct Endpoint {
    pub addr: SocketAddr,
    /// The host name this address came from, for an endpoint found by DNS.
    pub host: Option<Arc<str>>,
    /// `addr` as text: the metrics label and the `Host` sent when the route does not
    /// preserve the client's.
    pub label: Arc<str>,
    pub host_header: HeaderValue,
    /// Changed by a reload; the balancer reads it when it is built.
    weight: AtomicU32,
    pub pool: Pool,
    /// Exchanges in progress, from the first byte sent until the response body ended.
    pub inflight: AtomicU64,
    /// Attempts that got a response head.
    pub ok: AtomicU64,
    /// This endpoint's `upstream_attempts{outcome="ok"}` counter.
    pub ok_attempts: Cached<Counter>,
    /// Attempts that failed, by any cause.
    pub failed: AtomicU64,
    /// Attempts of the last minute, for the status page.
    pub recent: Window,
    /// Times ejected, and marked unhealthy by health checks, since start.
    pub ejected_total: AtomicU64,
    pub unhealthy_total: AtomicU64,
    outlier: Arc<OutlierPolicy>,
    draining: AtomicBool,
    unhealthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// When the last ejection ends or ended; kept after it ends, to tell a repeat offender.
    last_ejection_until: AtomicU64,
    /// Ejections in a row, each longer than the one before.
    ejections: AtomicU32,
    /// The cause of the failure that ejected it last, as an index into [`Cause::ALL`].
    ejection_cause: AtomicU8,
    /// The failed share (in tenths of a percent) that ejected it last; 0 when failures in
    /// a row did.
    ejection_permille: AtomicU32,
    /// Attempts and failures over `outlier.failure_window`.
    rate: FailureRate,
    /// [`now_ms`] until which it counts as degraded; 0 when it is not.
    degraded_until: AtomicU64,
    /// Peak-EWMA of response-head latency, in milliseconds (f64 bits), and when it was
    /// last updated ([`now_ms`]).
    latency: AtomicU64,
    latency_at: AtomicU64,
    /// When the endpoint came back (ejection over, healthy again), for slow start; 0 when
    /// it is not ramping up.
    ramp_from: AtomicU64,
    /// Active health checks passed, and failed, in a row.
    checks_passed: AtomicU32,
    checks_failed: AtomicU32,
    /// Set when the endpoint left its upstream (its address vanished from DNS).
    retired: AtomicBool,
}

/// What `/status.json` says of an ejection.
pub struct Ejection {
    pub remaining: Duration,
    pub cause: Cause,
    pub times: u32,
    /// The failed share of the window that ejected it, when its failure rate did.
    pub failed_percent: Option<f64>,
}

impl Endpoint {
    pub fn new(
        config: &EndpointConfig,
        keepalive: Keepalive,
        outlier: Arc<OutlierPolicy>,
    ) -> Endpoint {
        let label = config.addr.to_string();
        let window = millis(outlier.config.failure_window);
        Endpoint {
            addr: config.addr,
            host: None,
            host_header: HeaderValue::from_str(&label)
                .unwrap_or(HeaderValue::from_static("localhost")),
            label: Arc::from(label),
            weight: AtomicU32::new(config.weight),
            pool: Pool::new(keepalive),
            inflight: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            ok_attempts: Cached::default(),
            failed: AtomicU64::new(0),
            recent: Window::default(),
            ejected_total: AtomicU64::new(0),
            unhealthy_total: AtomicU64::new(0),
            outlier,
            draining: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            last_ejection_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejection_cause: AtomicU8::new(0),
            ejection_permille: AtomicU32::new(0),
            rate: FailureRate::new(window),
            degraded_until: AtomicU64::new(0),
            latency: AtomicU64::new(0f64.to_bits()),
            latency_at: AtomicU64::new(0),
            ramp_from: AtomicU64::new(0),
            checks_passed: AtomicU32::new(0),
            checks_failed: AtomicU32::new(0),
            retired: AtomicBool::new(false),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// The endpoint left its upstream: its health checks stop, and an ejection it was
    /// serving gives its slot back.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let until = self.ejected_until.swap(0, Ordering::AcqRel);
        if until != 0 {
            self.outlier.free_slot();
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// An active health check passed or failed at `now`: `unhealthy` failures in a row mark
    /// the endpoint unhealthy, `healthy` passes in a row bring it back (ramping up).
    pub fn record_check(&self, passed: bool, healthy: u32, unhealthy: u32, now: u64) {
        if passed {
            self.checks_failed.store(0, Ordering::Relaxed);
            let passes = self.checks_passed.fetch_add(1, Ordering::Relaxed) + 1;
            if passes >= healthy && self.unhealthy.swap(false, Ordering::AcqRel) {
                self.start_ramp(now);
                tracing::info!(endpoint = %self.addr, passes, "endpoint healthy again");
            }
        } else {
            self.checks_passed.store(0, Ordering::Relaxed);
            let failures = self.checks_failed.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= unhealthy && !self.unhealthy.swap(true, Ordering::AcqRel) {
                self.unhealthy_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.addr, failures, "endpoint unhealthy: its health checks fail");
            }
        }
    }

    /// Health checks passed and failed in a row, for the status page.
    pub fn checks(&self) -> (u32, u32) {
        (
            self.checks_passed.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    /// Whether a new request may go to this endpoint at `now` ([`now_ms`]).
    pub fn is_usable(&self, now: u64) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && !self.unhealthy.load(Ordering::Relaxed)
            && !self.is_ejected(now)
    }

    pub fn state(&self, now: u64) -> State {
        if self.draining.load(Ordering::Relaxed) {
            State::Draining
        } else if self.unhealthy.load(Ordering::Relaxed) {
            State::Unhealthy
        } else if self.is_ejected(now) {
            State::Ejected
        } else if now < self.degraded_until.load(Ordering::Relaxed) {
            State::Degraded
        } else {
            State::Healthy
        }
    }

    /// True while ejected; the first look after the ejection ran out ends it.
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.outlier.free_slot();
            self.ramp_from.store(now, Ordering::Relaxed);
            tracing::info!(endpoint = %self.addr, "ejection over; endpoint back in rotation");
        }
        false
    }

    /// The share of its weight the endpoint gets at `now`: below 1 while it ramps up over
    /// `slow_start` after coming back, never below `MIN_RAMP` (a tenth).
    pub fn ramp(&self, now: u64, slow_start: Duration) -> f64 {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 || slow_start.is_zero() {
            return 1.0;
        }
        let progress = now.saturating_sub(from) as f64 / slow_start.as_millis() as f64;
        if progress >= 1.0 {
            self.ramp_from.store(0, Ordering::Relaxed);
            return 1.0;
        }
        progress.max(MIN_RAMP)
    }

    /// Starts slow start now (a new or recovered endpoint).
    pub fn start_ramp(&self, now: u64) {
        self.ramp_from.store(now, Ordering::Relaxed);
    }

    /// The peak-EWMA latency estimate in milliseconds, decayed to `now`.
    pub fn latency_estimate(&self, now: u64) -> f64 {
        let value = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.latency_at.load(Ordering::Relaxed)) as f64;
        value * (-elapsed / LATENCY_DECAY.as_millis() as f64).exp()
    }

    /// Folds a response-head latency into the estimate: a higher one is taken at once
    /// (peak), a lower one blends in with a weight that grows with the time since the last.
    pub fn observe_latency(&self, latency: Duration, now: u64) {
        let sample = latency.as_secs_f64() * 1000.0;
        let current = self.latency_estimate(now);
        let elapsed = now.saturating_sub(self.latency_at.load(Ordering::Relaxed)) as f64;
        let next = if sample > current {
            sample
        } else {
            let keep = (-elapsed / LATENCY_DECAY.as_millis() as f64).exp();
            current * keep + sample * (1.0 - keep)
        };
        self.latency.store(next.to_bits(), Ordering::Relaxed);
        self.latency_at.store(now, Ordering::Relaxed);
    }

    /// How long until the endpoint may be used again, when only an ejection keeps it out.
    pub fn usable_in(&self, now: u64) -> Option<Duration> {
        if self.draining.load(Ordering::Relaxed) || self.unhealthy.load(Ordering::Relaxed) {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Acquire);
        Some(Duration::from_millis(until.saturating_sub(now)))
    }

    pub fn ejection(&self, now: u64) -> Option<Ejection> {
        if !self.is_ejected(now) {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Acquire);
        let cause = Cause::ALL
            .get(usize::from(self.ejection_cause.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Cause::UpstreamReset);
        let permille = self.ejection_permille.load(Ordering::Relaxed);
        Some(Ejection {
            remaining: Duration::from_millis(until.saturating_sub(now)),
            cause,
            times: self.ejections.load(Ordering::Relaxed),
            failed_percent: (permille > 0).then(|| f64::from(permille) / 10.0),
        })
    }

    /// The span of [`Endpoint::failure_rate`] (`outlier.failure_window`).
    pub fn failure_window(&self) -> Duration {
        self.outlier.config.failure_window
    }

    /// Attempts and failures over the failure window that ends at `now`, for the status
    /// page.
    pub fn failure_rate(&self, now: u64) -> Rate {
        self.rate.rate(now)
    }

    /// An attempt got a response head at `now`.
    pub fn record_success(&self, now: u64) {
        self.rate.record(now, true, false);
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt (or a response body) failed with `cause` at `now`. It ejects the endpoint
    /// after `consecutive_failures` in a row, or when `failure_percent` of at least
    /// `min_requests` attempts in the window failed.
    pub fn record_failure(&self, cause: Cause, now: u64) {
        if !cause.counts_against_endpoint() {
            return;
        }
        // A failure costs like a very slow answer, or `ewma` would favour an endpoint
        // that fails fast.
        self.observe_latency(FAILURE_LATENCY, now);
        // A body that failed belongs to an attempt that was counted when its head came.
        self.rate.record(now, !cause.is_mid_body(), true);
        let policy = &self.outlier;
        let threshold = policy.config.consecutive_failures;
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let in_a_row = threshold > 0 && failures >= threshold;
        let rate = self.rate.rate(now);
        let by_rate = policy.rate_exceeded(rate);
        if (in_a_row || by_rate) && !self.is_ejected(now) {
            self.eject_or_degrade(cause, now, rate, by_rate);
        }
    }

    /// Ejects the endpoint, unless it is the upstream's last usable one and still answers
    /// some requests: then it is marked degraded for a window and keeps its traffic.
    fn eject_or_degrade(&self, cause: Cause, now: u64, rate: Rate, by_rate: bool) {
        let answers_some = rate.failures < rate.attempts;
        if answers_some && !self.outlier.others_usable(self, now) {
            let window = millis(self.outlier.config.failure_window).max(1);
            let was = self.degraded_until.swap(now + window, Ordering::Relaxed);
            if was <= now {
                tracing::warn!(
                    endpoint = %self.addr,
                    %cause,
                    failed_percent = rate.percent(),
                    "endpoint degraded: it fails enough to be ejected, but it is the last usable one"
                );
            }
            return;
        }
        let permille = if by_rate {
            (rate.percent() * 10.0).round().max(1.0) as u32
        } else {
            0
        };
        self.eject(cause, now, permille);
    }

    fn eject(&self, cause: Cause, now: u64, permille: u32) {
        let config = &self.outlier.config;
        if !self.outlier.take_slot() {
            tracing::warn!(
                endpoint = %self.addr,
                %cause,
                "endpoint keeps failing but max_ejected_percent is reached; not ejected"
            );
            return;
        }
        // An endpoint that stayed out of trouble for max_ejection starts over.
        let last_until = self.last_ejection_until.load(Ordering::Relaxed);
        if now.saturating_sub(last_until) > millis(config.max_ejection) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let times = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let length = config
            .base_ejection
            .saturating_mul(times)
            .min(config.max_ejection);
        let until = now + millis(length).max(1);
        let index = cause.index();
        self.ejection_cause
            .store(u8::try_from(index).unwrap_or(0), Ordering::Relaxed);
        self.ejection_permille.store(permille, Ordering::Relaxed);
        self.degraded_until.store(0, Ordering::Relaxed);
        // The window is kept: back from a short ejection, an endpoint that fails again
        // while its earlier failures are still in the window goes straight back out (the
        // next ejection longer), instead of being allowed `min_requests` more attempts.
        self.last_ejection_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected_until.store(until, Ordering::Release);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            endpoint = %self.addr,
            %cause,
            seconds = length.as_secs_f64(),
            times,
            failed_percent = f64::from(permille) / 10.0,
            "endpoint ejected"
        );
    }

    /// Stops (`true`) or resumes sending new requests; requests in flight finish.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Outlier;

    /// Endpoints that know each other, as an upstream's do.
    fn endpoints(n: usize, outlier: Outlier) -> Vec<Arc<Endpoint>> {
        let policy = Arc::new(OutlierPolicy::new(outlier));
        let all: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    &EndpointConfig {
                        addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                        weight: 1,
                    },
                    Keepalive {
                        idle: Duration::from_secs(1),
                        max_idle_per_endpoint: 1,
                    },
                    policy.clone(),
                ))
            })
            .collect();
        policy.set_endpoints(&all);
        all
    }

    fn outlier(failures: u32, percent: u32) -> Outlier {
        Outlier {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: percent,
            // Off unless a test turns it on.
            failure_percent: 0,
            ..Outlier::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_and_ejections_grow_and_cap() {
        let all = endpoints(2, outlier(3, 50));
        let e = &all[0];
        let mut now = 1000;
        for _ in 0..2 {
            e.record_failure(Cause::UpstreamReset, now);
        }
        assert!(e.is_usable(now));
        e.record_success(now);
        e.record_failure(Cause::UpstreamReset, now);
        e.record_failure(Cause::UpstreamReset, now);
        assert!(e.is_usable(now), "a success resets the count");
        e.record_failure(Cause::UpstreamReset, now);
        assert_eq!(e.state(now), State::Ejected);
        assert_eq!(e.ejection(now).unwrap().remaining, Duration::from_secs(10));
        assert_eq!(e.ejection(now).unwrap().cause, Cause::UpstreamReset);
        now += 10_000;
        assert!(e.is_usable(now));
        for _ in 0..3 {
            e.record_failure(Cause::UpstreamConnectRefused, now);
        }
        assert_eq!(e.ejection(now).unwrap().remaining, Duration::from_secs(20));
        now += 20_000;
        for _ in 0..3 {
            e.record_failure(Cause::UpstreamConnectRefused, now);
        }
        assert_eq!(
            e.ejection(now).unwrap().remaining,
            Duration::from_secs(25),
            "capped"
        );
    }

    fn by_rate() -> Outlier {
        Outlier {
            failure_percent: 5,
            min_requests: 20,
            ..outlier(5, 50)
        }
    }

    /// One failure in ten, never five in a row.
    fn one_in_ten(e: &Endpoint, attempts: u64, now: u64) {
        for i in 0..attempts {
            if i % 10 == 9 {
                e.record_failure(Cause::UpstreamInvalidResponse, now);
            } else {
                e.record_success(now);
            }
        }
    }

    #[test]
    fn a_failure_rate_ejects_though_failures_never_come_in_a_row() {
        let all = endpoints(3, by_rate());
        one_in_ten(&all[0], 19, 1_000);
        assert_eq!(all[0].state(1_000), State::Healthy, "19 attempts: too few");
        one_in_ten(&all[0], 1, 1_000);
        all[0].record_failure(Cause::UpstreamInvalidResponse, 1_000);
        assert_eq!(all[0].state(1_000), State::Ejected);
        let ejection = all[0].ejection(1_000).unwrap();
        assert_eq!(ejection.cause, Cause::UpstreamInvalidResponse);
        assert_eq!(ejection.failed_percent, Some(9.5), "2 of 21");
        // Attempts older than the window do not count.
        one_in_ten(&all[1], 19, 1_000);
        all[1].record_failure(Cause::UpstreamInvalidResponse, 12_000);
        assert_eq!(all[1].state(12_000), State::Healthy);
    }

    #[test]
    fn the_last_usable_endpoint_is_degraded_while_it_answers_and_ejected_when_it_does_not() {
        let all = endpoints(2, by_rate());
        all[1].set_draining(true);
        for _ in 0..3 {
            one_in_ten(&all[0], 10, 1_000);
        }
        all[0].record_failure(Cause::UpstreamInvalidResponse, 1_000);
        assert_eq!(all[0].state(1_000), State::Degraded);
        assert!(all[0].is_usable(1_000), "it keeps its traffic");
        // Once another endpoint is back, the next failure ejects it.
        all[1].set_draining(false);
        all[0].record_failure(Cause::UpstreamInvalidResponse, 1_500);
        assert_eq!(all[0].state(1_500), State::Ejected);

        // A lone endpoint that answers nothing is ejected as usual.
        let lone = endpoints(1, by_rate());
        for _ in 0..5 {
            lone[0].record_failure(Cause::UpstreamConnectRefused, 1_000);
        }
        assert_eq!(lone[0].state(1_000), State::Ejected);
    }

    #[test]
    fn client_faults_do_not_count() {
        let e = &endpoints(1, outlier(1, 100))[0];
        e.record_failure(Cause::ClientClosed, 1);
        e.record_failure(Cause::RequestTooLarge, 1);
        assert!(e.is_usable(1));
    }

    #[test]
    fn max_ejected_percent_holds() {
        let all = endpoints(4, outlier(1, 50));
        for e in &all {
            e.record_failure(Cause::UpstreamReset, 1);
        }
        let ejected = all.iter().filter(|e| !e.is_usable(1)).count();
        assert_eq!(ejected, 2);
        // When one returns, another may take its slot.
        assert!(all.iter().filter(|e| e.is_usable(100_000)).count() == 4);
        all[3].record_failure(Cause::UpstreamReset, 100_000);
        assert!(!all[3].is_usable(100_000));
    }

    #[test]
    fn a_retired_endpoint_gives_back_its_ejection_slot() {
        let all = endpoints(2, outlier(1, 50));
        all[0].record_failure(Cause::UpstreamReset, 1);
        all[1].record_failure(Cause::UpstreamReset, 1);
        assert!(
            !all[0].is_usable(1) && all[1].is_usable(1),
            "one slot for two"
        );
        all[0].retire();
        all[1].record_failure(Cause::UpstreamReset, 1);
        assert!(!all[1].is_usable(1), "the slot was given back");
    }

    #[test]
    fn draining_wins_over_everything() {
        let e = &endpoints(1, outlier(1, 100))[0];
        e.set_draining(true);
        assert_eq!(e.state(1), State::Draining);
        assert!(!e.is_usable(1));
        e.set_draining(false);
        assert!(e.is_usable(1));
    }
}
