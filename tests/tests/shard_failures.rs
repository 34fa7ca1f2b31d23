//! A shard runner that panics is restarted alone (the other shards go on without
//! repeating anything), and the stream's retention period is read from Kinesis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use esm_e2e::*;

const SHARDS: i32 = 3;
const RECORDS: usize = 600;

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_shard_runner_is_restarted_alone() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "panic", SHARDS).await;
    let put = put_records(&client, &stream, 0, RECORDS, 100, 64).await;
    assert_eq!(put.len(), RECORDS);
    let expected = expected_by_shard(&put);
    assert_eq!(expected.len(), SHARDS as usize, "a shard got no records");

    // Small batches and a slow handler, so every shard has batches done and a batch in
    // flight when the 7th clone of the handler (one invocation) panics in its runner.
    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "panic",
        &stream,
        "batch_size = 10\n",
        &[
            ("RECORDER_PANIC_CLONE_ONCE", "1"),
            ("RECORDER_PANIC_CLONE_AFTER", "6"),
            ("RECORDER_DELAY_MS", "30"),
        ],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every record put",
        |b| {
            let seen: HashSet<&str> = seqs(b).collect();
            seen.len() >= RECORDS
        },
    );
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    // The recorder's clone panicked (once: it cannot panic again), and esm said which
    // shard runner it took.
    assert!(
        log.contains("RECORDER_PANIC_CLONE_ONCE"),
        "the handler's clone never panicked; log:\n{log}"
    );
    let lines = runner_panic_lines(&log);
    assert!(
        !lines.is_empty(),
        "no line says a shard runner panicked; log:\n{log}"
    );
    let named: HashSet<String> = lines.iter().filter_map(|l| shard_in_line(l)).collect();
    assert_eq!(
        named.len(),
        1,
        "the panic lines should name the one shard whose runner panicked: {lines:#?}"
    );
    let panicked = named.into_iter().next().unwrap();
    assert!(
        expected.contains_key(&panicked),
        "the panic lines name an unknown shard {panicked}"
    );
    eprintln!("the runner of {panicked} panicked: {}", lines[0]);

    // Every record arrived; the shards whose runner did not panic delivered each of
    // theirs exactly once, in sequence order; the restarted one delivered all of its
    // records, in sequence order apart from a restart from its checkpoint.
    assert_shards_as_put(&batches, &put);
    let seen = seen_by_shard(&batches);
    for (shard, want) in &expected {
        let got = seen.get(shard).cloned().unwrap_or_default();
        if *shard == panicked {
            let unique: HashSet<&String> = got.iter().collect();
            assert_eq!(
                unique,
                want.iter().collect::<HashSet<_>>(),
                "shard {shard} (restarted): records missing or foreign"
            );
            eprintln!(
                "shard {shard} (restarted): {} records delivered, {} of them again",
                got.len(),
                got.len() - unique.len()
            );
        } else {
            assert_eq!(
                &got, want,
                "shard {shard} (its runner did not panic): records missing, repeated or out \
                 of order"
            );
        }
    }
    let per_shard: BTreeMap<&String, usize> = seen
        .iter()
        .map(|(shard, seqs)| (shard, seqs.len()))
        .collect();
    eprintln!("records delivered per shard: {per_shard:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_retention_is_read_from_kinesis() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "retention", 1).await;
    let arn = stream_arn(&stream);

    let retention = esm::source::kinesis::stream_retention(&client, &arn)
        .await
        .expect("stream_retention");
    assert_eq!(
        retention,
        Duration::from_secs(24 * 3600),
        "a new stream keeps 24 h"
    );

    client
        .increase_stream_retention_period()
        .stream_name(&*stream)
        .retention_period_hours(48)
        .send()
        .await
        .expect("IncreaseStreamRetentionPeriod (kinesis-local supports it)");
    wait_active(&client, &stream).await;
    let retention = esm::source::kinesis::stream_retention(&client, &arn)
        .await
        .expect("stream_retention");
    assert_eq!(retention, Duration::from_secs(48 * 3600));

    // A stream that does not exist is an error, not a default.
    let missing = stream_arn(&unique_name("no-such-stream"));
    let err = esm::source::kinesis::stream_retention(&client, &missing)
        .await
        .expect_err("a missing stream has no retention");
    assert!(!err.is_empty());
}
