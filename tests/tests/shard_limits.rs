//! What bounds a shard: a record too large to invoke goes to the destination as
//! `PayloadTooLarge` without holding up the others; a shard that keeps retrying one
//! batch stops reading ahead, so esm's memory stays bounded; and a reader that stops
//! while an invocation runs lets that invocation end before the shard restarts, so
//! the same records are never in two invocations at once.

use std::time::Duration;

use esm_e2e::proxy::{FaultProxy, Faults};
use esm_e2e::*;

/// Lambda's cap on the invocation payload (6 MB, as esm measures it).
const CAP: usize = 6 * 1024 * 1024;

/// The size of a record's data once base64-encoded in the event.
fn base64_len(len: usize) -> usize {
    4 * len.div_ceil(3)
}

/// A record whose event alone is above the cap (its data alone is 9.3 MB in base64).
const TOO_LARGE: usize = 7_000_000;
/// Small records put before it, and as many after it.
const SMALL: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_to_invoke_goes_to_the_destination_alone() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "too-large", 1).await;
    raise_max_record_size(&client, &stream, 10_240).await;
    let before = put_records(&client, &stream, 0, SMALL, 100, 4).await;
    let big = put_records_one_by_one(&client, &stream, SMALL, 1, TOO_LARGE, 4)
        .await
        .remove(0);
    let after = put_records(&client, &stream, SMALL + 1, SMALL, 100, 4).await;
    let small: Vec<PutRecord> = before.iter().chain(&after).cloned().collect();
    assert!(
        small
            .iter()
            .all(|r| seq_cmp(&r.seq, &big.seq).is_lt() == before.contains(r)),
        "the big record does not sit between the small ones"
    );

    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("too-large")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_function(
        dir.path(),
        "too-large",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 100\n",
        &with_destination(&arn),
    );
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every small record",
        |b| count_records(b) >= 2 * SMALL,
    );
    let messages = receive_messages(&sqs, &url, 1).await;
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));
    // One lane: the records after the big one were invoked only once it was given up,
    // i.e. sent; so anything else sent is in the queue by now.
    let more = receive_now(&sqs, &url, 10).await;
    assert!(more.is_empty(), "more on-failure records: {more:#?}");

    // The small records: each exactly once, in order; the big one never invoked.
    assert_eq!(
        seen_by_shard(&batches),
        expected_by_shard(&small),
        "small records missing, repeated or out of order"
    );
    assert!(
        batches
            .iter()
            .all(|b| b.records.iter().all(|r| r.len == 100)),
        "the big record (or a changed one) reached the handler"
    );

    let m = &messages[0];
    eprintln!("on-failure record: {m}");
    assert_eq!(m["requestContext"]["condition"], "PayloadTooLarge");
    assert_eq!(m["requestContext"]["approximateInvokeCount"], 0);
    assert!(
        m.get("responseContext").is_none(),
        "a PayloadTooLarge record has no responseContext"
    );
    assert_eq!(
        m["requestContext"]["functionArn"],
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:recorder").as_str()
    );
    assert_eq!(m["version"], "1.0");
    let info = &m["KinesisBatchInfo"];
    assert_eq!(info["batchSize"], 1);
    assert_eq!(info["startSequenceNumber"], big.seq.as_str());
    assert_eq!(info["endSequenceNumber"], big.seq.as_str());
    assert_eq!(info["shardId"], big.shard.as_str());
    assert_eq!(info["streamArn"], stream_arn(&stream).as_str());
    assert!(
        m.get("payload").is_none(),
        "an SQS on-failure record carries no records"
    );

    let sent: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("records sent to the on-failure destination"))
        .collect();
    assert_eq!(sent.len(), 1, "destination lines: {sent:#?}");
    assert!(
        sent[0].contains("PayloadTooLarge") && sent[0].contains(&big.seq),
        "the destination line names neither the condition nor the record: {}",
        sent[0]
    );
}

