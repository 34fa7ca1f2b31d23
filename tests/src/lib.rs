//! Helpers for esm's end-to-end tests: a Kinesis client for the emulator, streams
//! with records in them, a config file, the `esm-recorder` process, and what it saw.
//!
//! The emulator is started by `scripts/test` (which sets `AWS_ENDPOINT_URL_KINESIS`);
//! every test creates streams with unique names, so tests run in parallel on one
//! emulator.

pub mod cut_proxy;
pub mod fleet;
pub mod kpl;
pub mod observe;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, StreamStatus};
use aws_sdk_kinesis::Client;
use serde::{Deserialize, Serialize};

/// The account kinesis-local uses.
pub const ACCOUNT: &str = "000000000000";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// One invocation of the `windows` handler (the `tumbling-window` example), as the
/// recorder writes it to `$RECORDER_WINDOWS`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WindowLine {
    /// `shardId`.
    pub shard: String,
    /// The window's start (RFC 3339).
    pub start: String,
    /// `isFinalInvokeForWindow`.
    pub is_final: bool,
    /// `isWindowTerminatedEarly`.
    pub early: bool,
    /// The records.
    pub records: Vec<WindowRecord>,
    /// The state passed in.
    pub state_in: std::collections::BTreeMap<String, u64>,
    /// The state the example returned (its counts per key).
    pub state_out: std::collections::BTreeMap<String, u64>,
    /// When the invocation started (ms since the epoch).
    pub started_ms: u64,
}

/// A record of a [`WindowLine`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WindowRecord {
    /// Sequence number.
    pub seq: String,
    /// Partition key.
    pub key: String,
    /// `approximateArrivalTimestamp`, in ms since the epoch.
    pub arrival_ms: i64,
}

/// Every complete line of a `$RECORDER_WINDOWS` file.
pub fn read_window_lines(path: &Path) -> Vec<WindowLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// One invocation, as `esm-recorder` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchLine {
    /// The shard the batch came from.
    pub shard: String,
    /// The invocation's request id.
    pub request_id: String,
    /// The records, in the order the handler received them.
    pub records: Vec<RecordLine>,
    /// How many invocations of the same shard were running when this one started,
    /// itself included (0 in lines written before the recorder counted them).
    #[serde(default)]
    pub concurrent: usize,
    /// When the invocation started (wall-clock milliseconds since the Unix epoch).
    #[serde(default)]
    pub started_ms: u64,
    /// When the handler wrote this line (wall-clock milliseconds since the Unix epoch):
    /// after `RECORDER_DELAY_MS`, before `RECORDER_DELAY_AFTER_MS`.
    #[serde(default)]
    pub ended_ms: u64,
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
    client_from_env().await
}

/// A Kinesis client from the standard AWS environment, in [`REGION`].
async fn client_from_env() -> Client {
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
    let entries = (first..first + count)
        .map(|i| (format!("key-{}", i % keys.max(1)), record_payload(i, size)))
        .collect();
    put_entries(client, stream, entries).await
}

/// Puts `(partition key, data)` entries, in order, 500 per PutRecords call (retrying
/// the entries the emulator failed), and returns where each landed.
pub async fn put_entries(
    client: &Client,
    stream: &str,
    all: Vec<(String, Vec<u8>)>,
) -> Vec<PutRecord> {
    let mut placed = Vec::with_capacity(all.len());
    for chunk in all.chunks(500) {
        let mut entries = chunk.to_vec();
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
    }
    placed
}

/// Writes a config file for one mapping of `stream` into `dir`; `extra` is appended
/// to the `[[mapping]]` table.
pub fn write_config(dir: &Path, mapping: &str, stream: &str, extra: &str) -> PathBuf {
    write_config_from(
        dir,
        mapping,
        stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        extra,
    )
}

/// Like [`write_config`], with the `starting_position` line (and any
/// `starting_position_timestamp`) given as TOML lines in `starting`.
pub fn write_config_from(
    dir: &Path,
    mapping: &str,
    stream: &str,
    starting: &str,
    extra: &str,
) -> PathBuf {
    write_config_function(
        dir,
        mapping,
        stream,
        starting,
        extra,
        "function = \"recorder\"\n",
    )
}

