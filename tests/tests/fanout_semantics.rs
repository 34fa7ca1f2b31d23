//! Enhanced fan-out keeps every rule of a mapping: the polling tests' guarantees, with
//! a mapping that reads through a stream consumer (SubscribeToShard).
//!
//! - A subscription's connection cut mid-stream loses and repeats nothing, and the
//!   recoveries are counted (`fanout_resubscriptions`).
//! - A split while esm reads: the parent is read to its end (the emulator never sends
//!   `ChildShards`, so by the reader's idle end-of-shard check) before any record of
//!   its children, and every record arrives exactly once.
//! - Lanes (`parallelization_factor`), bisect with an on-failure destination, and
//!   tumbling windows behave as they do with polling.
//!
//! Each test registers its own consumer on a fresh stream.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esm_e2e::cut_proxy::{Cut, CutProxy};
use esm_e2e::*;

/// The function TOML of the recorder.
const RECORDER: &str = "function = \"recorder\"\n";

/// A fresh stream of `shards` shards with a consumer registered; returns both.
async fn stream_with_consumer(
    client: &aws_sdk_kinesis::Client,
    prefix: &str,
    shards: i32,
) -> (TestStream, String) {
    let stream = TestStream::create(client, prefix, shards).await;
    let consumer_arn = consumer(client, &stream, "esm-test").await;
    (stream, consumer_arn)
}

