//! The Lambda event for a batch of Kinesis records, written as bytes.
//!
//! This is the hot path: every record is written once, straight into a buffer the
//! caller reuses, with the fields that are the same for every record of a shard
//! (event source ARN, region, identity, shard id) escaped once up front. The byte
//! layout is exactly Lambda's (SPEC §3), so a handler written for Lambda reads it with
//! `aws_lambda_events::kinesis::KinesisEvent` unchanged.
//!
//! [`EventEncoder::record_len`] computes the exact size a record adds to the event
//! without writing it, so the batcher can honour the 6 MB cap before any byte is
//! written; a property test holds the two together.

use std::ops::Range;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;

use super::record::Record;
use super::window::WindowBounds;

/// Lambda's cap on a synchronous invocation payload: 6 MB (6 × 2²⁰ bytes).
pub const MAX_EVENT_BYTES: usize = 6 * 1024 * 1024;

const EVENT_HEAD: &[u8] = br#"{"Records":["#;
const EVENT_TAIL: &[u8] = b"]}";
const RECORD_HEAD: &[u8] = br#"{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":""#;
const AFTER_KEY: &[u8] = br#"","sequenceNumber":""#;
const AFTER_SEQ: &[u8] = br#"","data":""#;
const AFTER_DATA: &[u8] = br#"","approximateArrivalTimestamp":"#;
const AFTER_TS: &[u8] = br#"},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":""#;

/// Where the records come from: the per-shard constants of every event record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSource {
    /// The stream ARN (`eventSourceARN`).
    pub stream_arn: String,
    /// The stream's region (`awsRegion`).
    pub region: String,
    /// The identity the function is invoked with (`invokeIdentityArn`).
    pub invoke_identity_arn: String,
    /// The shard the records come from (`eventID` is `shardId:sequenceNumber`).
    pub shard_id: String,
}

/// The fields a tumbling window adds to an event, after `Records`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowFields {
    /// The window.
    pub bounds: WindowBounds,
    /// The state, compact JSON (an object).
    pub state: Bytes,
    /// `isFinalInvokeForWindow`.
    pub is_final: bool,
    /// `isWindowTerminatedEarly`.
    pub terminated_early: bool,
}

/// Writes Lambda Kinesis events for one shard. Cloning it is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub struct EventEncoder {
    prepared: Arc<Prepared>,
}

/// The per-shard parts of every event, escaped once.
#[derive(Debug)]
struct Prepared {
    /// The shard's constants, as given.
    source: EventSource,
    /// `shardId:` escaped, the start of each `eventID`.
    event_id_prefix: Vec<u8>,
    /// Everything after the `eventID` value up to the end of the record object.
    record_tail: Vec<u8>,
    /// `,"shardId":"…","eventSourceARN":"…"`, the fixed part of a window's fields.
    window_ids: Vec<u8>,
}

