//! The origin of simulated time for the core's tests.
//!
//! `std::time::Instant` can only be made from the clock, so the core's tests take
//! one real instant here, outside the core, and from then on advance time only by
//! adding `Duration`s: the semantics under test never read a clock.

use std::time::Instant;

/// An arbitrary starting point for simulated time.
pub(crate) fn origin() -> Instant {
    Instant::now()
}
