//! Throttled reads and expired iterators, injected by a proxy in front of the real
//! emulator: esm backs off, gets fresh iterators, and still delivers every record
//! exactly once, in order.

use std::time::Duration;

use esm_e2e::proxy::{FaultProxy, Faults};
use esm_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_expired_iterators_lose_nothing() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "faults", 2).await;
    let put = put_records(&client, &stream, 0, 1_000, 100, 16).await;

    let upstream =
        std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("scripts/test sets the endpoint");
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            throttle_every: Some(3),
            expire_every: Some(5),
            max_limit: Some(25),
        },
    )
    .await;

    // With pages of at most 25 records, each shard takes dozens of calls, so the
    // faults land mid-shard: a fresh iterator must start right after the last record.
    let dir = tempfile::tempdir().unwrap();
    let url = proxy.url();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "faults",
        &stream,
        "batch_size = 50\n",
        &[("AWS_ENDPOINT_URL_KINESIS", url.as_str())],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(90),
        "all 1,000 records",
        |b| count_records(b) >= 1_000,
    );
    // Keep polling through more faults for a moment: caught-up polls are throttled
    // and expired too, and must not cause re-delivery.
    let (calls_before, _, _) = proxy.counts();
    while proxy.counts().0 < calls_before + 4 {
        esm.assert_running();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = esm.log_text();
    assert!(esm.terminate(Duration::from_secs(30)).success());

    let (calls, throttled, expired) = proxy.counts();
    assert!(
        throttled > 0 && expired > 0,
        "faults injected: {throttled} throttled, {expired} expired of {calls}"
    );
    assert!(
        log.contains("GetRecords throttled; backing off"),
        "no throttling line in the log"
    );
    assert!(
        log.contains("shard iterator expired"),
        "no expired-iterator line in the log"
    );

    let seen = seen_by_shard(&read_batches(&dir.path().join("out.jsonl")));
    let put_by_shard = expected_by_shard(&put);
    for shard in seen.keys() {
        let expected = put_by_shard.get(shard).cloned().unwrap_or_default();
        assert_eq!(
            &seen[shard], &expected,
            "shard {shard}: records missing, repeated or out of order"
        );
    }
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 1_000);
}
