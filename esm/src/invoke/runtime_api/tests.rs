//! Tests of the Runtime API host, driven by a fake worker written here in Rust.
//!
//! The pool runs a stand-in process (`sleep`, or a few lines of `sh` that exit on
//! cue) so that each worker slot has a live process and a session; the test itself
//! plays the runtime by talking HTTP to that session's address, as the process
//! would. Timeouts are about a second, so every test runs in a few seconds.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::server::{error_report, trace_id, MAX_PAYLOAD};
use super::*;

const ARN: &str = "arn:aws:lambda:eu-west-1:000000000000:function:fn";

/// Settings for a pool of one worker running `command`.
fn settings(command: &[&str]) -> WorkerSettings {
    WorkerSettings {
        mapping: "test".into(),
        function_name: "fn".into(),
        region: "eu-west-1".into(),
        command: command.iter().map(|c| c.to_string()).collect(),
        concurrency: 1,
        timeout: Duration::from_secs(2),
        memory_size: 256,
        handler: "app.handler".into(),
        environment: BTreeMap::new(),
        task_root: std::env::temp_dir(),
        accept_timeout: Duration::from_secs(2),
    }
}

/// A running pool and what the test needs around it.
struct Harness {
    invoker: RuntimeApiInvoker,
    shutdown: CancellationToken,
    timeout: Duration,
}

impl Harness {
    fn start(settings: WorkerSettings) -> Self {
        let shutdown = CancellationToken::new();
        let timeout = settings.timeout;
        let invoker = RuntimeApiInvoker::start(settings, shutdown.clone());
        Self {
            invoker,
            shutdown,
            timeout,
        }
    }

    /// A worker's Runtime API address, once one is running (other than `not`).
    async fn address(&self, not: Option<SocketAddr>) -> SocketAddr {
        let started = Instant::now();
        loop {
            let found = self
                .invoker
                .runtime_api_addresses()
                .into_iter()
                .find(|a| Some(*a) != not);
            if let Some(address) = found {
                return address;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no worker address"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts an invocation of `payload` with request id `id`.
    fn invoke(&self, id: &str, payload: &'static [u8]) -> JoinHandle<Outcome> {
        let invocation = Invocation {
            payload: Bytes::from_static(payload).into(),
            request_id: id.into(),
            function_arn: ARN.into(),
            timeout: self.timeout,
            deadline: SystemTime::now() + self.timeout,
        };
        let invoker = self.invoker.clone();
        tokio::spawn(async move { invoker.invoke(invocation).await })
    }

    /// Shuts the pool down and checks that it stops promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.invoker.stopped())
            .await
            .expect("the pool did not stop");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// One HTTP/1.1 request on a fresh connection, as a runtime client sends it.
async fn call(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).expect("a request"))
        .await
        .expect("a response");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a body").to_bytes(),
    }
}

async fn next(address: SocketAddr) -> Reply {
    call(
        address,
        Method::GET,
        "/2018-06-01/runtime/invocation/next",
        &[],
        Bytes::new(),
    )
    .await
}

async fn post(address: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    call(
        address,
        Method::POST,
        &format!("/2018-06-01/runtime/{path}"),
        headers,
        body.to_string(),
    )
    .await
}

/// The outcome of `invocation`, which must end within a few seconds.
async fn outcome(invocation: JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), invocation)
        .await
        .expect("the invocation did not end")
        .expect("the invocation task")
}

