//! Recent figures for the status page: requests, errors by cause and latency over the last
//! minute, not since start, so that an incident shows at once and its end shows too.
//!
//! A [`Window`] is a ring of 5-second slots of atomic counters; recording takes no lock.
//! A slot is cleared by the first record of its next turn, so a record racing that clear
//! may be lost: the figures are for reading at a glance, not for billing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::cause::Cause;
use crate::slots::take_turn;

const SLOT_MS: u64 = 5_000;
const SLOTS: usize = 12;
/// The span the figures cover.
pub const WINDOW: Duration = Duration::from_millis(SLOT_MS * SLOTS as u64);
/// Latency buckets: two per power of two of microseconds, up to 2^26 µs (67 s).
const BUCKETS: usize = 52;

struct Slot {
    /// The 5-second period the counts are for (see [`period`]); 0 for none yet.
    period: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
    latency: [AtomicU32; BUCKETS],
    causes: [AtomicU32; Cause::ALL.len()],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            period: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            causes: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for counter in self.latency.iter().chain(&self.causes) {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The length of one slot: the resolution of the figures over time.
pub const SLOT: Duration = Duration::from_millis(SLOT_MS);

/// The period of a moment on baton's clock ([`now_ms`](crate::upstream::endpoint::now_ms)), from 1.
pub fn period(now_ms: u64) -> u64 {
    now_ms / SLOT_MS + 1
}

fn bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let power = 63 - micros.leading_zeros() as usize;
    let upper_half = power > 0 && (micros >> (power - 1)) & 1 == 1;
    (2 * power + usize::from(upper_half)).min(BUCKETS - 1)
}

/// The largest latency in a bucket: bucket `2p` holds [2^p, 1.5 × 2^p) µs, bucket `2p + 1`
/// holds [1.5 × 2^p, 2^(p+1)) µs.
fn bucket_limit(index: usize) -> Duration {
    let power = (index / 2) as u32;
    let micros = match (index % 2, power) {
        (0, 0) => 1,
        (0, _) => (3u64 << (power - 1)) - 1,
        _ => (2u64 << power) - 1,
    };
    Duration::from_micros(micros.max(1))
}

pub struct Window {
    slots: Box<[Slot]>,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }
}

/// A window's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recent {
    pub requests: u64,
    pub errors: u64,
    /// The span the counts cover: the window, or less just after start.
    pub seconds: f64,
    /// Errors by cause, most frequent first.
    pub causes: Vec<(Cause, u64)>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Recent {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests > 0 {
            self.errors as f64 / self.requests as f64
        } else {
            0.0
        }
    }
}

impl Window {
    /// Records one request that took `latency` and, when it failed, why.
    pub fn record(&self, now_ms: u64, latency: Duration, cause: Option<Cause>) {
        let period = period(now_ms);
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        if take_turn(&slot.period, period) {
            slot.clear();
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        slot.latency[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        if let Some(cause) = cause {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            slot.causes[cause.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The figures of the last [`WINDOW`] at `now_ms`.
    pub fn recent(&self, now_ms: u64) -> Recent {
        Window::merged(std::iter::once(self), now_ms)
    }

    /// The figures of several windows together, percentiles included.
    pub fn merged<'a>(windows: impl IntoIterator<Item = &'a Window>, now_ms: u64) -> Recent {
        let current = period(now_ms);
        let oldest = current.saturating_sub(SLOTS as u64 - 1).max(1);
        let seconds = (now_ms.min(SLOT_MS * (SLOTS as u64 - 1) + now_ms % SLOT_MS)) as f64 / 1e3;
        Window::merged_periods(windows, oldest, current, seconds)
    }

    /// The figures of one whole slot, `back` slots before the one `now_ms` is in (1: the
    /// last complete one), while the windows still hold it.
    pub fn merged_slot<'a>(
        windows: impl IntoIterator<Item = &'a Window>,
        now_ms: u64,
        back: u64,
    ) -> Option<Recent> {
        let current = period(now_ms);
        let wanted = current.checked_sub(back).filter(|&p| p >= 1)?;
        (back < SLOTS as u64)
            .then(|| Window::merged_periods(windows, wanted, wanted, SLOT_MS as f64 / 1e3))
    }

    fn merged_periods<'a>(
        windows: impl IntoIterator<Item = &'a Window>,
        oldest: u64,
        current: u64,
        seconds: f64,
    ) -> Recent {
        let mut recent = Recent {
            seconds,
            ..Recent::default()
        };
        let mut latency = [0u64; BUCKETS];
        let mut causes = [0u64; Cause::ALL.len()];
        for window in windows {
            for slot in window.slots.iter() {
                let period = slot.period.load(Ordering::Acquire);
                if !(oldest..=current).contains(&period) {
                    continue;
                }
                recent.requests += u64::from(slot.requests.load(Ordering::Relaxed));
                recent.errors += u64::from(slot.errors.load(Ordering::Relaxed));
                for (total, counter) in latency.iter_mut().zip(&slot.latency) {
                    *total += u64::from(counter.load(Ordering::Relaxed));
                }
                for (total, counter) in causes.iter_mut().zip(&slot.causes) {
                    *total += u64::from(counter.load(Ordering::Relaxed));
                }
            }
        }
        recent.causes = Cause::ALL
            .iter()
            .zip(causes)
            .filter(|(_, n)| *n > 0)
            .map(|(cause, n)| (*cause, n))
            .collect();
        recent.causes.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        recent.p50 = quantile(&latency, 0.5);
        recent.p99 = quantile(&latency, 0.99);
        recent
    }
}

/// The latency below which a share `q` of the recorded ones fall (to the bucket's limit).
fn quantile(latency: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, count) in latency.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_limit(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_latencies() {
        for micros in [
            1u64, 2, 3, 5, 7, 100, 149, 150, 999, 1_000, 65_000, 1_000_000,
        ] {
            let latency = Duration::from_micros(micros);
            let index = bucket(latency);
            assert!(latency <= bucket_limit(index), "{micros} µs in {index}");
            if index > 0 {
                assert!(latency > bucket_limit(index - 1), "{micros} µs in {index}");
            }
        }
    }

    #[test]
    fn figures_cover_the_last_minute_only() {
        let window = Window::default();
        let start = 1_000_000;
        for i in 0..100 {
            let cause = (i % 10 == 0).then_some(Cause::UpstreamReset);
            window.record(
                start,
                Duration::from_millis(if i < 98 { 10 } else { 900 }),
                cause,
            );
        }
        let recent = window.recent(start + 1_000);
        assert_eq!((recent.requests, recent.errors), (100, 10));
        assert_eq!(recent.causes, [(Cause::UpstreamReset, 10)]);
        let p50 = recent.p50.unwrap();
        assert!(
            p50 >= Duration::from_millis(10) && p50 < Duration::from_millis(15),
            "{p50:?}"
        );
        assert!(recent.p99.unwrap() >= Duration::from_millis(900));
        assert!((recent.error_rate() - 0.1).abs() < 1e-9);
        // A minute later those requests are gone, and a new one does not bring them back.
        window.record(start + 61_000, Duration::from_millis(1), None);
        let later = window.recent(start + 61_000);
        assert_eq!((later.requests, later.errors), (1, 0));
    }
}