/// The general form: `function` is the TOML that names the function, written last
/// so that it may be a `[mapping.function]` table (e.g. a Runtime API `command`).
pub fn write_config_function(
    dir: &Path,
    mapping: &str,
    stream: &str,
    starting: &str,
    extra: &str,
    function: &str,
) -> PathBuf {
    let text = format!(
        r#"shutdown_timeout_seconds = 20

[store]
kind = "local"
path = "{state}"

[[mapping]]
name = "{mapping}"
event_source_arn = "{arn}"
{starting}shard_discovery_interval_seconds = 1
{extra}
{function}
"#,
        state = dir.join("state").display(),
        arn = stream_arn(stream),
    );
    let path = dir.join("esm.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `esm status --config CONFIG`.
pub fn esm_status(config: &Path) -> Output {
    Command::new(bin_path("esm"))
        .args(["status", "--config"])
        .arg(config)
        .output()
        .expect("run esm status")
}

/// Runs `esm checkpoint ARGS --config CONFIG --mapping MAPPING`.
pub fn esm_checkpoint(mapping: &str, args: &[&str], config: &Path) -> Output {
    Command::new(bin_path("esm"))
        .arg("checkpoint")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--mapping", mapping])
        .output()
        .expect("run esm checkpoint")
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
        Self::start_with_out(dir, config, &dir.join("out.jsonl"), env)
    }

    /// Writes a config for one mapping of `stream` into `dir` ([`write_config`], with
    /// `extra`) and starts esm on it ([`Esm::start`], with `env`).
    pub fn start_mapping(
        dir: &Path,
        mapping: &str,
        stream: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = write_config(dir, mapping, stream, extra);
        Self::start(dir, &config, env)
    }

    /// Like [`Esm::start`], recording to `out` (e.g. one file per run of a restart
    /// test). The log goes to a fresh file in `dir`.
    pub fn start_with_out(dir: &Path, config: &Path, out: &Path, env: &[(&str, &str)]) -> Self {
        let out = out.to_path_buf();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!(
            "esm-{}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            STARTS.fetch_add(1, Ordering::SeqCst)
        ));
        let mut cmd = Command::new(bin_path("esm-recorder"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RECORDER_OUT", &out)
            .env(
                "ESM_LOG",
                std::env::var("ESM_TEST_LOG").unwrap_or_else(|_| "info,esm=debug".into()),
            )
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
        self.wait_status(timeout, " of SIGTERM")
    }

    /// Sends SIGTERM, asserts that esm exited successfully within `timeout`, and
    /// returns every batch it recorded.
    pub fn stop(self, timeout: Duration) -> Vec<BatchLine> {
        let (out, log) = (self.out.clone(), self.log.clone());
        let status = self.terminate(timeout);
        assert!(
            status.success(),
            "esm exited with {status}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        read_batches(&out)
    }

    /// The process's logs so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to `timeout`) for the process to exit by itself; panics with the logs
    /// if it does not.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        self.wait_status(timeout, "")
    }

    /// Waits (up to `timeout`) for the exit status; if the process is still running
    /// then, kills it and panics with the logs (`since` follows the timeout in the
    /// message, e.g. " of SIGTERM").
    fn wait_status(&mut self, timeout: Duration, since: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "esm did not exit within {timeout:?}{since}; log: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times `needle` occurs in the logs so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
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
    count_records(&read_batches(path))
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
            let seen = count_records(&batches);
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

/// The payload [`put_records`] puts for record `n`: `{"n":N,"pad":"xx…"}`, about
/// `size` bytes.
pub fn record_payload(n: usize, size: usize) -> Vec<u8> {
    let mut data = format!("{{\"n\":{n},\"pad\":\"");
    while data.len() + 2 < size {
        data.push('x');
    }
    data.push_str("\"}");
    data.into_bytes()
}

/// Puts records `first..first + count` one PutRecord call each (for records too large
/// to share a 5 MB PutRecords request), in order, keys `key-{N % keys}`.
pub async fn put_records_one_by_one(
    client: &Client,
    stream: &str,
    first: usize,
    count: usize,
    size: usize,
    keys: usize,
) -> Vec<PutRecord> {
    let mut placed = Vec::with_capacity(count);
    for n in first..first + count {
        let key = format!("key-{}", n % keys.max(1));
        let data = record_payload(n, size);
        let mut attempts = 0;
        let out = loop {
            attempts += 1;
            match client
                .put_record()
                .stream_name(stream)
                .partition_key(&key)
                .data(Blob::new(data.clone()))
                .send()
                .await
            {
                Ok(out) => break out,
                Err(e) => {
                    assert!(attempts < 20, "PutRecord kept failing: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        placed.push(PutRecord {
            shard: out.shard_id().to_string(),
            seq: out.sequence_number().to_string(),
            key,
        });
    }
    placed
}

/// Every shard ListShards returns for the stream (all pages).
pub async fn list_shards(client: &Client, stream: &str) -> Vec<Shard> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await.expect("ListShards");
        shards.extend(page.shards().iter().cloned());
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return shards;
        }
    }
}

/// The sequence numbers the test put, per shard, in sequence order.
pub fn expected_by_shard(put: &[PutRecord]) -> BTreeMap<String, Vec<String>> {
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in put {
        expected
            .entry(r.shard.clone())
            .or_default()
            .push(r.seq.clone());
    }
    for seqs in expected.values_mut() {
        seqs.sort_by(|a, b| seq_cmp(a, b));
    }
    expected
}

/// The sequence numbers of every record in `batches`, in the order they arrived.
pub fn seqs<'a>(batches: impl IntoIterator<Item = &'a BatchLine>) -> impl Iterator<Item = &'a str> {
    batches
        .into_iter()
        .flat_map(|b| b.records.iter().map(|r| r.seq.as_str()))
}

/// Asserts that every shard of `seen` holds exactly its records of `expected`, in
/// sequence order, once each.
pub fn assert_each_shard_as_put(
    seen: &BTreeMap<String, Vec<String>>,
    expected: &BTreeMap<String, Vec<String>>,
) {
    for (shard, seqs) in seen {
        assert_eq!(
            seqs, &expected[shard],
            "shard {shard}: records missing, repeated or out of order"
        );
    }
}

/// How many records `batches` hold (repeats counted).
pub fn count_records(batches: &[BatchLine]) -> usize {
    batches.iter().map(|b| b.records.len()).sum()
}

/// Waits until `done(log text)` holds, checking that `esm` is still running; panics
/// with its logs after `timeout`.
pub fn wait_for_log(
    esm: &mut Esm,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let log = esm.log_text();
        if done(&log) {
            return;
        }
        esm.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The checkpoints (last done sequence number, per shard) esm stored for `mapping` in
/// the local store at `state_dir`. Call it only while no esm process has the store open.
pub async fn stored_checkpoints(
    state_dir: &Path,
    mapping: &str,
) -> BTreeMap<String, esm::store::ShardCheckpoint> {
    use esm::store::CheckpointStore as _;
    let store = esm::store::local::LocalStore::open(state_dir).expect("open the local store");
    store
        .load(mapping)
        .await
        .expect("load checkpoints")
        .into_iter()
        .map(|(shard, row)| (shard, row.checkpoint))
        .collect()
}

/// The sequence number a stored checkpoint points at.
pub fn checkpoint_seq(state: &esm::store::ShardCheckpoint) -> Option<String> {
    state
        .checkpoint
        .as_ref()
        .map(|p| p.sequence.as_str().to_string())
}

/// A stream for one test, deleted when dropped (also when the test panics): the
/// emulator allows 50 open shards per account, so streams left behind by earlier
/// runs would make `CreateStream` fail.
#[derive(Debug)]
pub struct TestStream {
    /// The stream's name ([`unique_name`] of the prefix).
    pub name: String,
}

impl TestStream {
    /// Creates a stream named after `prefix` with `shards` shards and waits until it
    /// is active.
    ///
    /// While the emulator's shard limit is reached (streams of tests running in
    /// parallel are being deleted), it tries again for up to 30 s.
    pub async fn create(client: &Client, prefix: &str, shards: i32) -> Self {
        let name = unique_name(prefix);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client
                .create_stream()
                .stream_name(&name)
                .shard_count(shards)
                .send()
                .await
            {
                Ok(_) => break,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_limit_exceeded_exception())
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!(
                    "CreateStream {name}: {e:?} (the emulator allows 50 open shards; streams \
                     left behind by earlier runs count against it)"
                ),
            }
        }
        wait_active(client, &name).await;
        Self { name }
    }
}

