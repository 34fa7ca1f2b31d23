//! The on-failure record: what Lambda sends to an on-failure destination when it
//! gives up on records of a stream (SPEC §5, the shape recorded against AWS).
//!
//! Built here as a value, with the request id and the time passed in, so tests pin
//! every byte; the destination adapters only send it. `esm replay` reads the same
//! shape back.
//!
//! An S3 destination keeps more than a queue can: the object is the same record plus
//! `"payload"`, the whole invocation event of the records given up
//! (`{"Records": […]}`, the bytes [`EventEncoder::encode`] writes for the function),
//! under a key that sorts by mapping, shard and time ([`s3_key`]). Because the
//! records travel inside the object, `esm replay --s3-uri` replays them even after
//! the stream dropped them; [`SavedPayload::parse`] reads them back. Key, body and
//! parsing are pure, so the layout is pinned by the tests below.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::event::EventEncoder;
use super::failure::{Condition, LastFailure};
use super::record::{Position, Record, SequenceNumber};

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

/// The invocation event of records given up, for a destination that keeps it (S3):
/// exactly the event the function was invoked with for these records.
pub fn payload_event(encoder: &EventEncoder, records: &[Record]) -> Vec<u8> {
    let mut event = Vec::with_capacity(encoder.event_len(records));
    encoder.encode(records, &mut event);
    event
}

/// The UUID that names a mapping in S3 keys: a version-5 UUID of the mapping's
/// name, so the same mapping writes under the same prefix across restarts and
/// hosts, and two mappings never share one.
pub fn mapping_uuid(mapping: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&MAPPING_NAMESPACE, mapping.as_bytes())
}

/// The namespace of [`mapping_uuid`]: esm's own, a random UUID picked once. It never
/// changes: a new one would move every mapping's objects to a new prefix.
const MAPPING_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7a1c_4f6e_2d55_5b8f_9e34_0c6b_8a1d_3f20);

/// The S3 key of an on-failure object, Lambda's layout:
/// `aws/lambda/<mapping-uuid>/<shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<id>`, the
/// time being the on-failure record's `timestamp` (UTC).
pub fn s3_key(mapping: &uuid::Uuid, shard_id: &str, at: DateTime<Utc>, id: &str) -> String {
    format!(
        "aws/lambda/{mapping}/{shard_id}/{}-{id}",
        at.format("%Y/%m/%d/%Y-%m-%dT%H.%M.%S")
    )
}

