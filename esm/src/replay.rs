//! `esm replay`: take the on-failure records a mapping sent to its destination
//! (SPEC §5) and replay their batches.
//!
//! Why: an on-failure record names a batch only by shard and sequence range, not
//! by its records. Once the bug that failed the batch is fixed, someone has to
//! read those records back from the stream and hand them to the function again —
//! or save them somewhere — before the stream's retention drops them. Lambda
//! leaves that to everyone to script; `esm replay` does it with exactly the event
//! bytes the runner would have sent.
//!
//! For each on-failure record (from an SQS queue, a body wrapped in an SNS
//! `Notification` envelope being unwrapped, or from a JSON-lines file) it reads
//! `KinesisBatchInfo`, gets a shard iterator `AT_SEQUENCE_NUMBER` the batch's first
//! sequence number, and reads until it passes the last one. Records the stream no
//! longer holds are reported on stderr by shard and sequence number and counted as
//! expired, never silently skipped. Then, by default, the mapping's function is
//! invoked once per batch (no retries: a batch that fails again is counted as
//! failed and its message kept); with `--out` the records are written as Kinesis
//! event records, one per line. With `--delete` a queue message is deleted only
//! once its whole batch succeeded with nothing expired.
//!
//! The summary counts batches (on-failure records), records read back, batches
//! re-invoked (or written), batches failed, and records expired.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::{self, MappingConfig};
use crate::core::backoff::Backoff;
use crate::core::event::{EventEncoder, EventSource};
use crate::core::record::{Record, SequenceNumber};
use crate::core::response::{batch_item_failures, Verdict};
use crate::invoke::{Invocation, Invoker, Outcome, Registry};
use crate::runner::app::{self, Workers};
use crate::runner::MappingSpec;
use crate::source::kinesis::describe;

/// Exit code: nothing failed or expired.
const EXIT_OK: u8 = 0;
/// Exit code: a batch failed or records expired.
const EXIT_FAILURE: u8 = 1;
/// Exit code: bad arguments or config.
const EXIT_BAD_CONFIG: u8 = 2;

/// The pause between two GetRecords calls on a shard: well under Kinesis's five
/// calls per second per shard, shared with the running mappings.
const GET_RECORDS_PACE: Duration = Duration::from_millis(250);
/// How many times a failing (not throttled) Kinesis call is tried.
const MAX_ATTEMPTS: u32 = 8;
/// How long replay keeps a received message hidden from other readers.
const VISIBILITY_TIMEOUT_SECONDS: i32 = 900;

/// Where the on-failure records come from.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    /// An SQS queue, by URL.
    Queue(String),
    /// A JSON-lines file, one on-failure record (or SNS envelope) per line.
    File(PathBuf),
}

/// What `esm replay` was asked to do.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The config file.
    pub config: PathBuf,
    /// The mapping whose function (and stream) the records belong to.
    pub mapping: String,
    /// Where the on-failure records are.
    pub source: ReplaySource,
    /// Write the records here (JSON lines) instead of invoking the function.
    pub out: Option<PathBuf>,
    /// Delete a queue message once its batch succeeded with nothing expired.
    pub delete: bool,
    /// Read at most this many on-failure records.
    pub max_messages: Option<usize>,
}

/// One on-failure record to replay.
struct Item {
    /// Where it came from, for messages (`message ID` or `FILE:LINE`).
    label: String,
    /// The on-failure record, or why it could not be read.
    record: Result<Value, String>,
    /// The SQS receipt handle, for a queue message.
    receipt: Option<String>,
}

/// The batch an on-failure record names.
#[derive(Debug)]
struct BatchInfo {
    shard_id: String,
    stream_arn: String,
    start: SequenceNumber,
    end: SequenceNumber,
    batch_size: usize,
}

/// The records read back for a batch.
struct Fetched {
    records: Vec<Record>,
    /// How many of the batch's records the stream no longer holds.
    expired: usize,
}

/// The running totals for the summary.
#[derive(Default)]
struct Totals {
    batches: usize,
    records: usize,
    done: usize,
    failed: usize,
    expired: usize,
}

