//! Panics caught where they would drop requests (SPEC §13): around each request's handling
//! and around each connection's task. A panic is a bug; it must cost the request that met
//! it an honest 500 `internal-error`, be logged with its request ID and counted in
//! `baton_panics_total`, and leave every other request and connection alone.
//!
//! [`trigger`] is the hook the tests use to make a request panic at a chosen stage: nothing
//! in a config or a request can arm it.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A future whose panics come out as `Err` with the panic's message.
    pub struct Caught<F> {
        #[pin]
        inner: F,
    }
}

/// Runs `future`, turning a panic while it is polled into `Err(message)`.
///
/// Unwind safety is asserted: what a panicking request shares with others is behind
/// atomics, and locks that poisons are recovered or reported where they are taken.
pub fn catch<F: Future>(future: F) -> Caught<F> {
    Caught { inner: future }
}

impl<F: Future> Future for Caught<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(message(payload.as_ref()))),
        }
    }
}

/// The text a panic was raised with.
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Where on a request's path the test hook may panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// After the route is chosen, before anything goes upstream.
    BeforeUpstream,
    /// After an upstream answered with a response head.
    AfterUpstream,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static TRIGGERS: Mutex<Vec<(String, Stage)>> = Mutex::new(Vec::new());

/// Test hook: requests for exactly `path` panic at `stage` from now on. Only tests call
/// it; until one does, a request pays one relaxed atomic load per stage.
#[doc(hidden)]
pub fn trigger(path: &str, stage: Stage) {
    let mut triggers = TRIGGERS.lock().unwrap_or_else(|e| e.into_inner());
    triggers.push((path.to_owned(), stage));
    ARMED.store(true, Ordering::Release);
}

/// Panics when the test hook was armed for this path and stage.
pub(crate) fn checkpoint(path: &str, stage: Stage) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let hit = TRIGGERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(p, s)| p == path && *s == stage);
    if hit {
        panic!("test hook: a panic injected at {stage:?} for {path}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_comes_out_as_its_message() {
        let caught = catch(async { panic!("boom {}", 7) }).await;
        assert_eq!(caught.unwrap_err(), "boom 7");
        let caught = catch(async { 5 }).await;
        assert_eq!(caught.unwrap(), 5);
    }
}
