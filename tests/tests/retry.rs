//! A function error: the batch is retried until it succeeds, nothing is lost or
//! repeated, and the log says what happened.

use std::time::Duration;

use esm_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn failed_invocations_are_retried_until_the_batch_succeeds() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "retry", 1).await;
    let put = put_records(&client, &stream, 0, 50, 100, 8).await;
    assert_eq!(put.len(), 50);
    let expected = expected_by_shard(&put);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "retry",
        &stream,
        "",
        &[("RECORDER_FAIL_FIRST", "3")],
    );
    wait_for(&mut esm, Duration::from_secs(60), "all 50 records", |b| {
        count_records(b) >= 50
    });
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    // The failed invocations wrote nothing; the retry delivered each record once.
    let seen = seen_by_shard(&batches);
    assert_eq!(seen, expected, "records missing, repeated or out of order");
    assert_eq!(count_records(&batches), 50);

    // One warning per failed invocation, naming the error and the retry.
    assert_eq!(
        log.matches("the function returned an error; the batch will be retried")
            .count(),
        3,
        "log:\n{log}"
    );
    for call in 0..3 {
        assert!(
            log.contains(&format!("failing invocation {call} on purpose")),
            "the log does not show the function's error message for call {call}:\n{log}"
        );
    }
}