/// Runs `esm replay`; returns the exit code.
pub fn execute(options: ReplayOptions, registry: Registry) -> u8 {
    crate::logging::init();
    let cfg = match config::load(&options.config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            eprintln!("{problems}");
            return EXIT_BAD_CONFIG;
        }
    };
    let Some(mapping) = cfg.mappings.iter().find(|m| m.name == options.mapping) else {
        eprintln!(
            "no mapping named {:?} in {} (it has: {})",
            options.mapping,
            options.config.display(),
            cfg.mappings
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return EXIT_BAD_CONFIG;
    };
    if options.delete && !matches!(options.source, ReplaySource::Queue(_)) {
        eprintln!("--delete needs --queue-url");
        return EXIT_BAD_CONFIG;
    }
    let Some(runtime) = crate::cli::async_runtime() else {
        return EXIT_FAILURE;
    };
    runtime.block_on(replay(&options, mapping, &registry))
}

/// Everything after the config was read.
async fn replay(options: &ReplayOptions, mapping: &MappingConfig, registry: &Registry) -> u8 {
    let spec = match MappingSpec::from_config(mapping) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("mapping {}: filter_criteria: {e}", mapping.name);
            return EXIT_BAD_CONFIG;
        }
    };
    let mut workers = Workers::default();
    let mut sink = match &options.out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Sink::Out(std::io::BufWriter::new(file)),
            Err(e) => {
                eprintln!("cannot create {}: {e}", path.display());
                return EXIT_BAD_CONFIG;
            }
        },
        None => match app::resolve_invoker(mapping, &spec, registry, &mut workers) {
            Ok(invoker) => Sink::Invoke(invoker),
            Err(problem) => {
                eprintln!("{problem}");
                return EXIT_BAD_CONFIG;
            }
        },
    };
    let code = replay_with(options, &spec, &mut sink).await;
    workers.stop().await;
    code
}

/// What happens to a batch's records.
enum Sink {
    /// Invoke the mapping's function.
    Invoke(Arc<dyn Invoker>),
    /// Write them as event records, one per line.
    Out(std::io::BufWriter<std::fs::File>),
}