/// `sh -c SCRIPT` as a command.
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn with_command(command: Vec<String>) -> WorkerSettings {
    let mut s = settings(&["true"]);
    s.command = command;
    s
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[tokio::test]
async fn a_response_reaches_the_caller_with_lambdas_headers_on_loopback() {
    let pool = Harness::start(settings(&["sleep", "30"]));
    let address = pool.address(None).await;
    assert_eq!(
        address.ip(),
        Ipv4Addr::LOCALHOST,
        "the API must be loopback-only"
    );

    let invocation = pool.invoke("req-1", br#"{"Records":[]}"#);
    let before = now_ms();
    let event = next(address).await;
    assert_eq!(event.status, StatusCode::OK);
    assert_eq!(&event.body[..], br#"{"Records":[]}"#);
    assert_eq!(event.header("lambda-runtime-aws-request-id"), "req-1");
    assert_eq!(event.header("lambda-runtime-invoked-function-arn"), ARN);
    assert_eq!(event.header("content-type"), "application/json");
    let deadline: u128 = event
        .header("lambda-runtime-deadline-ms")
        .parse()
        .expect("a number");
    assert!(deadline >= before + 1_900 && deadline <= now_ms() + 2_000);
    let trace = event.header("lambda-runtime-trace-id");
    assert!(
        trace.starts_with("Root=1-") && trace.ends_with(";Sampled=0"),
        "{trace}"
    );
    assert!(event.headers.get("lambda-runtime-client-context").is_none());
    assert!(event
        .headers
        .get("lambda-runtime-cognito-identity")
        .is_none());

    // While it holds req-1 the worker gets no other invocation, and its init is done.
    let busy = next(address).await;
    assert_eq!(busy.status, StatusCode::FORBIDDEN);
    assert_eq!(busy.json()["errorType"], "InvalidStateTransition");
    let late_init = post(address, "init/error", &[], "{}").await;
    assert_eq!(late_init.status, StatusCode::FORBIDDEN);

    let done = post(address, "invocation/req-1/response", &[], r#"{"ok":true}"#).await;
    assert_eq!(done.status, StatusCode::ACCEPTED);
    assert_eq!(done.json(), serde_json::json!({"status": "OK"}));
    assert_eq!(
        outcome(invocation).await,
        Outcome::Returned {
            response: Bytes::from_static(br#"{"ok":true}"#).into()
        }
    );

    // A second answer, or one for a request id never handed out, is refused.
    for id in ["req-1", "nope"] {
        let refused = post(address, &format!("invocation/{id}/response"), &[], "{}").await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.json()["errorType"], "InvalidRequestID");
        let refused = post(address, &format!("invocation/{id}/error"), &[], "{}").await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }
    let unknown = call(
        address,
        Method::GET,
        "/2020-01-01/extension/register",
        &[],
        "",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let wrong = call(
        address,
        Method::GET,
        "/2018-06-01/runtime/invocation/x/response",
        &[],
        "",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    pool.stop().await;
}

#[tokio::test]
async fn an_error_becomes_a_function_error() {
    let pool = Harness::start(settings(&["sleep", "30"]));
    let address = pool.address(None).await;

    let invocation = pool.invoke("req-1", b"{}");
    assert_eq!(next(address).await.status, StatusCode::OK);
    let body = r#"{"errorType":"ValueError","errorMessage":"bad record","stackTrace":[]}"#;
    let posted = post(
        address,
        "invocation/req-1/error",
        &[("Lambda-Runtime-Function-Error-Type", "unhandled")],
        body,
    )
    .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    assert_eq!(
        outcome(invocation).await,
        Outcome::FunctionError {
            error_type: "ValueError".into(),
            message: "bad record".into()
        }
    );

    // Not Lambda's JSON: the header's type and the body as the message.
    let invocation = pool.invoke("req-2", b"{}");
    assert_eq!(next(address).await.status, StatusCode::OK);
    let posted = post(
        address,
        "invocation/req-2/error",
        &[("Lambda-Runtime-Function-Error-Type", "Runtime.Custom")],
        "it broke",
    )
    .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    assert_eq!(
        outcome(invocation).await,
        Outcome::FunctionError {
            error_type: "Runtime.Custom".into(),
            message: "it broke".into()
        }
    );
    pool.stop().await;
}

#[test]
fn error_bodies_are_read_leniently() {
    let report = |body: &str, header: Option<&str>| {
        let r = error_report(body.as_bytes(), header.map(str::to_string));
        (r.error_type, r.message)
    };
    assert_eq!(
        report(r#"{"errorType":"E","errorMessage":"m"}"#, Some("unhandled")),
        ("E".into(), "m".into())
    );
    assert_eq!(
        report(r#"{"errorMessage":"m"}"#, Some("Runtime.X")),
        ("Runtime.X".into(), "m".into())
    );
    assert_eq!(report("{}", None), ("Unhandled".into(), String::new()));
    assert_eq!(report("", None), ("Unhandled".into(), String::new()));
    let long = report(&"x".repeat(10_000), None).1;
    assert!(long.ends_with("… (truncated)") && long.len() < 4_200);
}

#[test]
fn trace_ids_have_the_x_ray_shape() {
    let id = trace_id();
    let parts: Vec<&str> = id.split(';').collect();
    assert_eq!(parts.len(), 3, "{id}");
    let root: Vec<&str> = parts[0].trim_start_matches("Root=").split('-').collect();
    assert_eq!(root[0], "1");
    assert_eq!(root[1].len(), 8);
    assert_eq!(root[2].len(), 24);
    assert_eq!(parts[1].trim_start_matches("Parent=").len(), 16);
    assert_eq!(parts[2], "Sampled=0");
    assert!(id.is_ascii());
    assert_ne!(trace_id(), id);
}

#[tokio::test]
async fn a_response_above_6_mb_is_refused_and_fails_the_invocation() {
    let pool = Harness::start(settings(&["sleep", "30"]));
    let address = pool.address(None).await;
    let invocation = pool.invoke("big", b"{}");
    assert_eq!(next(address).await.status, StatusCode::OK);
    let body = "x".repeat(MAX_PAYLOAD + 1);
    let posted = post(address, "invocation/big/response", &[], &body).await;
    assert_eq!(posted.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(posted.json()["errorType"], "RequestEntityTooLarge");
    match outcome(invocation).await {
        Outcome::FunctionError { error_type, .. } => {
            assert_eq!(error_type, "Function.ResponseSizeTooLarge")
        }
        other => panic!("{other:?}"),
    }
    pool.stop().await;
}

#[tokio::test]
async fn a_worker_that_exits_holding_an_invocation_is_a_crash_and_is_restarted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cue = dir.path().join("exit-now");
    let mut s = with_command(sh(
        r#"while [ ! -e "$EXIT_CUE" ]; do sleep 0.02; done; exit 3"#,
    ));
    s.environment
        .insert("EXIT_CUE".into(), cue.display().to_string());
    let pool = Harness::start(s);
    let first = pool.address(None).await;

    let invocation = pool.invoke("req-1", b"{}");
    assert_eq!(next(first).await.status, StatusCode::OK);
    std::fs::write(&cue, b"").expect("the cue");
    match outcome(invocation).await {
        Outcome::Crash { reason } => {
            assert_eq!(reason, "worker 0 exited with exit status: 3")
        }
        other => panic!("{other:?}"),
    }

    // A new process, on a new session: the old request id means nothing there.
    std::fs::remove_file(&cue).expect("the cue");
    let second = pool.address(Some(first)).await;
    let stale = post(second, "invocation/req-1/response", &[], "{}").await;
    assert_eq!(stale.status, StatusCode::BAD_REQUEST);
    let invocation = pool.invoke("req-2", b"{}");
    assert_eq!(next(second).await.status, StatusCode::OK);
    assert_eq!(
        post(second, "invocation/req-2/response", &[], "1")
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert!(matches!(
        outcome(invocation).await,
        Outcome::Returned { .. }
    ));
    pool.stop().await;
}

#[tokio::test]
async fn a_worker_past_its_timeout_is_killed_and_restarted() {
    let mut s = settings(&["sleep", "30"]);
    s.timeout = Duration::from_secs(1);
    let pool = Harness::start(s);
    let first = pool.address(None).await;

    let invocation = pool.invoke("slow", b"{}");
    let taken = Instant::now();
    assert_eq!(next(first).await.status, StatusCode::OK);
    assert_eq!(outcome(invocation).await, Outcome::Timeout);
    let waited = taken.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // The killed worker's late answer goes nowhere; a new worker takes over.
    let second = pool.address(Some(first)).await;
    if let Ok(stream) = TcpStream::connect(first).await {
        drop(stream);
        let late = post(first, "invocation/slow/response", &[], "{}").await;
        assert_ne!(late.status, StatusCode::ACCEPTED);
    }
    let invocation = pool.invoke("fast", b"{}");
    assert_eq!(next(second).await.status, StatusCode::OK);
    post(second, "invocation/fast/response", &[], "{}").await;
    assert!(matches!(
        outcome(invocation).await,
        Outcome::Returned { .. }
    ));
    pool.stop().await;
}

#[tokio::test]
async fn an_init_error_is_reported_and_the_worker_restarted() {
    let mut s = settings(&["sleep", "30"]);
    s.accept_timeout = Duration::from_millis(500);
    let pool = Harness::start(s);
    let first = pool.address(None).await;

    let body = r#"{"errorType":"Runtime.ImportModuleError","errorMessage":"no module named app"}"#;
    let posted = post(first, "init/error", &[], body).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    // The process does not exit by itself: it is killed after a moment and a new one
    // starts on a new port.
    let started = Instant::now();
    let second = pool.address(Some(first)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    match outcome(pool.invoke("r", b"{}")).await {
        Outcome::NotInvoked { reason } => assert!(
            reason.ends_with(
                "last worker problem: worker 0 init error Runtime.ImportModuleError: no module named app"
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // Once a worker is ready, the problem is forgotten.
    let invocation = pool.invoke("r2", b"{}");
    assert_eq!(next(second).await.status, StatusCode::OK);
    post(second, "invocation/r2/response", &[], "{}").await;
    assert!(matches!(
        outcome(invocation).await,
        Outcome::Returned { .. }
    ));
    pool.stop().await;
}

#[tokio::test]
async fn workers_that_keep_failing_to_start_are_restarted_with_backoff() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let starts = dir.path().join("starts");
    let mut s = with_command(sh(r#"echo start >> "$STARTS"; exit 3"#));
    s.environment
        .insert("STARTS".into(), starts.display().to_string());
    s.accept_timeout = Duration::from_millis(1500);
    let pool = Harness::start(s);

    match outcome(pool.invoke("r", b"{}")).await {
        Outcome::NotInvoked { reason } => assert_eq!(
            reason,
            "no idle worker within 1.5s (1 worker); last worker problem: \
             worker 0 exited with exit status: 3 before asking for an invocation"
        ),
        other => panic!("{other:?}"),
    }
    // Without backoff this would be hundreds of starts; with 200 ms doubling (half
    // of it jitter) it is a handful.
    let count = std::fs::read_to_string(&starts)
        .expect("the start log")
        .lines()
        .count();
    assert!((2..=6).contains(&count), "{count} starts in 1.5 s");
    pool.stop().await;
}

#[tokio::test]
async fn an_invocation_no_worker_takes_is_not_invoked_and_never_delivered_later() {
    let mut s = settings(&["sleep", "30"]);
    s.accept_timeout = Duration::from_millis(500);
    let pool = Harness::start(s);
    let address = pool.address(None).await;

    // The only worker is busy with `a` when `b` arrives.
    let a = pool.invoke("a", b"{}");
    assert_eq!(next(address).await.status, StatusCode::OK);
    let b = pool.invoke("b", b"{}");
    match outcome(b).await {
        Outcome::NotInvoked { reason } => {
            assert_eq!(reason, "no idle worker within 500ms (1 worker)")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.invoker.pool.queue.len(), 0, "b was withdrawn");
    post(address, "invocation/a/response", &[], "{}").await;
    assert!(matches!(outcome(a).await, Outcome::Returned { .. }));

    // `b` is not handed out afterwards: the next `GET /next` waits.
    let waited = tokio::time::timeout(Duration::from_millis(300), next(address)).await;
    assert!(waited.is_err(), "a withdrawn invocation was delivered");
    // The abandoned poll does not block the worker's next one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = pool.invoke("c", b"{}");
    let event = next(address).await;
    assert_eq!(event.status, StatusCode::OK);
    assert_eq!(event.header("lambda-runtime-aws-request-id"), "c");
    post(address, "invocation/c/response", &[], "{}").await;
    assert!(matches!(outcome(c).await, Outcome::Returned { .. }));
    pool.stop().await;
}

#[tokio::test]
async fn invocations_spread_over_idle_workers() {
    let mut s = settings(&["sleep", "30"]);
    s.concurrency = 3;
    let pool = Harness::start(s);
    let started = Instant::now();
    while pool.invoker.runtime_api_addresses().len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addresses = pool.invoker.runtime_api_addresses();
    let polls: Vec<_> = addresses.iter().map(|a| tokio::spawn(next(*a))).collect();
    let invocations: Vec<_> = ["x", "y", "z"]
        .into_iter()
        .map(|id| pool.invoke(id, b"{}"))
        .collect();
    let mut ids = Vec::new();
    for (address, poll) in addresses.iter().zip(polls) {
        let event = poll.await.expect("a poll");
        let id = event.header("lambda-runtime-aws-request-id").to_string();
        post(*address, &format!("invocation/{id}/response"), &[], "{}").await;
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, ["x", "y", "z"]);
    for invocation in invocations {
        assert!(matches!(
            outcome(invocation).await,
            Outcome::Returned { .. }
        ));
    }
    pool.stop().await;
}

#[tokio::test]
async fn workers_get_lambdas_environment() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("env");
    let mut s = with_command(sh(
        r#"env > "$ENV_OUT.tmp" && mv "$ENV_OUT.tmp" "$ENV_OUT"; exec sleep 30"#,
    ));
    s.environment
        .insert("ENV_OUT".into(), out.display().to_string());
    s.environment.insert("STAGE".into(), "test".into());
    s.task_root = dir.path().to_path_buf();
    let pool = Harness::start(s);
    let address = pool.address(None).await;
    let env = wait_for_file(&out).await;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} is not set:\n{env}"))
            .to_string()
    };
    assert_eq!(var("AWS_LAMBDA_RUNTIME_API"), address.to_string());
    assert_eq!(var("AWS_LAMBDA_FUNCTION_NAME"), "fn");
    assert_eq!(var("AWS_LAMBDA_FUNCTION_VERSION"), "$LATEST");
    assert_eq!(var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), "256");
    assert_eq!(var("AWS_LAMBDA_INITIALIZATION_TYPE"), "on-demand");
    assert_eq!(var("AWS_LAMBDA_LOG_GROUP_NAME"), "/aws/lambda/fn");
    assert!(var("AWS_LAMBDA_LOG_STREAM_NAME").contains("/[$LATEST]"));
    assert_eq!(var("AWS_REGION"), "eu-west-1");
    assert_eq!(var("AWS_DEFAULT_REGION"), "eu-west-1");
    assert_eq!(var("_HANDLER"), "app.handler");
    assert_eq!(var("LAMBDA_TASK_ROOT"), dir.path().display().to_string());
    assert_eq!(var("TZ"), ":UTC");
    assert_eq!(var("STAGE"), "test");
    // esm's own environment is passed on too.
    assert!(!var("PATH").is_empty());
    pool.stop().await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn shutdown_leaves_no_worker_process_behind() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pids = dir.path().join("pids");
    // Each worker is a shell with a child of its own.
    let mut s = with_command(sh(
        r#"sleep 30 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; wait"#,
    ));
    s.environment
        .insert("PIDS".into(), pids.display().to_string());
    s.concurrency = 2;
    let pool = Harness::start(s);
    let started = Instant::now();
    let listed = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let listed: Vec<String> = text.lines().map(str::to_string).collect();
        if listed.len() == 4 {
            break listed;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{listed:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for pid in &listed {
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    pool.stop().await;
    // SIGKILL is delivered asynchronously: on a loaded machine a killed grandchild
    // may still be scheduled for a moment after the pool has reaped its workers.
    let stopped = Instant::now();
    for pid in &listed {
        while process_alive(pid) && stopped.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !process_alive(pid),
            "process {pid} outlived the pool's shutdown"
        );
    }
}

/// Whether process `pid` runs (a zombie not yet reaped by its parent counts as gone).
#[cfg(target_os = "linux")]
fn process_alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(") ")
        .next()
        .and_then(|rest| rest.chars().next());
    matches!(state, Some(c) if c != 'Z' && c != 'X')
}

/// The text of `path` once it exists.
async fn wait_for_file(path: &PathBuf) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no {path:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
