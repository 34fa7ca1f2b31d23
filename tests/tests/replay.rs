//! `esm replay` end to end: a batch that failed for good reaches an SQS queue as an
//! on-failure record; replay reads its records back from the stream and writes
//! them (`--out`), re-invokes the fixed function (`--delete` empties the queue), and
//! does the same from a `--file`.

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

    // --s3-uri is not supported yet: exit 2.
    let out = replay(&config, &["--s3-uri", "s3://bucket/prefix"], &handler_out);
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
