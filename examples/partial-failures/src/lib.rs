//! Partial batch failures: handle a batch record by record, and when a record cannot
//! be handled, report it in `batchItemFailures` instead of failing the whole batch.
//!
//! The rule here: a record is handled when its data is a JSON object whose `"type"`
//! is not `"poison"`. A record that is not JSON, is JSON but not an object, or says
//! `"type": "poison"` fails. The handler stops at the first failing record and returns
//! `{"batchItemFailures":[{"itemIdentifier":"<its sequence number>"}]}`, built with
//! [`handler_sdk::BatchItemFailures`]. The records before it are done; the event
//! source mapping moves the checkpoint to just before it and delivers it and everything
//! after it again. Stopping there (rather than handling the rest) is the pattern for
//! streams: the records after a failure are delivered again whatever the response
//! says, so handling them now would only handle them twice, and out of order.
//!
//! The mapping must have `function_response_types = ["ReportBatchItemFailures"]` for
//! the response to count, under esm as on AWS Lambda; without it the response is
//! ignored and every batch this handler returns from is a success.
//!
//! The binaries: `partial-failures-handler` (src/main.rs) is the Lambda function;
//! `esm-partial-failures` (src/bin/esm-partial-failures.rs) is esm with this handler
//! registered in-process as `partial-failures`. See README.md.

use std::fmt;

use handler_sdk::events::{KinesisEvent, KinesisEventRecord};
use handler_sdk::{BatchItemFailures, DataError, Error, LambdaEvent, RecordExt};
use serde::Deserialize;

/// The part of a record's JSON data this handler reads.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// What the message is (`"order"` from the demo producer); `"poison"` marks a
    /// record that can never be handled.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// Why a record could not be handled.
#[derive(Debug)]
pub enum Rejection {
    /// Its data is not a JSON object.
    Unreadable(DataError),
    /// Its data says `"type": "poison"`.
    Poison {
        /// The record's sequence number.
        sequence_number: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(error) => write!(f, "{error}"),
            Self::Poison { sequence_number } => {
                write!(f, "record {sequence_number}: data has \"type\": \"poison\"")
            }
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreadable(error) => Some(error),
            Self::Poison { .. } => None,
        }
    }
}

/// Applies the rule to one record: its message, or why it cannot be handled.
pub fn check(record: &KinesisEventRecord) -> Result<Message, Rejection> {
    let message: Message = record.data_json().map_err(Rejection::Unreadable)?;
    if message.kind.as_deref() == Some("poison") {
        return Err(Rejection::Poison {
            sequence_number: record.sequence_number().to_owned(),
        });
    }
    Ok(message)
}

