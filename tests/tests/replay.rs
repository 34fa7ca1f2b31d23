//! `esm replay` end to end: a batch that failed for good reaches an SQS queue as an
//! on-failure record; replay reads its records back from the stream and writes
//! them (`--out`), re-invokes the fixed function (`--delete` empties the queue), and
//! does the same from a `--file`. A poison record sent to an S3 bucket is replayed
//! from the object's payload after the stream is gone.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use base64::Engine as _;
use esm_e2e::*;

/// The number of messages in the queue (visible or not).
async fn messages_in(client: &aws_sdk_sqs::Client, url: &str) -> usize {
    let attrs = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let get = |name: QueueAttributeName| {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    get(QueueAttributeName::ApproximateNumberOfMessages)
        + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

/// Runs `esm-recorder replay ARGS` (the recorder writing to `out`), to its end.
fn replay(config: &Path, args: &[&str], out: &Path) -> Output {
    Command::new(bin_path("esm-recorder"))
        .arg("replay")
        .arg("--config")
        .arg(config)
        .args(["--mapping", "replay"])
        .args(args)
        .env("RECORDER_OUT", out)
        .env_remove("RECORDER_POISON")
        .stdin(Stdio::null())
        .output()
        .expect("run esm-recorder replay")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The (sequence number, data) of each line of a `--out` file.
fn out_lines(path: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(path)
        .expect("the --out file")
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let k = &v["kinesis"];
            assert_eq!(v["eventSource"], "aws:kinesis");
            (
                k["sequenceNumber"].as_str().expect("seq").to_string(),
                base64::engine::general_purpose::STANDARD
                    .decode(k["data"].as_str().expect("data"))
                    .expect("base64"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_a_failed_batch_from_the_queue_and_a_file() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "replay", 1).await;
    let put = put_records(&client, &stream, 0, 40, 100, 4).await;
    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("replay-failures")).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config_function(
        dir.path(),
        "replay",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 10\nmaximum_retry_attempts = 0\n",
        &format!("function = \"recorder\"\n[mapping.destination_config.on_failure]\ndestination = \"{arn}\"\n"),
    );
    let mut esm = Esm::start(dir.path(), &config, &[("RECORDER_POISON", "\"n\":15,")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while messages_in(&sqs, &url).await < 1 {
        esm.assert_running();
        assert!(
            Instant::now() < deadline,
            "no on-failure message; log:\n{}",
            esm.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    esm.stop(Duration::from_secs(30));

    // The message, looked at without hiding it.
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(0)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage");
    let body = got.messages()[0].body().expect("a body").to_string();
    let record: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let info = &record["KinesisBatchInfo"];
    let index = |key: &str| {
        put.iter()
            .position(|p| p.seq == info[key].as_str().unwrap())
            .expect("a sequence number put")
    };
    let (first, last) = (index("startSequenceNumber"), index("endSequenceNumber"));
    assert!((first..=last).contains(&15), "{first}..={last}");
    let expected: Vec<(String, Vec<u8>)> = (first..=last)
        .map(|i| (put[i].seq.clone(), record_payload(i, 100)))
        .collect();

    // (a) --out: the failed batch's records, byte for byte; the message stays.
    let out_file = dir.path().join("replayed.jsonl");
    let handler_out = dir.path().join("handler-a.jsonl");
    let out = replay(
        &config,
        &["--queue-url", &url, "--out", out_file.to_str().unwrap()],
        &handler_out,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out_lines(&out_file), expected);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "replay: 1 batches, {} records, 1 written, 0 failed, 0 expired",
            expected.len()
        )),
        "{}",
        text(&out)
    );
    assert!(records_seen(&handler_out) == 0, "--out invokes nothing");
    assert_eq!(
        messages_in(&sqs, &url).await,
        1,
        "no --delete: the message stays"
    );

    // (c) the same from a file of on-failure records.
    let failures = dir.path().join("failures.jsonl");
    std::fs::write(&failures, format!("{body}\n")).unwrap();
    let out_file_c = dir.path().join("replayed-c.jsonl");
    let out = replay(
        &config,
        &[
            "--file",
            failures.to_str().unwrap(),
            "--out",
            out_file_c.to_str().unwrap(),
        ],
        &handler_out,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out_lines(&out_file_c), expected);

    // An --s3-uri that is not s3://BUCKET/PREFIX: exit 2.
    let out = replay(&config, &["--s3-uri", "bucket/prefix"], &handler_out);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // (b) re-invoke the fixed handler and delete the message.
    let handler_b = dir.path().join("handler-b.jsonl");
    let out = replay(&config, &["--queue-url", &url, "--delete"], &handler_b);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 re-invoked, 0 failed, 0 expired"),
        "{}",
        text(&out)
    );
    let batches = read_batches(&handler_b);
    assert_eq!(batches.len(), 1, "one invocation");
    let seen: Vec<&str> = seqs(&batches).collect();
    let want: Vec<&str> = expected.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(seen, want);
    assert_eq!(
        messages_in(&sqs, &url).await,
        0,
        "--delete empties the queue"
    );
}

/// The S3 destination keeps the records: after the stream is deleted, `esm replay
/// --s3-uri` still writes the poison record exactly as the handler got it, and
/// re-invokes the function with it.
#[tokio::test(flavor = "multi_thread")]
async fn replays_a_poison_record_from_s3_after_the_stream_is_gone() {
    let poison = 21;
    let run = poison_to_s3("replay", poison).await;
    let record = run.put[poison].clone();
    let stream = run.stream.to_string();
    let (dir, config) = (run.dir, run.config);
    let body = String::from_utf8(run.body.clone()).expect("a UTF-8 object");

    // Delete the stream (the helper's drop deletes it, and waits).
    drop(run.stream);
    let client = kinesis().await;
    let gone = client
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await;
    assert!(gone.is_err(), "the stream {stream} is deleted");

    let uri = format!("s3://{}/aws/lambda/", run.bucket);
    let out_file = dir.path().join("from-s3.jsonl");
    let handler_out = dir.path().join("handler-s3.jsonl");
    let out = replay(
        &config,
        &["--s3-uri", &uri, "--out", out_file.to_str().unwrap()],
        &handler_out,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("replay: 1 batches, 1 records, 1 written, 0 failed, 0 expired"),
        "{}",
        text(&out)
    );
    // Exactly that record, byte for byte as stored (and as the handler got it).
    let written = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 1, "{written}");
    assert!(
        lines[0].starts_with(r#"{"kinesis":{"#)
            && body.contains(&format!(r#""payload":{{"Records":[{}]}}"#, lines[0])),
        "the line is the payload's one record as stored:\n{}\n{body}",
        lines[0]
    );
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        out_lines(&out_file),
        [(record.seq.clone(), record_payload(poison, 100))]
    );
    assert_eq!(line["kinesis"]["partitionKey"], record.key.as_str());
    assert_eq!(
        line["eventID"],
        format!("{}:{}", record.shard, record.seq).as_str()
    );
    assert_eq!(records_seen(&handler_out), 0, "--out invokes nothing");

    // Re-invoked (the poison marker is off for replay): one invocation of that record.
    let out = replay(&config, &["--s3-uri", &uri], &handler_out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 re-invoked, 0 failed, 0 expired"),
        "{}",
        text(&out)
    );
    let batches = read_batches(&handler_out);
    assert_eq!(batches.len(), 1, "one invocation");
    assert_eq!(seqs(&batches).collect::<Vec<_>>(), [record.seq.as_str()]);
}
