//! SIGKILL mid-stream, then restart on the same state: nothing is lost, and the only
//! records delivered twice are, per shard, the last one or two batches before the kill
//! (the one whose checkpoint was being written and the one started meanwhile).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use esm_e2e::*;

const RECORDS: usize = 10_000;
const BATCH_SIZE: usize = 100;

/// The batches of one run, per shard, in the order they arrived.
fn batches_by_shard(batches: &[BatchLine]) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for b in batches {
        out.entry(b.shard.clone())
            .or_default()
            .push(b.records.iter().map(|r| r.seq.clone()).collect());
    }
    out
}

fn assert_strictly_increasing(run: &str, shard: &str, seqs: &[String]) {
    for pair in seqs.windows(2) {
        assert_eq!(
            seq_cmp(&pair[0], &pair[1]),
            std::cmp::Ordering::Less,
            "{run}, shard {shard}: {} came before {} (out of order or repeated)",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_redelivers_at_most_the_batches_not_yet_durable_per_shard() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "kill", 3).await;
    let put = put_records(&client, &stream, 0, RECORDS, 100, 64).await;
    assert_eq!(put.len(), RECORDS);
    let expected = expected_by_shard(&put);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "kill",
        &stream,
        &format!("batch_size = {BATCH_SIZE}\n"),
    );

    // First run: a slow handler (30 ms an invocation, half of it after the record was
    // written, so the kill often lands between "handled" and "checkpointed"), killed
    // once about 3,000 records were seen.
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
    wait_for(&mut esm, Duration::from_secs(60), "3,000 records", |b| {
        count_records(b) >= 3_000
    });
    esm.kill();
    let run1 = read_batches(&out1);
    let run1_seen: HashSet<String> = seqs(&run1).map(str::to_string).collect();
    assert!(
        run1_seen.len() < RECORDS,
        "the first run delivered everything before the kill; nothing left to test"
    );

    // Second run: same config and state, no delay, until every record was seen.
    let out2 = dir.path().join("run2.jsonl");
    let run2 = rerun_until_all_seen(
        dir.path(),
        &config,
        &out2,
        &run1_seen,
        RECORDS,
        Duration::from_secs(60),
    );

    // Every record put was seen at least once, and nothing else was.
    let mut all = run1_seen.clone();
    all.extend(seqs(&run2).map(str::to_string));
    let put_seqs: HashSet<String> = put.iter().map(|r| r.seq.clone()).collect();
    assert_eq!(all, put_seqs, "the records seen are not the records put");

    let seen1 = seen_by_shard(&run1);
    let seen2 = seen_by_shard(&run2);
    let batches1 = batches_by_shard(&run1);
    let mut duplicated = 0;
    for (shard, want) in &expected {
        let s1 = seen1.get(shard).cloned().unwrap_or_default();
        let s2 = seen2.get(shard).cloned().unwrap_or_default();
        // In sequence order within each run.
        assert_strictly_increasing("run 1", shard, &s1);
        assert_strictly_increasing("run 2", shard, &s2);
        // Run 1 read the shard from its start; run 2 read it to its end.
        assert_eq!(
            s1[..],
            want[..s1.len()],
            "shard {shard}: run 1 is not a prefix of the shard"
        );
        assert_eq!(
            s2[..],
            want[want.len() - s2.len()..],
            "shard {shard}: run 2 is not a suffix of the shard"
        );

        // The records seen twice: at most the last two batches of run 1 (the one whose
        // checkpoint was being written at the kill, and the one started meanwhile),
        // delivered again first by run 2. That is the bound the README states.
        let in_run2: HashSet<&String> = s2.iter().collect();
        let in_both: Vec<&str> = s1
            .iter()
            .filter(|s| in_run2.contains(s))
            .map(String::as_str)
            .collect();
        if in_both.is_empty() {
            continue;
        }
        duplicated += in_both.len();
        let batches = batches1.get(shard).cloned().unwrap_or_default();
        let tail = |k: usize| -> Vec<&str> {
            batches[batches.len().saturating_sub(k)..]
                .iter()
                .flatten()
                .map(String::as_str)
                .collect()
        };
        assert!(
            in_both.len() <= 2 * BATCH_SIZE,
            "shard {shard}: {} records delivered twice, more than two batches",
            in_both.len()
        );
        assert!(
            in_both == tail(1) || in_both == tail(2),
            "shard {shard}: the records delivered twice are not the last one or two \
             batches of run 1"
        );
        assert_eq!(
            s2[..in_both.len()]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            in_both,
            "shard {shard}: the records delivered twice are not the first run 2 delivered"
        );
    }
    eprintln!(
        "run 1 saw {} records, {duplicated} of them seen again by run 2",
        run1_seen.len()
    );
    assert!(
        duplicated <= expected.len() * 2 * BATCH_SIZE,
        "{duplicated} records delivered twice"
    );
}