async fn replay_with(options: &ReplayOptions, spec: &MappingSpec, sink: &mut Sink) -> u8 {
    let limit = options.max_messages.unwrap_or(usize::MAX);
    let sqs = match &options.source {
        ReplaySource::Queue(url) => {
            Some(sqs_client(queue_region(url).unwrap_or(&spec.region)).await)
        }
        ReplaySource::File(_) => None,
    };
    let items = match (&options.source, &sqs) {
        (ReplaySource::Queue(url), Some(client)) => match receive_all(client, url, limit).await {
            Ok(items) => items,
            Err(e) => {
                eprintln!("cannot read the queue {url}: {e}");
                return EXIT_FAILURE;
            }
        },
        (ReplaySource::File(path), _) => match read_file(path, limit) {
            Ok(items) => items,
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return EXIT_BAD_CONFIG;
            }
        },
        (ReplaySource::Queue(_), None) => return EXIT_FAILURE,
    };

    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(items.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} batches {msg} [{elapsed}]")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let say = |msg: String| progress.suspend(|| eprintln!("{msg}"));

    let kinesis = crate::source::kinesis::client(&spec.region).await;
    let mut totals = Totals::default();
    let mut kept = Vec::new();
    for item in items {
        totals.batches += 1;
        let ok = replay_one(&item, spec, &kinesis, sink, &mut totals, &say).await;
        if let (Some(receipt), Some(client), ReplaySource::Queue(url)) =
            (&item.receipt, &sqs, &options.source)
        {
            if ok && options.delete {
                if let Err(e) = client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    say(format!(
                        "{}: cannot delete the message: {}",
                        item.label,
                        sqs_error(&e)
                    ));
                    totals.failed += 1;
                }
            } else {
                kept.push(receipt.clone());
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Sink::Out(out) = sink {
        if let Err(e) = out.flush() {
            eprintln!("cannot write the --out file: {e}");
            totals.failed += 1;
        }
    }
    // Messages kept go back to the queue at once rather than after the visibility timeout.
    if let (Some(client), ReplaySource::Queue(url)) = (&sqs, &options.source) {
        for receipt in kept {
            let _ = client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
    let verb = match sink {
        Sink::Invoke(_) => "re-invoked",
        Sink::Out(_) => "written",
    };
    println!(
        "replay: {} batches, {} records, {} {verb}, {} failed, {} expired",
        totals.batches, totals.records, totals.done, totals.failed, totals.expired
    );
    if matches!(sink, Sink::Invoke(_)) && totals.failed > 0 {
        eprintln!(
            "replay: failed batches were invoked once, without retries; their messages are kept"
        );
    }
    if totals.failed == 0 && totals.expired == 0 {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Replays one on-failure record; true if its whole batch succeeded with nothing
/// expired (so its message may be deleted).
async fn replay_one(
    item: &Item,
    spec: &MappingSpec,
    kinesis: &aws_sdk_kinesis::Client,
    sink: &mut Sink,
    totals: &mut Totals,
    say: &impl Fn(String),
) -> bool {
    let info = match item
        .record
        .as_ref()
        .map_err(Clone::clone)
        .and_then(batch_info)
    {
        Ok(info) => info,
        Err(e) => {
            say(format!("{}: not an on-failure record: {e}", item.label));
            totals.failed += 1;
            return false;
        }
    };
    if info.stream_arn != spec.stream_arn {
        say(format!(
            "{}: the batch is from {}, but mapping {} reads {}",
            item.label, info.stream_arn, spec.name, spec.stream_arn
        ));
        totals.failed += 1;
        return false;
    }
    let fetched = match fetch(kinesis, &info, say).await {
        Ok(f) => f,
        Err(e) => {
            say(format!(
                "{}: cannot read {} {}..{}: {e}",
                item.label,
                info.shard_id,
                info.start.as_str(),
                info.end.as_str()
            ));
            totals.failed += 1;
            return false;
        }
    };
    totals.records += fetched.records.len();
    totals.expired += fetched.expired;
    if fetched.records.is_empty() {
        return false;
    }
    let encoder = EventEncoder::new(&EventSource {
        stream_arn: spec.stream_arn.clone(),
        region: spec.region.clone(),
        invoke_identity_arn: spec.invoke_identity_arn.clone(),
        shard_id: info.shard_id.clone(),
    });
    let ok = match sink {
        Sink::Out(out) => {
            let mut line = Vec::new();
            let mut written = Ok(());
            for r in &fetched.records {
                line.clear();
                encoder.encode_record(r, &mut line);
                line.push(b'\n');
                written = written.and_then(|()| out.write_all(&line));
            }
            match written {
                Ok(()) => true,
                Err(e) => {
                    say(format!("{}: cannot write the records: {e}", item.label));
                    false
                }
            }
        }
        Sink::Invoke(invoker) => {
            let mut payload = Vec::with_capacity(encoder.event_len(&fetched.records));
            encoder.encode(&fetched.records, &mut payload);
            let outcome = invoker
                .invoke(Invocation {
                    payload: Bytes::from(payload),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    function_arn: spec.function_arn.clone(),
                    timeout: spec.timeout,
                    deadline: SystemTime::now() + spec.timeout,
                })
                .await;
            match judge(&outcome, spec.policy.report_item_failures, &fetched.records) {
                Ok(()) => true,
                Err(why) => {
                    say(format!(
                        "{}: {} {}..{} failed again: {why}",
                        item.label,
                        info.shard_id,
                        info.start.as_str(),
                        info.end.as_str()
                    ));
                    false
                }
            }
        }
    };
    if ok {
        totals.done += 1;
    } else {
        totals.failed += 1;
    }
    ok && fetched.expired == 0
}

/// Whether an invocation's outcome is a success for the whole batch.
fn judge(outcome: &Outcome, report_item_failures: bool, records: &[Record]) -> Result<(), String> {
    match outcome {
        Outcome::Returned { response } if report_item_failures => {
            match batch_item_failures(response, records) {
                Verdict::Success => Ok(()),
                Verdict::FailedFrom { first, .. } => Err(format!(
                    "the function reported failures from {}",
                    records
                        .get(first)
                        .map(|r| r.sequence().as_str().to_string())
                        .unwrap_or_default()
                )),
                Verdict::Failed(why) => Err(why),
            }
        }
        Outcome::Returned { .. } => Ok(()),
        Outcome::FunctionError {
            error_type,
            message,
        } => Err(format!("function error {error_type}: {message}")),
        Outcome::Timeout => Err("the function timed out".into()),
        Outcome::Crash { reason } => Err(format!("the function crashed: {reason}")),
        Outcome::NotInvoked { reason } => Err(format!("not invoked: {reason}")),
    }
}

/// The on-failure record inside a message body: the body itself, or the `Message`
/// of an SNS `Notification` envelope.
fn unwrap_body(body: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        if let Some(message) = value.get("Message").and_then(Value::as_str) {
            return serde_json::from_str(message)
                .map_err(|e| format!("the SNS Message is not JSON: {e}"));
        }
    }
    Ok(value)
}

/// `KinesisBatchInfo` of an on-failure record.
fn batch_info(record: &Value) -> Result<BatchInfo, String> {
    let info = record
        .get("KinesisBatchInfo")
        .ok_or("no KinesisBatchInfo")?;
    let text = |key: &str| {
        info.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("KinesisBatchInfo.{key} is missing"))
    };
    let seq = |key: &str| {
        text(key).and_then(|s| {
            SequenceNumber::parse(s)
                .ok_or_else(|| format!("KinesisBatchInfo.{key} is not a sequence number"))
        })
    };
    let batch_size = info
        .get("batchSize")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("KinesisBatchInfo.batchSize is missing")?;
    Ok(BatchInfo {
        shard_id: text("shardId")?,
        stream_arn: text("streamArn")?,
        start: seq("startSequenceNumber")?,
        end: seq("endSequenceNumber")?,
        batch_size,
    })
}

/// Reads the records of `info`'s batch back from the stream.
async fn fetch(
    client: &aws_sdk_kinesis::Client,
    info: &BatchInfo,
    say: &impl Fn(String),
) -> Result<Fetched, String> {
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let expired_all = |why: &str| {
        say(format!(
            "expired: shard {} records {}..{} ({} records): {why}",
            info.shard_id,
            info.start.as_str(),
            info.end.as_str(),
            info.batch_size
        ));
        Fetched {
            records: Vec::new(),
            expired: info.batch_size.max(1),
        }
    };
    let mut attempt = 0;
    let mut iterator = loop {
        let result = client
            .get_shard_iterator()
            .stream_arn(&info.stream_arn)
            .shard_id(&info.shard_id)
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(info.start.as_str())
            .send()
            .await;
        match result {
            Ok(out) => match out.shard_iterator {
                Some(it) => break it,
                None => return Err("GetShardIterator returned no iterator".into()),
            },
            Err(e) => {
                let text = describe(&e);
                match e.as_service_error() {
                    Some(s)
                        if s.is_invalid_argument_exception()
                            || s.is_resource_not_found_exception() =>
                    {
                        return Ok(expired_all(&text))
                    }
                    Some(s) if s.is_access_denied_exception() => return Err(text),
                    Some(s) if s.is_provisioned_throughput_exceeded_exception() => {}
                    _ => {
                        attempt += 1;
                        if attempt >= MAX_ATTEMPTS {
                            return Err(text);
                        }
                    }
                }
                tokio::time::sleep(backoff.delay(attempt, rand::random())).await;
            }
        }
    };

    let mut records: Vec<Record> = Vec::new();
    let mut attempt = 0;
    'read: loop {
        let result = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(i32::try_from(info.batch_size.clamp(1, 10_000)).unwrap_or(10_000));
        let out = match result.send().await {
            Ok(out) => out,
            Err(e) => {
                let text = describe(&e);
                match e.as_service_error() {
                    Some(s)
                        if s.is_provisioned_throughput_exceeded_exception()
                            || s.is_kms_throttling_exception()
                            || s.code() == Some("LimitExceededException") => {}
                    Some(s)
                        if s.is_resource_not_found_exception()
                            || s.is_access_denied_exception()
                            || s.is_kms_access_denied_exception()
                            || s.is_expired_iterator_exception() =>
                    {
                        return Err(text)
                    }
                    _ => {
                        attempt += 1;
                        if attempt >= MAX_ATTEMPTS {
                            return Err(text);
                        }
                    }
                }
                tokio::time::sleep(backoff.delay(attempt.max(1), rand::random())).await;
                continue;
            }
        };
        let empty = out.records.is_empty();
        for r in out.records {
            let Some(record) = crate::source::kinesis::to_record(r) else {
                continue;
            };
            if *record.sequence() > info.end {
                break 'read;
            }
            let last = *record.sequence() == info.end;
            records.push(record);
            if last {
                break 'read;
            }
        }
        match out.next_shard_iterator {
            Some(next) => iterator = next,
            None => break,
        }
        if empty && out.millis_behind_latest.is_none_or(|m| m == 0) {
            break;
        }
        tokio::time::sleep(GET_RECORDS_PACE).await;
    }

    let mut expired = info.batch_size.saturating_sub(records.len());
    match records.first() {
        Some(first) if *first.sequence() > info.start => {
            expired = expired.max(1);
            say(format!(
                "expired: shard {} records from {} up to (not including) {} ({} of {} records)",
                info.shard_id,
                info.start.as_str(),
                first.sequence().as_str(),
                expired,
                info.batch_size
            ));
        }
        None => return Ok(expired_all("no record left in the range")),
        Some(_) if expired > 0 => say(format!(
            "expired: shard {} range {}..{}: {} of {} records are no longer in the stream",
            info.shard_id,
            info.start.as_str(),
            info.end.as_str(),
            expired,
            info.batch_size
        )),
        Some(_) => {}
    }
    Ok(Fetched { records, expired })
}

/// An SQS client for the queue's region.
async fn sqs_client(region: &str) -> aws_sdk_sqs::Client {
    use aws_config::retry::RetryConfig;
    use aws_config::{BehaviorVersion, Region};
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&shared)
}

/// The region in an AWS queue URL (`https://sqs.REGION.amazonaws.com/…`).
fn queue_region(url: &str) -> Option<&str> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("sqs"), Some(region), Some("amazonaws")) => Some(region),
        _ => None,
    }
}

