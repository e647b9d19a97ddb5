//! What the rings of time slots share (the status page's [`Window`](crate::observe::window),
//! the retry budget, each endpoint's failure rate): a slot holds the counts of one period
//! of time and is reused, a turn of the ring later, for another.

use std::sync::atomic::{AtomicU64, Ordering};

/// Moves a slot whose period is kept in `cell` to `period`. True for the one caller that
/// moved it, which then clears the slot's counts; false when it was at `period` already or
/// another caller moved it first. A count racing the clear may be lost: these rings are for
/// decisions and figures that tolerate one count, not for billing.
pub fn take_turn(cell: &AtomicU64, period: u64) -> bool {
    let seen = cell.load(Ordering::Acquire);
    seen != period
        && cell
            .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}
