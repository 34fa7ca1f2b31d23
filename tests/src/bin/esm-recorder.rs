//! esm with a test handler linked in, registered as `recorder`.
//!
//! The handler appends one JSON line per invocation to `$RECORDER_OUT`: the shard,
//! the request id and, per record, its sequence number, partition key and payload
//! size (plus the base64 event bytes of the data). End-to-end tests read that file to
//! check what reached the function, in which batches and in which order.
//!
//! Knobs (environment): `RECORDER_DELAY_MS` sleeps in each invocation (to kill esm
//! mid-stream); `RECORDER_DELAY_AFTER_MS` sleeps after the line was written, before
//! returning (so a kill lands between "handled" and "checkpointed"); `RECORDER_FAIL_FIRST=N`
//! fails the first N invocations (to see retries); `RECORDER_POISON=TEXT` makes every
//! record whose data contains TEXT a poison record: a batch holding one fails (an
//! error), or with `RECORDER_REPORT=1` the records before the first poison record are
//! handled and the rest reported in `batchItemFailures`; `RECORDER_RESPONSE=JSON`
//! returns that JSON after handling a batch; `RECORDER_ATTEMPTS=FILE` appends one
//! line per invocation (`{"first","last","n"}`) before anything else happens.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esm_e2e::{BatchLine, RecordLine};
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent, RecordExt};

fn main() -> std::process::ExitCode {
    let out = std::env::var("RECORDER_OUT").unwrap_or_else(|_| "recorder.jsonl".into());
    let delay = std::env::var("RECORDER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let delay_after = std::env::var("RECORDER_DELAY_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let fail_first: u64 = std::env::var("RECORDER_FAIL_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let poison = std::env::var("RECORDER_POISON")
        .ok()
        .filter(|p| !p.is_empty());
    let report = std::env::var("RECORDER_REPORT").is_ok_and(|v| v == "1");
    let response: serde_json::Value = std::env::var("RECORDER_RESPONSE")
        .ok()
        .map(|r| serde_json::from_str(&r).expect("RECORDER_RESPONSE must be JSON"))
        .unwrap_or(serde_json::Value::Null);
    let attempts = std::env::var("RECORDER_ATTEMPTS").ok();
    let calls = Arc::new(AtomicU64::new(0));
    let file = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .expect("RECORDER_OUT must be writable"),
    ));
    let handler = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (file, calls) = (file.clone(), calls.clone());
        let (poison, response, attempts) = (poison.clone(), response.clone(), attempts.clone());
        async move {
            let records = &event.payload.records;
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
            let shard = records
                .first()
                .and_then(|r| r.event_id.as_deref())
                .and_then(|id| id.split(':').next())
                .unwrap_or_default()
                .to_string();
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
    esm::cli::main(esm::Registry::new().handler("recorder", handler))
}
