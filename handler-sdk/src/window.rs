//! Tumbling windows: Lambda's Kinesis event with a window and typed state, and the
//! `{"state": …, "batchItemFailures": […]}` response.
//!
//! With `tumbling_window_in_seconds` set on a mapping, Lambda groups a shard's records
//! into windows of that many seconds and invokes the function several times per
//! window, passing the `state` the previous invocation of the window returned (`{}`
//! at each window's start). The last invocation of a window has
//! `isFinalInvokeForWindow: true`; it is where a handler acts on the aggregate.
//!
//! [`KinesisWindowEvent<S>`] reads that event with `state` deserialized into your own
//! type `S`, and [`KinesisWindowResponse<S>`] writes the response:
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use handler_sdk::window::{KinesisWindowEvent, KinesisWindowResponse};
//! use handler_sdk::{Error, LambdaEvent, RecordExt};
//!
//! /// Records per partition key, carried across the invocations of a window.
//! type Counts = BTreeMap<String, u64>;
//!
//! async fn handle(
//!     event: LambdaEvent<KinesisWindowEvent<Counts>>,
//! ) -> Result<KinesisWindowResponse<Counts>, Error> {
//!     let event = event.payload;
//!     let mut counts = event.state.clone();
//!     for record in &event.records {
//!         *counts.entry(record.partition_key().to_owned()).or_default() += 1;
//!     }
//!     if event.ends_window() {
//!         println!("window totals: {counts:?}");
//!     }
//!     Ok(KinesisWindowResponse::new(counts))
//! }
//! ```
//!
//! `aws_lambda_events` has [`KinesisTimeWindowEvent`] too, but its `state` is a
//! `HashMap<String, String>`: it cannot read state whose values are numbers or objects
//! (such as the `{"1": 282, "2": 715}` of Lambda's own documentation), and its
//! response type has no `batchItemFailures`. Convert one with
//! [`KinesisWindowEvent::try_from`] if you already have it.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::events::{KinesisEventRecord, KinesisTimeWindowEvent, Window};
use crate::BatchItemFailures;

/// Lambda's Kinesis event for a mapping with a tumbling window, with `state` read into
/// `S`.
///
/// The JSON is Lambda's: `Records` as in a plain Kinesis event, plus `shardId`,
/// `eventSourceARN`, `window: {start, end}` (RFC 3339), `state`,
/// `isFinalInvokeForWindow` and `isWindowTerminatedEarly`.
///
/// `state` is `{}` at each window's start; an absent, `null` or empty `state` reads as
/// `S::default()`, anything else is deserialized into `S` (a state that does not fit
/// `S` fails the invocation with a deserialization error). `S` defaults to a JSON
/// object, for handlers that want the state untyped.
///
/// A plain Kinesis event (a mapping without a tumbling window) reads too: no `window`,
/// default state, both flags false. [`ends_window`](Self::ends_window) then treats each
/// invocation as a window of its own, so a windowed handler also runs, one batch at a
/// time, where windows are not configured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(
    serialize = "S: Serialize",
    deserialize = "S: DeserializeOwned + Default"
))]
pub struct KinesisWindowEvent<S = Map<String, Value>> {
    /// The records of this invocation (the final invocation of a window may have none).
    #[serde(rename = "Records", default)]
    pub records: Vec<KinesisEventRecord>,
    /// The shard the records come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<String>,
    /// The stream's ARN.
    #[serde(
        rename = "eventSourceARN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub event_source_arn: Option<String>,
    /// The window the records belong to; `None` when the mapping has no tumbling window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The state the previous invocation of this window returned (`S::default()` at the
    /// window's start).
    #[serde(default, deserialize_with = "state_or_default")]
    pub state: S,
    /// This is the last invocation of the window: act on the aggregate now. The next
    /// invocation starts a new window with fresh state.
    #[serde(default)]
    pub is_final_invoke_for_window: bool,
    /// The window was ended early, because the state grew past Lambda's 1 MB limit; the
    /// next invocation continues the same window with fresh state.
    #[serde(default)]
    pub is_window_terminated_early: bool,
}

/// Reads a window's `state` JSON (the value of the event's `state` field) into `S`, as
/// [`KinesisWindowEvent`] reads it: `null` or `{}` is `S::default()`, anything else is
/// deserialized into `S`. esm uses it to hand an in-process handler its event without
/// writing the rest of it as JSON.
pub fn read_state<S: DeserializeOwned + Default>(json: &[u8]) -> Result<S, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let state = state_or_default(&mut deserializer)?;
    deserializer.end()?;
    Ok(state)
}

/// An absent, `null` or empty state is `S::default()`; other state is read into `S`.
fn state_or_default<'de, D, S>(deserializer: D) -> Result<S, D::Error>
where
    D: Deserializer<'de>,
    S: DeserializeOwned + Default,
{
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(S::default()),
        Some(Value::Object(map)) if map.is_empty() => Ok(S::default()),
        Some(value) => S::deserialize(value).map_err(|e| D::Error::custom(format!("state: {e}"))),
    }
}

