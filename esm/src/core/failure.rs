//! What to do with a batch after each invocation: checkpoint, retry, bisect, or give
//! up on records.
//!
//! Lambda's failure rules for stream sources, made precise (SPEC §5):
//! - a failed invocation of more than one record, with `bisect_batch_on_function_error`,
//!   splits it in two halves, older half first; splitting consumes no retry;
//! - a failed invocation that is not split consumes a retry; when
//!   `maximum_retry_attempts` are used up, its records are given up
//!   (`RetryAttemptsExhausted`) with the number of invocations that carried them;
//! - with `ReportBatchItemFailures`, the records before the lowest failed sequence
//!   number are done, and the failed remainder is what the two rules above apply to;
//! - records older than `maximum_record_age_in_seconds` are never invoked: the expired
//!   prefix of the piece about to be invoked is given up (`RecordAgeExceeded`); with
//!   `-1` the stream's retention period stands in for it, because a record past it is
//!   gone from the stream and must not be retried from memory forever;
//! - an invocation that could not happen at all (throttled, no worker) consumes no
//!   retry and is tried again after a backoff.
//!
//! [`BatchProgress`] holds the pieces of one batch still to do, in shard order; the
//! runner asks it for the [`next`](BatchProgress::next) action and reports each
//! outcome. Time (the wall clock, for record age) and jitter are passed in.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::backoff::Backoff;
use super::batch::Batch;
use super::record::Record;
use super::response::{verdict, Response, Verdict};

/// How an invocation ended, as the invoker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function returned this response body. Without `ReportBatchItemFailures`
    /// the body is ignored and the batch is done.
    Returned {
        /// The response: its body, or an in-process handler's value.
        response: Response,
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

/// How one invocation ended, as the metrics count it: `esm_invocations_total{outcome}`
/// and `esm_failed_invoke_events_total` (Lambda's `FailedInvokeEventCount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The `outcome` label.
    pub outcome: InvocationOutcome,
    /// The records counted as failed: every record of an invocation that failed or
    /// could not happen, or whose response esm could not read; the records named in
    /// `batchItemFailures`; none on success.
    pub failed_records: usize,
    /// Why a response was not understood (a malformed `batchItemFailures`), for the
    /// log: the whole batch failed.
    pub unreadable_response: Option<String>,
}

/// The `outcome` label of `esm_invocations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// The function returned, and every record succeeded.
    Ok,
    /// The function returned `batchItemFailures` naming records, or a response that
    /// is not a valid `batchItemFailures` answer (the whole batch failed).
    PartialFailure,
    /// The function returned an error.
    FunctionError,
    /// The function timed out.
    Timeout,
    /// The function crashed.
    Crash,
    /// The function could not be invoked (throttled, no worker).
    Throttled,
}

impl InvocationOutcome {
    /// Every outcome, in label order.
    pub const ALL: [InvocationOutcome; 6] = [
        InvocationOutcome::Ok,
        InvocationOutcome::PartialFailure,
        InvocationOutcome::FunctionError,
        InvocationOutcome::Timeout,
        InvocationOutcome::Crash,
        InvocationOutcome::Throttled,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            InvocationOutcome::Ok => "ok",
            InvocationOutcome::PartialFailure => "partial_failure",
            InvocationOutcome::FunctionError => "function_error",
            InvocationOutcome::Timeout => "timeout",
            InvocationOutcome::Crash => "crash",
            InvocationOutcome::Throttled => "throttled",
        }
    }
}

impl Judged {
    fn new(outcome: InvocationOutcome, failed_records: usize) -> Self {
        Self {
            outcome,
            failed_records,
            unreadable_response: None,
        }
    }
}

/// What [`BatchProgress::record`] decided about one invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// What is settled by it (records done, records given up), in shard order.
    pub settled: Vec<Action>,
    /// How the invocation counts in the metrics.
    pub judged: Judged,
}

/// Why records were given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `maximum_retry_attempts` ran out.
    RetryAttemptsExhausted,
    /// The records passed `maximum_record_age_in_seconds` (or the stream's retention).
    RecordAgeExceeded,
    /// esm's own: a single record whose event alone is above the 6 MB payload cap, so
    /// it can never be invoked.
    PayloadTooLarge,
}

impl Condition {
    /// Lambda's name, as in the on-failure record and the `reason` metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
            Condition::PayloadTooLarge => "PayloadTooLarge",
        }
    }
}

/// How the last failed invocation of given-up records failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastFailure {
    /// Never invoked (record age).
    None,
    /// A function error, timeout or crash (`functionError: "Unhandled"`).
    Unhandled,
    /// Reported in `batchItemFailures` (`functionError: null`).
    ItemFailures,
}

