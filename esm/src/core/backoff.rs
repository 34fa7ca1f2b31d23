//! Exponential backoff with jitter, as one pure function.
//!
//! Used for throttled reads, failed invocations and failed checkpoint or destination
//! writes. The caller passes the random jitter in (a number in `0.0..1.0`), so tests
//! can pin it and the core stays free of randomness and clocks.

use std::time::Duration;

/// An exponential backoff: `base × 2^attempt`, capped, with "equal jitter" (half the
/// delay fixed, half random) so that many shards throttled together spread out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (attempt 0), before jitter.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `attempt` (0-based), with `jitter` in `0.0..1.0`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(30));
        let full = self.base.saturating_mul(factor).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        full / 2 + full.mul_f64(jitter / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(20, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(10));
    }

    proptest! {
        #[test]
        fn stays_within_half_and_full(attempt in 0u32..100, jitter in 0.0f64..1.0) {
            let b = Backoff::new(Duration::from_millis(50), Duration::from_secs(30));
            let full = Duration::from_millis(50).saturating_mul(2u32.saturating_pow(attempt.min(30))).min(b.max);
            let d = b.delay(attempt, jitter);
            prop_assert!(d >= full / 2 && d <= full);
        }
    }
}
