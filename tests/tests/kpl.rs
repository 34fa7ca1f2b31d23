//! KPL de-aggregation end to end: user records packed by AWS's own Python
//! aggregator (`aws_kinesis_agg`), put on the Kinesis emulator, reach the function as
//! exactly those user records, in order, with their keys; a kill inside an aggregate
//! loses none of them; a partial failure naming an aggregate's sequence number
//! retries from its first user record; filters apply per user record.
//!
//! These tests fail (they never skip) when the Python venv or `aws_kinesis_agg` is
//! missing: `scripts/test` installs both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use esm_e2e::kpl::*;
use esm_e2e::*;

/// The last line of esm's log with the mapping's totals.
fn totals(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .find(|l| l.contains("mapping stopped; its totals since start"))
        .unwrap_or_else(|| panic!("no totals line in the log:\n{text}"))
        .to_string()
}

/// Each user record's position `(sequence, index in its aggregate)`, by number.
fn positions(put: &[PutAggregate]) -> HashMap<usize, (String, u64)> {
    let mut out = HashMap::new();
    for a in put {
        for (i, u) in a.users.iter().enumerate() {
            let data = String::from_utf8_lossy(&u.data);
            out.insert(user_number(&data), (a.put.seq.clone(), i as u64));
        }
    }
    out
}

