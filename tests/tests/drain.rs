//! 3 shards, 10,000 records: every record reaches the handler, in sequence order per
//! shard, in batches no larger than `batch_size`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use esm_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_record_arrives_in_order_in_bounded_batches() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "drain", 3).await;
    let put = put_records(&client, &stream, 0, 10_000, 100, 64).await;
    assert_eq!(put.len(), 10_000);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "drain",
        &stream,
        "batch_size = 250\nmaximum_batching_window_in_seconds = 1\n",
        &[],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "all 10,000 records",
        |b| count_records(b) >= 10_000,
    );
    let batches = esm.stop(Duration::from_secs(30));

    // Exactly the records put, each once, each from the shard Kinesis put it in.
    let seen = seen_by_shard(&batches);
    let expected = expected_by_shard(&put);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_each_shard_as_put(&seen, &expected);
    let unique: HashSet<&str> = seqs(&batches).collect();
    assert_eq!(unique.len(), 10_000);

    // Batches: never above batch_size; with a 1 s window and all records already in
    // the stream, every batch but the last of each shard is full.
    let mut per_shard: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for b in &batches {
        assert!(
            b.records.len() <= 250,
            "a batch of {} records",
            b.records.len()
        );
        assert!(b
            .records
            .iter()
            .all(|r| r.event_id == format!("{}:{}", b.shard, r.seq)));
        per_shard.entry(&b.shard).or_default().push(b.records.len());
    }
    for (shard, sizes) in per_shard {
        let (last, rest) = sizes.split_last().unwrap();
        assert!(
            rest.iter().all(|&n| n == 250),
            "shard {shard}: batch sizes {sizes:?}"
        );
        assert!(*last >= 1);
    }
}
