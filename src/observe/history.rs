//! The last fifteen minutes of an upstream, slot by slot, for the status page's charts:
//! during an incident an operator looks at a curve before a table.
//!
//! Every completed 5-second slot of the endpoints' [`Window`]s becomes one point (attempts
//! per second, the failed share, p99), with the most requests that waited for admission in
//! it. Points are taken by the gateway's upkeep, once a second, so reading them costs a
//! request nothing.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::window::{period, Window, SLOT};

/// Fifteen minutes of 5-second points.
pub const POINTS: usize = 180;

#[derive(Debug, Clone, Copy)]
struct Point {
    per_second: f64,
    error_rate: f64,
    p99_ms: Option<f64>,
    /// The most requests waiting for admission during the slot; `None` without a limit.
    queued: Option<usize>,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    points: VecDeque<Point>,
    /// The last slot period taken.
    last: u64,
}

impl History {
    /// Takes the slots completed since the last call from `windows`; `queued` is the most
    /// requests that waited for admission since then.
    pub fn sample<'a>(
        &self,
        windows: impl Iterator<Item = &'a Window> + Clone,
        queued: Option<usize>,
        now_ms: u64,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let complete = period(now_ms).saturating_sub(1);
        if complete <= inner.last {
            return;
        }
        // Slots missed (the clock jumped, or the first call): at most what windows hold.
        let first = inner.last.max(complete.saturating_sub(POINTS as u64 - 1)) + 1;
        for slot in first..=complete {
            let back = period(now_ms) - slot;
            let point = match Window::merged_slot(windows.clone(), now_ms, back) {
                Some(recent) => Point {
                    per_second: recent.per_second(),
                    error_rate: recent.error_rate(),
                    p99_ms: recent.p99.map(|d| d.as_secs_f64() * 1e3),
                    queued,
                },
                None => Point {
                    per_second: 0.0,
                    error_rate: 0.0,
                    p99_ms: None,
                    queued,
                },
            };
            if inner.points.len() == POINTS {
                inner.points.pop_front();
            }
            inner.points.push_back(point);
        }
        inner.last = complete;
    }

    /// The points, oldest first, as `status.json` has them.
    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let round = |v: f64, scale: f64| (v * scale).round() / scale;
        let points = &inner.points;
        json!({
            "interval_seconds": SLOT.as_secs(),
            "per_second": points.iter().map(|p| round(p.per_second, 100.0)).collect::<Vec<_>>(),
            "error_rate": points.iter().map(|p| round(p.error_rate, 1e4)).collect::<Vec<_>>(),
            "p99_ms": points.iter().map(|p| p.p99_ms.map(|v| round(v, 1e3))).collect::<Vec<_>>(),
            "queued": points.iter().map(|p| p.queued).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_completed_slot_becomes_one_point() {
        let window = Window::default();
        let slot_ms = SLOT.as_millis() as u64;
        let history = History::default();
        let start = 100 * slot_ms;
        for i in 0..10u64 {
            window.record(start + i * 100, Duration::from_millis(20), None);
        }
        history.sample(std::iter::once(&window), Some(3), start + 10);
        history.sample(std::iter::once(&window), Some(3), start + slot_ms + 10);
        history.sample(std::iter::once(&window), Some(3), start + slot_ms + 20);
        let json = history.to_json();
        let rates = json["per_second"].as_array().unwrap();
        assert_eq!(rates.last().unwrap(), 2.0, "10 requests in 5 s: {json}");
        assert_eq!(json["queued"].as_array().unwrap().last().unwrap(), 3);
        let p99 = json["p99_ms"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_f64()
            .unwrap();
        assert!((20.0..30.0).contains(&p99), "{p99}");
        let points = rates.len();
        history.sample(std::iter::once(&window), None, start + 3 * slot_ms + 10);
        assert_eq!(
            history.to_json()["per_second"].as_array().unwrap().len(),
            points + 2
        );
    }
}