/// Records of 1,000,000 bytes (the default 1 MiB limit allows them): 60 MB in all,
/// far more than a shard may hold (two events, 12 MB, plus one page).
const LARGE: usize = 1_000_000;
const LARGE_COUNT: usize = 60;
/// The retried batch's invocations to wait for: by the 7th (about 30 s of backoff), a
/// reader that did not pause would have read the whole shard.
const ATTEMPTS: usize = 7;
/// esm's peak resident memory may not pass this.
const PEAK_RSS_LIMIT: u64 = 250_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_while_a_shard_retries() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "bounded", 1).await;
    let put = put_records_one_by_one(&client, &stream, 0, LARGE_COUNT, LARGE, 4).await;
    assert_eq!(put.len(), LARGE_COUNT);

    // A proxy that forwards everything, to count the records esm read.
    let upstream =
        std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("scripts/test sets the endpoint");
    let proxy = FaultProxy::start(&upstream, Faults::default()).await;
    let url = proxy.url();
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts.jsonl");
    let attempts_text = attempts.display().to_string();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "bounded",
        &stream,
        "batch_size = 10000\nmaximum_retry_attempts = -1\n",
        &[
            ("AWS_ENDPOINT_URL_KINESIS", url.as_str()),
            ("RECORDER_FAIL_FIRST", "1000000000"),
            ("RECORDER_ATTEMPTS", &attempts_text),
        ],
    );
    wait_until(
        &mut esm,
        Duration::from_secs(180),
        &format!("{ATTEMPTS} invocations"),
        || read_attempts(&attempts).len() >= ATTEMPTS,
    );
    let peak = esm.peak_rss_bytes();
    let read = proxy.records_served();
    eprintln!(
        "after {ATTEMPTS} invocations of a failing batch, with {LARGE_COUNT} records of {LARGE} \
         bytes in the shard: esm's peak RSS {:.1} MB; {read} records read",
        peak as f64 / 1e6
    );
    let batches = esm.stop(Duration::from_secs(30));
    assert!(batches.is_empty(), "an invocation succeeded: {batches:?}");

    assert!(
        peak < PEAK_RSS_LIMIT,
        "esm's peak RSS is {peak} bytes, above {PEAK_RSS_LIMIT}: the shard buffered more \
         than its bound"
    );
    // Reading paused at the bound: the shard holds at most two events' worth of
    // records (12 MB: 12 of these) before it stops reading, plus the one page that
    // may be arriving then (10 MiB: 10 of these).
    let bound = (2 * CAP / LARGE + 10_485_760 / LARGE) as u64;
    assert!(
        (4..=bound).contains(&read),
        "esm read {read} of the shard's {LARGE_COUNT} records while its first batch kept \
         failing; a shard holds at most {bound}"
    );

    // Every invocation carried the same first batch (nothing passed it), as many
    // records as fit in 6 MB: 4 records are 5.3 MB of base64, 5 would be 6.7 MB.
    let tries = read_attempts(&attempts);
    assert!(tries.len() >= ATTEMPTS);
    let fit = CAP / base64_len(LARGE);
    assert_eq!(fit, 4);
    for t in &tries {
        assert_eq!(
            t.first.as_deref(),
            Some(put[0].seq.as_str()),
            "a batch other than the first was invoked: {t:?}"
        );
        assert!(
            t.n * base64_len(LARGE) <= CAP,
            "an invocation of {} records of {LARGE} bytes is above the 6 MB cap",
            t.n
        );
        assert_eq!(t.n, fit, "the batch did not fill up to the cap: {t:?}");
        assert_eq!(t.last.as_deref(), Some(put[fit - 1].seq.as_str()));
    }
}

