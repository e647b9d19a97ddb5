//! Admission to an upstream (SPEC §9): at most `max_inflight` requests at once; the rest
//! wait in a first-come, first-served queue of `queue.size` for up to `queue.timeout`, and
//! a full queue or a passed deadline refuses the request before anything is sent.
//!
//! A request holds its [`Permit`] from admission until its response body ended (the
//! back-end works until then), retries included: a retry goes on in the place its request
//! already holds, so retries never take the upstream past its limit.
//!
//! **No standing queue.** A queue absorbs bursts; under overload that lasts, a queue with a
//! one-second timeout only adds a second to every answer and sends the back-end requests
//! whose clients may have given up. So the queue watches how long the requests it lets go
//! have waited, as CoDel does (RFC 8289, with its defaults): once every request it let go
//! for [`STANDING_AFTER`] had waited more than [`STANDING_WAIT`], the queue is standing, and
//! when a place frees, the requests at its head that waited longer than that are refused
//! rather than sent — all but the last one waiting, so that no place stays empty while a
//! request waits. Served in order, a burst is absorbed whole; under lasting overload the
//! requests sent have waited milliseconds, the others are told at once. A request admitted
//! without waiting, or one that waited less than [`STANDING_WAIT`], ends the standing state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::adaptive::Gradient;
use crate::config::runtime::{AdmissionConfig, InflightLimit};
use crate::observe::metrics::Cached;
use crate::observe::window::Window;
use crate::upstream::endpoint::{ms_at, now_ms};
use prometheus_client::metrics::histogram::Histogram;

/// A wait longer than this, for every request let go during [`STANDING_AFTER`], is a
/// standing queue (CoDel's target and interval).
pub const STANDING_WAIT: Duration = Duration::from_millis(5);
pub const STANDING_AFTER: Duration = Duration::from_millis(100);

/// The admission state of one upstream, kept across reloads by the upstream's name.
pub struct Admission {
    state: Mutex<State>,
    /// The limit is `"auto"`: latency samples are wanted (read without the lock).
    auto: AtomicBool,
    /// Queue waits of the last minute (refusals as errors), for the status page.
    pub recent_waits: Window,
    /// This upstream's `upstream_queue_wait_seconds` histogram.
    pub wait_histogram: Cached<Histogram>,
}

struct State {
    config: AdmissionConfig,
    inflight: u32,
    /// The limit in force: fixed, or the controller of `max_inflight = "auto"`.
    limit: Limit,
    waiting: VecDeque<Waiter>,
    /// Since when every request let go had waited more than [`STANDING_WAIT`]; `None`
    /// when the last one waited less.
    waits_above_since: Option<Instant>,
    next_id: u64,
    /// The most requests waiting at once since the status page's history last looked.
    peak_queued: usize,
}

struct Waiter {
    id: u64,
    since: Instant,
    turn: oneshot::Sender<Turn>,
}

/// What a waiting request is told when its turn comes.
enum Turn {
    Go(Permit),
    /// It waited too long in a standing queue.
    Refused,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full.
    Full,
    /// Its wait ran out: the queue's timeout, the request's deadline, or a standing queue.
    TimedOut,
}

/// A request's place among those in flight; dropping it gives the place to the next.
pub struct Permit {
    admission: Option<Arc<Admission>>,
}

/// Where the upstream stands, for the status page and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub limit: u32,
    pub inflight: u32,
    pub queued: usize,
    /// The limit `"auto"` learned (a probe lowers `limit` for a moment) and the unloaded
    /// latency it measured, in ms.
    pub learned: Option<f64>,
    pub baseline_ms: Option<f64>,
}

/// A limit as it runs.
enum Limit {
    Fixed(u32),
    Auto(Gradient),
}

impl Limit {
    fn new(config: InflightLimit) -> Limit {
        match config {
            InflightLimit::Fixed(limit) => Limit::Fixed(limit),
            InflightLimit::Auto => Limit::Auto(Gradient::new(now_ms())),
        }
    }
}

impl State {
    fn controller(&self) -> Option<&Gradient> {
        match &self.limit {
            Limit::Auto(controller) => Some(controller),
            Limit::Fixed(_) => None,
        }
    }

    fn limit(&self) -> u32 {
        match &self.limit {
            Limit::Fixed(limit) => *limit,
            Limit::Auto(controller) => controller.limit(),
        }
    }