impl std::ops::Deref for TestStream {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; delete from a thread with its own small runtime. Failures
        // are ignored: the deletion only keeps the emulator tidy.
        let deleter = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let client = client_from_env().await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    client
                        .delete_stream()
                        .stream_name(&name)
                        .enforce_consumer_deletion(true)
                        .send(),
                )
                .await;
            });
        });
        let _ = deleter.join();
    }
}

impl Esm {
    /// The process id of esm.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Processes now running whose environment holds `key=value` (e.g. a worker's
/// output path, unique to one test), by pid.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// The local addresses process `pid` listens on (TCP), from `ss`.
pub fn listening_addresses(pid: u32) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-ltnpH"])
        .output()
        .expect("ss (iproute2) is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// An SQS client for the emulator (moto, from the standard AWS environment).
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config().await)
}

/// An SNS client for the emulator.
pub async fn sns() -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(&sdk_config().await)
}

/// An S3 client for the emulator (path-style: moto serves buckets under its address).
pub async fn s3() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&sdk_config().await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates a bucket (a unique, lowercase name from `prefix`); returns its name and ARN.
pub async fn bucket(client: &aws_sdk_s3::Client, prefix: &str) -> (String, String) {
    let name = unique_name(prefix).to_lowercase();
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("CreateBucket");
    let arn = format!("arn:aws:s3:::{name}");
    (name, arn)
}

/// The keys under `prefix` in `bucket` (every page), waiting up to 60 s for at
/// least `n` of them.
pub async fn objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys: Vec<String> = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .expect("ListObjectsV2")
            .iter()
            .flat_map(|page| {
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string))
            })
            .collect();
        if keys.len() >= n {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} objects arrived",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The body of object `key`.
pub async fn object_body(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("GetObject")
        .body
        .collect()
        .await
        .expect("the object's body")
        .to_vec()
}

async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await
}