/// What the runner does next with the batch in hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Invoke the records in this range of the batch.
    Invoke(Range<usize>),
    /// Wait this long, then ask again.
    Wait(Duration),
    /// These records are done: checkpoint at the last one.
    Done(Range<usize>),
    /// Give these records up (to the destination, or logged and dropped), then
    /// checkpoint at the last one.
    GiveUp {
        /// The records.
        range: Range<usize>,
        /// Why.
        condition: Condition,
        /// Invocations that carried them (`approximateInvokeCount`).
        invocations: u32,
        /// How their last invocation failed.
        last_failure: LastFailure,
    },
}

/// The failure rules of a mapping.
#[derive(Clone, Debug)]
pub struct FailureRules {
    /// `maximum_retry_attempts`; `None` is -1: retry until the records expire.
    pub max_retries: Option<u32>,
    /// `maximum_record_age_in_seconds`; `None` is -1.
    pub max_age: Option<Duration>,
    /// The stream's retention period, once read: the effective maximum age when
    /// `max_age` is -1.
    pub retention: Option<Duration>,
    /// `bisect_batch_on_function_error`.
    pub bisect: bool,
    /// `function_response_types = ["ReportBatchItemFailures"]`.
    pub report_item_failures: bool,
    /// The wait between attempts at the same records.
    pub retry_backoff: Backoff,
}

impl Default for FailureRules {
    fn default() -> Self {
        Self {
            max_retries: None,
            max_age: None,
            retention: None,
            bisect: false,
            report_item_failures: false,
            retry_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        }
    }
}

impl FailureRules {
    /// The age past which records are given up (`RecordAgeExceeded`):
    /// `maximum_record_age_in_seconds`, or with -1 the stream's retention period.
    pub fn effective_max_age(&self) -> Option<Duration> {
        self.max_age.or(self.retention)
    }
}

/// What an invocation's outcome says about the records it carried: how it counts,
/// and which records it settles. The one place these rules live; the shard machine
/// (through [`BatchProgress::record`]) and `esm replay` both judge with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// How the invocation counts in the metrics.
    pub judged: Judged,
    /// What happened to the records.
    pub fate: Fate,
}

/// What an invocation did to its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Every record succeeded.
    Succeeded,
    /// The records from index `first` on failed; those before it succeeded.
    FailedFrom {
        /// The index of the first failed record (0: the whole batch failed).
        first: usize,
        /// How they failed, as the on-failure record tells it.
        how: LastFailure,
    },
    /// The function could not be invoked at all: nothing happened to the records.
    NotInvoked,
}

/// Judges `outcome` for `records` (the invocation's records, in order), with
/// `ReportBatchItemFailures` on or off: Lambda's rules of SPEC §3 and §5.
pub fn judge(outcome: &Outcome, report_item_failures: bool, records: &[Record]) -> Judgement {
    let all = records.len();
    let failed = |first: usize, how: LastFailure| Fate::FailedFrom { first, how };
    let (fate, judged) = match outcome {
        Outcome::NotInvoked { .. } => (
            Fate::NotInvoked,
            Judged::new(InvocationOutcome::Throttled, all),
        ),
        Outcome::Returned { response } if report_item_failures => {
            match verdict(response, records) {
                Verdict::Success => (Fate::Succeeded, Judged::new(InvocationOutcome::Ok, 0)),
                Verdict::FailedFrom { first, named } => (
                    failed(first, LastFailure::ItemFailures),
                    Judged::new(InvocationOutcome::PartialFailure, named),
                ),
                Verdict::Failed(reason) => (
                    failed(0, LastFailure::Unhandled),
                    Judged {
                        unreadable_response: Some(reason),
                        ..Judged::new(InvocationOutcome::PartialFailure, all)
                    },
                ),
            }
        }
        Outcome::Returned { .. } => (Fate::Succeeded, Judged::new(InvocationOutcome::Ok, 0)),
        Outcome::FunctionError { .. } | Outcome::Timeout | Outcome::Crash { .. } => {
            let counted = match outcome {
                Outcome::FunctionError { .. } => InvocationOutcome::FunctionError,
                Outcome::Timeout => InvocationOutcome::Timeout,
                _ => InvocationOutcome::Crash,
            };
            (failed(0, LastFailure::Unhandled), Judged::new(counted, all))
        }
    };
    Judgement { judged, fate }
}

/// A piece of the batch still to do.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    range: Range<usize>,
    /// Invocations that carried these records.
    invocations: u32,
    /// Retries consumed.
    retries: u32,
    /// Attempts that could not invoke at all, in a row (for backoff only).
    not_invoked: u32,
    /// How the last invocation failed.
    last_failure: LastFailure,
    /// Wait before the next invocation.
    wait: Option<Duration>,
}

