//! A connection's deadline, moved on every request at next to no cost.
//!
//! A tokio timer is put into the runtime's timer wheel when first polled and taken out
//! when dropped or moved: both under the wheel's lock, with a clock conversion each. A
//! timer per request, for a keep-alive connection's idle wait or an upstream's answer,
//! cost about 1,100 instructions a request (`bench/instructions`, 4% of the whole).
//!
//! [`LazyDeadline`] keeps one timer for the connection and moves it only when the deadline
//! comes sooner than the timer. A later deadline is only written down: when the timer
//! goes off before it, the timer is set again for it. A connection served without pause
//! touches the wheel about once per timeout rather than once per request. (nginx's lazy
//! timers do the same.)

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Boxed whole, one word: pooled and idle connections hold it, and a task is as large as
/// its largest state.
pub struct LazyDeadline(Pin<Box<Timer>>);

pin_project! {
    struct Timer {
        #[pin]
        sleep: Sleep,
        // The deadline that counts; the timer is set for it or for an earlier one.
        deadline: Instant,
    }
}

impl LazyDeadline {
    pub fn new(deadline: Instant) -> LazyDeadline {
        LazyDeadline(Box::pin(Timer {
            sleep: tokio::time::sleep_until(deadline),
            deadline,
        }))
    }

    /// The deadline from now on. A sooner one moves the timer; a later one costs nothing
    /// until the timer goes off.
    pub fn set(&mut self, deadline: Instant) {
        let timer = self.0.as_mut().project();
        *timer.deadline = deadline;
        if deadline < timer.sleep.deadline() {
            timer.sleep.reset(deadline);
        }
    }

    /// Ready once the deadline has passed; until then the task is woken when it does (and
    /// perhaps once before, when the timer goes off for an earlier deadline).
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut timer = self.0.as_mut().project();
        loop {
            ready!(timer.sleep.as_mut().poll(cx));
            if timer.sleep.deadline() >= *timer.deadline {
                return Poll::Ready(());
            }
            timer.sleep.as_mut().reset(*timer.deadline);
        }
    }

    /// Waits for [`LazyDeadline::poll_passed`].
    pub async fn passed(&mut self) {
        std::future::poll_fn(|cx| self.poll_passed(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_when_the_earlier_one_passes() {
        let start = Instant::now();
        let mut timer = LazyDeadline::new(start + Duration::from_secs(1));
        timer.set(start + Duration::from_secs(5));
        timer.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_deadline_moves_the_timer() {
        let start = Instant::now();
        let mut timer = LazyDeadline::new(start + Duration::from_secs(60));
        timer.set(start + Duration::from_secs(2));
        timer.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_stays_passed_until_moved() {
        let start = Instant::now();
        let mut timer = LazyDeadline::new(start + Duration::from_secs(1));
        timer.passed().await;
        timer.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        timer.set(Instant::now() + Duration::from_secs(3));
        timer.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }
}
