//! `starting_position`: LATEST skips what was in the stream before esm read it;
//! AT_TIMESTAMP starts at the first record that arrived at or after the timestamp.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use esm_e2e::*;

/// Writes a config for one mapping of `stream`, starting at LATEST.
fn latest_config(dir: &Path, mapping: &str, stream: &str) -> PathBuf {
    write_config_from(dir, mapping, stream, "starting_position = \"LATEST\"\n", "")
}

/// Waits (up to `timeout`) until every record of `want` was seen.
fn wait_for_all(esm: &mut Esm, timeout: Duration, what: &str, want: &[PutRecord]) {
    wait_for(esm, timeout, what, |b| {
        let seen: HashSet<&str> = seqs(b).collect();
        want.iter().all(|r| seen.contains(r.seq.as_str()))
    });
}

/// Waits until esm logged "reading shard" for `shards` shards, then a moment more:
/// "reading shard" is logged just before the reader asks for its LATEST iterator;
/// give that call a moment so the records put next are surely after it.
async fn wait_reading(esm: &mut Esm, shards: usize, what: &str) {
    wait_for_log(esm, Duration::from_secs(30), what, |log| {
        log.matches("reading shard").count() >= shards
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Waits until every record of `want` was seen, stops esm, and asserts that exactly
/// those records arrived: once each, in sequence order per shard.
fn assert_exactly(mut esm: Esm, want: &[PutRecord]) {
    wait_for_all(
        &mut esm,
        Duration::from_secs(60),
        "the records put after the starting position",
        want,
    );
    // Records before the starting position would have come first in their shard, so
    // once every wanted record was seen, any unwanted one is in the file too.
    let seen = seen_by_shard(&esm.stop(Duration::from_secs(30)));
    let expected = expected_by_shard(want);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "records arrived from other shards than expected"
    );
    for (shard, seqs) in &seen {
        assert_eq!(
            seqs, &expected[shard],
            "shard {shard}: not exactly the records after the starting position, in order, once each"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_delivers_only_records_put_after_esm_reads_the_shards() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "latest", 2).await;
    let before = put_records(&client, &stream, 0, 100, 100, 16).await;
    assert_eq!(before.len(), 100);

    let dir = tempfile::tempdir().unwrap();
    let config = latest_config(dir.path(), "latest", &stream);
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_reading(&mut esm, 2, "\"reading shard\" for both shards").await;
    let after = put_records(&client, &stream, 100, 100, 100, 16).await;
    assert_eq!(after.len(), 100);
    assert_eq!(
        expected_by_shard(&after).len(),
        2,
        "16 keys should land on both shards"
    );
    assert_exactly(esm, &after);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_timestamp_delivers_exactly_the_records_put_after_the_timestamp() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "at-ts", 2).await;
    let before = put_records(&client, &stream, 0, 100, 100, 16).await;
    assert_eq!(before.len(), 100);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = put_records(&client, &stream, 100, 100, 100, 16).await;
    assert_eq!(after.len(), 100);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config_from(
        dir.path(),
        "at-ts",
        &stream,
        &format!("starting_position = \"AT_TIMESTAMP\"\nstarting_position_timestamp = \"{at}\"\n"),
        "",
    );
    let esm = Esm::start(dir.path(), &config, &[]);
    assert_exactly(esm, &after);
}

/// At-least-once across a crash with LATEST: records esm had already read (and handed
/// to the function) before its first checkpoint must be delivered again after a
/// restart, not skipped because the restart takes a fresh LATEST iterator.
#[tokio::test(flavor = "multi_thread")]
async fn latest_keeps_its_place_across_a_kill_before_the_first_checkpoint() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "latest-kill", 1).await;

    let dir = tempfile::tempdir().unwrap();
    let config = latest_config(dir.path(), "latest-kill", &stream);
    // First run: a 2 s handler (under the 3 s default timeout); killed while it holds
    // the first batch, so nothing was checkpointed.
    let out1 = dir.path().join("run1.jsonl");
    let mut esm = Esm::start_with_out(dir.path(), &config, &out1, &[("RECORDER_DELAY_MS", "2000")]);
    wait_reading(&mut esm, 1, "\"reading shard\"").await;
    let first = put_records(&client, &stream, 0, 10, 100, 4).await;
    wait_for_log(
        &mut esm,
        Duration::from_secs(30),
        "the first invocation",
        |log| log.contains("invoking"),
    );
    esm.kill();
    assert_eq!(
        count_records(&read_batches(&out1)),
        0,
        "the kill came after the handler finished; nothing to test"
    );

    // Second run: the records read before the kill come first, then new ones.
    let out2 = dir.path().join("run2.jsonl");
    let mut esm = Esm::start_with_out(dir.path(), &config, &out2, &[]);
    wait_reading(&mut esm, 1, "\"reading shard\"").await;
    let second = put_records(&client, &stream, 10, 10, 100, 4).await;
    wait_for_all(
        &mut esm,
        Duration::from_secs(30),
        "the records put after the restart",
        &second,
    );
    let seen = seen_by_shard(&esm.stop(Duration::from_secs(30)));
    let all: Vec<PutRecord> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        seen,
        expected_by_shard(&all),
        "the records read before the kill were not delivered after the restart"
    );
}
