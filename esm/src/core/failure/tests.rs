use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::core::record::{Position, Record, SequenceNumber};

fn batch(n: usize, arrival_ms: i64) -> Batch {
    Batch {
        records: (0..n)
            .map(|i| Record {
                position: Position::plain(SequenceNumber::parse((100 + i).to_string()).unwrap()),
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::new(),
                approximate_arrival: Utc.timestamp_millis_opt(arrival_ms + i as i64).unwrap(),
            })
            .collect(),
        ordinals: (0..n as u64).collect(),
        ..Batch::default()
    }
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_000_000).unwrap()
}

fn error() -> Outcome {
    Outcome::FunctionError {
        error_type: "E".into(),
        message: "boom".into(),
    }
}

fn ok() -> Outcome {
    Outcome::Returned {
        response: Bytes::new().into(),
    }
}

fn failures(b: &Batch, indexes: &[usize]) -> Outcome {
    let items: Vec<String> = indexes
        .iter()
        .map(|&i| format!(r#"{{"itemIdentifier":"{}"}}"#, b.records[i].sequence()))
        .collect();
    Outcome::Returned {
        response: Bytes::from(format!(r#"{{"batchItemFailures":[{}]}}"#, items.join(","))).into(),
    }
}

/// Drives a batch to the end: `respond` answers each invocation of a range.
fn run(
    rules: &FailureRules,
    b: &Batch,
    mut respond: impl FnMut(Range<usize>) -> Outcome,
) -> (Vec<Action>, Vec<Range<usize>>) {
    let mut progress = BatchProgress::new(b.len());
    let (mut settled, mut invoked) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        match progress.next(rules, b, now()) {
            None => return (settled, invoked),
            Some(Action::Wait(_)) => {}
            Some(Action::Invoke(range)) => {
                invoked.push(range.clone());
                let outcome = respond(range);
                settled.extend(progress.record(rules, b, &outcome, 0.5).settled);
            }
            Some(other) => settled.push(other),
        }
    }
    panic!("the batch never finished");
}

#[test]
fn success_is_done_in_one_invocation() {
    let b = batch(5, 999_000);
    let (settled, invoked) = run(&FailureRules::default(), &b, |_| ok());
    assert_eq!(settled, vec![Action::Done(0..5)]);
    assert_eq!(invoked, vec![0..5]);
}

#[test]
fn retries_run_out_after_max_plus_one_invocations() {
    let rules = FailureRules {
        max_retries: Some(2),
        ..FailureRules::default()
    };
    let b = batch(4, 999_000);
    let (settled, invoked) = run(&rules, &b, |_| error());
    assert_eq!(invoked.len(), 3);
    assert_eq!(
        settled,
        vec![Action::GiveUp {
            range: 0..4,
            condition: Condition::RetryAttemptsExhausted,
            invocations: 3,
            last_failure: LastFailure::Unhandled,
        }]
    );
}

#[test]
fn zero_retries_gives_up_after_one_invocation() {
    let rules = FailureRules {
        max_retries: Some(0),
        ..FailureRules::default()
    };
    let (settled, invoked) = run(&rules, &batch(2, 999_000), |_| Outcome::Timeout);
    assert_eq!(invoked.len(), 1);
    assert!(matches!(
        settled[..],
        [Action::GiveUp { invocations: 1, .. }]
    ));
}

#[test]
fn not_invoked_consumes_no_retry_and_waits() {
    let rules = FailureRules {
        max_retries: Some(0),
        ..FailureRules::default()
    };
    let b = batch(2, 999_000);
    let mut progress = BatchProgress::new(2);
    assert_eq!(progress.next(&rules, &b, now()), Some(Action::Invoke(0..2)));
    let busy = Outcome::NotInvoked {
        reason: "busy".into(),
    };
    assert!(progress.record(&rules, &b, &busy, 0.0).settled.is_empty());
    assert!(matches!(
        progress.next(&rules, &b, now()),
        Some(Action::Wait(_))
    ));
    assert_eq!(progress.next(&rules, &b, now()), Some(Action::Invoke(0..2)));
    assert_eq!(
        progress.record(&rules, &b, &ok(), 0.0).settled,
        vec![Action::Done(0..2)]
    );
    assert!(progress.is_finished());
}

#[test]
fn partial_failures_checkpoint_before_the_lowest_failure_and_retry_the_rest() {
    let rules = FailureRules {
        report_item_failures: true,
        max_retries: Some(1),
        ..FailureRules::default()
    };
    let b = batch(6, 999_000);
    let (settled, invoked) = run(&rules, &b, |range| failures(&b, &[4.max(range.start), 5]));
    assert_eq!(invoked, vec![0..6, 4..6]);
    assert_eq!(
        settled,
        vec![
            Action::Done(0..4),
            Action::GiveUp {
                range: 4..6,
                condition: Condition::RetryAttemptsExhausted,
                invocations: 2,
                last_failure: LastFailure::ItemFailures,
            }
        ]
    );
}

#[test]
fn a_malformed_response_fails_the_whole_batch() {
    let rules = FailureRules {
        report_item_failures: true,
        max_retries: Some(0),
        ..FailureRules::default()
    };
    let (settled, _) = run(&rules, &batch(3, 999_000), |_| Outcome::Returned {
        response: Bytes::from_static(b"nope").into(),
    });
    assert!(
        matches!(settled[..], [Action::GiveUp { ref range, last_failure: LastFailure::Unhandled, .. }] if *range == (0..3))
    );
}

/// Judges one invocation of a fresh batch of 6 with `outcome`.
fn judge(rules: &FailureRules, outcome: impl FnOnce(&Batch) -> Outcome) -> Judged {
    let b = batch(6, 999_000);
    let mut progress = BatchProgress::new(b.len());
    progress.record(rules, &b, &outcome(&b), 0.5).judged
}

#[test]
fn each_invocation_is_judged_with_the_records_it_counts_as_failed() {
    let items = FailureRules {
        report_item_failures: true,
        ..FailureRules::default()
    };
    let plain = FailureRules::default();
    let judged = |rules: &FailureRules, outcome: fn(&Batch) -> Outcome| {
        let j = judge(rules, outcome);
        (j.outcome, j.failed_records, j.unreadable_response.is_some())
    };
    use InvocationOutcome as O;
    assert_eq!(judged(&plain, |_| ok()), (O::Ok, 0, false));
    assert_eq!(judged(&items, |_| ok()), (O::Ok, 0, false));
    // Partial failures count the records named, each once, not the remainder retried.
    assert_eq!(
        judged(&items, |b| failures(b, &[3, 1, 3])),
        (O::PartialFailure, 2, false)
    );
    // Without ReportBatchItemFailures the same response is a success.
    assert_eq!(judged(&plain, |b| failures(b, &[3, 1])), (O::Ok, 0, false));
    // A response esm cannot read fails every record, and says why.
    assert_eq!(
        judged(&items, |_| Outcome::Returned {
            response: Bytes::from_static(b"{\"batchItemFailures\": 7}").into(),
        }),
        (O::PartialFailure, 6, true)
    );
    assert_eq!(judged(&plain, |_| error()), (O::FunctionError, 6, false));
    assert_eq!(judged(&plain, |_| Outcome::Timeout), (O::Timeout, 6, false));
    assert_eq!(
        judged(&plain, |_| Outcome::Crash { reason: "x".into() }),
        (O::Crash, 6, false)
    );
    // An invocation that could not happen was tried and failed (Lambda counts
    // throttled events in FailedInvokeEventCount too).
    assert_eq!(
        judged(&plain, |_| Outcome::NotInvoked { reason: "x".into() }),
        (O::Throttled, 6, false)
    );
    let labels: Vec<_> = InvocationOutcome::ALL.iter().map(|o| o.label()).collect();
    assert_eq!(
        labels,
        [
            "ok",
            "partial_failure",
            "function_error",
            "timeout",
            "crash",
            "throttled"
        ]
    );
}

#[test]
fn without_report_item_failures_the_response_is_ignored() {
    let b = batch(3, 999_000);
    let (settled, _) = run(&FailureRules::default(), &b, |_| failures(&b, &[1]));
    assert_eq!(settled, vec![Action::Done(0..3)]);
}

#[test]
fn expired_records_are_given_up_uninvoked_and_the_rest_invoked() {
    let rules = FailureRules {
        max_age: Some(Duration::from_secs(60)),
        ..FailureRules::default()
    };
    // Records 0..3 arrived 70 s before now (plus i ms), the rest 10 s before.
    let mut b = batch(5, 1_000_000 - 70_000);
    let mut records = b.records.to_vec();
    for r in &mut records[3..] {
        r.approximate_arrival = Utc.timestamp_millis_opt(1_000_000 - 10_000).unwrap();
    }
    b.records = records.into();
    let (settled, invoked) = run(&rules, &b, |_| ok());
    assert_eq!(invoked, vec![3..5]);
    assert_eq!(
        settled,
        vec![
            Action::GiveUp {
                range: 0..3,
                condition: Condition::RecordAgeExceeded,
                invocations: 0,
                last_failure: LastFailure::None,
            },
            Action::Done(3..5)
        ]
    );
}

#[test]
fn bisect_isolates_a_poison_record() {
    let rules = FailureRules {
        bisect: true,
        max_retries: Some(2),
        ..FailureRules::default()
    };
    let b = batch(8, 999_000);
    let (settled, _) = run(
        &rules,
        &b,
        |range| if range.contains(&5) { error() } else { ok() },
    );
    let given_up: Vec<_> = settled
        .iter()
        .filter(|a| matches!(a, Action::GiveUp { .. }))
        .collect();
    assert_eq!(given_up.len(), 1);
    assert!(matches!(given_up[0], Action::GiveUp { range, .. } if *range == (5..6)));
}

proptest! {
    /// Whatever records are poison and whatever the rules, every record is settled
    /// exactly once and in shard order; a poison record is never marked done, and a
    /// good one is never given up when bisect and partial failures can isolate it.
    #[test]
    fn every_record_is_settled_once_in_order(
        n in 1usize..40,
        poison in proptest::collection::btree_set(0usize..40, 0..4),
        bisect: bool,
        report: bool,
        max_retries in proptest::option::of(0u32..3),
    ) {
        let poison: BTreeSet<usize> = poison.into_iter().filter(|&p| p < n).collect();
        // With unlimited retries a poison record would never settle: cap them.
        let rules = FailureRules { bisect, report_item_failures: report, max_retries: Some(max_retries.unwrap_or(3)), ..FailureRules::default() };
        let b = batch(n, 999_000);
        let (settled, _) = run(&rules, &b, |range| {
            let bad: Vec<usize> = range.clone().filter(|i| poison.contains(i)).collect();
            match (bad.is_empty(), report) {
                (true, _) => ok(),
                (false, true) => failures(&b, &bad),
                (false, false) => error(),
            }
        });
        let mut next = 0;
        for action in &settled {
            let (range, done) = match action {
                Action::Done(r) => (r.clone(), true),
                Action::GiveUp { range, .. } => (range.clone(), false),
                other => panic!("unexpected {other:?}"),
            };
            prop_assert_eq!(range.start, next);
            if done {
                prop_assert!(range.clone().all(|i| !poison.contains(&i)));
            } else if bisect && report {
                prop_assert!(range.clone().all(|i| poison.contains(&i)), "good records given up: {:?}", range);
            }
            next = range.end;
        }
        prop_assert_eq!(next, n);
    }
}