    /// The next request to send, refusing those a standing queue kept too long.
    fn next_waiter(&mut self, now: Instant) -> Option<Waiter> {
        while let Some(waiter) = self.waiting.pop_front() {
            if waiter.turn.is_closed() {
                continue;
            }
            let waited = now.saturating_duration_since(waiter.since);
            if waited <= STANDING_WAIT {
                self.waits_above_since = None;
                return Some(waiter);
            }
            let since = *self.waits_above_since.get_or_insert(now);
            let standing = now.saturating_duration_since(since) >= STANDING_AFTER;
            if standing && !self.waiting.is_empty() {
                // Sent under the lock: a refusal holds no permit to drop.
                let _ = waiter.turn.send(Turn::Refused);
                continue;
            }
            return Some(waiter);
        }
        None
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            auto: AtomicBool::new(config.limit == InflightLimit::Auto),
            state: Mutex::new(State {
                limit: Limit::new(config.limit),
                config,
                inflight: 0,
                waiting: VecDeque::new(),
                waits_above_since: None,
                next_id: 0,
                peak_queued: 0,
            }),
            recent_waits: Window::default(),
            wait_histogram: Cached::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a reloaded config: a new limit applies at once (a learned one is kept while the
    /// limit stays `"auto"`); requests already waiting keep their place.
    pub fn configure(self: &Arc<Admission>, config: AdmissionConfig) {
        {
            let mut state = self.lock();
            // A learned limit is kept while the limit stays "auto".
            if !matches!(
                (&state.limit, config.limit),
                (Limit::Auto(_), InflightLimit::Auto)
            ) {
                state.limit = Limit::new(config.limit);
            }
            state.config = config;
            self.auto
                .store(config.limit == InflightLimit::Auto, Ordering::Relaxed);
        }
        self.dispatch(false);
    }

    /// The settings in force.
    pub fn config(&self) -> AdmissionConfig {
        self.lock().config
    }

    pub fn usage(&self) -> Usage {
        let state = self.lock();
        Usage {
            limit: state.limit(),
            inflight: state.inflight,
            queued: state.waiting.len(),
            learned: state.controller().map(Gradient::learned),
            baseline_ms: state.controller().and_then(Gradient::baseline),
        }
    }

    /// The most requests that waited at once since the last call.
    pub fn take_peak_queued(&self) -> usize {
        let mut state = self.lock();
        let queued = state.waiting.len();
        std::mem::replace(&mut state.peak_queued, queued).max(queued)
    }

    /// Admits a request: at once while there is room and nobody waits, else after those
    /// before it. `deadline` is the request's own (its total timeout), when it has one.
    /// A request whose client goes away leaves the queue when this future is dropped.
    pub async fn admit(
        self: &Arc<Admission>,
        deadline: Option<Instant>,
    ) -> Result<Permit, Refusal> {
        let arrived = Instant::now();
        let (id, mut turn, timeout) = {
            let mut state = self.lock();
            if state.waiting.is_empty() && state.inflight < state.limit() {
                state.inflight += 1;
                state.waits_above_since = None;
                let inflight = state.inflight;
                if let Limit::Auto(controller) = &mut state.limit {
                    controller.inflight(inflight, ms_at(arrived));
                }
                return Ok(Permit {
                    admission: Some(self.clone()),
                });
            }
            if state.waiting.len() >= state.config.queue_size {
                return Err(Refusal::Full);
            }
            let (sender, receiver) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push_back(Waiter {
                id,
                since: arrived,
                turn: sender,
            });
            state.peak_queued = state.peak_queued.max(state.waiting.len());
            (id, receiver, state.config.queue_timeout)
        };
        let mut queued = Queued {
            admission: self,
            id,
            waiting: true,
        };
        let until = deadline.map_or(arrived + timeout, |d| d.min(arrived + timeout));
        let turn = match tokio::time::timeout_at(until, &mut turn).await {
            Ok(turn) => turn.ok(),
            // Its turn may have come as the time ran out: then it goes.
            Err(_) => turn.try_recv().ok(),
        };
        match turn {
            Some(Turn::Go(permit)) => {
                queued.waiting = false;
                Ok(permit)
            }
            Some(Turn::Refused) => {
                queued.waiting = false;
                Err(Refusal::TimedOut)
            }
            None => Err(Refusal::TimedOut),
        }
    }

    /// Takes a latency sample of an attempt (the time to its response head, or to its
    /// timeout) for the `"auto"` controller; a higher limit lets waiting requests go.
    pub fn record(self: &Arc<Admission>, latency: Duration) {
        if !self.auto.load(Ordering::Relaxed) {
            return;
        }
        let grew = {
            let mut state = self.lock();
            let inflight = state.inflight;
            let before = state.limit();
            let Limit::Auto(controller) = &mut state.limit else {
                return;
            };
            controller.sample(latency.as_secs_f64() * 1e3, inflight, now_ms());
            state.limit() > before
        };
        if grew {
            self.dispatch(false);
        }
    }

    /// Gives free places to waiting requests, first come first served; `freed` is a place a
    /// permit gave back. Turns are sent outside the lock: a turn its request no longer
    /// takes comes back as a place to give again, without dropping a permit under the lock.
    fn dispatch(self: &Arc<Admission>, mut freed: bool) {
        loop {
            let waiter = {
                let mut state = self.lock();
                if freed {
                    state.inflight -= 1;
                    freed = false;
                }
                if state.inflight >= state.limit() {
                    return;
                }
                let Some(waiter) = state.next_waiter(Instant::now()) else {
                    return;
                };
                state.inflight += 1;
                let inflight = state.inflight;
                if let Limit::Auto(controller) = &mut state.limit {
                    controller.inflight(inflight, now_ms());
                }
                waiter
            };
            let permit = Permit {
                admission: Some(self.clone()),
            };
            if let Err(Turn::Go(mut permit)) = waiter.turn.send(Turn::Go(permit)) {
                permit.admission = None;
                freed = true;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.dispatch(true);
        }
    }
}

/// A request in the queue; dropped before its turn came, it leaves the queue.
struct Queued<'a> {
    admission: &'a Admission,
    id: u64,
    waiting: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let mut state = self.admission.lock();
        if let Some(index) = state.waiting.iter().position(|w| w.id == self.id) {
            state.waiting.remove(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limit: u32, queue_size: usize, timeout_ms: u64) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionConfig {
            limit: InflightLimit::Fixed(limit),
            queue_size,
            queue_timeout: Duration::from_millis(timeout_ms),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_limit_wait_in_order_then_go() {
        let admission = admission(1, 8, 1000);
        let first = admission.admit(None).await.unwrap();
        let (a, b) = (admission.clone(), admission.clone());
        let second = tokio::spawn(async move { a.admit(None).await.map(|_| Instant::now()) });
        tokio::task::yield_now().await;
        let third = tokio::spawn(async move { b.admit(None).await.map(|_| Instant::now()) });
        tokio::task::yield_now().await;
        assert_eq!(admission.usage().queued, 2);
        tokio::time::sleep(Duration::from_millis(3)).await;
        drop(first);
        let second = second.await.unwrap().unwrap();
        let third = third.await.unwrap().unwrap();
        assert!(second <= third);
        assert_eq!(admission.usage().inflight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_a_wait_ends_at_the_timeout() {
        let admission = admission(1, 1, 300);
        let _held = admission.admit(None).await.unwrap();
        let waiting = admission.clone();
        let started = Instant::now();
        let queued = tokio::spawn(async move { waiting.admit(None).await.err() });
        tokio::task::yield_now().await;
        assert_eq!(admission.admit(None).await.err(), Some(Refusal::Full));
        assert_eq!(queued.await.unwrap(), Some(Refusal::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(admission.usage().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_goes_away_leaves_the_queue() {
        let admission = admission(1, 8, 1000);
        let held = admission.admit(None).await.unwrap();
        let waiting = admission.clone();
        let gone = tokio::spawn(async move { waiting.admit(None).await.is_ok() });
        tokio::task::yield_now().await;
        assert_eq!(admission.usage().queued, 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(admission.usage().queued, 0);
        drop(held);
        assert_eq!(admission.usage().inflight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_refuses_requests_that_waited_too_long_but_the_last() {
        let admission = admission(1, 64, 10_000);
        let mut held = admission.admit(None).await.unwrap();
        let mut waiters = Vec::new();
        let mut refused = 0;
        let mut longest = Duration::ZERO;
        // Every 20 ms a place frees and two requests arrive: twice what the upstream takes.
        for _ in 0..20 {
            for _ in 0..2 {
                let waiting = admission.clone();
                waiters.push(tokio::spawn(async move {
                    let arrived = Instant::now();
                    let admitted = waiting.admit(None).await;
                    let waited = arrived.elapsed();
                    admitted.map(|permit| (permit, waited)).ok()
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(held);
            held = loop {
                // The next one admitted holds the place for the next 20 ms.
                tokio::task::yield_now().await;
                if let Some(next) = waiters.iter().position(|w| w.is_finished()) {
                    match waiters.remove(next).await.unwrap() {
                        Some((permit, waited)) => {
                            longest = longest.max(waited);
                            break permit;
                        }
                        None => refused += 1,
                    }
                }
            };
        }
        drop(held);
        for waiter in waiters {
            if waiter.await.unwrap().is_none() {
                refused += 1;
            }
        }
        // Without the standing rule none would be refused and the waits would grow by 10 ms
        // a round, to 200 ms; with it, about half are refused as their turn comes, and the
        // requests sent waited little.
        assert!(refused >= 15, "{refused} refused");
        assert!(longest <= Duration::from_millis(120), "waited {longest:?}");
        assert!(admission.usage().queued == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_applies_as_places_free_and_a_higher_one_at_once() {
        let admission = admission(2, 8, 1000);
        let a = admission.admit(None).await.unwrap();
        let _b = admission.admit(None).await.unwrap();
        admission.configure(AdmissionConfig {
            limit: InflightLimit::Fixed(1),
            queue_size: 8,
            queue_timeout: Duration::from_secs(1),
        });
        let waiting = admission.clone();
        let queued = tokio::spawn(async move { waiting.admit(None).await.is_ok() });
        tokio::task::yield_now().await;
        drop(a);
        tokio::task::yield_now().await;
        assert_eq!(
            admission.usage().queued,
            1,
            "one place freed, but the limit is 1"
        );
        admission.configure(AdmissionConfig {
            limit: InflightLimit::Fixed(3),
            queue_size: 8,
            queue_timeout: Duration::from_secs(1),
        });
        assert!(queued.await.unwrap());
    }
}
