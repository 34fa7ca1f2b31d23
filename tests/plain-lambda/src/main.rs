//! A Kinesis handler built only on the public `lambda_runtime` and
//! `aws_lambda_events` crates: no esm, no handler-sdk. End-to-end tests run it under
//! esm's Lambda Runtime API host to show that an unmodified Lambda binary works.
//!
//! It appends one JSON line per invocation to `$PLAIN_OUT` (the format of
//! `esm_e2e::BatchLine`). Knobs, each a marker-file path so that the behaviour happens
//! once across worker restarts:
//! - `PLAIN_CRASH_ONCE=FILE`: the first invocation exits the process (a crash);
//! - `PLAIN_HANG_ONCE=FILE`: the first invocation never answers (a timeout);
//! - `PLAIN_INIT_FAIL=FILE`: the process exits before serving while FILE holds a
//!   number above 0, decrementing it (init failures).
//!
//! Without `PLAIN_OUT` it records nothing: a no-op handler for benchmarks.

use std::io::Write as _;
use std::path::Path;

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};

/// True the first time it is called for `var`'s marker file (which it then creates).
fn first_time(var: &str) -> bool {
    match std::env::var(var) {
        Ok(path) if !Path::new(&path).exists() => std::fs::write(&path, b"done").is_ok(),
        _ => false,
    }
}

async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
    if first_time("PLAIN_CRASH_ONCE") {
        eprintln!("plain-lambda: crashing on purpose");
        std::process::exit(3);
    }
    if first_time("PLAIN_HANG_ONCE") {
        eprintln!("plain-lambda: hanging on purpose");
        std::future::pending::<()>().await;
    }
    let records = &event.payload.records;
    let Some(path) = std::env::var_os("PLAIN_OUT") else {
        return Ok(());
    };
    let shard = records
        .first()
        .and_then(|r| r.event_id.as_deref())
        .and_then(|id| id.split(':').next())
        .unwrap_or_default();
    let line = serde_json::json!({
        "shard": shard,
        "request_id": event.context.request_id,
        "records": records.iter().map(|r| serde_json::json!({
            "seq": r.kinesis.sequence_number,
            "key": r.kinesis.partition_key,
            "len": r.kinesis.data.0.len(),
            "event_id": r.event_id.clone().unwrap_or_default(),
            "data": String::from_utf8_lossy(&r.kinesis.data.0).chars().take(64).collect::<String>(),
        })).collect::<Vec<_>>(),
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write of the whole line: workers append to one file concurrently.
    file.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if let Ok(path) = std::env::var("PLAIN_INIT_FAIL") {
        let left: u32 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if left > 0 {
            std::fs::write(&path, (left - 1).to_string())?;
            eprintln!("plain-lambda: failing init on purpose ({left} left)");
            std::process::exit(2);
        }
    }
    lambda_runtime::run(service_fn(handle)).await
}
