//! `max_inflight = "auto"` (SPEC §9): the limit an upstream takes, found from the latency
//! baton measures to its response heads.
//!
//! **Why a gradient and not AIMD.** AIMD (add one per good window, cut by a fixed share on
//! a drop) needs a drop to act, and an overloaded back-end that queues inside itself does not
//! drop: it gets slow. Latency is the signal that comes first, so the limit follows the
//! ratio of the upstream's *unloaded* latency to the latency it shows now, as Netflix's
//! concurrency-limits (Gradient2) and Envoy's adaptive concurrency filter do:
//!
//! - **Windows.** Samples (the time to each response head; a timed-out attempt counts as the
//!   time it took) are averaged over a window at least [`MIN_WINDOW_MS`] and one latency long,
//!   with at least [`MIN_SAMPLES`] samples. The limit moves once per window, so it never moves
//!   faster than its measurements allow, and a window sees the effect of the move before.
//! - **Baseline.** The unloaded latency is the lowest window average seen since the last
//!   probe. A baseline measured under load would be too high and let the limit run away, so
//!   baton measures it in a *probe*: at start (a quarter of the initial limit, which is only
//!   a guess) and every [`PROBE_INTERVAL_MS`] (half of the learned limit, which a back-end
//!   that queues past its capacity keeps under twice it), the limit drops for one window,
//!   once the requests above it finished ([`PROBE_DRAIN_MS`] at most). A back-end that got
//!   slower for good (a new release) is recognised at the next probe.
//! - **Move.** With the window's average within [`TOLERANCE`] of the baseline, the back-end
//!   is not queueing: the limit grows by its square root — but only when requests reached
//!   half of it, since an idle upstream proves nothing about a higher one. Above the tolerance
//!   the limit is multiplied by `tolerance × baseline / average`, at most halved in one window:
//!   a back-end twice as slow as unloaded gets a limit that, at the same throughput, keeps its
//!   latency within the tolerance.
//!
//! Envoy's filter probes at a fixed concurrency (3) on a timer; a share of the limit keeps
//! large upstreams busy during the probe (in bench/overload, `"auto"` came within 5% of the
//! best fixed limit's goodput probing at a quarter, within 2% at a half), and probing only
//! once the requests above it have finished
//! keeps the probe's samples clean. The limit is kept between [`MIN_LIMIT`] and [`MAX_LIMIT`]
//! and starts at [`INITIAL_LIMIT`].

/// Where the limit starts.
pub const INITIAL_LIMIT: f64 = 20.0;
pub const MIN_LIMIT: f64 = 1.0;
pub const MAX_LIMIT: f64 = 10_000.0;
/// Latency up to this multiple of the baseline counts as unloaded: enough for the jitter of
/// a healthy back-end, little enough that a queue inside it shows.
pub const TOLERANCE: f64 = 1.25;
/// The shortest window, and the fewest samples it takes to move the limit.
pub const MIN_WINDOW_MS: u64 = 100;
pub const MIN_SAMPLES: u32 = 10;
/// The most one window may take the limit down: to half.
const MAX_DECREASE: f64 = 0.5;
/// How often the baseline is measured again, and what share of the limit a probe keeps:
/// the first, of a limit not learned yet, and the later ones.
pub const PROBE_INTERVAL_MS: u64 = 10_000;
const FIRST_PROBE_SHARE: f64 = 0.25;
const PROBE_SHARE: f64 = 0.5;
/// How long a probe waits for the requests above its limit to finish before it measures.
pub const PROBE_DRAIN_MS: u64 = 2_000;

/// The controller of one upstream. Time is in milliseconds of baton's clock.
#[derive(Debug)]
pub struct Gradient {
    limit: f64,
    window: Window,
    /// The unloaded latency, ms; `None` until the first probe measured it.
    baseline: Option<f64>,
    /// The last window's average, ms: how long the next window must at least be.
    last_average: f64,
    probe: Option<Probe>,
    /// When the last probe ended.
    probed_at: u64,
}

#[derive(Debug, Default)]
struct Window {
    start: u64,
    sum: f64,
    count: u32,
    /// The most requests in flight while the window ran.
    max_inflight: u32,
}

#[derive(Debug)]
struct Probe {
    /// The share of the limit it keeps.
    share: f64,
    started: u64,
    /// Measuring: the requests above the probe's limit have finished.
    measuring: bool,
}

impl Gradient {
    /// A controller at [`INITIAL_LIMIT`], probing first.
    pub fn new(now: u64) -> Gradient {
        Gradient {
            limit: INITIAL_LIMIT,
            window: Window {
                start: now,
                ..Window::default()
            },
            baseline: None,
            last_average: 0.0,
            probe: Some(Probe {
                share: FIRST_PROBE_SHARE,
                started: now,
                measuring: false,
            }),
            probed_at: now,
        }
    }

    /// The limit now: a share of the learned one while probing.
    pub fn limit(&self) -> u32 {
        let limit = match &self.probe {
            Some(probe) => (self.limit * probe.share).max(MIN_LIMIT),
            None => self.limit,
        };
        limit as u32
    }

