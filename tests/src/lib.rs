//! Helpers for esm's end-to-end tests: a Kinesis client for the emulator, streams
//! with records in them, a config file, the `esm-recorder` process, and what it saw.
//!
//! The emulator is started by `scripts/test` (which sets `AWS_ENDPOINT_URL_KINESIS`);
//! every test creates streams with unique names, so tests run in parallel on one
//! emulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;
use serde::{Deserialize, Serialize};

/// The account kinesis-local uses.
pub const ACCOUNT: &str = "000000000000";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// One invocation, as `esm-recorder` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchLine {
    /// The shard the batch came from.
    pub shard: String,
    /// The invocation's request id.
    pub request_id: String,
    /// The records, in the order the handler received them.
    pub records: Vec<RecordLine>,
}

/// One record of an invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordLine {
    /// Its sequence number.
    pub seq: String,
    /// Its partition key.
    pub key: String,
    /// Its payload size.
    pub len: usize,
    /// Its `eventID`.
    pub event_id: String,
    /// The start of its payload, as text.
    pub data: String,
}

/// A record the test put, with where Kinesis placed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecord {
    /// The shard.
    pub shard: String,
    /// The sequence number.
    pub seq: String,
    /// The partition key.
    pub key: String,
}

/// A Kinesis client for the emulator (from the standard AWS environment).
pub async fn kinesis() -> Client {
    assert!(
        std::env::var("AWS_ENDPOINT_URL_KINESIS").is_ok()
            || std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "no emulator endpoint: run the tests with scripts/test"
    );
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    Client::new(&config)
}

/// A stream name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The ARN of stream `name` in the emulator.
pub fn stream_arn(name: &str) -> String {
    format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}")
}

/// Creates a stream and waits until it is active.
pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    wait_active(client, name).await;
}

/// Waits until the stream is ACTIVE.
pub async fn wait_active(client: &Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("DescribeStreamSummary");
        if summary
            .stream_description_summary()
            .is_some_and(|s| s.stream_status() == &StreamStatus::Active)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} never became active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `count` records (`{"n":N}` padded to about `size` bytes, keys `key-{N % keys}`),
/// numbered from `first`, and returns where each landed.
pub async fn put_records(
    client: &Client,
    stream: &str,
    first: usize,
    count: usize,
    size: usize,
    keys: usize,
) -> Vec<PutRecord> {
    let mut placed = Vec::with_capacity(count);
    let mut n = first;
    while n < first + count {
        let chunk_end = (n + 500).min(first + count);
        let mut entries: Vec<(String, Vec<u8>)> = (n..chunk_end)
            .map(|i| {
                let mut data = format!("{{\"n\":{i},\"pad\":\"");
                while data.len() + 2 < size {
                    data.push('x');
                }
                data.push_str("\"}");
                (format!("key-{}", i % keys.max(1)), data.into_bytes())
            })
            .collect();
        // Retry entries the emulator failed, keeping their order.
        let mut attempts = 0;
        while !entries.is_empty() {
            attempts += 1;
            assert!(attempts < 20, "PutRecords kept failing");
            let request = entries.iter().map(|(key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.clone()))
                    .build()
                    .expect("entry")
            });
            let out = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(request.collect()))
                .send()
                .await
                .expect("PutRecords");
            let mut failed = Vec::new();
            for ((key, data), result) in entries.into_iter().zip(out.records()) {
                match (result.shard_id(), result.sequence_number()) {
                    (Some(shard), Some(seq)) => placed.push(PutRecord {
                        shard: shard.to_string(),
                        seq: seq.to_string(),
                        key,
                    }),
                    _ => failed.push((key, data)),
                }
            }
            entries = failed;
            if !entries.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        n = chunk_end;
    }
    placed
}

/// Writes a config file for one mapping of `stream` into `dir`; `extra` is appended
/// to the `[[mapping]]` table.
pub fn write_config(dir: &Path, mapping: &str, stream: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"shutdown_timeout_seconds = 20

[store]
kind = "local"
path = "{state}"

[[mapping]]
name = "{mapping}"
event_source_arn = "{arn}"
function = "recorder"
starting_position = "TRIM_HORIZON"
shard_discovery_interval_seconds = 1
{extra}
"#,
        state = dir.join("state").display(),
        arn = stream_arn(stream),
    );
    let path = dir.join("esm.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Where the workspace's binaries are (next to the test executable).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (scripts/test does)",
        path.display()
    );
    path
}

/// A running `esm-recorder run` process.
pub struct Esm {
    child: Child,
    /// The recorder's output file.
    pub out: PathBuf,
    /// The process's stderr (its logs).
    pub log: PathBuf,
}

impl Esm {
    /// Starts `esm-recorder run --config CONFIG`, recording to `dir/out.jsonl`, with
    /// extra environment.
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Self {
        let out = dir.join("out.jsonl");
        let log = dir.join(format!(
            "esm-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let mut cmd = Command::new(bin_path("esm-recorder"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RECORDER_OUT", &out)
            .env("ESM_LOG", "info,esm=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start esm-recorder");
        Self { child, out, log }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "esm did not exit within {timeout:?} of SIGTERM; log: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process's logs so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the logs if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("esm exited early with {status}; log:\n{}", self.log_text());
        }
    }
}

impl Drop for Esm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every complete line the recorder wrote (a line cut short by a kill is ignored).
pub fn read_batches(path: &Path) -> Vec<BatchLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How many records the recorder has seen.
pub fn records_seen(path: &Path) -> usize {
    read_batches(path).iter().map(|b| b.records.len()).sum()
}

/// Waits until `done(batches)` holds, checking that `esm` is still running; panics
/// with its logs after `timeout`.
pub fn wait_for(
    esm: &mut Esm,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[BatchLine]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let batches = read_batches(&esm.out);
        if done(&batches) {
            return;
        }
        esm.assert_running();
        if Instant::now() > deadline {
            let seen: usize = batches.iter().map(|b| b.records.len()).sum();
            panic!(
                "timed out waiting for {what} ({seen} records seen); log:\n{}",
                esm.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sequence numbers seen, per shard, in the order they arrived.
pub fn seen_by_shard(batches: &[BatchLine]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in batches {
        out.entry(b.shard.clone())
            .or_default()
            .extend(b.records.iter().map(|r| r.seq.clone()));
    }
    out
}

/// Numeric order of two sequence numbers.
pub fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}