fn pos_cmp(a: &(String, u64), b: &(String, u64)) -> std::cmp::Ordering {
    seq_cmp(&a.0, &b.0).then(a.1.cmp(&b.1))
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregated_user_records_reach_the_function_in_order() {
    const USERS: usize = 3_000;
    let client = kinesis().await;
    let stream = TestStream::create(&client, "kpl", 2).await;
    let put = put_aggregated(&client, &stream, json_users(USERS, |_| "order"), 100).await;
    assert_eq!(put.len(), 30, "3,000 user records in 30 Kinesis records");
    let expected = expected_users(&put);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(dir.path(), "kpl", &stream, "batch_size = 70\n", &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every user record",
        |b| count_records(b) >= USERS,
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = esm.log.clone();
    let batches = esm.stop(Duration::from_secs(30));

    // Exactly the user records, once each, in order per shard, with their keys and
    // the aggregate's sequence number.
    assert_eq!(seen_users(&batches), expected);
    assert_eq!(count_records(&batches), USERS);
    for b in &batches {
        for r in &b.records {
            assert_eq!(r.event_id, format!("{}:{}", b.shard, r.seq));
        }
    }
    // The checkpoint is the last user record of each shard's last aggregate.
    let stored = stored_checkpoints(&dir.path().join("state"), "kpl").await;
    for (shard, users) in &expected {
        let last = put.iter().rfind(|a| &a.put.shard == shard).unwrap();
        let checkpoint = stored[shard].checkpoint.clone().expect("a checkpoint");
        assert_eq!(checkpoint.sequence.as_str(), last.put.seq);
        assert_eq!(checkpoint.sub_sequence, last.users.len() as u64 - 1);
        assert!(!users.is_empty());
    }
    // esm_polled_events_total counts user records.
    let totals = totals(&log);
    assert!(totals.contains(&format!("polled={USERS}")), "{totals}");
    assert!(totals.contains(&format!("invoked={USERS}")), "{totals}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_inside_an_aggregate_loses_no_user_record() {
    const USERS: usize = 3_000;
    const BATCH: usize = 37; // never a multiple of 100: batches end inside aggregates
    let client = kinesis().await;
    let stream = TestStream::create(&client, "kpl-kill", 1).await;
    let put = put_aggregated(&client, &stream, json_users(USERS, |_| "order"), 100).await;
    let positions = positions(&put);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "kplkill",
        &stream,
        &format!("batch_size = {BATCH}\n"),
    );
    let out1 = dir.path().join("run1.jsonl");
    let mut esm = Esm::start_with_out(
        dir.path(),
        &config,
        &out1,
        &[
            ("RECORDER_DELAY_MS", "15"),
            ("RECORDER_DELAY_AFTER_MS", "15"),
        ],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "1,000 user records",
        |b| count_records(b) >= 1_000,
    );
    esm.kill();
    let run1 = read_batches(&out1);
    let stored = stored_checkpoints(&dir.path().join("state"), "kplkill").await;
    let checkpoint = stored
        .values()
        .next()
        .and_then(|s| s.checkpoint.clone())
        .expect("a checkpoint before the kill");
    let checkpoint = (
        checkpoint.sequence.as_str().to_string(),
        checkpoint.sub_sequence,
    );
    assert!(
        checkpoint.1 < 99,
        "the checkpoint {checkpoint:?} should lie inside an aggregate"
    );
    let numbers = |batches: &[BatchLine]| -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| b.records.iter().map(|r| user_number(&r.data)))
            .collect()
    };
    let seen1 = numbers(&run1);
    assert!(seen1.len() < USERS, "run 1 saw everything before the kill");

    // Run 2 on the same state, until every user record was seen.
    let out2 = dir.path().join("run2.jsonl");
    let mut esm = Esm::start_with_out(dir.path(), &config, &out2, &[]);
    let seen_before: HashSet<usize> = seen1.iter().copied().collect();
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every user record",
        |b| {
            let mut all = seen_before.clone();
            all.extend(numbers(b));
            all.len() >= USERS
        },
    );
    let run2 = esm.stop(Duration::from_secs(30));
    let seen2 = numbers(&run2);

    // Nothing lost, each run in order.
    let all: HashSet<usize> = seen1.iter().chain(&seen2).copied().collect();
    assert_eq!(all, (0..USERS).collect::<HashSet<_>>());
    for run in [&seen1, &seen2] {
        assert!(
            run.windows(2).all(|w| w[0] < w[1]),
            "out of order or repeated"
        );
    }
    // Run 2 starts right after the checkpoint, inside its aggregate: every user record
    // seen twice lies after the checkpoint (it was in flight at the kill, or its
    // checkpoint was being written), at most two batches of them.
    let first2 = &positions[&seen2[0]];
    assert_eq!(
        (first2.0.as_str(), first2.1),
        (checkpoint.0.as_str(), checkpoint.1 + 1),
        "run 2 resumes after the last user record done"
    );
    let twice: Vec<usize> = seen2
        .iter()
        .filter(|n| seen_before.contains(n))
        .copied()
        .collect();
    for n in &twice {
        assert_eq!(
            pos_cmp(&positions[n], &checkpoint),
            std::cmp::Ordering::Greater,
            "user record {n} was done before the kill and delivered again"
        );
    }
    assert!(
        twice.len() <= 2 * BATCH,
        "{} user records seen twice: more than two batches",
        twice.len()
    );
    eprintln!(
        "run 1 saw {} user records, checkpoint {checkpoint:?}, {} seen again",
        seen1.len(),
        twice.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_failure_retries_from_the_aggregates_first_user_record() {
    const USERS: usize = 400;
    const POISON: usize = 130; // user record 10 of aggregate 3 (users 120..159)
    let client = kinesis().await;
    let stream = TestStream::create(&client, "kpl-partial", 1).await;
    let mut users = json_users(USERS, |_| "order");
    users[POISON].data = format!(r#"{{"u":{POISON},"kind":"POISON"}}"#).into_bytes();
    let put = put_aggregated(&client, &stream, users, 40).await;
    let positions = positions(&put);
    let poison_seq = positions[&POISON].0.clone();

    let dir = tempfile::tempdir().unwrap();
    // The poison fails while this file exists, then succeeds.
    let poison_while = dir.path().join("poison");
    std::fs::write(&poison_while, "").unwrap();
    let config = write_config(
        dir.path(),
        "kplpartial",
        &stream,
        "batch_size = 100\nfunction_response_types = [\"ReportBatchItemFailures\"]\n",
    );
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[
            ("RECORDER_POISON", "POISON"),
            ("RECORDER_REPORT", "1"),
            ("RECORDER_POISON_WHILE", poison_while.to_str().unwrap()),
        ],
    );
    // Two failed attempts (each recording the user records before the poison).
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "two failed attempts",
        |b| {
            b.iter()
                .filter(|b| b.records.iter().any(|r| user_number(&r.data) == POISON - 1))
                .count()
                >= 2
        },
    );
    std::fs::remove_file(&poison_while).unwrap();
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the last user record",
        |b| {
            b.iter()
                .flat_map(|b| &b.records)
                .any(|r| user_number(&r.data) == USERS - 1)
        },
    );
    let batches = esm.stop(Duration::from_secs(30));

    let lines: Vec<Vec<usize>> = batches
        .iter()
        .map(|b| b.records.iter().map(|r| user_number(&r.data)).collect())
        .collect();
    // The attempts that stopped at the poison, and each one's retry (the next line).
    let mut retries = 0;
    let mut siblings_again = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.last() != Some(&(POISON - 1)) {
            continue;
        }
        // The retry starts at the first user record of the batch that shares the
        // poison's sequence number: none of its siblings is skipped.
        let want = batches[i]
            .records
            .iter()
            .find(|r| r.seq == poison_seq)
            .map_or(POISON, |r| user_number(&r.data));
        let retry = lines.get(i + 1).expect("a retry after the partial failure");
        assert_eq!(
            retry.first(),
            Some(&want),
            "the retry after {line:?} starts at {:?}, not at user record {want}",
            retry.first()
        );
        retries += 1;
        if want < POISON {
            siblings_again += POISON - want;
        }
    }
    assert!(retries >= 2, "{retries} partial failures seen");
    assert!(
        siblings_again > 0,
        "no retry ran again a sibling that had succeeded: the test did not split an aggregate"
    );
    assert_eq!(
        positions[&120].0, poison_seq,
        "user 120 opens the poison's aggregate"
    );
    // Nothing skipped: every user record was handled, in order, once the poison passed.
    let handled: HashSet<usize> = lines.iter().flatten().copied().collect();
    assert_eq!(handled, (0..USERS).collect::<HashSet<_>>());
    let last_pass: Vec<usize> = lines
        .iter()
        .flatten()
        .copied()
        .filter(|n| *n > POISON)
        .collect();
    assert!(last_pass.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_apply_to_each_user_record() {
    const USERS: usize = 1_500;
    // One user record in three is an order; the last ones are clicks, so the
    // checkpoint must move past filtered user records to the end.
    let is_order = |n: usize| n.is_multiple_of(3) && n < USERS - 10;
    let client = kinesis().await;
    let stream = TestStream::create(&client, "kpl-filter", 1).await;
    let put = put_aggregated(
        &client,
        &stream,
        json_users(USERS, |n| if is_order(n) { "order" } else { "click" }),
        100,
    )
    .await;
    let orders = (0..USERS).filter(|n| is_order(*n)).count();
    let expected: BTreeMap<String, Vec<SeenUser>> = expected_users(&put)
        .into_iter()
        .map(|(shard, users)| {
            let kept = users
                .into_iter()
                .filter(|u| u.data.contains(r#""kind":"order""#))
                .collect();
            (shard, kept)
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "batch_size = 50\nfilter_criteria = [ '{}' ]\n",
        r#"{"data": {"kind": ["order"]}}"#
    );
    let mut esm = Esm::start_mapping(dir.path(), "kplfilter", &stream, &extra, &[]);
    wait_for(&mut esm, Duration::from_secs(120), "every order", |b| {
        count_records(b) >= orders
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = esm.log.clone();
    let batches = esm.stop(Duration::from_secs(30));

    assert_eq!(seen_users(&batches), expected);
    let stored = stored_checkpoints(&dir.path().join("state"), "kplfilter").await;
    let last = put.last().unwrap();
    let checkpoint = stored[&last.put.shard].checkpoint.clone().unwrap();
    assert_eq!(
        (checkpoint.sequence.as_str(), checkpoint.sub_sequence),
        (last.put.seq.as_str(), last.users.len() as u64 - 1)
    );
    let totals = totals(&log);
    assert!(totals.contains(&format!("polled={USERS}")), "{totals}");
    assert!(
        totals.contains(&format!("filtered_out={}", USERS - orders)),
        "{totals}"
    );
}