/// Asserts that `batches` hold exactly the records of `put`, once each, each from the
/// shard it was put in, in order per shard.
fn assert_exactly_once_in_order(batches: &[BatchLine], put: &[PutRecord]) {
    assert_shards_as_put(batches, put);
    let seen: HashSet<&str> = seqs(batches).collect();
    let want: HashSet<&str> = put.iter().map(|r| r.seq.as_str()).collect();
    assert_eq!(
        seen.len(),
        want.len(),
        "{} records put, {} distinct seen",
        want.len(),
        seen.len()
    );
    assert_eq!(seen, want, "the records seen are not the records put");
    assert_eq!(
        count_records(batches),
        put.len(),
        "records delivered more than once"
    );
    assert_each_shard_as_put(&seen_by_shard(batches), &expected_by_shard(put));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_mid_stream_loses_and_repeats_nothing() {
    const SHARDS: usize = 2;
    const CUTS: usize = 3;
    let client = kinesis().await;
    let (stream, consumer_arn) = stream_with_consumer(&client, "fanout-cut", SHARDS as i32).await;
    let mut put = put_records(&client, &stream, 0, 2_000, 100, 32).await;

    let upstream =
        std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("scripts/test sets the endpoint");
    let proxy = CutProxy::start(&upstream).await;
    let url = proxy.url();
    let dir = tempfile::tempdir().unwrap();
    // Subscriptions last the default 5 minutes: every resubscription here is a
    // recovery from a cut.
    let config = write_fanout_config(
        dir.path(),
        "fanout-cut",
        &stream,
        &consumer_arn,
        "batch_size = 100\n",
        RECORDER,
    );
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[("AWS_ENDPOINT_URL_KINESIS", url.as_str())],
    );

    // Records keep coming (500 a second) until the last cut, so events are in flight
    // when the connections are cut.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (client, stream) = (client.clone(), stream.name.clone());
        let producing = producing.clone();
        tokio::spawn(async move {
            let mut put = Vec::new();
            while producing.load(Ordering::SeqCst) {
                let n = 2_000 + put.len();
                put.extend(put_records(&client, &stream, n, 100, 100, 32).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            put
        })
    };

    // Each cut waits until every shard's subscription is pushing events again and
    // more records arrived since the previous cut.
    let mut cuts: Vec<Cut> = Vec::new();
    let mut seen_at_cut = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cuts.len() < CUTS {
        esm.assert_running();
        assert!(
            Instant::now() < deadline,
            "only {} cuts; {} subscriptions bringing events; log:\n{}",
            cuts.len(),
            proxy.flowing_subscriptions(),
            esm.log_text()
        );
        let seen = records_seen(&esm.out);
        if proxy.flowing_subscriptions() >= SHARDS && seen > seen_at_cut {
            let cut = proxy.cut();
            eprintln!("cut {}: {cut:?} after {seen} records", cuts.len() + 1);
            cuts.push(cut);
            seen_at_cut = seen;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    producing.store(false, Ordering::SeqCst);
    put.extend(producer.await.expect("the producer"));
    let total = put.len();
    wait_for(&mut esm, Duration::from_secs(90), "every record", |b| {
        count_records(b) >= total
    });
    let log = esm.log.clone();
    let batches = esm.stop(Duration::from_secs(30));

    // Each cut reset every shard's subscription while its events flowed.
    let cut_subscriptions: usize = cuts.iter().map(|c| c.flowing).sum();
    for cut in &cuts {
        assert!(
            cut.flowing >= SHARDS,
            "a cut found fewer subscriptions bringing events than shards: {cuts:?}"
        );
    }
    assert_exactly_once_in_order(&batches, &put);

    // Every subscription cut was recovered, and counted.
    let log = std::fs::read_to_string(log).unwrap();
    let resubscriptions = stopped_total(&log, "fanout_resubscriptions");
    eprintln!(
        "{total} records; {cut_subscriptions} subscriptions cut; \
         fanout_resubscriptions={resubscriptions}; {} subscriptions seen by the proxy",
        proxy.subscriptions()
    );
    assert!(
        resubscriptions >= cut_subscriptions as u64,
        "{cut_subscriptions} subscriptions cut, {resubscriptions} resubscriptions counted"
    );
    assert!(
        proxy.subscriptions() >= (SHARDS + cut_subscriptions) as u64,
        "the proxy saw {} subscriptions",
        proxy.subscriptions()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_while_reading_delivers_the_parent_to_its_end_before_its_children() {
    let client = kinesis().await;
    let (stream, consumer_arn) = stream_with_consumer(&client, "fanout-split", 1).await;
    let mut put = put_records(&client, &stream, 0, 300, 100, 64).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_fanout_config(
        dir.path(),
        "fanout-split",
        &stream,
        &consumer_arn,
        "",
        RECORDER,
    );
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_for(&mut esm, Duration::from_secs(30), "the first 300", |b| {
        count_records(b) >= 300
    });

    // Let the subscription go idle first: its end-of-shard check then finds the
    // parent open, so the parent's end must be found by a later check, up to
    // END_CHECK_INTERVAL (10 s) on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // More for the parent just before the split: they may reach esm in the
    // subscription's last event or only through its end-of-shard check.
    put.extend(put_records(&client, &stream, 300, 100, 100, 64).await);
    let (parent, children) = split_in_two(&client, &stream).await;
    let more = put_records(&client, &stream, 400, 300, 100, 64).await;
    let landed: HashSet<&str> = more.iter().map(|r| r.shard.as_str()).collect();
    assert_eq!(
        landed,
        children.iter().map(String::as_str).collect::<HashSet<_>>(),
        "records put after the split should land on both children"
    );
    put.extend(more);

    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "all 700, the children's included, without a restart",
        |b| count_records(b) >= 700,
    );
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));
    assert_parent_first(&batches, &put, &parent, &children);

    // The emulator never names the children in an event: the idle subscription's
    // end-of-shard check found the parent closed and read to its end.
    assert!(
        log.lines()
            .any(|l| l.contains("the shard is closed and read to its end") && l.contains(&parent)),
        "no end-of-shard line for {parent}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lanes_run_concurrently_and_keep_each_partition_key_in_order() {
    const SHARDS: usize = 2;
    const FACTOR: usize = 4;
    const BATCH_SIZE: usize = 10;
    const RECORDS: usize = 2_000;
    let client = kinesis().await;
    let (stream, consumer_arn) = stream_with_consumer(&client, "fanout-lanes", SHARDS as i32).await;
    // Half read from the trim horizon, half pushed while esm runs.
    let mut put = put_records(&client, &stream, 0, RECORDS / 2, 100, 50).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_fanout_config(
        dir.path(),
        "fanout-lanes",
        &stream,
        &consumer_arn,
        &format!("batch_size = {BATCH_SIZE}\nparallelization_factor = {FACTOR}\n"),
        RECORDER,
    );
    let mut esm = Esm::start(dir.path(), &config, &[("RECORDER_DELAY_MS", "50")]);
    put.extend(put_records(&client, &stream, RECORDS / 2, RECORDS / 2, 100, 50).await);
    wait_for(&mut esm, Duration::from_secs(90), "every record", |b| {
        count_records(b) >= RECORDS
    });
    let batches = esm.stop(Duration::from_secs(30));
    assert_lanes(&batches, &put, SHARDS, FACTOR, BATCH_SIZE);
}

#[tokio::test(flavor = "multi_thread")]
async fn bisect_sends_the_poison_record_alone_to_the_sqs_destination() {
    const RECORDS: usize = 2_000;
    let client = kinesis().await;
    let (stream, consumer_arn) = stream_with_consumer(&client, "fanout-poison", 2).await;
    let poison_n = random_in(300, RECORDS - 300);
    eprintln!("the poison record is number {poison_n}");
    let put = put_records(&client, &stream, 0, RECORDS, 100, 64).await;
    let poison = put[poison_n].clone();
    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("fanout-failures")).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_fanout_config(
        dir.path(),
        "fanout-poison",
        &stream,
        &consumer_arn,
        "batch_size = 100\nbisect_batch_on_function_error = true\n\
         function_response_types = [\"ReportBatchItemFailures\"]\nmaximum_retry_attempts = 1\n",
        &with_destination(&arn),
    );
    let marker = format!("\"n\":{poison_n},");
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[("RECORDER_POISON", &marker), ("RECORDER_REPORT", "1")],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(90),
        "every record but the poison one",
        |b| count_records(b) >= RECORDS - 1,
    );
    let messages = receive_messages(&sqs, &url, 1).await;
    let batches = esm.stop(Duration::from_secs(30));

    assert_poison_alone(&messages[0], &poison, &stream);
    assert!(
        receive_now(&sqs, &url, 10).await.is_empty(),
        "a second message reached the queue"
    );
    // Every other record was handled exactly once, in order per shard.
    let others: Vec<PutRecord> = put.iter().filter(|r| **r != poison).cloned().collect();
    assert_exactly_once_in_order(&batches, &others);
}

#[tokio::test(flavor = "multi_thread")]
async fn tumbling_windows_final_invocations_carry_each_windows_exact_totals() {
    const WINDOW_MS: i64 = 5_000;
    const KEYS: usize = 8;
    let client = kinesis().await;
    let (stream, consumer_arn) = stream_with_consumer(&client, "fanout-windows", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("windows.jsonl");
    let config = write_fanout_config(
        dir.path(),
        "fanout-windows",
        &stream,
        &consumer_arn,
        "batch_size = 20\ntumbling_window_in_seconds = 5\n",
        "function = \"windows\"\n",
    );
    let windows_env = windows.display().to_string();
    let esm = Esm::start(dir.path(), &config, &[("RECORDER_WINDOWS", &windows_env)]);
    // 20 s of 5 s windows on 2 shards: at least 6 windows with records.
    check_window_run(
        &client,
        &stream,
        esm,
        &windows,
        Duration::from_secs(20),
        KEYS,
        WINDOW_MS,
        2 * 3,
    )
    .await;
}
