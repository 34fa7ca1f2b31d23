//! Tumbling-window aggregation: count records per partition key over a window, and log
//! the totals when the window closes.
//!
//! With `tumbling_window_in_seconds` on the mapping, the event source mapping groups
//! each shard's records into windows of that length and invokes the function several
//! times per window, each time with the `state` the previous invocation of the window
//! returned (`{}` at the window's start). This handler keeps its counts in that state,
//! typed as [`Counts`] through [`handler_sdk::window::KinesisWindowEvent`], adds the
//! invocation's records and returns the new counts in a
//! [`handler_sdk::window::KinesisWindowResponse`]:
//! `{"state":{"key-0":12,"key-1":9},"batchItemFailures":[]}`. On the window's last
//! invocation (`isFinalInvokeForWindow`) it logs the totals, one line per window and
//! shard. The handler itself keeps nothing between invocations.
//!
//! It runs the same on AWS Lambda and under esm. Without a tumbling window on the
//! mapping it still runs: an event without a window reads with empty state and counts
//! as a window of its own
//! ([`KinesisWindowEvent::ends_window`](handler_sdk::window::KinesisWindowEvent::ends_window)),
//! so the totals are logged per batch.
//!
//! The binaries: `tumbling-window-handler` (src/main.rs) is the Lambda function;
//! `esm-tumbling-window` (src/bin/esm-tumbling-window.rs) is esm with this handler
//! registered in-process as `tumbling-window`. See README.md.

use std::collections::BTreeMap;

use handler_sdk::events::KinesisEventRecord;
use handler_sdk::window::{KinesisWindowEvent, KinesisWindowResponse};
use handler_sdk::{Error, LambdaEvent, RecordExt};

/// The window's state: records seen so far in the window, per partition key. It
/// serializes as a JSON object, `{"key-0": 12, "key-1": 9}`.
pub type Counts = BTreeMap<String, u64>;

/// Adds one to the count of each record's partition key.
pub fn count(counts: &mut Counts, records: &[KinesisEventRecord]) {
    for record in records {
        *counts.entry(record.partition_key().to_owned()).or_default() += 1;
    }
}

/// Counts the invocation's records into the window's state; logs the totals when the
/// window ends.
pub async fn handle(
    event: LambdaEvent<KinesisWindowEvent<Counts>>,
) -> Result<KinesisWindowResponse<Counts>, Error> {
    let ends_window = event.payload.ends_window();
    let KinesisWindowEvent {
        records,
        shard_id,
        window,
        state: mut counts,
        is_window_terminated_early,
        ..
    } = event.payload;
    count(&mut counts, &records);

    // Without a tumbling window the event has no `shardId`: the records' `eventID` says.
    let shard = shard_id
        .as_deref()
        .or_else(|| records.first().and_then(|r| r.shard_id()))
        .unwrap_or_default();
    let window = window.map_or_else(
        || "none (this invocation alone)".to_owned(),
        |w| format!("{}/{}", w.start.to_rfc3339(), w.end.to_rfc3339()),
    );
    tracing::debug!(
        shard,
        window,
        records = records.len(),
        keys = counts.len(),
        "counted"
    );
    if ends_window {
        tracing::info!(
            shard,
            window,
            terminated_early = is_window_terminated_early,
            records = counts.values().sum::<u64>(),
            keys = counts.len(),
            totals = %serde_json::to_string(&counts)?,
            "window totals"
        );
    }
    // On the final invocation the state returned is discarded (the next window starts
    // from `{}`), but Lambda still requires one.
    Ok(KinesisWindowResponse::new(counts))
}

#[cfg(test)]
mod tests {
    use handler_sdk::testing;

    use super::*;

