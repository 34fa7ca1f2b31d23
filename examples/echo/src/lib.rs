//! The smallest useful handler: log each record's shard position and payload.
//!
//! Copy this crate to start your own. [`handle`] is a plain `async fn` over Lambda's
//! Kinesis event; the two binaries show the two ways to run it:
//!
//! - `echo-handler` (src/main.rs): a Lambda function, for AWS Lambda or any Lambda
//!   Runtime API host (esm's `[mapping.function] command = [...]`), served by
//!   `handler_sdk::run`;
//! - `esm-echo` (src/bin/esm-echo.rs): esm itself with this handler linked in and
//!   registered as `echo`, run with `esm-echo run --config esm.toml`.
//!
//! It returns `()` (the response body `null`): the batch succeeded. See README.md.

use handler_sdk::events::KinesisEvent;
use handler_sdk::{Error, LambdaEvent, RecordExt};

/// Longest payload logged as it is; longer or binary payloads are logged as `…`.
const PREVIEW_BYTES: usize = 200;

/// Logs one line per batch, then one per record: shard, sequence number, partition
/// key, payload size and the payload itself when it is short text.
pub async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
    let records = &event.payload.records;
    tracing::info!(records = records.len(), request_id = %event.context.request_id, "batch");
    for record in records {
        tracing::info!(
            shard = record.shard_id().unwrap_or_default(),
            sequence_number = record.sequence_number(),
            key = record.partition_key(),
            bytes = record.data_bytes().len(),
            "{}",
            preview(record.data_utf8().ok())
        );
    }
    Ok(())
}

/// The payload to log: the text when it is short, else `…`.
fn preview(text: Option<&str>) -> &str {
    match text {
        Some(text) if text.len() <= PREVIEW_BYTES => text,
        _ => "…",
    }
}

#[cfg(test)]
mod tests {
    use handler_sdk::testing;

    use super::*;

    /// One record in Lambda's exact format; its data is `{"id":1,"type":"order"}`.
    const EVENT: &str = r#"{
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "data": "eyJpZCI6MSwidHlwZSI6Im9yZGVyIn0=",
                    "approximateArrivalTimestamp": 1545084650.987
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000000:49590338271490256608559692538361571095921575989136588898",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/esm",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo"
            }
        ]
    }"#;

    #[tokio::test]
    async fn succeeds_with_a_null_response() {
        let event = testing::lambda_event(EVENT).unwrap();
        let body = testing::response_json(&handle(event).await.unwrap()).unwrap();
        assert_eq!(body, "null");
    }

    #[tokio::test]
    async fn an_empty_batch_succeeds() {
        let event = testing::lambda_event(r#"{"Records":[]}"#).unwrap();
        assert!(handle(event).await.is_ok());
    }

    #[test]
    fn previews_only_short_text() {
        assert_eq!(preview(Some("hi")), "hi");
        assert_eq!(preview(Some(&"x".repeat(PREVIEW_BYTES + 1))), "…");
        assert_eq!(preview(None), "…");
    }
}
