//! The on-failure record: what Lambda sends to an on-failure destination when it
//! gives up on records of a stream (SPEC §5, the shape recorded against AWS).
//!
//! Built here as a value, with the request id and the time passed in, so tests pin
//! every byte; the destination adapters only send it. `esm replay` reads the same
//! shape back.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::failure::{Condition, LastFailure};
use super::record::Record;

/// What the record says about the records given up, beyond the records themselves.
#[derive(Clone, Debug)]
pub struct GiveUpContext<'a> {
    /// A fresh UUID (`requestContext.requestId`).
    pub request_id: &'a str,
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
    pub function_arn: &'a str,
    /// The stream's ARN.
    pub stream_arn: &'a str,
    /// The shard the records come from.
    pub shard_id: &'a str,
    /// Why they were given up.
    pub condition: Condition,
    /// Invocations that carried them (`approximateInvokeCount`).
    pub invocations: u32,
    /// How their last invocation failed.
    pub last_failure: LastFailure,
    /// When the record is written.
    pub now: DateTime<Utc>,
}

/// The on-failure record for `records` (in shard order, not empty), or `None` when
/// there are no records.
pub fn on_failure_record(ctx: &GiveUpContext<'_>, records: &[Record]) -> Option<Value> {
    let (first, last) = (records.first()?, records.last()?);
    let millis = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut record = json!({
        "requestContext": {
            "requestId": ctx.request_id,
            "functionArn": ctx.function_arn,
            "condition": ctx.condition.as_str(),
            "approximateInvokeCount": ctx.invocations,
        },
        "version": "1.0",
        "timestamp": millis(&ctx.now),
        "KinesisBatchInfo": {
            "shardId": ctx.shard_id,
            "startSequenceNumber": first.sequence().as_str(),
            "endSequenceNumber": last.sequence().as_str(),
            "approximateArrivalOfFirstRecord": millis(&first.approximate_arrival),
            "approximateArrivalOfLastRecord": millis(&last.approximate_arrival),
            "batchSize": records.len(),
            "streamArn": ctx.stream_arn,
        },
    });
    // A RecordAgeExceeded record has no responseContext at all (Lambda's shape).
    if ctx.condition == Condition::RetryAttemptsExhausted {
        let function_error = match ctx.last_failure {
            LastFailure::ItemFailures => Value::Null,
            LastFailure::Unhandled | LastFailure::None => Value::from("Unhandled"),
        };
        record["responseContext"] = json!({
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": function_error,
        });
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{Position, SequenceNumber};
    use bytes::Bytes;
    use chrono::TimeZone;

    fn record(seq: &str, millis: i64) -> Record {
        Record {
            position: Position::plain(SequenceNumber::parse(seq).unwrap()),
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::new(),
            approximate_arrival: Utc.timestamp_millis_opt(millis).unwrap(),
        }
    }

    fn ctx(
        condition: Condition,
        last_failure: LastFailure,
        invocations: u32,
    ) -> GiveUpContext<'static> {
        GiveUpContext {
            request_id: "2b733gdc-8ac3-cdf5-af3a-1827b3b11284",
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:orders",
            stream_arn: "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
            shard_id: "shardId-000000000001",
            condition,
            invocations,
            last_failure,
            now: Utc.timestamp_millis_opt(1_763_805_602_021).unwrap(),
        }
    }

    #[test]
    fn retries_exhausted_after_function_errors() {
        let records = [
            record("100", 1_763_805_600_835),
            record("101", 1_763_805_601_000),
            record("102", 1_763_805_601_580),
        ];
        let value = on_failure_record(
            &ctx(Condition::RetryAttemptsExhausted, LastFailure::Unhandled, 3),
            &records,
        )
        .unwrap();
        assert_eq!(
            value,
            json!({
                "requestContext": {
                    "requestId": "2b733gdc-8ac3-cdf5-af3a-1827b3b11284",
                    "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:orders",
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": 3
                },
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "version": "1.0",
                "timestamp": "2025-11-22T10:00:02.021Z",
                "KinesisBatchInfo": {
                    "shardId": "shardId-000000000001",
                    "startSequenceNumber": "100",
                    "endSequenceNumber": "102",
                    "approximateArrivalOfFirstRecord": "2025-11-22T10:00:00.835Z",
                    "approximateArrivalOfLastRecord": "2025-11-22T10:00:01.580Z",
                    "batchSize": 3,
                    "streamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
                }
            })
        );
    }

    #[test]
    fn partial_failures_have_a_null_function_error() {
        let value = on_failure_record(
            &ctx(
                Condition::RetryAttemptsExhausted,
                LastFailure::ItemFailures,
                2,
            ),
            &[record("7", 0)],
        )
        .unwrap();
        assert_eq!(value["responseContext"]["functionError"], Value::Null);
        assert_eq!(value["KinesisBatchInfo"]["batchSize"], 1);
    }

    #[test]
    fn record_age_exceeded_has_no_response_context() {
        let value = on_failure_record(
            &ctx(Condition::RecordAgeExceeded, LastFailure::None, 0),
            &[record("7", 0)],
        )
        .unwrap();
        assert!(value.get("responseContext").is_none());
        assert_eq!(value["requestContext"]["approximateInvokeCount"], 0);
        assert_eq!(value["requestContext"]["condition"], "RecordAgeExceeded");
    }

    #[test]
    fn no_records_no_record() {
        assert!(on_failure_record(
            &ctx(Condition::RecordAgeExceeded, LastFailure::None, 0),
            &[]
        )
        .is_none());
    }
}
