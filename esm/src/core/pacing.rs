//! When to call GetRecords next on a shard.
//!
//! Lambda polls each shard once a second when it is caught up, and again at once while
//! it is behind. Kinesis allows five GetRecords calls per second per shard, shared by
//! every consumer of the stream, so esm never goes above a per-shard call budget
//! (`get_records_calls_per_second`, default 5). A throttled call backs off
//! exponentially with jitter. This module only answers "when"; the reader sleeps.

use std::time::{Duration, Instant};

use super::backoff::Backoff;

/// How often a caught-up shard is polled: once a second, as Lambda does.
pub const IDLE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the last GetRecords call said about the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// Records (or none) came back; `behind` when more are waiting: `MillisBehindLatest
    /// > 0` or a full page.
    Read {
        /// More records are waiting.
        behind: bool,
    },
    /// The call was throttled (`ProvisionedThroughputExceededException`,
    /// `LimitExceededException`).
    Throttled,
    /// The call failed some other way (network, 5xx); retried with the same backoff.
    Failed,
}

/// The per-shard GetRecords schedule.
#[derive(Clone, Debug)]
pub struct PollPacer {
    min_interval: Duration,
    backoff: Backoff,
    failures: u32,
    next_call: Option<Instant>,
}

impl PollPacer {
    /// A pacer allowing at most `calls_per_second` calls per second (clamped to 0.01..=5).
    pub fn new(calls_per_second: f64) -> Self {
        let calls = if calls_per_second.is_finite() {
            calls_per_second.clamp(0.01, 5.0)
        } else {
            5.0
        };
        Self {
            min_interval: Duration::from_secs_f64(1.0 / calls),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            failures: 0,
            next_call: None,
        }
    }

    /// When the next call may be made (`None`: now).
    pub fn next_call_at(&self) -> Option<Instant> {
        self.next_call
    }

    /// Records the result of a call that started at `started`; `jitter` in `0.0..1.0`.
    pub fn record(&mut self, started: Instant, result: CallResult, jitter: f64) {
        let delay = match result {
            CallResult::Read { behind } => {
                self.failures = 0;
                if behind {
                    self.min_interval
                } else {
                    IDLE_POLL_INTERVAL.max(self.min_interval)
                }
            }
            CallResult::Throttled | CallResult::Failed => {
                let delay = self.backoff.delay(self.failures, jitter);
                self.failures = self.failures.saturating_add(1);
                delay.max(self.min_interval)
            }
        };
        self.next_call = Some(started + delay);
    }

    /// Consecutive throttled or failed calls so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caught_up_polls_once_a_second_and_behind_polls_at_the_budget() {
        let t0 = crate::sim_clock::origin();
        let mut p = PollPacer::new(5.0);
        assert_eq!(p.next_call_at(), None);
        p.record(t0, CallResult::Read { behind: false }, 0.5);
        assert_eq!(p.next_call_at(), Some(t0 + Duration::from_secs(1)));
        p.record(t0, CallResult::Read { behind: true }, 0.5);
        assert_eq!(p.next_call_at(), Some(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn a_small_budget_slows_even_the_idle_poll() {
        let t0 = crate::sim_clock::origin();
        let mut p = PollPacer::new(0.5);
        p.record(t0, CallResult::Read { behind: false }, 0.5);
        assert_eq!(p.next_call_at(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn throttling_backs_off_and_a_read_resets_it() {
        let t0 = crate::sim_clock::origin();
        let mut p = PollPacer::new(5.0);
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            p.record(t0, CallResult::Throttled, 1.0);
            let d = p.next_call_at().unwrap() - t0;
            assert!(d >= last);
            last = d;
        }
        assert_eq!(p.consecutive_failures(), 6);
        assert!(last >= Duration::from_secs(4));
        p.record(t0, CallResult::Read { behind: true }, 0.0);
        assert_eq!(p.consecutive_failures(), 0);
    }

    proptest! {
        /// Whatever happens, two calls are never closer than the budget allows.
        #[test]
        fn never_above_the_budget(
            calls in 0.1f64..5.0,
            results in proptest::collection::vec(0u8..4, 1..100),
            jitter in 0.0f64..1.0,
        ) {
            let mut p = PollPacer::new(calls);
            let mut now = crate::sim_clock::origin();
            let min = Duration::from_secs_f64(1.0 / calls);
            for r in results {
                let result = match r {
                    0 => CallResult::Read { behind: false },
                    1 => CallResult::Read { behind: true },
                    2 => CallResult::Throttled,
                    _ => CallResult::Failed,
                };
                p.record(now, result, jitter);
                let next = p.next_call_at().unwrap();
                prop_assert!(next - now >= min);
                now = next;
            }
        }
    }
}