/// Records, batch size, handler delay: each invocation takes 3 s, so the reader's
/// next call lands while one runs.
const RECORDS: usize = 60;
const BATCH: usize = 10;
const DELAY_MS: &str = "3000";
/// GetRecords calls denied.
const DENIALS: u64 = 1;

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_error_never_puts_records_in_two_invocations_at_once() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "reader-stop", 1).await;
    let put = put_records(&client, &stream, 0, RECORDS, 100, 8).await;
    let expected = expected_by_shard(&put);

    // Pages of at most BATCH records, so the shard reads again as each batch ends
    // (it holds at most two batches), i.e. while the next invocation runs.
    let upstream =
        std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("scripts/test sets the endpoint");
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            max_limit: Some(BATCH as u64),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts.jsonl");
    let attempts_text = attempts.display().to_string();
    let url = proxy.url();
    // A function timeout well above the handler's delay (the default is 3 s).
    let config = write_config_function(
        dir.path(),
        "reader-stop",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        &format!("batch_size = {BATCH}\n"),
        "[mapping.function]\nname = \"recorder\"\ntimeout_seconds = 30\n",
    );
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[
            ("AWS_ENDPOINT_URL_KINESIS", url.as_str()),
            ("RECORDER_DELAY_MS", DELAY_MS),
            ("RECORDER_ATTEMPTS", &attempts_text),
        ],
    );
    // Once the second invocation has started and the third batch's records are read,
    // deny the next GetRecords call: it comes when that invocation ends and the third
    // starts. Its answer is held until the third is running in the handler, so the
    // reader stops while an invocation runs. (Armed before the third batch is read,
    // the denial would hold the very call the third invocation waits for, until the
    // SDK's attempt timeout dropped it unanswered.)
    wait_until(
        &mut esm,
        Duration::from_secs(60),
        "the second invocation, with the third batch read",
        || read_attempts(&attempts).len() >= 2 && proxy.records_served() >= 3 * BATCH as u64,
    );
    proxy.hold_denials();
    proxy.deny_get_records(DENIALS);
    wait_until(
        &mut esm,
        Duration::from_secs(60),
        "a denied GetRecords call and the third invocation",
        || proxy.denials_held() >= 1 && read_attempts(&attempts).len() >= 3,
    );
    proxy.release_denials();
    wait_for(&mut esm, Duration::from_secs(180), "every record", |b| {
        count_records(b) >= RECORDS
    });
    let log = esm.log_text();
    let batches = esm.stop(Duration::from_secs(30));

    // The fault happened while an invocation ran.
    let denials = proxy.denials();
    assert_eq!(
        denials.len(),
        DENIALS as usize,
        "GetRecords calls denied: {denials:?}"
    );
    let during = batches
        .iter()
        .find(|b| b.started_ms <= denials[0] && denials[0] <= b.ended_ms);
    assert!(
        during.is_some(),
        "the denial ({}) came while no invocation ran: {:?}",
        denials[0],
        batches
            .iter()
            .map(|b| (b.started_ms, b.ended_ms))
            .collect::<Vec<_>>()
    );

    // No two invocations of the shard overlapped: the recorder never saw two at
    // once, and each started after the one before had ended.
    let max = max_concurrent_by_shard(&batches);
    assert!(
        max.values().all(|&n| n == 1),
        "invocations of one shard overlapped: {max:?}"
    );
    let mut times: Vec<(u64, u64, &BatchLine)> = batches
        .iter()
        .map(|b| (b.started_ms, b.ended_ms, b))
        .collect();
    times.sort_by_key(|t| t.0);
    for pair in times.windows(2) {
        let ((_, prev_end, prev), (next_start, _, next)) = (pair[0], pair[1]);
        assert!(
            next_start >= prev_end,
            "invocation {} started at {next_start}, before {} ended at {prev_end}",
            next.request_id,
            prev.request_id
        );
    }
    // Every record arrived exactly once, in order (the invocation running when the
    // reader stopped was checkpointed before the shard restarted), and every
    // invocation made is one the recorder wrote.
    assert_shards_as_put(&batches, &put);
    assert_eq!(
        seen_by_shard(&batches),
        expected,
        "records missing, repeated or out of order"
    );
    assert_eq!(read_attempts(&attempts).len(), batches.len());

    // The reader stopped and the shard restarted, once per denial.
    let stopped = log.matches("the shard reader stopped").count();
    let failed = log.matches("shard runner failed; it restarts").count();
    let started = log.matches("reading shard").count();
    assert_eq!(
        (stopped, failed, started),
        (DENIALS as usize, DENIALS as usize, DENIALS as usize + 1),
        "(reader stopped, runner failed, runner started) lines; log:\n{log}"
    );
}