/// A short description of an SQS error.
fn sqs_error<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match err.as_service_error() {
        Some(e) => format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or_default()
        ),
        None => err.to_string(),
    }
}

/// Receives messages until the queue answers empty or `limit` were received.
async fn receive_all(
    client: &aws_sdk_sqs::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    while items.len() < limit {
        let want = i32::try_from((limit - items.len()).min(10)).unwrap_or(10);
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(want)
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY_TIMEOUT_SECONDS)
            .send()
            .await
            .map_err(|e| sqs_error(&e))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let id = m.message_id.unwrap_or_default();
            if !seen.insert(id.clone()) {
                continue;
            }
            items.push(Item {
                label: format!("message {id}"),
                record: unwrap_body(m.body.as_deref().unwrap_or_default()),
                receipt: m.receipt_handle,
            });
        }
    }
    Ok(items)
}

/// The on-failure records of a JSON-lines file (blank lines skipped).
fn read_file(path: &Path, limit: usize) -> std::io::Result<Vec<Item>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .take(limit)
        .map(|(i, line)| Item {
            label: format!("{}:{}", path.display(), i + 1),
            record: unwrap_body(line),
            receipt: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"requestContext":{"condition":"RetryAttemptsExhausted"},"KinesisBatchInfo":{"shardId":"shardId-000000000000","startSequenceNumber":"100","endSequenceNumber":"109","batchSize":10,"streamArn":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}}"#;

    #[test]
    fn reads_the_batch_info() {
        let info = batch_info(&unwrap_body(RECORD).unwrap()).unwrap();
        assert_eq!(info.shard_id, "shardId-000000000000");
        assert_eq!(info.start.as_str(), "100");
        assert_eq!(info.end.as_str(), "109");
        assert_eq!(info.batch_size, 10);
    }

    #[test]
    fn unwraps_an_sns_envelope() {
        let envelope = serde_json::json!({"Type": "Notification", "Message": RECORD}).to_string();
        assert_eq!(
            unwrap_body(&envelope).unwrap(),
            unwrap_body(RECORD).unwrap()
        );
        assert!(batch_info(&serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn finds_the_region_of_a_queue_url() {
        assert_eq!(
            queue_region("https://sqs.eu-west-1.amazonaws.com/1/q"),
            Some("eu-west-1")
        );
        assert_eq!(queue_region("http://127.0.0.1:5000/1/q"), None);
    }
}