impl<S> KinesisWindowEvent<S> {
    /// Whether the window's aggregate is due after this invocation: it is the final
    /// invocation of the window, or the window was terminated early, or the mapping has
    /// no tumbling window (`window` is absent), so that each invocation is a window of
    /// its own.
    pub fn ends_window(&self) -> bool {
        self.is_final_invoke_for_window || self.is_window_terminated_early || self.window.is_none()
    }
}

impl<S> TryFrom<KinesisTimeWindowEvent> for KinesisWindowEvent<S>
where
    S: DeserializeOwned + Default,
{
    type Error = serde_json::Error;

    /// Reads `aws_lambda_events`'s window event, its string-to-string `state` into `S`
    /// (an empty state is `S::default()`).
    fn try_from(event: KinesisTimeWindowEvent) -> Result<Self, Self::Error> {
        let properties = event.time_window_properties;
        let state = if properties.state.is_empty() {
            S::default()
        } else {
            serde_json::from_value(serde_json::to_value(properties.state)?)?
        };
        Ok(Self {
            records: event.kinesis_event.records,
            shard_id: properties.shard_id,
            event_source_arn: properties.event_source_arn,
            window: Some(properties.window),
            state,
            is_final_invoke_for_window: properties.is_final_invoke_for_window,
            is_window_terminated_early: properties.is_window_terminated_early,
        })
    }
}

/// A windowed handler's response: the `state` to pass to the window's next invocation,
/// and the records that failed.
///
/// Serializes as `{"state": {…}, "batchItemFailures": […]}`. Lambda requires `state`
/// (a response without it is a failed invocation) and expects a JSON object, so `S`
/// should serialize as one (a map or a struct). Keep it under 1 MB: a larger state
/// ends the window early. `batchItemFailures` works as in [`BatchItemFailures`] and
/// needs `function_response_types = ["ReportBatchItemFailures"]` on the mapping.
/// With item failures the records from the first failed one on are invoked again,
/// with the `state` this response returns: so return the state that counts only the
/// records before the first failure you report (esm's rule; Lambda's documentation
/// leaves the case open).
///
/// ```
/// use std::collections::BTreeMap;
///
/// use handler_sdk::window::KinesisWindowResponse;
///
/// let mut state = BTreeMap::new();
/// state.insert("key-1", 3);
/// let response = KinesisWindowResponse::new(state);
/// assert_eq!(
///     serde_json::to_string(&response).unwrap(),
///     r#"{"state":{"key-1":3},"batchItemFailures":[]}"#
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KinesisWindowResponse<S> {
    /// The state for the window's next invocation.
    pub state: S,
    /// The records of this invocation that failed.
    #[serde(flatten)]
    pub batch_item_failures: BatchItemFailures,
}

impl<S> KinesisWindowResponse<S> {
    /// A response carrying `state`, with no failed records.
    pub fn new(state: S) -> Self {
        Self {
            state,
            batch_item_failures: BatchItemFailures::new(),
        }
    }