impl EventEncoder {
    /// Prepares an encoder for records of one shard.
    pub fn new(source: &EventSource) -> Self {
        let mut event_id_prefix = Vec::new();
        write_escaped(&mut event_id_prefix, &source.shard_id);
        event_id_prefix.push(b':');
        let mut record_tail = Vec::new();
        record_tail
            .extend_from_slice(br#"","eventName":"aws:kinesis:record","invokeIdentityArn":""#);
        write_escaped(&mut record_tail, &source.invoke_identity_arn);
        record_tail.extend_from_slice(br#"","awsRegion":""#);
        write_escaped(&mut record_tail, &source.region);
        record_tail.extend_from_slice(br#"","eventSourceARN":""#);
        write_escaped(&mut record_tail, &source.stream_arn);
        record_tail.extend_from_slice(br#""}"#);
        let mut window_ids = Vec::new();
        window_ids.extend_from_slice(br#","shardId":""#);
        write_escaped(&mut window_ids, &source.shard_id);
        window_ids.extend_from_slice(br#"","eventSourceARN":""#);
        write_escaped(&mut window_ids, &source.stream_arn);
        window_ids.push(b'"');
        Self {
            prepared: Arc::new(Prepared {
                source: source.clone(),
                event_id_prefix,
                record_tail,
                window_ids,
            }),
        }
    }

    /// The shard's constants the events carry.
    pub fn source(&self) -> &EventSource {
        &self.prepared.source
    }

    /// The bytes a tumbling window's fields add to an event.
    pub fn window_fields_len(&self, fields: &WindowFields) -> usize {
        let mut out = Vec::new();
        self.write_window_fields(fields, &mut out);
        out.len()
    }

    /// Writes the event for `records` in a tumbling window into `out` (cleared first):
    /// `Records`, then `window`, `state`, `shardId`, `eventSourceARN`,
    /// `isFinalInvokeForWindow` and `isWindowTerminatedEarly`, as Lambda writes them.
    pub fn encode_windowed<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
        fields: &WindowFields,
        out: &mut Vec<u8>,
    ) {
        self.encode(records, out);
        // Re-open the event object after `Records` to add the window's fields.
        out.truncate(out.len() - 1);
        self.write_window_fields(fields, out);
        out.push(b'}');
    }

    /// `,"window":{…},"state":…,"shardId":…,…,"isWindowTerminatedEarly":…`
    fn write_window_fields(&self, fields: &WindowFields, out: &mut Vec<u8>) {
        let time = |t: &chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        };
        out.extend_from_slice(br#","window":{"start":""#);
        out.extend_from_slice(time(&fields.bounds.start).as_bytes());
        out.extend_from_slice(br#"","end":""#);
        out.extend_from_slice(time(&fields.bounds.end).as_bytes());
        out.extend_from_slice(br#""},"state":"#);
        out.extend_from_slice(&fields.state);
        out.extend_from_slice(&self.prepared.window_ids);
        out.extend_from_slice(br#","isFinalInvokeForWindow":"#);
        out.extend_from_slice(json_bool(fields.is_final));
        out.extend_from_slice(br#","isWindowTerminatedEarly":"#);
        out.extend_from_slice(json_bool(fields.terminated_early));
    }

    /// The size of an event holding no records.
    pub const fn empty_event_len() -> usize {
        EVENT_HEAD.len() + EVENT_TAIL.len()
    }

    /// The exact number of bytes `record` adds to an event, not counting the comma
    /// that separates it from the record before.
    pub fn record_len(&self, record: &Record) -> usize {
        let seq = record.sequence().as_str().len();
        RECORD_HEAD.len()
            + escaped_len(&record.partition_key)
            + AFTER_KEY.len()
            + seq
            + AFTER_SEQ.len()
            + base64_len(record.data.len())
            + AFTER_DATA.len()
            + timestamp_len(record.approximate_arrival.timestamp_millis())
            + AFTER_TS.len()
            + self.prepared.event_id_prefix.len()
            + seq
            + self.prepared.record_tail.len()
    }

    /// The exact size of the event for `records`.
    pub fn event_len<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> usize {
        let mut len = Self::empty_event_len();
        for (i, record) in records.into_iter().enumerate() {
            len += self.record_len(record) + usize::from(i > 0);
        }
        len
    }

    /// Writes the event for `records` into `out` (cleared first).
    pub fn encode<'a>(&self, records: impl IntoIterator<Item = &'a Record>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(EVENT_HEAD);
        for (i, record) in records.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_record(record, out);
        }
        out.extend_from_slice(EVENT_TAIL);
    }

    /// Appends the one JSON object Lambda puts in `Records` for `record`, exactly
    /// as [`EventEncoder::encode`] writes it inside an event (used by `esm replay
    /// --out` to write records one per line).
    pub fn encode_record(&self, record: &Record, out: &mut Vec<u8>) {
        self.write_record(record, out);
    }

    fn write_record(&self, record: &Record, out: &mut Vec<u8>) {
        let seq = record.sequence().as_str().as_bytes();
        out.extend_from_slice(RECORD_HEAD);
        write_escaped(out, &record.partition_key);
        out.extend_from_slice(AFTER_KEY);
        out.extend_from_slice(seq);
        out.extend_from_slice(AFTER_SEQ);
        let start = out.len();
        out.resize(start + base64_len(record.data.len()), 0);
        // The slice is sized exactly for the encoding, so this cannot fail.
        let written = BASE64
            .encode_slice(&record.data, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(AFTER_DATA);
        write_timestamp(out, record.approximate_arrival.timestamp_millis());
        out.extend_from_slice(AFTER_TS);
        out.extend_from_slice(&self.prepared.event_id_prefix);
        out.extend_from_slice(seq);
        out.extend_from_slice(&self.prepared.record_tail);
    }
}

/// One invocation's event, not yet written: the records and, in a tumbling window,
/// the window's fields.
///
/// An invoker that needs bytes (the Runtime API, a handler that reads JSON) writes it
/// with [`BatchEvent::to_json`]; an in-process handler that takes Lambda's event type
/// is handed a value built straight from [`BatchEvent::records`], and no JSON is
/// written at all. Either way [`BatchEvent::len`] is the exact size of the JSON, which
/// is what the 6 MB cap and the memory budget count.
#[derive(Clone, Debug)]
pub struct BatchEvent {
    encoder: EventEncoder,
    /// The batch's records (shared with the lane, not copied).
    batch: Arc<[Record]>,
    /// This invocation's part of the batch.
    range: Range<usize>,
    window: Option<WindowFields>,
    len: usize,
}

impl BatchEvent {
    /// The event for `batch[range]`, with a tumbling window's fields. `records_len`
    /// is the exact size of the event for those records without the window's fields,
    /// when the caller knows it already ([`EventEncoder::event_len`]); otherwise it is
    /// computed.
    pub fn new(
        encoder: EventEncoder,
        batch: Arc<[Record]>,
        range: Range<usize>,
        window: Option<WindowFields>,
        records_len: Option<usize>,
    ) -> Self {
        let records_len = records_len.unwrap_or_else(|| encoder.event_len(&batch[range.clone()]));
        let len = records_len
            + window
                .as_ref()
                .map_or(0, |fields| encoder.window_fields_len(fields));
        Self {
            encoder,
            batch,
            range,
            window,
            len,
        }
    }

    /// The event of `records` (no window), for callers that hold them in a `Vec`.
    pub fn of_records(encoder: EventEncoder, records: Vec<Record>) -> Self {
        let range = 0..records.len();
        Self::new(encoder, records.into(), range, None, None)
    }

    /// The exact size of the event's JSON.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the event has no records.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The records, in shard order.
    pub fn records(&self) -> &[Record] {
        &self.batch[self.range.clone()]
    }

    /// The tumbling window's fields, if the mapping has windows.
    pub fn window(&self) -> Option<&WindowFields> {
        self.window.as_ref()
    }

    /// The shard's constants (stream ARN, region, identity, shard id).
    pub fn source(&self) -> &EventSource {
        self.encoder.source()
    }

    /// Writes the event's JSON into `out` (cleared first), exactly as Lambda does.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.window {
            Some(fields) => self.encoder.encode_windowed(self.records(), fields, out),
            None => self.encoder.encode(self.records(), out),
        }
    }

    /// The event's JSON, exactly as Lambda sends it.
    pub fn to_json(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        self.write_json(&mut out);
        Bytes::from(out)
    }
}

fn json_bool(b: bool) -> &'static [u8] {
    if b {
        b"true"
    } else {
        b"false"
    }
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Epoch seconds with a millisecond fraction, as Lambda writes `approximateArrivalTimestamp`.
fn write_timestamp(out: &mut Vec<u8>, millis: i64) {
    use std::io::Write as _;
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{secs}.{ms:03}");
}

fn timestamp_len(millis: i64) -> usize {
    let secs = millis.div_euclid(1000);
    let digits = if secs == 0 {
        1
    } else {
        secs.unsigned_abs().ilog10() as usize + 1
    };
    usize::from(secs < 0) + digits + 4
}

/// The JSON escape of one character, or `None` when it is written as is.
fn escape_of(c: char) -> Option<&'static str> {
    Some(match c {
        '"' => "\\\"",
        '\\' => "\\\\",
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        '\u{08}' => "\\b",
        '\u{0c}' => "\\f",
        c if (c as u32) < 0x20 => "\\u00",
        _ => return None,
    })
}

fn write_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for c in s.chars() {
        match escape_of(c) {
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some("\\u00") => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            Some(esc) => out.extend_from_slice(esc.as_bytes()),
        }
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match escape_of(c) {
            None => c.len_utf8(),
            Some("\\u00") => 6,
            Some(esc) => esc.len(),
        })
        .sum()
}

/// Records and a shard for tests of the event, written here once.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::core::record::{Position, SequenceNumber};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    pub(crate) fn source() -> EventSource {
        EventSource {
            stream_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/orders".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/esm".into(),
            shard_id: "shardId-000000000001".into(),
        }
    }

    pub(crate) fn record(seq: &str, key: &str, data: &[u8], millis: i64) -> Record {
        Record {
            position: Position::plain(SequenceNumber::parse(seq).unwrap()),
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::copy_from_slice(data),
            approximate_arrival: Utc.timestamp_millis_opt(millis).unwrap(),
        }
    }

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        (
            "[1-9][0-9]{0,60}",
            "\\PC{1,40}|[\\x00-\\x1f\"\\\\a-z]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..300),
            0i64..5_000_000_000_000i64,
        )
            .prop_map(|(seq, key, data, millis)| record(&seq, &key, &data, millis))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use chrono::TimeZone;
    use handler_sdk::events::KinesisEvent;
    use proptest::prelude::*;

    #[test]
    fn encode_record_is_the_records_object_of_the_event() {
        let enc = EventEncoder::new(&source());
        let r = record(
            "49590338271490256608559692538361571095921575989136588898",
            "k\"1",
            b"hi\n",
            1_700_000_000_123,
        );
        let mut event = Vec::new();
        enc.encode([&r], &mut event);
        let mut one = Vec::new();
        enc.encode_record(&r, &mut one);
        let mut expected = EVENT_HEAD.to_vec();
        expected.extend_from_slice(&one);
        expected.extend_from_slice(EVENT_TAIL);
        assert_eq!(event, expected);
        assert_eq!(one.len(), enc.record_len(&r));
    }

    #[test]
    fn writes_lambdas_exact_layout() {
        let enc = EventEncoder::new(&source());
        let mut out = Vec::new();
        enc.encode([&record("123", "k\"1", b"hi", 1_545_084_650_987)], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k\"1","#,
                r#""sequenceNumber":"123","data":"aGk=","approximateArrivalTimestamp":1545084650.987},"#,
                r#""eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000001:123","#,
                r#""eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","#,
                r#""awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/orders"}]}"#
            )
        );
    }

    #[test]
    fn empty_event_is_valid_json() {
        let mut out = Vec::new();
        EventEncoder::new(&source()).encode([], &mut out);
        assert_eq!(out, br#"{"Records":[]}"#);
        assert_eq!(out.len(), EventEncoder::empty_event_len());
    }

    proptest! {
        #[test]
        fn length_is_exact_and_handlers_read_it_back(records in proptest::collection::vec(arb_record(), 0..8)) {
            let enc = EventEncoder::new(&source());
            let mut out = Vec::new();
            enc.encode(&records, &mut out);
            prop_assert_eq!(out.len(), enc.event_len(&records));
            let event: KinesisEvent = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(event.records.len(), records.len());
            // The arrival time as a JSON number (aws_lambda_events' own parser drops a
            // trailing zero of the fraction: .530 reads as .053, for Lambda's bytes too).
            let raw: serde_json::Value = serde_json::from_slice(&out).unwrap();
            for (got, want) in raw["Records"].as_array().unwrap().iter().zip(&records) {
                let secs = got["kinesis"]["approximateArrivalTimestamp"].as_f64().unwrap();
                prop_assert_eq!((secs * 1000.0).round() as i64, want.approximate_arrival.timestamp_millis());
            }
            for (got, want) in event.records.iter().zip(&records) {
                prop_assert_eq!(&got.kinesis.partition_key, &want.partition_key);
                prop_assert_eq!(got.kinesis.sequence_number.as_str(), want.sequence().as_str());
                prop_assert_eq!(&got.kinesis.data.0[..], &want.data[..]);
                let event_id = format!("shardId-000000000001:{}", want.sequence());
                prop_assert_eq!(got.event_id.as_deref(), Some(event_id.as_str()));
            }
        }
    }

    proptest! {
        /// A windowed event reads back with the handler SDK's window type and with
        /// `aws_lambda_events`' own, and `window_fields_len` is exact.
        #[test]
        fn windowed_events_read_back(
            records in proptest::collection::vec(arb_record(), 0..4),
            start in 0i64..4_000_000_000,
            is_final: bool,
            terminated_early: bool,
            value in "[a-z\"\\\\]{0,8}",
        ) {
            use crate::core::window::Tumbling;
            let enc = EventEncoder::new(&source());
            let bounds = Tumbling::new(std::time::Duration::from_secs(60))
                .unwrap()
                .window_of(chrono::Utc.timestamp_opt(start, 0).unwrap());
            let state = serde_json::to_vec(&serde_json::json!({ "k": value })).unwrap();
            let fields = WindowFields { bounds, state: Bytes::from(state), is_final, terminated_early };
            let mut out = Vec::new();
            enc.encode_windowed(&records, &fields, &mut out);
            prop_assert_eq!(out.len(), enc.event_len(&records) + enc.window_fields_len(&fields));
            let event: handler_sdk::window::KinesisWindowEvent<std::collections::BTreeMap<String, String>> =
                serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(event.records.len(), records.len());
            let window = event.window.unwrap();
            prop_assert_eq!(window.start, bounds.start);
            prop_assert_eq!(window.end, bounds.end);
            prop_assert_eq!(event.state.get("k").cloned(), Some(value.clone()));
            prop_assert_eq!(event.shard_id.as_deref(), Some("shardId-000000000001"));
            prop_assert_eq!(event.is_final_invoke_for_window, is_final);
            prop_assert_eq!(event.is_window_terminated_early, terminated_early);
            let theirs: handler_sdk::events::KinesisTimeWindowEvent =
                serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(theirs.time_window_properties.is_final_invoke_for_window, is_final);
            prop_assert_eq!(theirs.time_window_properties.state.get("k").cloned(), Some(value));
        }
    }

    #[test]
    fn timestamp_digits() {
        for millis in [
            0i64,
            999,
            1000,
            9_999,
            10_000,
            1_545_084_650_987,
            -1,
            -1000,
            -1001,
        ] {
            let mut out = Vec::new();
            write_timestamp(&mut out, millis);
            assert_eq!(out.len(), timestamp_len(millis), "{millis}");
        }
    }
}
