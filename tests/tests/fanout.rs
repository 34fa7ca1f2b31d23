//! Enhanced fan-out end to end: a mapping whose `event_source_arn` is a stream
//! consumer reads every shard with SubscribeToShard, and every record reaches the
//! function exactly once, in order per shard, across renewed subscriptions.

use std::collections::HashSet;
use std::time::Duration;

use esm_e2e::*;

const SHARDS: i32 = 3;
const RECORDS: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn every_record_arrives_once_in_order_across_renewed_subscriptions() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "fanout", SHARDS).await;
    let consumer_arn = consumer(&client, &stream, "esm-test").await;
    // Half the records before esm starts (read from the trim horizon), half while it
    // runs (pushed as they are put).
    let mut put = put_records(&client, &stream, 0, RECORDS / 2, 100, 50).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_fanout_config(
        dir.path(),
        "fanout",
        &stream,
        &consumer_arn,
        "batch_size = 500\nfan_out_resubscribe_seconds = 10\n",
        "function = \"recorder\"\n",
    );
    let mut esm = Esm::start(dir.path(), &config, &[]);
    put.extend(put_records(&client, &stream, RECORDS / 2, RECORDS / 2, 100, 50).await);
    assert_eq!(put.len(), RECORDS);

    wait_for(
        &mut esm,
        Duration::from_secs(240),
        "all 10,000 records",
        |b| count_records(b) >= RECORDS,
    );
    // Run past at least one renewal after the last record, then stop.
    std::thread::sleep(Duration::from_secs(11));
    let log = esm.log.clone();
    let batches = esm.stop(Duration::from_secs(30));

    // Exactly once, from the shard Kinesis put each record in, in order per shard.
    assert_shards_as_put(&batches, &put);
    assert_eq!(
        count_records(&batches),
        RECORDS,
        "records delivered more than once"
    );
    let seen: HashSet<&str> = seqs(&batches).collect();
    let want: HashSet<&str> = put.iter().map(|r| r.seq.as_str()).collect();
    assert_eq!(seen, want, "the records seen are not the records put");
    assert_each_shard_as_put(&seen_by_shard(&batches), &expected_by_shard(&put));

    // The subscriptions were renewed (every 10 s), and the renewals counted.
    let renewals = stopped_total(
        &std::fs::read_to_string(log).unwrap(),
        "fanout_resubscriptions",
    );
    eprintln!("fanout_resubscriptions={renewals}");
    assert!(renewals >= SHARDS as u64, "{renewals} renewals");
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_name_registers_a_consumer_once_and_reuses_it_on_restart() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "fanout-name", 1).await;
    let mut put = put_records(&client, &stream, 0, 100, 100, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "fanout-name",
        &stream,
        "consumer_name = \"esm-e2e\"\n",
    );

    // First run: esm registers the consumer and reads through it.
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the first 100 records",
        |b| count_records(b) >= 100,
    );
    assert_eq!(
        esm.log_count("registered stream consumer"),
        1,
        "{}",
        esm.log_text()
    );
    assert!(
        esm.log_text().contains("esm::source::fanout"),
        "not read with fan-out"
    );
    esm.stop(Duration::from_secs(30));

    // Second run: the same consumer is reused, and reading resumes after the checkpoint.
    put.extend(put_records(&client, &stream, 100, 100, 100, 10).await);
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the next 100 records",
        |b| count_records(b) >= 200,
    );
    assert_eq!(
        esm.log_count("reusing stream consumer"),
        1,
        "{}",
        esm.log_text()
    );
    assert_eq!(esm.log_count("registered stream consumer"), 0);
    let batches = esm.stop(Duration::from_secs(30));
    assert_eq!(count_records(&batches), 200, "a record was read twice");
    assert_each_shard_as_put(&seen_by_shard(&batches), &expected_by_shard(&put));

    let consumers = client
        .list_stream_consumers()
        .stream_arn(stream_arn(&stream))
        .send()
        .await
        .expect("ListStreamConsumers");
    let named: Vec<_> = consumers
        .consumers()
        .iter()
        .filter(|c| c.consumer_name() == "esm-e2e")
        .collect();
    assert_eq!(named.len(), 1, "{consumers:?}");
}