/// Creates an SQS queue; returns its URL and ARN (taken from the service: moto's
/// account is not kinesis-local's).
pub async fn queue(client: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("queue url");
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes");
    let arn = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .expect("QueueArn");
    (url, arn)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A number in `lo..hi` from a generator seeded by the clock (and the process id):
/// different on each run, printed by the caller so a failure can be reproduced by hand.
pub fn random_in(lo: usize, hi: usize) -> usize {
    assert!(lo < hi, "empty range {lo}..{hi}");
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the clock, the pid and a call counter.
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ (CALLS.fetch_add(1, Ordering::SeqCst) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    lo + (z % (hi - lo) as u64) as usize
}

/// The sequence numbers seen, per partition key, in the order the handler wrote them.
pub fn seen_by_key(batches: &[BatchLine]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in batches {
        for r in &b.records {
            out.entry(r.key.clone()).or_default().push(r.seq.clone());
        }
    }
    out
}

/// Asserts that, per partition key, the records of `batches` arrived in strictly
/// increasing sequence order (so also that none arrived twice). The recorder writes a
/// line during its invocation, and a partition key's next batch starts only after the
/// previous one returned, so file order is invocation order for one key.
pub fn assert_order_per_key(run: &str, batches: &[BatchLine]) {
    for (key, seqs) in seen_by_key(batches) {
        for pair in seqs.windows(2) {
            assert_eq!(
                seq_cmp(&pair[0], &pair[1]),
                std::cmp::Ordering::Less,
                "{run}, partition key {key}: {} arrived before {} (out of order or repeated)",
                pair[0],
                pair[1]
            );
        }
    }
}

/// The most invocations of each shard the recorder saw running at once
/// ([`BatchLine::concurrent`]).
pub fn max_concurrent_by_shard(batches: &[BatchLine]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for b in batches {
        let max = out.entry(b.shard.clone()).or_default();
        *max = (*max).max(b.concurrent);
    }
    out
}

/// Asserts that every record of `batches` sits in the shard Kinesis put it in
/// (`eventID` and the line's shard agree with [`PutRecord::shard`]) and that nothing
/// else arrived.
pub fn assert_shards_as_put(batches: &[BatchLine], put: &[PutRecord]) {
    let shard_of: std::collections::HashMap<&str, &str> = put
        .iter()
        .map(|r| (r.seq.as_str(), r.shard.as_str()))
        .collect();
    for b in batches {
        for r in &b.records {
            let Some(shard) = shard_of.get(r.seq.as_str()) else {
                panic!("record {} (key {}) was never put", r.seq, r.key);
            };
            assert_eq!(
                &b.shard, shard,
                "record {} came from the wrong shard",
                r.seq
            );
            assert_eq!(r.event_id, format!("{}:{}", b.shard, r.seq));
        }
    }
}

/// The lines of `log` in which esm says a shard runner panicked: they contain
/// "panicked" and a shard id, and are not Rust's own panic report (`thread '…'
/// panicked at …`).
pub fn runner_panic_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked") && l.contains("shardId-"))
        .filter(|l| !l.starts_with("thread '"))
        .collect()
}

/// The shard id (`shardId-…`) a log line names, if any.
pub fn shard_in_line(line: &str) -> Option<String> {
    let start = line.find("shardId-")?;
    let id: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    Some(id)
}

/// Raises the stream's maximum record size to `kib` KiB (UpdateMaxRecordSize; Kinesis
/// allows up to 10,240), so that records above the default 1 MiB can be put, and
/// checks that DescribeStreamSummary reports it.
pub async fn raise_max_record_size(client: &Client, stream: &str, kib: i32) {
    client
        .update_max_record_size()
        .stream_arn(stream_arn(stream))
        .max_record_size_in_kib(kib)
        .send()
        .await
        .expect("UpdateMaxRecordSize (kinesis-local supports it)");
    wait_active(client, stream).await;
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("DescribeStreamSummary");
    assert_eq!(
        summary
            .stream_description_summary()
            .and_then(|s| s.max_record_size_in_kib()),
        Some(kib),
        "the stream's maximum record size did not change"
    );
}

/// One invocation as the recorder's attempts file (`RECORDER_ATTEMPTS`) has it:
/// written when the invocation starts, before it fails or succeeds.
#[derive(Clone, Debug, Deserialize)]
pub struct AttemptLine {
    /// The sequence number of its first record.
    pub first: Option<String>,
    /// The sequence number of its last record.
    pub last: Option<String>,
    /// How many records it carried.
    pub n: usize,
}

/// Every complete line of the recorder's attempts file.
pub fn read_attempts(path: &Path) -> Vec<AttemptLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until `done()` holds, checking that `esm` is still running; panics with its
/// logs after `timeout`.
pub fn wait_until(esm: &mut Esm, timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return;
        }
        esm.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            esm.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Esm {
    /// The process's peak resident set size so far, in bytes (`VmHWM` in
    /// `/proc/PID/status`).
    pub fn peak_rss_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM line in {path}:\n{status}"));
        kib * 1024
    }
}

/// The recorder function, then an on-failure destination table (TOML tables come
/// last): the `function` argument of [`write_config_function`].
pub fn with_destination(arn: &str) -> String {
    format!("function = \"recorder\"\n[mapping.destination_config.on_failure]\ndestination = \"{arn}\"\n")
}

/// Receives (and deletes) `n` message bodies from an SQS queue, as JSON, waiting up to
/// 60 s for them.
pub async fn receive_messages(
    client: &aws_sdk_sqs::Client,
    url: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived",
            out.len()
        );
        out.extend(receive_now(client, url, 10).await);
    }
    out
}

