//! esm with a test handler linked in, registered as `recorder`.
//!
//! The handler appends one JSON line per invocation to `$RECORDER_OUT`: the shard,
//! the request id and, per record, its sequence number, partition key and payload
//! size (plus the base64 event bytes of the data). End-to-end tests read that file to
//! check what reached the function, in which batches and in which order. Each line
//! also says how many invocations *of the same shard* were running when this one
//! started, itself included (`concurrent`), when it started (`started_ms`) and when it
//! wrote its line (`ended_ms`, after `RECORDER_DELAY_MS` and before
//! `RECORDER_DELAY_AFTER_MS`), both wall-clock milliseconds since the Unix epoch.
//!
//! Knobs (environment): `RECORDER_DELAY_MS` sleeps in each invocation (to kill esm
//! mid-stream), and with `RECORDER_SLOW_WHILE=FILE` only while FILE exists (a handler
//! slowed for a while, then caught up); `RECORDER_DELAY_AFTER_MS` sleeps after the line was written, before
//! returning (so a kill lands between "handled" and "checkpointed"); `RECORDER_FAIL_FIRST=N`
//! fails the first N invocations (to see retries); `RECORDER_POISON=TEXT` makes every
//! record whose data contains TEXT a poison record: a batch holding one fails (an
//! error), or with `RECORDER_REPORT=1` the records before the first poison record are
//! handled and the rest reported in `batchItemFailures`; with `RECORDER_POISON_WHILE=FILE`
//! only while FILE exists (a record that fails for a while, then succeeds); `RECORDER_RESPONSE=JSON`
//! returns that JSON after handling a batch; `RECORDER_ATTEMPTS=FILE` appends one
//! line per invocation (`{"first","last","n"}`) before anything else happens;
//! `RECORDER_MAX_CONCURRENT=N` lets at most N invocations run at once in the process,
//! whatever the shard (an instance with N workers: what scaling out adds to).
//!
//! A second handler, `windows`, is the `tumbling-window` example's aggregation
//! (`tumbling_window_handler::handle`, counts per partition key in the window's
//! state). Around it, one JSON line per invocation goes to `$RECORDER_WINDOWS`
//! ([`WindowLine`]): the shard, the window, the flags, the records (sequence number,
//! key, arrival) and the state in and out. `RECORDER_DELAY_MS` applies to it too.
//!
//! `RECORDER_PANIC_CLONE_ONCE=1` makes the registered service's `Clone` panic exactly
//! once in the process's life. esm clones the handler for each invocation, inside the
//! shard runner that makes it, so that shard runner panics (not the handler: the
//! invocation never starts and writes no line). By default the first clone panics;
//! `RECORDER_PANIC_CLONE_AFTER=N` lets N clones succeed first (so that every shard
//! has work in flight when one runner dies). The panic message contains
//! `RECORDER_PANIC_CLONE_ONCE`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use esm_e2e::{now_ms, BatchLine, RecordLine, WindowLine, WindowRecord};
use handler_sdk::events::KinesisEvent;
use handler_sdk::window::{KinesisWindowEvent, KinesisWindowResponse};
use handler_sdk::{service_fn, Error, LambdaEvent, RecordExt, Service};
use tumbling_window_handler::Counts;

/// Which clone panics (`Some(n)`: the clone after `n` successful ones), from the
/// environment.
static PANIC_AT: OnceLock<Option<usize>> = OnceLock::new();
/// Clones made so far.
static CLONES: AtomicUsize = AtomicUsize::new(0);
/// Whether the one panic happened.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// The registered service: `inner` (a `tower::Service`), with a `Clone` that can
/// panic once (`RECORDER_PANIC_CLONE_ONCE`).
struct Recorder<S> {
    inner: S,
}

