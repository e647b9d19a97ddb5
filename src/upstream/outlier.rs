//! Passive outlier detection (SPEC §7) as the endpoints of one upstream share it: the
//! ejection slots that `max_ejected_percent` allows, the endpoints to look at before
//! ejecting the last usable one, and each endpoint's failure rate over `failure_window`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::endpoint::Endpoint;
use crate::config::Outlier;
use crate::slots::take_turn;

/// Outlier detection shared by the endpoints of one upstream.
pub struct OutlierPolicy {
    pub(super) config: Outlier,
    ejected: AtomicUsize,
    /// The upstream's endpoints now (they change with DNS), looked at only when one would
    /// be ejected: for the share `max_ejected_percent` allows, and because an ejection
    /// never takes away the last usable one while it still answers (it is degraded
    /// instead). Weak, since every endpoint holds this policy.
    members: Mutex<Vec<Weak<Endpoint>>>,
}

impl OutlierPolicy {
    /// A policy for an upstream whose endpoints are then given to [`set_endpoints`].
    ///
    /// [`set_endpoints`]: OutlierPolicy::set_endpoints
    pub fn new(config: Outlier) -> OutlierPolicy {
        OutlierPolicy {
            config,
            ejected: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
        }
    }

    /// The upstream's endpoints changed (a reload, or DNS).
    pub fn set_endpoints(&self, endpoints: &[Arc<Endpoint>]) {
        *self.members() = endpoints.iter().map(Arc::downgrade).collect();
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Endpoint>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an endpoint of the upstream other than `this` takes requests at `now`.
    pub(super) fn others_usable(&self, this: &Endpoint, now: u64) -> bool {
        self.members()
            .iter()
            .filter_map(Weak::upgrade)
            .any(|e| !std::ptr::eq(&*e, this) && e.is_usable(now))
    }

    /// How many endpoints may be ejected at once: the percentage, but at least one.
    fn max_ejected(&self) -> usize {
        if self.config.max_ejected_percent == 0 {
            return 0;
        }
        let endpoints = self.members().len();
        (endpoints * self.config.max_ejected_percent as usize / 100).max(1)
    }

    /// Takes one of the upstream's ejection slots, if one is free.
    pub(super) fn take_slot(&self) -> bool {
        let max = self.max_ejected();
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn free_slot(&self) {
        self.ejected.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether `rate` calls for an ejection: at least `min_requests` attempts in the window,
    /// of which at least `failure_percent` failed.
    pub(super) fn rate_exceeded(&self, rate: Rate) -> bool {
        let config = &self.config;
        config.failure_percent > 0
            && rate.attempts >= u64::from(config.min_requests.max(1))
            && rate.failures * 100 >= u64::from(config.failure_percent) * rate.attempts
    }
}

/// Slots the failure window is cut into: it slides by a tenth of its length.
const SLOTS: usize = 10;

/// Attempts and failures over the failure window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    pub attempts: u64,
    pub failures: u64,
}

impl Rate {
    /// The failed share, 0 to 100.
    pub fn percent(self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.failures as f64 * 100.0 / self.attempts as f64
        }
    }
}

struct Slot {
    /// The slot's period (see [`FailureRate::period`]); 0 for none yet.
    period: AtomicU64,
    attempts: AtomicU32,
    failures: AtomicU32,
}

/// One endpoint's attempts and failures over the last `failure_window`, in a ring of
/// slots of atomic counters ([`crate::slots`]): recording takes no lock, and an ejection
/// decision can be off by one attempt, never by a window.
pub struct FailureRate {
    slots: [Slot; SLOTS],
    slot_ms: u64,
}

impl FailureRate {
    pub fn new(window_ms: u64) -> FailureRate {
        FailureRate {
            slots: std::array::from_fn(|_| Slot {
                period: AtomicU64::new(0),
                attempts: AtomicU32::new(0),
                failures: AtomicU32::new(0),
            }),
            slot_ms: (window_ms / SLOTS as u64).max(1),
        }
    }

    fn period(&self, now: u64) -> u64 {
        now / self.slot_ms + 1
    }

    /// Counts one attempt at `now` ([`now_ms`](super::endpoint::now_ms)), and whether it
    /// failed. A body that fails after its head arrived is a failure of an attempt already
    /// counted: `attempt` is false then.
    pub fn record(&self, now: u64, attempt: bool, failed: bool) {
        let period = self.period(now);
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        if take_turn(&slot.period, period) {
            slot.attempts.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
        }
        if attempt {
            slot.attempts.fetch_add(1, Ordering::Relaxed);
        }
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The attempts and failures of the window that ends at `now`.
    pub fn rate(&self, now: u64) -> Rate {
        let current = self.period(now);
        let mut rate = Rate::default();
        for slot in &self.slots {
            let period = slot.period.load(Ordering::Acquire);
            if period != 0 && period + (SLOTS as u64) > current && period <= current {
                rate.attempts += u64::from(slot.attempts.load(Ordering::Relaxed));
                rate.failures += u64::from(slot.failures.load(Ordering::Relaxed));
            }
        }
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides() {
        let rate = FailureRate::new(10_000);
        for i in 0..10 {
            rate.record(1_000 + i * 1_000, true, i % 2 == 0);
        }
        assert_eq!(
            rate.rate(10_500),
            Rate {
                attempts: 10,
                failures: 5
            }
        );
        // Five seconds on, the first five attempts left the window.
        assert_eq!(rate.rate(15_500).attempts, 5);
        assert_eq!(rate.rate(60_000), Rate::default());
        rate.record(60_000, true, true);
        rate.record(60_000, false, true);
        assert_eq!(
            rate.rate(60_000),
            Rate {
                attempts: 1,
                failures: 2
            },
            "a body failure is not another attempt"
        );
    }
}
