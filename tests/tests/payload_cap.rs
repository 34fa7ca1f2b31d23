//! The 6 MB invocation payload cap closes batches before `batch_size` does.

use std::time::Duration;

use esm_e2e::*;

/// Lambda's cap on the invocation payload (6 MB, as esm measures it).
const CAP: usize = 6 * 1024 * 1024;
const RECORDS: usize = 12;
const SIZE: usize = 900_000;

/// The size of a record's data once base64-encoded in the event.
fn base64_len(len: usize) -> usize {
    4 * len.div_ceil(3)
}

#[tokio::test(flavor = "multi_thread")]
async fn large_records_are_split_into_batches_under_the_payload_cap() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "payload", 1).await;
    let put = put_records_one_by_one(&client, &stream, 0, RECORDS, SIZE, 4).await;
    assert_eq!(put.len(), RECORDS);
    let expected = expected_by_shard(&put);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "payload",
        &stream,
        "batch_size = 100\nmaximum_batching_window_in_seconds = 2\n",
        &[],
    );
    wait_for(&mut esm, Duration::from_secs(60), "all 12 records", |b| {
        count_records(b) >= RECORDS
    });
    let batches = esm.stop(Duration::from_secs(30));
    assert_eq!(
        seen_by_shard(&batches),
        expected,
        "records missing, repeated or out of order"
    );
    for b in &batches {
        assert!(
            b.records.iter().all(|r| r.len == SIZE),
            "a record changed size"
        );
        let data: usize = b.records.iter().map(|r| base64_len(r.len)).sum();
        assert!(
            data < CAP,
            "a batch of {} records carries {data} bytes of base64 data, above the cap",
            b.records.len()
        );
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
    assert!(
        sizes.len() > 1 && sizes.iter().all(|&n| n < RECORDS),
        "the cap did not split the records: batch sizes {sizes:?}"
    );
}
