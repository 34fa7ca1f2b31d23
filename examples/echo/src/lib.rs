//! The smallest useful handler: log each record's shard position and payload size.
//!
//! Copy this crate to start your own. `handle` is plain `async fn` over Lambda's
//! Kinesis event; the two binaries show the two ways to run it:
//!
//! - `echo-handler` (src/main.rs): a Lambda function, for AWS Lambda or any Lambda
//!   Runtime API host;
//! - `esm-echo` (src/bin/esm-echo.rs): esm itself with this handler linked in and
//!   registered as `echo`, run with `esm-echo run --config esm.toml`.

use handler_sdk::events::KinesisEvent;
use handler_sdk::{Error, LambdaEvent, RecordExt};

/// Logs one line per record: event id, partition key, payload (when it is short text).
pub async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
    let records = &event.payload.records;
    tracing::info!(records = records.len(), request_id = %event.context.request_id, "batch");
    for record in records {
        let data = record.data_bytes();
        let preview = match record.data_utf8() {
            Ok(text) if text.len() <= 200 => text,
            _ => "…",
        };
        tracing::info!(
            event_id = record.event_id.as_deref().unwrap_or_default(),
            key = %record.kinesis.partition_key,
            bytes = data.len(),
            "{preview}"
        );
    }
    Ok(())
}
