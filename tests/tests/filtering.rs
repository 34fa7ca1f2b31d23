//! Event filtering end to end: records that match no pattern are never invoked, are
//! counted, and the checkpoint moves past them, to the end of the shard.

use std::collections::BTreeSet;
use std::time::Duration;

use esm_e2e::*;

const RECORDS: usize = 3_000;
const SHARDS: i32 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn only_matching_records_are_invoked_and_the_checkpoint_passes_the_rest() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "filtering", SHARDS).await;
    // One record in three is an order (1,000 of 3,000); the others are clicks. The
    // last 48 records (3 per key, on every shard) are clicks, so the checkpoint has to
    // move past filtered records to reach the end of each shard.
    let is_order = |n: usize| (n < RECORDS - 48 && n.is_multiple_of(3)) || (n < 48 && n % 3 == 1);
    let entries = (0..RECORDS)
        .map(|n| {
            let kind = if is_order(n) { "order" } else { "click" };
            let data = format!(r#"{{"n":{n},"kind":"{kind}","amount":{}}}"#, n % 100);
            (format!("key-{}", n % 16), data.into_bytes())
        })
        .collect();
    let put = put_entries(&client, &stream, entries).await;
    assert_eq!(put.len(), RECORDS);
    let matching = (0..RECORDS).filter(|n| is_order(*n)).count();
    assert_eq!(matching, 1_000);

    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "batch_size = 50\nfilter_criteria = [ '{}', '{}' ]\n",
        r#"{"data": {"kind": ["order"]}}"#,
        // A second pattern that matches nothing put: patterns are OR'd.
        r#"{"data": {"kind": ["refund"], "amount": [{"numeric": [">", 1000]}]}}"#
    );
    let mut esm = Esm::start_mapping(dir.path(), "filtering", &stream, &extra, &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every matching record",
        |b| count_records(b) >= matching,
    );
    // Give the checkpoint time to pass the trailing clicks, then stop.
    let state = dir.path().join("state");
    let expected = expected_by_shard(&put);
    let last_by_shard: Vec<(String, String)> = expected
        .iter()
        .map(|(shard, seqs)| (shard.clone(), seqs.last().unwrap().clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let log = esm.log.clone();
    let batches = esm.stop(Duration::from_secs(30));

    // Exactly the orders, each once, and nothing else.
    let seen: BTreeSet<&str> = seqs(&batches).collect();
    assert_eq!(
        count_records(&batches),
        matching,
        "records invoked more than once"
    );
    assert_eq!(seen.len(), matching);
    for batch in &batches {
        for record in &batch.records {
            assert!(
                record.data.contains(r#""kind":"order""#),
                "a record that matches no pattern was invoked: {}",
                record.data
            );
        }
    }
    // The checkpoint reached the end of each shard, past the filtered records.
    let stored = stored_checkpoints(&state, "filtering").await;
    for (shard, last) in &last_by_shard {
        let checkpoint = stored.get(shard).and_then(checkpoint_seq);
        assert_eq!(checkpoint.as_deref(), Some(last.as_str()), "shard {shard}");
    }
    // The filtered-out count.
    let text = std::fs::read_to_string(log).unwrap();
    let totals = text
        .lines()
        .find(|l| l.contains("mapping stopped; its totals since start"))
        .unwrap_or_else(|| panic!("no totals line in the log:\n{text}"));
    let filtered = RECORDS - matching;
    assert!(
        totals.contains(&format!("filtered_out={filtered}")),
        "expected filtered_out={filtered}: {totals}"
    );
    assert!(totals.contains(&format!("polled={RECORDS}")), "{totals}");
}