    /// An invocation in the middle of a window, in Lambda's exact format: two records
    /// (keys `key-1`, `key-2`) and the state so far.
    const MID_WINDOW: &str = r#"{
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588801",
                    "data": "eyJpZCI6MSwidHlwZSI6Im9yZGVyIn0=",
                    "approximateArrivalTimestamp": 1607497475.000
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588801",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/esm",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo"
            },
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-2",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588802",
                    "data": "eyJpZCI6MiwidHlwZSI6Im9yZGVyIn0=",
                    "approximateArrivalTimestamp": 1607497476.000
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588802",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/esm",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo"
            }
        ],
        "window": {
            "start": "2020-12-09T07:04:00Z",
            "end": "2020-12-09T07:06:00Z"
        },
        "state": {
            "key-1": 282,
            "key-3": 715
        },
        "shardId": "shardId-000000000006",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo",
        "isFinalInvokeForWindow": false,
        "isWindowTerminatedEarly": false
    }"#;

    /// The record part of an event: one record per partition key.
    fn records_json(keys: &[&str]) -> String {
        let records: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                format!(
                    r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"{key}","sequenceNumber":"{i}","data":"","approximateArrivalTimestamp":1607497475.0}},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:{i}","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo"}}"#
                )
            })
            .collect();
        format!(r#""Records":[{}]"#, records.join(","))
    }

    /// A windowed event with these records, state and final flag.
    fn window_event(keys: &[&str], state: &str, is_final: bool) -> String {
        format!(
            r#"{{{},"window":{{"start":"2020-12-09T07:04:00Z","end":"2020-12-09T07:06:00Z"}},"state":{state},"shardId":"shardId-000000000000","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo","isFinalInvokeForWindow":{is_final},"isWindowTerminatedEarly":false}}"#,
            records_json(keys)
        )
    }

    async fn response_to(json: &str) -> String {
        let event = testing::lambda_event(json).unwrap();
        let response = handle(event).await.unwrap();
        testing::response_json(&response).unwrap()
    }

    #[tokio::test]
    async fn adds_to_the_state_so_far() {
        assert_eq!(
            response_to(MID_WINDOW).await,
            r#"{"state":{"key-1":283,"key-2":1,"key-3":715},"batchItemFailures":[]}"#
        );
    }

    #[tokio::test]
    async fn a_window_starts_from_empty_state() {
        let json = window_event(&["key-a", "key-b", "key-a"], "{}", false);
        assert_eq!(
            response_to(&json).await,
            r#"{"state":{"key-a":2,"key-b":1},"batchItemFailures":[]}"#
        );
    }

    #[tokio::test]
    async fn carries_the_state_across_a_whole_window() {
        // Three invocations of one window, each fed the state the previous returned;
        // the last one is final and has no records.
        let mut state = "{}".to_string();
        for (keys, is_final) in [
            (&["key-a", "key-b"][..], false),
            (&["key-a"][..], false),
            (&[][..], true),
        ] {
            let response = response_to(&window_event(keys, &state, is_final)).await;
            let response: serde_json::Value = serde_json::from_str(&response).unwrap();
            state = response["state"].to_string();
        }
        assert_eq!(state, r#"{"key-a":2,"key-b":1}"#);
    }

    #[tokio::test]
    async fn the_final_invocation_returns_the_totals() {
        let json = window_event(&[], r#"{"key-a":7}"#, true);
        assert_eq!(
            response_to(&json).await,
            r#"{"state":{"key-a":7},"batchItemFailures":[]}"#
        );
    }

    #[tokio::test]
    async fn without_a_window_each_batch_is_counted_alone() {
        // What a mapping without a tumbling window sends: a plain Kinesis event.
        let json = format!("{{{}}}", records_json(&["key-a", "key-a"]));
        let event: LambdaEvent<KinesisWindowEvent<Counts>> = testing::lambda_event(&json).unwrap();
        assert!(event.payload.ends_window());
        assert_eq!(
            response_to(&json).await,
            r#"{"state":{"key-a":2},"batchItemFailures":[]}"#
        );
    }

    #[test]
    fn counts_by_partition_key() {
        let event: KinesisWindowEvent<Counts> =
            serde_json::from_str(&format!("{{{}}}", records_json(&["x", "y", "x", "x"]))).unwrap();
        let mut counts = Counts::new();
        count(&mut counts, &event.records);
        assert_eq!(counts["x"], 3);
        assert_eq!(counts["y"], 1);
    }
}