/// The body of an S3 on-failure object: `record` (a JSON object) with `"payload"`
/// added, its value the invocation `event` bytes as they are (not re-serialized).
pub fn s3_object_body(record: &Value, event: &[u8]) -> Vec<u8> {
    let mut body = record.to_string().into_bytes();
    // A JSON object's text ends with its closing brace: re-open it for the payload.
    if body.last() == Some(&b'}') {
        body.pop();
        if body.len() > 1 {
            body.push(b',');
        }
    } else {
        body = b"{".to_vec();
    }
    body.extend_from_slice(br#""payload":"#);
    body.extend_from_slice(event);
    body.push(b'}');
    body
}

/// The records an S3 on-failure object carries in its `payload`.
#[derive(Clone, Debug)]
pub struct SavedPayload {
    /// The invocation event, exactly as stored (`{"Records": […]}`).
    pub event: Bytes,
    /// Its records, in order.
    pub records: Vec<SavedRecord>,
}

/// One record of a [`SavedPayload`].
#[derive(Clone, Debug)]
pub struct SavedRecord {
    /// The entry of `Records`, exactly as stored.
    pub json: Bytes,
    /// The record it describes (sequence number, partition key, data, arrival).
    pub record: Record,
}

/// Why an object's `payload` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The object is not JSON, or `payload` is not an event.
    #[error("the payload is not a Kinesis event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A record's field is not what Lambda writes.
    #[error("payload record {index}: {why}")]
    Record {
        /// The record's index in `Records`.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

#[derive(Deserialize)]
struct WithPayload<'a> {
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EventShape<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct RecordShape {
    kinesis: KinesisShape,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KinesisShape {
    partition_key: String,
    sequence_number: String,
    data: String,
    approximate_arrival_timestamp: f64,
}

impl SavedPayload {
    /// The payload of an S3 on-failure object's `body`; `Ok(None)` when it has none
    /// (a plain on-failure record).
    pub fn parse(body: &[u8]) -> Result<Option<Self>, PayloadError> {
        let Some(event) = serde_json::from_slice::<WithPayload<'_>>(body)?.payload else {
            return Ok(None);
        };
        let shape: EventShape<'_> = serde_json::from_str(event.get())?;
        let mut records = Vec::with_capacity(shape.records.len());
        for (index, raw) in shape.records.into_iter().enumerate() {
            let bad = |why: String| PayloadError::Record { index, why };
            let k = serde_json::from_str::<RecordShape>(raw.get())
                .map_err(|e| bad(e.to_string()))?
                .kinesis;
            let sequence = SequenceNumber::parse(k.sequence_number)
                .ok_or_else(|| bad("sequenceNumber is not a sequence number".into()))?;
            let data = BASE64
                .decode(k.data.as_bytes())
                .map_err(|e| bad(format!("data is not base64: {e}")))?;
            // Milliseconds, as written: the f64 is exact to well under a millisecond.
            let millis = (k.approximate_arrival_timestamp * 1000.0).round() as i64;
            let arrival = DateTime::<Utc>::from_timestamp_millis(millis)
                .ok_or_else(|| bad("approximateArrivalTimestamp is out of range".into()))?;
            records.push(SavedRecord {
                json: Bytes::copy_from_slice(raw.get().as_bytes()),
                record: Record {
                    position: Position::plain(sequence),
                    partition_key: k.partition_key,
                    explicit_hash_key: None,
                    data: Bytes::from(data),
                    approximate_arrival: arrival,
                },
            });
        }
        Ok(Some(SavedPayload {
            event: Bytes::copy_from_slice(event.get().as_bytes()),
            records,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::EventSource;
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

    fn encoder() -> EventEncoder {
        EventEncoder::new(&EventSource {
            stream_arn: "arn:aws:kinesis:us-east-1:123456789012:stream/orders".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::123456789012:role/esm".into(),
            shard_id: "shardId-000000000001".into(),
        })
    }

    #[test]
    fn the_s3_key_follows_lambdas_layout() {
        let mapping = mapping_uuid("orders");
        let at = Utc.timestamp_millis_opt(1_763_805_602_021).unwrap();
        assert_eq!(
            s3_key(&mapping, "shardId-000000000001", at, "2b733gdc-8ac3-cdf5-af3a-1827b3b11284"),
            format!(
                "aws/lambda/{mapping}/shardId-000000000001/2025/11/22/2025-11-22T10.00.02-2b733gdc-8ac3-cdf5-af3a-1827b3b11284"
            )
        );
        // Zero-padded months, days and hours.
        let early = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert!(s3_key(&mapping, "s", early, "x").ends_with("/s/2026/01/02/2026-01-02T03.04.05-x"));
    }

    #[test]
    fn the_mapping_uuid_is_stable_and_per_name() {
        let orders = mapping_uuid("orders");
        assert_eq!(orders, mapping_uuid("orders"));
        assert_ne!(orders, mapping_uuid("payments"));
        assert_eq!(orders.get_version_num(), 5);
        // Pinned: a change would move every mapping's objects to a new prefix.
        assert_eq!(orders.to_string(), "24ef5994-a0d1-522d-bd19-0474bef28f99");
    }

    #[test]
    fn the_s3_body_is_the_record_plus_the_invoked_event() {
        let mut given_up = vec![
            record("100", 1_763_805_600_835),
            record("101", 1_763_805_601_580),
        ];
        given_up[1].data = Bytes::from_static(b"{\"n\":1}");
        given_up[1].partition_key = "key \"1\"".into();
        let value = on_failure_record(
            &ctx(Condition::RetryAttemptsExhausted, LastFailure::Unhandled, 3),
            &given_up,
        )
        .unwrap();
        let event = payload_event(&encoder(), &given_up);
        let mut invoked = Vec::new();
        encoder().encode(&given_up, &mut invoked);
        assert_eq!(event, invoked, "the payload is the event the function got");

        let body = s3_object_body(&value, &event);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let mut without = parsed.clone();
        without.as_object_mut().unwrap().remove("payload");
        assert_eq!(without, value, "the on-failure record, unchanged");
        assert_eq!(
            parsed["payload"],
            serde_json::from_slice::<Value>(&event).unwrap()
        );
        assert_eq!(parsed["payload"]["Records"].as_array().unwrap().len(), 2);

        // Read back: the event byte for byte, and each record as it was.
        let saved = SavedPayload::parse(&body).unwrap().unwrap();
        assert_eq!(&saved.event[..], &event[..]);
        assert_eq!(saved.records.len(), 2);
        for (saved, original) in saved.records.iter().zip(&given_up) {
            assert_eq!(&saved.record, original);
            let mut line = Vec::new();
            encoder().encode_record(original, &mut line);
            assert_eq!(&saved.json[..], &line[..]);
        }
    }

    #[test]
    fn a_plain_record_has_no_payload_and_a_bad_payload_is_an_error() {
        assert!(SavedPayload::parse(br#"{"version":"1.0"}"#)
            .unwrap()
            .is_none());
        assert!(SavedPayload::parse(br#"{"payload":{"Records":[{"kinesis":{}}]}}"#).is_err());
        assert!(SavedPayload::parse(br#"{"payload":{"Records":"x"}}"#).is_err());
        assert!(SavedPayload::parse(b"not json").is_err());
        assert_eq!(
            s3_object_body(&json!({}), b"{}"),
            br#"{"payload":{}}"#.to_vec()
        );
    }
}
