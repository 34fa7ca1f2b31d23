//! Lambda's failure rules end to end: bisect with partial batch failures isolates a
//! poison record; retries run out after `maximum_retry_attempts + 1` invocations;
//! records past `maximum_record_age_in_seconds` are never invoked; a malformed
//! `batchItemFailures` fails the whole batch. Without an on-failure destination the
//! records given up are logged with their range and skipped, and later batches flow.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use esm_e2e::*;

/// The marker that makes record `n` (data `{"n":n,"pad":…}`) the poison one.
fn poison_marker(n: usize) -> String {
    format!("\"n\":{n},")
}

/// One line per invocation the recorder saw: (first sequence number, records).
fn attempts(path: &Path) -> Vec<(String, usize)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["first"].as_str().unwrap_or_default().to_string(),
                v["n"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect()
}

/// The lines of the log that report dropped records.
fn drop_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("dropping records: no on-failure destination"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bisect_and_partial_failures_isolate_exactly_the_poison_record() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "poison-bisect", 2).await;
    // A pseudo-random position, different from run to run.
    let poison_n = 500 + (std::process::id() as usize * 7919) % 4_000;
    let put = put_records(&client, &stream, 0, 5_000, 100, 64).await;
    let poison_seq = put[poison_n].seq.clone();

    let dir = tempfile::tempdir().unwrap();
    let marker = poison_marker(poison_n);
    let mut esm = Esm::start_mapping(
        dir.path(),
        "poison-bisect",
        &stream,
        "batch_size = 100\nbisect_batch_on_function_error = true\nfunction_response_types = [\"ReportBatchItemFailures\"]\nmaximum_retry_attempts = 2\n",
        &[("RECORDER_POISON", &marker), ("RECORDER_REPORT", "1")],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every record but the poison one",
        |b| count_records(b) >= 4_999,
    );
    wait_for_log(
        &mut esm,
        Duration::from_secs(30),
        "the poison record dropped",
        |log| !drop_lines(log).is_empty(),
    );
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    // Exactly the poison record was given up, alone, after its retries.
    let drops = drop_lines(&log);
    assert_eq!(drops.len(), 1, "drops:\n{}", drops.join("\n"));
    assert!(
        drops[0].contains(&format!("first={poison_seq}"))
            && drops[0].contains(&format!("last={poison_seq}")),
        "{}",
        drops[0]
    );
    assert!(
        drops[0].contains("records=1") && drops[0].contains("RetryAttemptsExhausted"),
        "{}",
        drops[0]
    );
    // Every other record was handled exactly once, in order per shard.
    let mut expected = expected_by_shard(&put);
    for seqs in expected.values_mut() {
        seqs.retain(|s| *s != poison_seq);
    }
    assert_each_shard_as_put(&seen_by_shard(&batches), &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_bisect_the_whole_batch_is_given_up_after_retries_and_later_batches_flow() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "poison-retries", 1).await;
    let put = put_records(&client, &stream, 0, 500, 100, 8).await;
    let dir = tempfile::tempdir().unwrap();
    let attempts_file = dir.path().join("attempts.jsonl");
    let marker = poison_marker(250);
    let mut esm = Esm::start_mapping(
        dir.path(),
        "poison-retries",
        &stream,
        "batch_size = 100\nmaximum_retry_attempts = 2\n",
        &[
            ("RECORDER_POISON", &marker),
            ("RECORDER_ATTEMPTS", &attempts_file.display().to_string()),
        ],
    );
    wait_for_log(
        &mut esm,
        Duration::from_secs(60),
        "the failing batch dropped",
        |log| !drop_lines(log).is_empty(),
    );
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the later batches",
        |b| count_records(b) >= 400,
    );
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    // The batch holding the poison record was invoked exactly 3 times, then dropped whole.
    let tries = attempts(&attempts_file);
    let mut per_batch: HashMap<String, usize> = HashMap::new();
    for (first, _) in &tries {
        *per_batch.entry(first.clone()).or_default() += 1;
    }
    let failing: Vec<(&String, &usize)> = per_batch.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(failing.len(), 1, "invocations per batch: {per_batch:?}");
    assert_eq!(
        *failing[0].1, 3,
        "the failing batch should be invoked maximum_retry_attempts + 1 times"
    );
    let drops = drop_lines(&log);
    assert_eq!(drops.len(), 1, "drops:\n{}", drops.join("\n"));
    assert!(
        drops[0].contains(&format!("first={}", failing[0].0)),
        "{}",
        drops[0]
    );
    assert!(
        drops[0].contains("approximate_invoke_count=3")
            && drops[0].contains("RetryAttemptsExhausted"),
        "{}",
        drops[0]
    );
    let dropped_n: usize = drops[0]
        .split("records=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("records= in the drop line");

    // Every record outside the dropped batch was handled exactly once, in order.
    let handled: Vec<&str> = seqs(&batches).collect();
    assert_eq!(handled.len() + dropped_n, 500);
    let handled_set: BTreeSet<&str> = handled.iter().copied().collect();
    assert_eq!(
        handled_set.len(),
        handled.len(),
        "a record was handled twice"
    );
    assert!(!handled_set.contains(put[250].seq.as_str()));
    let in_order: Vec<&str> = put
        .iter()
        .map(|r| r.seq.as_str())
        .filter(|s| handled_set.contains(s))
        .collect();
    assert_eq!(handled, in_order);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_past_their_maximum_age_are_never_invoked() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "record-age", 1).await;
    let old = put_records(&client, &stream, 0, 50, 100, 4).await;
    // The smallest maximum age Lambda allows is 60 s.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "record-age",
        &stream,
        "maximum_record_age_in_seconds = 60\n",
        &[],
    );
    wait_for_log(
        &mut esm,
        Duration::from_secs(60),
        "the old records dropped",
        |log| !drop_lines(log).is_empty(),
    );
    let fresh = put_records(&client, &stream, 50, 50, 100, 4).await;
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the fresh records",
        |b| count_records(b) >= 50,
    );
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    let handled: Vec<&str> = seqs(&batches).collect();
    let fresh_seqs: Vec<&str> = fresh.iter().map(|r| r.seq.as_str()).collect();
    assert_eq!(
        handled, fresh_seqs,
        "only the fresh records reach the function"
    );
    let dropped: usize = drop_lines(&log)
        .iter()
        .inspect(|l| {
            assert!(
                l.contains("RecordAgeExceeded") && l.contains("approximate_invoke_count=0"),
                "{l}"
            )
        })
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(dropped, old.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_identifier_not_in_the_batch_fails_the_whole_batch() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "bad-response", 1).await;
    let put = put_records(&client, &stream, 0, 30, 100, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let attempts_file = dir.path().join("attempts.jsonl");
    let mut esm = Esm::start_mapping(
        dir.path(),
        "bad-response",
        &stream,
        "batch_size = 10\nfunction_response_types = [\"ReportBatchItemFailures\"]\nmaximum_retry_attempts = 0\n",
        &[
            ("RECORDER_RESPONSE", r#"{"batchItemFailures":[{"itemIdentifier":"not-a-sequence-number"}]}"#),
            ("RECORDER_ATTEMPTS", &attempts_file.display().to_string()),
        ],
    );
    wait_for_log(
        &mut esm,
        Duration::from_secs(60),
        "three batches dropped",
        |log| drop_lines(log).len() >= 3,
    );
    let log = esm.log_text();
    esm.stop(Duration::from_secs(30));
    // Each batch was invoked once (no retries allowed) and given up whole.
    assert_eq!(attempts(&attempts_file).len(), 3);
    let drops = drop_lines(&log);
    assert_eq!(drops.len(), 3);
    assert!(
        drops
            .iter()
            .all(|l| l.contains("records=10") && l.contains("approximate_invoke_count=1")),
        "{}",
        drops.join("\n")
    );
    assert!(drops[0].contains(&format!("first={}", put[0].seq)));
}