/// One ReceiveMessage call (a 1 s long poll, up to `max` messages): the bodies, as
/// JSON; the messages are deleted.
pub async fn receive_now(
    client: &aws_sdk_sqs::Client,
    url: &str,
    max: i32,
) -> Vec<serde_json::Value> {
    let got = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage");
    let mut out = Vec::new();
    for m in got.messages() {
        out.push(serde_json::from_str(m.body().unwrap_or_default()).expect("a JSON body"));
        if let Some(handle) = m.receipt_handle() {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(handle)
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
    out
}

/// The second run of a kill-and-restart test: starts esm again on the same config
/// and state, recording to `out`, until the records seen over both runs (`seen`
/// before, plus this run's) number `total`; stops it and returns this run's batches.
pub fn rerun_until_all_seen(
    dir: &Path,
    config: &Path,
    out: &Path,
    seen: &std::collections::HashSet<String>,
    total: usize,
    timeout: Duration,
) -> Vec<BatchLine> {
    let mut esm = Esm::start_with_out(dir, config, out, &[]);
    wait_for(&mut esm, timeout, "every record, over both runs", |b| {
        let mut all = seen.clone();
        all.extend(seqs(b).map(str::to_string));
        all.len() >= total
    });
    esm.stop(Duration::from_secs(30))
}

// --- Enhanced fan-out ---

/// Registers a consumer of `stream` and waits until it is ACTIVE; returns its ARN.
pub async fn consumer(client: &Client, stream: &str, name: &str) -> String {
    use aws_sdk_kinesis::types::ConsumerStatus;
    let out = client
        .register_stream_consumer()
        .stream_arn(stream_arn(stream))
        .consumer_name(name)
        .send()
        .await
        .expect("RegisterStreamConsumer");
    let arn = out
        .consumer()
        .expect("a consumer")
        .consumer_arn()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = client
            .describe_stream_consumer()
            .consumer_arn(&arn)
            .send()
            .await
            .expect("DescribeStreamConsumer");
        let status = described
            .consumer_description()
            .map(|d| d.consumer_status().clone());
        if status == Some(ConsumerStatus::Active) {
            return arn;
        }
        assert!(
            Instant::now() < deadline,
            "consumer {arn} never became ACTIVE ({status:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the mapping of the config file at `config` (written for `stream` by
/// [`write_config`] or its kin) read through `consumer_arn`, with enhanced fan-out.
pub fn read_through_consumer(config: &Path, stream: &str, consumer_arn: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let from = format!("event_source_arn = \"{}\"", stream_arn(stream));
    assert!(
        text.contains(&from),
        "{} does not read {stream}",
        config.display()
    );
    let to = format!("event_source_arn = \"{consumer_arn}\"");
    std::fs::write(config, text.replace(&from, &to)).expect("write config");
}

/// Writes a config for one mapping of `stream` from its trim horizon, read through
/// `consumer_arn` ([`write_config_function`], then [`read_through_consumer`]).
pub fn write_fanout_config(
    dir: &Path,
    mapping: &str,
    stream: &str,
    consumer_arn: &str,
    extra: &str,
    function: &str,
) -> PathBuf {
    let config = write_config_function(
        dir,
        mapping,
        stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        extra,
        function,
    );
    read_through_consumer(&config, stream, consumer_arn);
    config
}

/// A counter of the totals line esm logs when a mapping stops (`mapping stopped; its
/// totals since start … NAME=N`), from the log text; panics if there is none.
pub fn stopped_total(log: &str, name: &str) -> u64 {
    let totals = log
        .lines()
        .find(|l| l.contains("mapping stopped; its totals since start"))
        .unwrap_or_else(|| panic!("no totals line in the log:\n{log}"));
    totals
        .split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {totals}"))
}

// --- Resharding ---

/// UpdateShardCount to `target` (uniform scaling).
pub async fn update_shard_count(client: &Client, stream: &str, target: i32) {
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(target)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .expect("UpdateShardCount");
}

/// Polls ListShards (for up to 30 s) until `found` returns something, then waits
/// until the stream is active again and returns it; panics with `never` and the
/// shards if it does not.
pub async fn wait_for_shards<T>(
    client: &Client,
    stream: &str,
    never: &str,
    mut found: impl FnMut(&[Shard]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let shards = list_shards(client, stream).await;
        if let Some(found) = found(&shards) {
            break found;
        }
        assert!(Instant::now() < deadline, "{never}: {shards:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_active(client, stream).await;
    found
}

/// Splits a 1-shard stream into 2 and waits until ListShards shows both children
/// and the stream is active again; returns (parent, children).
pub async fn split_in_two(client: &Client, stream: &str) -> (String, Vec<String>) {
    let parent = list_shards(client, stream).await;
    assert_eq!(parent.len(), 1);
    let parent = parent[0].shard_id().to_string();
    update_shard_count(client, stream, 2).await;
    let never = format!("the children of {parent} never appeared");
    let children = wait_for_shards(client, stream, &never, |shards| {
        let mut children: Vec<String> = shards
            .iter()
            .filter(|s| {
                s.parent_shard_id() == Some(parent.as_str())
                    || s.adjacent_parent_shard_id() == Some(parent.as_str())
            })
            .map(|s| s.shard_id().to_string())
            .collect();
        children.sort();
        (children.len() == 2).then_some(children)
    })
    .await;
    (parent, children)
}

/// Asserts that the records arrived exactly once, in order per shard, and that every
/// record of `parent` was delivered (by line in the out file) before any record of
/// `children`.
pub fn assert_parent_first(
    batches: &[BatchLine],
    put: &[PutRecord],
    parent: &str,
    children: &[String],
) {
    let expected = expected_by_shard(put);
    let seen = seen_by_shard(batches);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "records came from other shards than they were put in"
    );
    assert_each_shard_as_put(&seen, &expected);
    let unique: std::collections::HashSet<&str> = seqs(batches).collect();
    assert_eq!(unique.len(), put.len());
    assert_eq!(
        count_records(batches),
        put.len(),
        "some record arrived twice"
    );

    let lines_of = |shard: &str| -> Vec<usize> {
        batches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.shard == shard)
            .map(|(i, _)| i)
            .collect()
    };
    let last_parent_line = lines_of(parent)
        .into_iter()
        .max()
        .expect("no batch from the parent");
    for child in children {
        let first_child_line = lines_of(child).into_iter().min();
        if let Some(first) = first_child_line {
            assert!(
                first > last_parent_line,
                "child {child} was delivered (line {first}) before the parent {parent} was finished (its last line is {last_parent_line})"
            );
        }
    }
}

// --- Lanes (parallelization_factor) ---

/// What a run with `parallelization_factor = factor` and `batch_size` over `shards`
/// shards must show, once every record of `put` was seen and nothing failed: exactly
/// the records put, once each, from their shards, in batches of at most `batch_size`;
/// each partition key in order; no key in two batches running at once; and per shard
/// more than one but at most `factor` invocations at once.
pub fn assert_lanes(
    batches: &[BatchLine],
    put: &[PutRecord],
    shards: usize,
    factor: usize,
    batch_size: usize,
) {
    assert_shards_as_put(batches, put);
    assert_eq!(
        count_records(batches),
        put.len(),
        "records were delivered more than once"
    );
    let seen: std::collections::HashSet<&str> = seqs(batches).collect();
    let want: std::collections::HashSet<&str> = put.iter().map(|r| r.seq.as_str()).collect();
    assert_eq!(seen, want, "the records seen are not the records put");
    assert!(batches.iter().all(|b| b.records.len() <= batch_size));

    // Per partition key: strictly increasing sequence numbers across all batches.
    assert_order_per_key("the run", batches);

    // A batch holds one lane's records, and a lane is a set of partition keys: no key
    // may sit in two batches that ran at the same time.
    assert_no_key_in_overlapping_batches(batches);

    // Up to `factor` invocations per shard at once, and more than one.
    let max = max_concurrent_by_shard(batches);
    eprintln!("most invocations running at once, per shard: {max:?}");
    assert_eq!(max.len(), shards, "a shard never invoked: {max:?}");
    for (shard, n) in &max {
        assert!(
            *n <= factor,
            "shard {shard}: {n} invocations at once, above parallelization_factor {factor}"
        );
        assert!(
            *n > 1,
            "shard {shard}: never more than one invocation at once with parallelization_factor {factor}"
        );
    }
}

/// Asserts that two batches of one shard that ran at the same time (by their
/// recorded start and end) share no partition key.
pub fn assert_no_key_in_overlapping_batches(batches: &[BatchLine]) {
    let mut by_shard: BTreeMap<&str, Vec<&BatchLine>> = BTreeMap::new();
    for b in batches {
        by_shard.entry(&b.shard).or_default().push(b);
    }
    for (shard, lines) in by_shard {
        for (i, a) in lines.iter().enumerate() {
            let keys: std::collections::HashSet<&str> =
                a.records.iter().map(|r| r.key.as_str()).collect();
            for b in &lines[i + 1..] {
                // Strictly overlapping in time (the clock has millisecond resolution,
                // so a batch that started in the millisecond the other ended is not
                // counted).
                if b.started_ms < a.ended_ms && a.started_ms < b.ended_ms {
                    if let Some(k) = b.records.iter().find(|r| keys.contains(r.key.as_str())) {
                        panic!(
                            "shard {shard}: partition key {} in two batches running at once \
                             ({} and {})",
                            k.key, a.request_id, b.request_id
                        );
                    }
                }
            }
        }
    }
}

// --- On-failure destinations ---

/// Asserts that `m` is Lambda's on-failure record for `poison` alone, given up after
/// bisecting a batch of up to 100 with partial batch failures: the batch info names
/// the record and the stream, the condition is `RetryAttemptsExhausted`, and the
/// invoke count covers the whole batch, the halves that held it and its retries.
pub fn assert_poison_alone(m: &serde_json::Value, poison: &PutRecord, stream: &str) {
    let info = &m["KinesisBatchInfo"];
    assert_eq!(info["batchSize"], 1);
    assert_eq!(info["startSequenceNumber"], poison.seq.as_str());
    assert_eq!(info["endSequenceNumber"], poison.seq.as_str());
    assert_eq!(info["shardId"], poison.shard.as_str());
    assert_eq!(info["streamArn"], stream_arn(stream).as_str());
    assert_eq!(m["requestContext"]["condition"], "RetryAttemptsExhausted");
    // Every invocation that carried the record counts: the whole batch, the halves
    // that held it while bisecting (at most log2(100) + 1), then it alone with its
    // one retry.
    let invokes = m["requestContext"]["approximateInvokeCount"]
        .as_u64()
        .expect("approximateInvokeCount");
    assert!(
        (2..=10).contains(&invokes),
        "approximateInvokeCount {invokes}"
    );
    assert_eq!(
        m["requestContext"]["functionArn"],
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:recorder").as_str()
    );
    assert_eq!(
        m["responseContext"]["functionError"],
        serde_json::Value::Null,
        "partial failures: functionError is null"
    );
    assert_eq!(m["version"], "1.0");
}

// --- Tumbling windows ---

/// Per (shard, window start): records per partition key.
pub type WindowTotals = BTreeMap<(String, String), BTreeMap<String, u64>>;

/// The start (RFC 3339) of the `window_ms` window a record that arrived at
/// `arrival_ms` falls in.
pub fn window_start(arrival_ms: i64, window_ms: i64) -> String {
    use chrono::TimeZone as _;
    let start = arrival_ms.div_euclid(window_ms) * window_ms;
    chrono::Utc
        .timestamp_millis_opt(start)
        .single()
        .expect("a valid time")
        .to_rfc3339()
}

/// Puts 5 records (about 50 bytes, `keys` keys) every 250 ms for `duration`, calling
/// `during` with the count so far after each put; returns them all.
pub async fn window_traffic(
    client: &Client,
    stream: &str,
    duration: Duration,
    keys: usize,
    mut during: impl FnMut(usize),
) -> Vec<PutRecord> {
    let mut put = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let n = put.len();
        put.extend(put_records(client, stream, n, 5, 50, keys).await);
        during(put.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    put
}

/// What the records put add up to per shard and window, by their arrival as the
/// invocations showed it (every record put must have been seen).
pub fn expected_window_totals(
    put: &[PutRecord],
    lines: &[WindowLine],
    window_ms: i64,
) -> WindowTotals {
    let arrival: std::collections::HashMap<&str, i64> = lines
        .iter()
        .flat_map(|l| &l.records)
        .map(|r| (r.seq.as_str(), r.arrival_ms))
        .collect();
    let mut totals = WindowTotals::new();
    for record in put {
        let Some(ms) = arrival.get(record.seq.as_str()) else {
            panic!(
                "record {} of {} never reached the handler",
                record.seq, record.shard
            );
        };
        *totals
            .entry((record.shard.clone(), window_start(*ms, window_ms)))
            .or_default()
            .entry(record.key.clone())
            .or_default() += 1;
    }
    totals
}

/// The totals the last final invocation of each (shard, window) saw.
pub fn final_window_totals(lines: &[WindowLine]) -> WindowTotals {
    let mut totals = WindowTotals::new();
    for line in lines.iter().filter(|l| l.is_final) {
        totals.insert(
            (line.shard.clone(), line.start.clone()),
            line.state_out.clone(),
        );
    }
    totals
}

/// Waits (up to 90 s) until every (shard, window) that received records has had a
/// final invocation; returns every line of the windows file at `path`.
pub fn wait_for_final_invocations(
    esm: &mut Esm,
    path: &Path,
    put: &[PutRecord],
    window_ms: i64,
) -> Vec<WindowLine> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        esm.assert_running();
        let lines = read_window_lines(path);
        let seen: std::collections::BTreeSet<&str> = lines
            .iter()
            .flat_map(|l| &l.records)
            .map(|r| r.seq.as_str())
            .collect();
        if put.iter().all(|r| seen.contains(r.seq.as_str())) {
            let expected = expected_window_totals(put, &lines, window_ms);
            let finals = final_window_totals(&lines);
            if expected.keys().all(|k| finals.contains_key(k)) {
                return lines;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every window had its final invocation; log:\n{}",
            esm.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that the final invocation of every (shard, window) carried exactly the
/// records put into it, per key; returns those totals.
pub fn assert_window_totals(
    put: &[PutRecord],
    lines: &[WindowLine],
    window_ms: i64,
) -> WindowTotals {
    let expected = expected_window_totals(put, lines, window_ms);
    let finals = final_window_totals(lines);
    for (key, totals) in &expected {
        assert_eq!(finals.get(key), Some(totals), "window {key:?}");
    }
    expected
}

/// One tumbling-window run end to end: puts window traffic (`keys` keys) for
/// `duration` while `esm` runs the `windows` handler (its lines in `windows`), waits
/// for every window's final invocation, stops esm, and checks the final totals and
/// every invocation. At least `min_windows` (shard, window) pairs must have had
/// records.
#[allow(clippy::too_many_arguments)]
pub async fn check_window_run(
    client: &Client,
    stream: &str,
    mut esm: Esm,
    windows: &Path,
    duration: Duration,
    keys: usize,
    window_ms: i64,
    min_windows: usize,
) {
    let put = window_traffic(client, stream, duration, keys, |_| {}).await;
    let lines = wait_for_final_invocations(&mut esm, windows, &put, window_ms);
    esm.stop(Duration::from_secs(30));
    let expected = assert_window_totals(&put, &lines, window_ms);
    eprintln!(
        "{} records, {} invocations, {} windows with records, {} final invocations",
        put.len(),
        lines.len(),
        expected.len(),
        lines.iter().filter(|l| l.is_final).count()
    );
    assert!(
        expected.len() >= min_windows,
        "{} windows with records, fewer than {min_windows}",
        expected.len()
    );
    assert_window_invocations(&lines, &expected, window_ms);
}

/// What one uninterrupted windowed run must also show: every invocation of a window
/// was passed the state the previous one returned; a batch never spans two windows;
/// and the last window of each shard ended without a new record (a read issued after
/// its end found the shard caught up), with a final invocation of no records.
pub fn assert_window_invocations(lines: &[WindowLine], expected: &WindowTotals, window_ms: i64) {
    let mut last_state: std::collections::HashMap<(String, String), BTreeMap<String, u64>> =
        std::collections::HashMap::new();
    for line in lines {
        let key = (line.shard.clone(), line.start.clone());
        let want = last_state.get(&key).cloned().unwrap_or_default();
        assert_eq!(line.state_in, want, "state passed into {key:?}");
        last_state.insert(key, line.state_out.clone());
    }
    for line in lines {
        assert!(
            line.records
                .iter()
                .all(|r| window_start(r.arrival_ms, window_ms) == line.start),
            "a batch of {} spans windows",
            line.start
        );
    }
    let shards: std::collections::BTreeSet<&String> = expected.keys().map(|(s, _)| s).collect();
    for shard in shards {
        let last = expected
            .keys()
            .filter(|(s, _)| s == shard)
            .max()
            .expect("a window of the shard");
        assert!(
            lines.iter().any(|l| l.is_final
                && l.records.is_empty()
                && (&l.shard, &l.start) == (&last.0, &last.1)),
            "shard {shard}: the last window had no final invocation without records"
        );
    }
}

impl Esm {
    /// The exit status if the process has exited, without waiting or panicking
    /// (`None` while it runs): for callers that treat an early exit as an answer,
    /// e.g. a benchmark noticing that a build refuses a setting.
    pub fn exit_status(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

// --- S3 on-failure destination ---

/// A run whose one poison record went to an S3 bucket: what was put, the bucket and
/// the one object it holds.
pub struct PoisonInS3 {
    /// The stream (deleted when dropped).
    pub stream: TestStream,
    /// The records put.
    pub put: Vec<PutRecord>,
    /// The index of the poison record in `put` (its data is `record_payload(poison, 100)`).
    pub poison: usize,
    /// The bucket.
    pub bucket: String,
    /// The keys in the bucket (exactly one, checked).
    pub keys: Vec<String>,
    /// The body of the object.
    pub body: Vec<u8>,
    /// The directory of the config and the store.
    pub dir: tempfile::TempDir,
    /// The config (mapping `mapping`, the recorder function, the bucket as destination).
    pub config: PathBuf,
}

/// Runs esm on a fresh 30-record stream whose record `poison` fails (bisect, partial
/// failures, one retry) with the bucket as on-failure destination, until the other
/// 29 records were handled and the object landed; stops esm and reads the bucket.
pub async fn poison_to_s3(mapping: &str, poison: usize) -> PoisonInS3 {
    let client = kinesis().await;
    let stream = TestStream::create(&client, mapping, 1).await;
    let put = put_records(&client, &stream, 0, 30, 100, 4).await;
    let s3 = s3().await;
    let (bucket, arn) = bucket(&s3, mapping).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config_function(
        dir.path(),
        mapping,
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 10\nbisect_batch_on_function_error = true\nfunction_response_types = [\"ReportBatchItemFailures\"]\nmaximum_retry_attempts = 1\n",
        &with_destination(&arn),
    );
    let marker = format!("\"n\":{poison},");
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[("RECORDER_POISON", &marker), ("RECORDER_REPORT", "1")],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "every record but the poison one",
        |b| count_records(b) >= 29,
    );
    objects(&s3, &bucket, "aws/lambda/", 1).await;
    let batches = esm.stop(Duration::from_secs(30));
    assert_eq!(count_records(&batches), 29);
    let keys = objects(&s3, &bucket, "", 1).await;
    assert_eq!(keys.len(), 1, "exactly one object: {keys:?}");
    let body = object_body(&s3, &bucket, &keys[0]).await;
    PoisonInS3 {
        stream,
        put,
        poison,
        bucket,
        keys,
        body,
        dir,
        config,
    }
}
