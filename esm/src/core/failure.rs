//! What to do with a batch after an invocation: checkpoint past it, or try again.
//!
//! Lambda's failure rules for stream sources (retry attempts, maximum record age,
//! bisect, partial batch failures, on-failure destinations) all come down to one
//! decision per outcome, made here without I/O so that tests can walk every path.
//! This first version has the default rule only: a failed batch is retried, with
//! backoff, until it succeeds. The remaining keys are rejected by the config until
//! they are built here.

use std::time::Duration;

use bytes::Bytes;

use super::backoff::Backoff;
use super::batch::Batch;
use super::record::Position;

/// How an invocation ended, as the invoker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function returned this response body. Without `ReportBatchItemFailures`
    /// the body is ignored and the batch is done.
    Returned {
        /// The response body, as the function serialized it.
        response: Bytes,
    },
    /// The function returned an error (Lambda's `functionError: "Unhandled"`).
    FunctionError {
        /// The error type the function reported.
        error_type: String,
        /// The error message the function reported.
        message: String,
    },
    /// The function did not answer within its timeout.
    Timeout,
    /// The function crashed (panicked, or its process died) while handling the batch.
    Crash {
        /// What esm saw.
        reason: String,
    },
    /// The batch could not be invoked at all (throttled, handler unreachable, no idle
    /// worker): not a function error, and it consumes no retry.
    NotInvoked {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The label used in logs and the `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Returned { .. } => "ok",
            Outcome::FunctionError { .. } => "function_error",
            Outcome::Timeout => "timeout",
            Outcome::Crash { .. } => "crash",
            Outcome::NotInvoked { .. } => "throttled",
        }
    }
}

/// What the runner does next with the batch in hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The batch is done: checkpoint at this position and move on.
    Checkpoint(Position),
    /// Invoke the same batch again after `delay`.
    Retry {
        /// How long to wait first.
        delay: Duration,
    },
    /// The batch can never be invoked (its one record is above the payload cap): log it
    /// with its sequence range, count it as dropped, checkpoint past it.
    Drop {
        /// Why, for the log line.
        reason: &'static str,
        /// Where the checkpoint goes.
        checkpoint: Position,
    },
}

/// How many times a batch has been tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Invocations that reached the function (Lambda's `approximateInvokeCount`).
    pub invoked: u32,
    /// Attempts that could not invoke the function at all.
    pub not_invoked: u32,
}

impl Attempts {
    /// Counts one more attempt with `outcome`.
    pub fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::NotInvoked { .. } => self.not_invoked = self.not_invoked.saturating_add(1),
            _ => self.invoked = self.invoked.saturating_add(1),
        }
    }

    /// All attempts so far, invoked or not.
    pub fn total(&self) -> u32 {
        self.invoked.saturating_add(self.not_invoked)
    }
}

/// The failure rules of a mapping.
#[derive(Clone, Debug)]
pub struct FailurePolicy {
    /// The wait between attempts at the same batch.
    pub retry_backoff: Backoff,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            retry_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        }
    }
}

impl FailurePolicy {
    /// Decides after `outcome`; `attempts` already counts it. `jitter` in `0.0..1.0`.
    pub fn decide(
        &self,
        batch: &Batch,
        outcome: &Outcome,
        attempts: Attempts,
        jitter: f64,
    ) -> Option<Decision> {
        let last = batch.last_position()?.clone();
        Some(match outcome {
            Outcome::Returned { .. } => Decision::Checkpoint(last),
            _ => Decision::Retry {
                delay: self
                    .retry_backoff
                    .delay(attempts.total().saturating_sub(1), jitter),
            },
        })
    }

    /// Decides for a batch that cannot be invoked at all because it is above the
    /// payload cap.
    pub fn decide_oversized(&self, batch: &Batch) -> Option<Decision> {
        Some(Decision::Drop {
            reason: "record above the 6 MB invocation payload cap",
            checkpoint: batch.last_position()?.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{Record, SequenceNumber};
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};

    fn batch(seqs: &[u64]) -> Batch {
        Batch {
            records: seqs
                .iter()
                .map(|s| Record {
                    position: Position::whole(SequenceNumber::parse(s.to_string()).unwrap()),
                    partition_key: "k".into(),
                    explicit_hash_key: None,
                    data: Bytes::new(),
                    approximate_arrival: Utc.timestamp_millis_opt(0).unwrap(),
                })
                .collect(),
            event_len: 0,
        }
    }

    #[test]
    fn success_checkpoints_at_the_last_record() {
        let d = FailurePolicy::default().decide(
            &batch(&[5, 6, 7]),
            &Outcome::Returned {
                response: Bytes::new(),
            },
            Attempts::default(),
            0.0,
        );
        assert_eq!(
            d,
            Some(Decision::Checkpoint(Position::whole(
                SequenceNumber::parse("7").unwrap()
            )))
        );
    }

    #[test]
    fn every_failure_retries_with_growing_backoff() {
        let policy = FailurePolicy::default();
        let b = batch(&[1, 2]);
        let mut attempts = Attempts::default();
        let mut last = Duration::ZERO;
        for outcome in [
            Outcome::FunctionError {
                error_type: "E".into(),
                message: "m".into(),
            },
            Outcome::Timeout,
            Outcome::Crash {
                reason: "panic".into(),
            },
            Outcome::NotInvoked {
                reason: "busy".into(),
            },
        ] {
            attempts.count(&outcome);
            match policy.decide(&b, &outcome, attempts, 1.0) {
                Some(Decision::Retry { delay }) => {
                    assert!(delay >= last);
                    last = delay;
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        assert_eq!(
            attempts,
            Attempts {
                invoked: 3,
                not_invoked: 1
            }
        );
    }

    #[test]
    fn an_empty_batch_has_no_decision() {
        assert_eq!(
            FailurePolicy::default().decide(
                &batch(&[]),
                &Outcome::Returned {
                    response: Bytes::new()
                },
                Attempts::default(),
                0.0
            ),
            None
        );
    }
}
