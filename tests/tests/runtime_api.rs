//! Handlers as separate processes speaking the Lambda Runtime API: an unmodified
//! `lambda_runtime` binary and AWS's Python runtime interface client process a
//! stream end to end; crashes, timeouts and init errors lose no record; the API is
//! reachable on loopback only; no worker outlives esm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use esm_e2e::*;

/// The `[mapping.function]` table for `command`, with `environment`.
fn function_toml(
    command: &[&str],
    concurrency: u32,
    timeout_seconds: u32,
    env: &[(&str, &str)],
) -> String {
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    format!(
        "[mapping.function]\ncommand = [{}]\nconcurrency = {concurrency}\ntimeout_seconds = {timeout_seconds}\nenvironment = {{ {} }}\n",
        command.join(", "),
        env.join(", ")
    )
}

fn plain_lambda() -> String {
    bin_path("plain-lambda").display().to_string()
}

fn python() -> String {
    std::env::var("ESM_TEST_PYTHON")
        .expect("scripts/test sets ESM_TEST_PYTHON (a venv with awslambdaric)")
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Puts `count` records on a fresh stream, runs esm with `function` until every
/// record reached the handler's output file, stops esm with SIGTERM, and checks that
/// each record arrived exactly once, in order per shard. Returns esm's log.
async fn run_to_completion(
    prefix: &str,
    shards: i32,
    count: usize,
    function: impl FnOnce(&Path) -> String,
) -> String {
    let client = kinesis().await;
    let stream = TestStream::create(&client, prefix, shards).await;
    let put = put_records(&client, &stream, 0, count, 100, 16).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = write_config_function(
        dir.path(),
        prefix,
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 50\n",
        &function(&out),
    );
    let mut esm = Esm::start_with_out(dir.path(), &config, &out, &[]);
    wait_for(
        &mut esm,
        Duration::from_secs(90),
        &format!("all {count} records"),
        |b| count_records(b) >= count,
    );
    let pid = esm.pid();
    let listening = listening_addresses(pid);
    assert!(
        !listening.is_empty(),
        "esm listens on nothing while running Runtime API workers"
    );
    for addr in &listening {
        assert!(
            addr.starts_with("127.0.0.1:"),
            "esm listens on {addr}: the Runtime API must be loopback-only"
        );
    }
    let log = esm.log_text();
    let status = esm.terminate(Duration::from_secs(30));
    assert!(status.success(), "esm exited with {status}; log:\n{log}");
    let batches = read_batches(&out);
    assert_eq!(
        seen_by_shard(&batches),
        expected_by_shard(&put),
        "records missing, repeated or out of order; log:\n{log}"
    );
    assert_eq!(count_records(&batches), count);
    log
}

/// [`run_to_completion`] on one shard with one `plain-lambda` worker of
/// `timeout_seconds`, its output in `PLAIN_OUT`, with more environment `env`.
async fn run_plain_lambda(
    prefix: &str,
    count: usize,
    timeout_seconds: u32,
    env: &[(&str, &str)],
) -> String {
    let bin = plain_lambda();
    run_to_completion(prefix, 1, count, |out| {
        let out = out.display().to_string();
        let mut all = vec![("PLAIN_OUT", out.as_str())];
        all.extend_from_slice(env);
        function_toml(&[&bin], 1, timeout_seconds, &all)
    })
    .await
}

/// [`run_to_completion`] with AWS's Python runtime interface client running
/// `recorder.handler`, one worker per shard, its output in `PY_OUT`, with more
/// environment `env`.
async fn run_python(prefix: &str, shards: i32, count: usize, env: &[(&str, &str)]) -> String {
    let py = python();
    let dir = python_dir().display().to_string();
    run_to_completion(prefix, shards, count, |out| {
        let out = out.display().to_string();
        let mut all = vec![("PY_OUT", out.as_str()), ("PYTHONPATH", dir.as_str())];
        all.extend_from_slice(env);
        function_toml(
            &[&py, "-m", "awslambdaric", "recorder.handler"],
            shards as u32,
            10,
            &all,
        )
    })
    .await
}

/// A counter file in `dir` telling a worker to fail its next two starts.
fn init_failures(dir: &Path) -> PathBuf {
    let counter = dir.join("init-failures");
    std::fs::write(&counter, "2").unwrap();
    counter
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmodified_lambda_runtime_binary_processes_a_stream() {
    let bin = plain_lambda();
    let mut out_path = String::new();
    let log = run_to_completion("rapi-plain", 2, 1_000, |out| {
        out_path = out.display().to_string();
        function_toml(&[&bin], 2, 5, &[("PLAIN_OUT", &out_path)])
    })
    .await;
    assert!(
        log.contains("worker is ready"),
        "no worker lines in the log:\n{log}"
    );
    // No worker outlives esm (esm waits for them before it exits).
    let left = processes_with_env("PLAIN_OUT", &out_path);
    assert!(
        left.is_empty(),
        "plain-lambda workers still running after esm exited: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_worker_is_restarted_and_its_batch_retried() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("crashed").display().to_string();
    let log = run_plain_lambda("rapi-crash", 200, 5, &[("PLAIN_CRASH_ONCE", &marker)]).await;
    assert!(Path::new(&marker).exists(), "the worker never crashed");
    assert!(
        log.contains("the function crashed; the batch will be retried"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_past_its_timeout_is_killed_and_its_batch_retried() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hung").display().to_string();
    let log = run_plain_lambda("rapi-timeout", 200, 1, &[("PLAIN_HANG_ONCE", &marker)]).await;
    assert!(Path::new(&marker).exists(), "the worker never hung");
    assert!(
        log.contains("the function timed out; the batch will be retried"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_fails_to_start_is_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let counter = init_failures(dir.path());
    let counter_text = counter.display().to_string();
    run_plain_lambda("rapi-init", 100, 5, &[("PLAIN_INIT_FAIL", &counter_text)]).await;
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().trim(),
        "0",
        "the worker did not fail its first two starts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pythons_runtime_interface_client_processes_a_stream() {
    run_python("rapi-python", 2, 500, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_init_error_is_reported_and_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = init_failures(tmp.path());
    let counter_text = counter.display().to_string();
    let log = run_python("rapi-pyinit", 1, 100, &[("PY_INIT_FAIL", &counter_text)]).await;
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "0");
    assert!(
        log.contains("failing init on purpose"),
        "the init error's message is not in esm's log:\n{log}"
    );
}

/// A handler-sdk example binary (`echo-handler`, `handler_sdk::run`) runs as a
/// worker too: its log lines name every record it received.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_sdk_binary_runs_as_a_worker() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "rapi-sdk", 1).await;
    let put = put_records(&client, &stream, 0, 60, 50, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_path("echo-handler").display().to_string();
    let config = write_config_function(
        dir.path(),
        "rapi-sdk",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 25\n",
        &function_toml(&[&bin], 1, 5, &[("RUST_LOG", "info")]),
    );
    let mut esm = Esm::start(dir.path(), &config, &[]);
    wait_for_log(
        &mut esm,
        Duration::from_secs(60),
        "every record in the worker's log",
        |log| put.iter().all(|r| log.contains(&r.seq)),
    );
    let log = esm.log_text();
    assert!(esm.terminate(Duration::from_secs(30)).success());
    assert!(
        !log.contains("the batch will be retried"),
        "a batch failed:\n{log}"
    );
}