/// Handles the batch in order and reports the first record that fails the rule.
pub async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<BatchItemFailures, Error> {
    let records = &event.payload.records;
    let mut failures = BatchItemFailures::new();
    let mut handled = 0usize;
    for record in records {
        match check(record) {
            Ok(message) => {
                // A real handler does its work here (and returns `Err` for a failure
                // that is not the record's fault, e.g. a database that is down, so that
                // the whole batch is retried).
                handled += 1;
                tracing::debug!(
                    sequence_number = record.sequence_number(),
                    kind = message.kind.as_deref().unwrap_or_default(),
                    "handled"
                );
            }
            Err(rejection) => {
                tracing::warn!(
                    sequence_number = record.sequence_number(),
                    partition_key = record.partition_key(),
                    "failing the record, and leaving the rest of the batch to the retry: {rejection}"
                );
                failures.fail(record);
                break;
            }
        }
    }
    tracing::info!(
        request_id = %event.context.request_id,
        records = records.len(),
        handled,
        failed = failures.len(),
        "batch"
    );
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use handler_sdk::testing;

    use super::*;

    /// Three records in Lambda's exact format; the second is poison.
    /// Data: `{"id":1,"type":"order"}`, `{"id":2,"type":"poison"}`, `{"id":3,"type":"order"}`.
    const POISON_SECOND: &str = r#"{
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588801",
                    "data": "eyJpZCI6MSwidHlwZSI6Im9yZGVyIn0=",
                    "approximateArrivalTimestamp": 1545084650.987
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000000:49590338271490256608559692538361571095921575989136588801",
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
                    "data": "eyJpZCI6MiwidHlwZSI6InBvaXNvbiJ9",
                    "approximateArrivalTimestamp": 1545084651.012
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000000:49590338271490256608559692538361571095921575989136588802",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/esm",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo"
            },
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-3",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588803",
                    "data": "eyJpZCI6MywidHlwZSI6Im9yZGVyIn0=",
                    "approximateArrivalTimestamp": 1545084651.250
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000000:49590338271490256608559692538361571095921575989136588803",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/esm",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/demo"
            }
        ]
    }"#;

    /// An event in Lambda's format with one record per `(sequence number, base64 data)`.
    fn event_json(records: &[(&str, &str)]) -> String {
        let records: Vec<String> = records
            .iter()
            .map(|(seq, data)| {
                format!(
                    r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"key-{seq}","sequenceNumber":"{seq}","data":"{data}","approximateArrivalTimestamp":1545084650.987}},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:{seq}","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo"}}"#
                )
            })
            .collect();
        format!(r#"{{"Records":[{}]}}"#, records.join(","))
    }

    const ORDER: &str = "eyJpZCI6MSwidHlwZSI6Im9yZGVyIn0="; // {"id":1,"type":"order"}
    const POISON: &str = "eyJpZCI6MiwidHlwZSI6InBvaXNvbiJ9"; // {"id":2,"type":"poison"}
    const UNTYPED: &str = "eyJpZCI6NH0="; // {"id":4}
    const NOT_JSON: &str = "aGVsbG8="; // hello
    const NOT_AN_OBJECT: &str = "WzEsMl0="; // [1,2]

    async fn response_to(json: &str) -> String {
        let event = testing::lambda_event(json).unwrap();
        let response = handle(event).await.unwrap();
        testing::response_json(&response).unwrap()
    }

    #[tokio::test]
    async fn reports_the_poison_record() {
        assert_eq!(
            response_to(POISON_SECOND).await,
            r#"{"batchItemFailures":[{"itemIdentifier":"49590338271490256608559692538361571095921575989136588802"}]}"#
        );
    }

    #[tokio::test]
    async fn a_good_batch_reports_no_failures() {
        let json = event_json(&[("1", ORDER), ("2", UNTYPED), ("3", ORDER)]);
        assert_eq!(response_to(&json).await, r#"{"batchItemFailures":[]}"#);
    }

    #[tokio::test]
    async fn an_empty_batch_reports_no_failures() {
        assert_eq!(
            response_to(r#"{"Records":[]}"#).await,
            r#"{"batchItemFailures":[]}"#
        );
    }

    #[tokio::test]
    async fn stops_at_the_first_failure() {
        let json = event_json(&[("1", ORDER), ("2", NOT_JSON), ("3", POISON)]);
        assert_eq!(
            response_to(&json).await,
            r#"{"batchItemFailures":[{"itemIdentifier":"2"}]}"#
        );
    }

    #[tokio::test]
    async fn data_that_is_not_a_json_object_fails() {
        for data in [NOT_JSON, NOT_AN_OBJECT] {
            let json = event_json(&[("7", data), ("8", ORDER)]);
            assert_eq!(
                response_to(&json).await,
                r#"{"batchItemFailures":[{"itemIdentifier":"7"}]}"#,
                "{data}"
            );
        }
    }

    #[test]
    fn check_says_why() {
        let event: handler_sdk::events::KinesisEvent = serde_json::from_str(&event_json(&[
            ("1", ORDER),
            ("2", POISON),
            ("3", NOT_JSON),
            ("4", NOT_AN_OBJECT),
        ]))
        .unwrap();
        let r = &event.records;
        assert_eq!(check(&r[0]).unwrap().kind.as_deref(), Some("order"));
        assert_eq!(
            check(&r[1]).unwrap_err().to_string(),
            r#"record 2: data has "type": "poison""#
        );
        assert_eq!(
            check(&r[2]).unwrap_err().to_string(),
            "record 3: data is not JSON: expected value at line 1 column 1"
        );
        let Err(Rejection::Unreadable(error)) = check(&r[3]) else {
            panic!("[1,2] is not a message");
        };
        assert!(matches!(
            error.kind(),
            handler_sdk::DataErrorKind::UnexpectedJson(_)
        ));
        assert!(error
            .to_string()
            .starts_with("record 4: data is JSON but not of the expected shape: "));
    }
}