impl<S: Clone> Clone for Recorder<S> {
    fn clone(&self) -> Self {
        if let Some(at) = *PANIC_AT.get_or_init(|| None) {
            let n = CLONES.fetch_add(1, Ordering::SeqCst);
            if n >= at && !PANICKED.swap(true, Ordering::SeqCst) {
                panic!("RECORDER_PANIC_CLONE_ONCE: clone {n} of the recorder panics on purpose");
            }
        }
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, R> Service<R> for Recorder<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// Invocations running per shard.
type Running = Arc<Mutex<HashMap<String, usize>>>;

/// One running invocation of a shard, counted in [`Running`] while it lives.
struct RunningGuard {
    running: Running,
    shard: String,
}

impl RunningGuard {
    /// Counts an invocation of `shard`; returns it and how many run now, itself included.
    fn enter(running: &Running, shard: &str) -> (Self, usize) {
        let mut map = running.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(shard.to_string()).or_insert(0);
        *n += 1;
        let now = *n;
        drop(map);
        (
            Self {
                running: running.clone(),
                shard: shard.to_string(),
            },
            now,
        )
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.shard) {
            *n = n.saturating_sub(1);
        }
    }
}

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn main() -> std::process::ExitCode {
    let panic_once = std::env::var("RECORDER_PANIC_CLONE_ONCE").is_ok_and(|v| v == "1");
    let panic_after: usize = std::env::var("RECORDER_PANIC_CLONE_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    PANIC_AT.get_or_init(|| panic_once.then_some(panic_after));

    let out = std::env::var("RECORDER_OUT").unwrap_or_else(|_| "recorder.jsonl".into());
    let delay = env_ms("RECORDER_DELAY_MS");
    let slow_while = std::env::var_os("RECORDER_SLOW_WHILE").map(std::path::PathBuf::from);
    let delay_after = env_ms("RECORDER_DELAY_AFTER_MS");
    let fail_first: u64 = std::env::var("RECORDER_FAIL_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let poison = std::env::var("RECORDER_POISON")
        .ok()
        .filter(|p| !p.is_empty());
    let report = std::env::var("RECORDER_REPORT").is_ok_and(|v| v == "1");
    let poison_while = std::env::var_os("RECORDER_POISON_WHILE").map(std::path::PathBuf::from);
    let response: serde_json::Value = std::env::var("RECORDER_RESPONSE")
        .ok()
        .map(|r| serde_json::from_str(&r).expect("RECORDER_RESPONSE must be JSON"))
        .unwrap_or(serde_json::Value::Null);
    let attempts = std::env::var("RECORDER_ATTEMPTS").ok();
    let capacity = std::env::var("RECORDER_MAX_CONCURRENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    let calls = Arc::new(AtomicU64::new(0));
    let running: Running = Arc::default();
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .expect("RECORDER_OUT must be writable"),
    ));
    let handler = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (file, calls, running) = (file.clone(), calls.clone(), running.clone());
        let (response, attempts, capacity) = (response.clone(), attempts.clone(), capacity.clone());
        let delay = delay.filter(|_| slow_while.as_ref().is_none_or(|file| file.exists()));
        let poison = poison
            .clone()
            .filter(|_| poison_while.as_ref().is_none_or(|file| file.exists()));
        async move {
            let _slot = match capacity {
                Some(capacity) => Some(
                    capacity
                        .acquire_owned()
                        .await
                        .map_err(|e| Error::from(e.to_string()))?,
                ),
                None => None,
            };
            let started_ms = now_ms();
            let records = &event.payload.records;
            let shard = records
                .first()
                .and_then(|r| r.event_id.as_deref())
                .and_then(|id| id.split(':').next())
                .unwrap_or_default()
                .to_string();
            let (_running, concurrent) = RunningGuard::enter(&running, &shard);
            if let Some(path) = &attempts {
                let seq = |r: Option<&handler_sdk::events::KinesisEventRecord>| {
                    r.map(|r| r.kinesis.sequence_number.clone())
                };
                let line = serde_json::json!({"first": seq(records.first()), "last": seq(records.last()), "n": records.len()});
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                f.write_all(format!("{line}\n").as_bytes())?;
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let call = calls.fetch_add(1, Ordering::SeqCst);
            if call < fail_first {
                return Err(Error::from(format!("failing invocation {call} on purpose")));
            }
            let first_poison = poison.as_deref().and_then(|p| {
                records
                    .iter()
                    .position(|r| String::from_utf8_lossy(r.data_bytes()).contains(p))
            });
            let (records, failures) = match first_poison {
                Some(i) if report => (
                    &records[..i],
                    serde_json::json!({"batchItemFailures": [{"itemIdentifier": records[i].kinesis.sequence_number}]}),
                ),
                Some(i) => {
                    return Err(Error::from(format!(
                        "poison record {}",
                        records[i].kinesis.sequence_number
                    )))
                }
                None => (&records[..], response),
            };
            let line = BatchLine {
                shard,
                request_id: event.context.request_id.clone(),
                records: records
                    .iter()
                    .map(|r| RecordLine {
                        seq: r.kinesis.sequence_number.clone(),
                        key: r.kinesis.partition_key.clone(),
                        len: r.data_bytes().len(),
                        event_id: r.event_id.clone().unwrap_or_default(),
                        data: String::from_utf8_lossy(r.data_bytes())
                            .chars()
                            .take(64)
                            .collect(),
                    })
                    .collect(),
                concurrent,
                started_ms,
                ended_ms: now_ms(),
            };
            let mut text = serde_json::to_string(&line)?;
            text.push('\n');
            if !line.records.is_empty() {
                let mut f = file.lock().map_err(|_| Error::from("poisoned"))?;
                f.write_all(text.as_bytes())?;
                f.flush()?;
            }
            if let Some(delay) = delay_after {
                tokio::time::sleep(delay).await;
            }
            Ok::<serde_json::Value, Error>(failures)
        }
    });
    esm::cli::main(
        esm::Registry::new()
            .handler("recorder", Recorder { inner: handler })
            .window_handler("windows", window_recorder(delay)),
    )
}

/// The `tumbling-window` example's handler, with one [`WindowLine`] per invocation
/// appended to `$RECORDER_WINDOWS`.
fn window_recorder(
    delay: Option<Duration>,
) -> impl Service<
    LambdaEvent<KinesisWindowEvent<Counts>>,
    Response = KinesisWindowResponse<Counts>,
    Error = Error,
    Future = impl std::future::Future<Output = Result<KinesisWindowResponse<Counts>, Error>> + Send,
> + Clone
       + Send
       + 'static {
    let path = std::env::var("RECORDER_WINDOWS").unwrap_or_else(|_| "windows.jsonl".into());
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("RECORDER_WINDOWS must be writable"),
    ));
    service_fn(move |event: LambdaEvent<KinesisWindowEvent<Counts>>| {
        let file = file.clone();
        async move {
            let started_ms = now_ms();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let payload = &event.payload;
            let mut line = WindowLine {
                shard: payload.shard_id.clone().unwrap_or_default(),
                start: payload
                    .window
                    .as_ref()
                    .map(|w| w.start.to_rfc3339())
                    .unwrap_or_default(),
                is_final: payload.is_final_invoke_for_window,
                early: payload.is_window_terminated_early,
                records: payload
                    .records
                    .iter()
                    .map(|r| WindowRecord {
                        seq: r.kinesis.sequence_number.clone(),
                        key: r.kinesis.partition_key.clone(),
                        arrival_ms: r.kinesis.approximate_arrival_timestamp.0.timestamp_millis(),
                    })
                    .collect(),
                state_in: payload.state.clone(),
                state_out: Counts::new(),
                started_ms,
            };
            let response = tumbling_window_handler::handle(event).await?;
            line.state_out = response.state.clone();
            let mut text = serde_json::to_string(&line)?;
            text.push('\n');
            let mut f = file.lock().map_err(|_| Error::from("poisoned"))?;
            f.write_all(text.as_bytes())?;
            f.flush()?;
            Ok(response)
        }
    })
}