    /// The same response, reporting `failures`.
    pub fn with_failures(mut self, failures: BatchItemFailures) -> Self {
        self.batch_item_failures = failures;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::RecordExt;

    /// The example event of Lambda's documentation ("Tumbling windows", Kinesis).
    const LAMBDA_DOCS_EVENT: &str = r#"{
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
                    "approximateArrivalTimestamp": 1607497475.000
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-kinesis-role",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream"
            }
        ],
        "window": {
            "start": "2020-12-09T07:04:00Z",
            "end": "2020-12-09T07:06:00Z"
        },
        "state": {
            "1": 282,
            "2": 715
        },
        "shardId": "shardId-000000000006",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
        "isFinalInvokeForWindow": false,
        "isWindowTerminatedEarly": false
    }"#;

    type Counts = BTreeMap<String, u64>;

    #[test]
    fn reads_lambdas_documented_event_with_typed_state() {
        let event: KinesisWindowEvent<Counts> = serde_json::from_str(LAMBDA_DOCS_EVENT).unwrap();
        assert_eq!(event.records.len(), 1);
        assert_eq!(
            event.records[0].data_utf8().unwrap(),
            "Hello, this is a test."
        );
        assert_eq!(event.state["1"], 282);
        assert_eq!(event.state["2"], 715);
        assert_eq!(event.shard_id.as_deref(), Some("shardId-000000000006"));
        assert_eq!(
            event.event_source_arn.as_deref(),
            Some("arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream")
        );
        let window = event.window.as_ref().unwrap();
        assert_eq!(window.start.to_rfc3339(), "2020-12-09T07:04:00+00:00");
        assert_eq!(window.end.to_rfc3339(), "2020-12-09T07:06:00+00:00");
        assert!(!event.is_final_invoke_for_window);
        assert!(!event.is_window_terminated_early);
        assert!(!event.ends_window());
    }

    #[test]
    fn aws_lambda_events_cannot_read_that_event() {
        // Why this module exists: its `state` is `HashMap<String, String>`.
        assert!(serde_json::from_str::<KinesisTimeWindowEvent>(LAMBDA_DOCS_EVENT).is_err());
    }

    #[test]
    fn untyped_state_is_a_json_object() {
        let event: KinesisWindowEvent = serde_json::from_str(LAMBDA_DOCS_EVENT).unwrap();
        assert_eq!(event.state["2"], 715);
    }

    #[test]
    fn empty_null_or_absent_state_is_the_default() {
        #[derive(Debug, Default, PartialEq, Deserialize)]
        struct Sum {
            total: u64,
            keys: Vec<String>,
        }
        for state in [r#""state":{},"#, r#""state":null,"#, ""] {
            let json = format!(
                r#"{{"Records":[],"window":{{"start":"2020-12-09T07:04:00Z","end":"2020-12-09T07:06:00Z"}},{state}"isFinalInvokeForWindow":true,"isWindowTerminatedEarly":false}}"#
            );
            let event: KinesisWindowEvent<Sum> = serde_json::from_str(&json).unwrap();
            assert_eq!(event.state, Sum::default(), "{json}");
            assert!(event.ends_window());
        }
        let json = r#"{"Records":[],"state":{"total":3,"keys":["a"]}}"#;
        let event: KinesisWindowEvent<Sum> = serde_json::from_str(json).unwrap();
        assert_eq!(event.state.total, 3);
    }

    #[test]
    fn state_of_the_wrong_shape_is_an_error() {
        let json = r#"{"Records":[],"state":{"k":"not a number"}}"#;
        let error = serde_json::from_str::<KinesisWindowEvent<Counts>>(json).unwrap_err();
        assert!(
            error.to_string().starts_with("state: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn a_plain_kinesis_event_is_a_window_of_its_own() {
        let json = r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k","sequenceNumber":"1","data":"","approximateArrivalTimestamp":1545084650.987},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:1","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}]}"#;
        let event: KinesisWindowEvent<Counts> = serde_json::from_str(json).unwrap();
        assert_eq!(event.records.len(), 1);
        assert!(event.window.is_none());
        assert!(event.state.is_empty());
        assert!(event.ends_window());
    }

    #[test]
    fn terminated_early_ends_the_window() {
        let json = r#"{"Records":[],"window":{"start":"2020-12-09T07:04:00Z","end":"2020-12-09T07:06:00Z"},"state":{},"isFinalInvokeForWindow":false,"isWindowTerminatedEarly":true}"#;
        let event: KinesisWindowEvent<Counts> = serde_json::from_str(json).unwrap();
        assert!(event.ends_window());
    }

    #[test]
    fn response_serializes_state_then_failures() {
        let mut counts = Counts::new();
        counts.insert("1".into(), 283);
        let response = KinesisWindowResponse::new(counts.clone());
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"state":{"1":283},"batchItemFailures":[]}"#
        );
        let mut failures = BatchItemFailures::new();
        failures.fail_sequence_number("4959");
        let response = KinesisWindowResponse::new(counts).with_failures(failures);
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"state":{"1":283},"batchItemFailures":[{"itemIdentifier":"4959"}]}"#
        );
        let back: KinesisWindowResponse<Counts> =
            serde_json::from_str(&serde_json::to_string(&response).unwrap()).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn empty_state_still_serializes() {
        let response = KinesisWindowResponse::new(Counts::new());
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"state":{},"batchItemFailures":[]}"#
        );
    }

    #[test]
    fn converts_from_aws_lambda_events() {
        let json = r#"{"Records":[],"window":{"start":"2020-12-09T07:04:00Z","end":"2020-12-09T07:06:00Z"},"state":{"last":"4959"},"shardId":"shardId-000000000001","isFinalInvokeForWindow":true,"isWindowTerminatedEarly":false}"#;
        let aws: KinesisTimeWindowEvent = serde_json::from_str(json).unwrap();
        let event: KinesisWindowEvent<HashMap<String, String>> = aws.clone().try_into().unwrap();
        assert_eq!(event.state["last"], "4959");
        assert_eq!(event.shard_id.as_deref(), Some("shardId-000000000001"));
        assert!(event.is_final_invoke_for_window);
        assert!(event.window.is_some());

        #[derive(Debug, Default, Deserialize)]
        struct Last {
            last: String,
        }
        let typed: KinesisWindowEvent<Last> = aws.clone().try_into().unwrap();
        assert_eq!(typed.state.last, "4959");
        assert!(KinesisWindowEvent::<Counts>::try_from(aws).is_err());
    }

    #[test]
    fn the_event_round_trips() {
        let event: KinesisWindowEvent<Counts> = serde_json::from_str(LAMBDA_DOCS_EVENT).unwrap();
        let json = serde_json::to_string(&event).unwrap();
        let back: KinesisWindowEvent<Counts> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }
}