impl Piece {
    fn new(range: Range<usize>) -> Self {
        Self {
            range,
            invocations: 0,
            retries: 0,
            not_invoked: 0,
            last_failure: LastFailure::None,
            wait: None,
        }
    }
}

/// The state of one batch under the failure rules.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    pieces: VecDeque<Piece>,
}

impl BatchProgress {
    /// A batch of `len` records, none tried yet.
    pub fn new(len: usize) -> Self {
        let mut pieces = VecDeque::new();
        if len > 0 {
            pieces.push_back(Piece::new(0..len));
        }
        Self { pieces }
    }

    /// An invocation that carries no records (a tumbling window's final invocation, or
    /// the one that ends it early): one piece under the same rules as any other.
    pub fn no_records() -> Self {
        Self {
            pieces: VecDeque::from([Piece::new(0..0)]),
        }
    }

    /// Whether every record is done or given up.
    pub fn is_finished(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Invocations so far of the piece to invoke next (for logs).
    pub fn attempt(&self) -> u32 {
        self.pieces
            .front()
            .map_or(0, |p| p.invocations + p.not_invoked)
    }

    /// The next action, at wall-clock time `now`; `None` when the batch is finished.
    pub fn next(
        &mut self,
        rules: &FailureRules,
        batch: &Batch,
        now: DateTime<Utc>,
    ) -> Option<Action> {
        let piece = self.pieces.front_mut()?;
        if let Some(wait) = piece.wait.take() {
            return Some(Action::Wait(wait));
        }
        if let Some(max_age) = rules.effective_max_age() {
            let expired = batch.records[piece.range.clone()]
                .iter()
                .take_while(|r| {
                    (now - r.approximate_arrival)
                        .to_std()
                        .is_ok_and(|age| age > max_age)
                })
                .count();
            if expired > 0 {
                let range = piece.range.start..piece.range.start + expired;
                let action = Action::GiveUp {
                    range: range.clone(),
                    condition: Condition::RecordAgeExceeded,
                    invocations: piece.invocations,
                    last_failure: LastFailure::None,
                };
                piece.range.start = range.end;
                if piece.range.is_empty() {
                    self.pieces.pop_front();
                }
                return Some(action);
            }
        }
        Some(Action::Invoke(piece.range.clone()))
    }

    /// Records the outcome of invoking the front piece; returns what is settled by it
    /// (records done, records given up), in shard order, and how the invocation
    /// counts. `jitter` in `0.0..1.0`.
    pub fn record(
        &mut self,
        rules: &FailureRules,
        batch: &Batch,
        outcome: &Outcome,
        jitter: f64,
    ) -> Recorded {
        let mut settled = Vec::new();
        let Some(mut piece) = self.pieces.pop_front() else {
            return Recorded {
                settled,
                judged: Judged::new(InvocationOutcome::Ok, 0),
            };
        };
        let Judgement { judged, fate } = judge(
            outcome,
            rules.report_item_failures,
            &batch.records[piece.range.clone()],
        );
        let failure = match fate {
            Fate::NotInvoked => {
                piece.not_invoked = piece.not_invoked.saturating_add(1);
                piece.wait = Some(rules.retry_backoff.delay(piece.not_invoked - 1, jitter));
                self.pieces.push_front(piece);
                return Recorded { settled, judged };
            }
            Fate::Succeeded => {
                piece.invocations += 1;
                None
            }
            Fate::FailedFrom { first, how } => {
                piece.invocations += 1;
                if first > 0 {
                    settled.push(Action::Done(piece.range.start..piece.range.start + first));
                }
                piece.range.start += first;
                Some(how)
            }
        };
        piece.not_invoked = 0;
        let recorded = |settled| Recorded {
            settled,
            judged: judged.clone(),
        };
        let Some(how) = failure else {
            settled.push(Action::Done(piece.range));
            return recorded(settled);
        };
        piece.last_failure = how;
        if rules.bisect && piece.range.len() > 1 {
            // Older half first; splitting consumes no retry.
            let mid = piece.range.start + piece.range.len() / 2;
            let mut older = piece.clone();
            older.range = piece.range.start..mid;
            let mut newer = piece;
            newer.range = mid..newer.range.end;
            self.pieces.push_front(newer);
            self.pieces.push_front(older);
            return recorded(settled);
        }
        piece.retries = piece.retries.saturating_add(1);
        if rules.max_retries.is_some_and(|max| piece.retries > max) {
            settled.push(Action::GiveUp {
                range: piece.range,
                condition: Condition::RetryAttemptsExhausted,
                invocations: piece.invocations,
                last_failure: piece.last_failure,
            });
            return recorded(settled);
        }
        piece.wait = Some(rules.retry_backoff.delay(piece.retries - 1, jitter));
        self.pieces.push_front(piece);
        recorded(settled)
    }
}

#[cfg(test)]
mod tests;