    /// The learned limit (what a probe returns to), for the status page.
    pub fn learned(&self) -> f64 {
        self.limit
    }

    /// The unloaded latency measured by the last probe, ms.
    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// Notes that `inflight` requests are in flight at `now` (after an admission).
    pub fn inflight(&mut self, inflight: u32, now: u64) {
        self.window.max_inflight = self.window.max_inflight.max(inflight);
        let limit = self.limit();
        if let Some(probe) = &mut self.probe {
            if !probe.measuring && (inflight <= limit || now >= probe.started + PROBE_DRAIN_MS) {
                probe.measuring = true;
                self.window = Window {
                    start: now,
                    ..Window::default()
                };
            }
        }
    }

    /// Takes one latency sample (ms) at `now`, with `inflight` requests in flight; moves the
    /// limit when it closes a window.
    pub fn sample(&mut self, latency_ms: f64, inflight: u32, now: u64) {
        self.inflight(inflight, now);
        if self.probe.as_ref().is_some_and(|p| !p.measuring) {
            // Requests admitted before the probe: their latency is not the unloaded one.
            return;
        }
        let window = &mut self.window;
        window.sum += latency_ms;
        window.count += 1;
        let length = MIN_WINDOW_MS.max(self.last_average as u64);
        if window.count < MIN_SAMPLES || now < window.start + length {
            return;
        }
        let average = window.sum / f64::from(window.count);
        let max_inflight = window.max_inflight;
        self.window = Window {
            start: now,
            max_inflight: inflight,
            ..Window::default()
        };
        self.last_average = average;
        if self.probe.take().is_some() {
            self.baseline = Some(average);
            self.probed_at = now;
            return;
        }
        let baseline = match self.baseline {
            Some(baseline) if baseline <= average => baseline,
            _ => {
                self.baseline = Some(average);
                average
            }
        };
        let gradient = TOLERANCE * baseline / average;
        if gradient >= 1.0 {
            if f64::from(max_inflight) >= self.limit / 2.0 {
                self.limit += self.limit.sqrt();
            }
        } else {
            self.limit *= gradient.max(MAX_DECREASE);
        }
        self.limit = self.limit.clamp(MIN_LIMIT, MAX_LIMIT);
        if now >= self.probed_at + PROBE_INTERVAL_MS {
            self.probe = Some(Probe {
                share: PROBE_SHARE,
                started: now,
                measuring: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A back-end that serves `capacity` requests at once in `service` ms each and queues
    /// the rest inside itself, kept busy by `clients` closed-loop clients behind the
    /// controller: returns the limits the controller set, one per window.
    fn run(capacity: f64, service: f64, clients: u32, seconds: u64) -> Vec<u32> {
        let mut controller = Gradient::new(0);
        let mut limits = Vec::new();
        let mut now = 0u64;
        while now < seconds * 1000 {
            let inflight = controller.limit().min(clients);
            // Little's law for a saturated queue: latency grows with what is sent past the
            // back-end's capacity.
            let latency = service * (f64::from(inflight) / capacity).max(1.0);
            let step = (latency / f64::from(inflight)).max(1.0);
            now += step as u64;
            let before = controller.limit();
            controller.sample(latency, inflight, now);
            if controller.limit() != before {
                limits.push(controller.limit());
            }
        }
        limits
    }

    fn median(mut values: Vec<u32>) -> u32 {
        values.sort_unstable();
        values[values.len() / 2]
    }

    #[test]
    fn the_limit_settles_near_a_queueing_back_ends_capacity() {
        let limits = run(4.0, 100.0, 32, 60);
        let settled = median(limits[limits.len() / 2..].to_vec());
        assert!((4..=8).contains(&settled), "limits {limits:?}");
    }

    #[test]
    fn the_limit_grows_while_latency_stays_flat_and_stops_at_the_maximum() {
        // A back-end that never slows down: the limit grows as long as clients fill it.
        let limits = run(1e9, 10.0, 100_000, 120);
        assert_eq!(*limits.last().unwrap(), MAX_LIMIT as u32, "{limits:?}");
    }

    #[test]
    fn an_idle_upstream_does_not_grow_its_limit() {
        let limits = run(1e9, 10.0, 2, 60);
        assert!(
            limits.iter().all(|&l| l <= INITIAL_LIMIT as u32),
            "{limits:?}"
        );
    }

    #[test]
    fn a_window_needs_its_samples_before_the_limit_moves() {
        let mut controller = Gradient::new(0);
        controller.inflight(1, 0);
        for i in 0..MIN_SAMPLES - 1 {
            controller.sample(10.0, 1, 1000 + u64::from(i));
        }
        // Still probing: the first window has too few samples to end it.
        assert_eq!(controller.baseline(), None);
        controller.sample(10.0, 1, 2000);
        assert_eq!(controller.baseline(), Some(10.0));
    }
}
