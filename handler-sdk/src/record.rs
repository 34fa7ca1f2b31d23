//! Reading a record: its payload as bytes, UTF-8 or JSON, with errors that name the
//! record.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::events::KinesisEventRecord;

/// Helpers to read a [`KinesisEventRecord`].
///
/// `data` arrives base64-encoded in Lambda's JSON and is already decoded by the time a
/// handler sees the record; these methods read it as text or JSON and, when that
/// fails, return a [`DataError`] that names the record's sequence number.
///
/// ```
/// use handler_sdk::events::KinesisEvent;
/// use handler_sdk::RecordExt;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let event: KinesisEvent = serde_json::from_str(r#"{"Records":[{
///     "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "key-1",
///                 "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
///                 "data": "eyJpZCI6MX0=", "approximateArrivalTimestamp": 1545084650.987},
///     "eventSource": "aws:kinesis", "eventVersion": "1.0",
///     "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
///     "eventName": "aws:kinesis:record", "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
///     "awsRegion": "us-east-1", "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"}]}"#)?;
/// let record = &event.records[0];
/// assert_eq!(record.data_utf8()?, r#"{"id":1}"#);
/// assert_eq!(record.partition_key(), "key-1");
/// assert_eq!(record.shard_id(), Some("shardId-000000000006"));
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
/// let order: Order = record.data_json()?;
/// assert_eq!(order.id, 1);
/// # Ok(())
/// # }
/// ```
pub trait RecordExt {
    /// The payload bytes (already base64-decoded).
    fn data_bytes(&self) -> &[u8];

    /// The record's sequence number: the `itemIdentifier` that reports it in
    /// `batchItemFailures`.
    fn sequence_number(&self) -> &str;

    /// The record's partition key.
    fn partition_key(&self) -> &str;

    /// The shard the record came from, taken from its `eventID`
    /// (`shardId-000000000006:4959…`); `None` when the event carries no `eventID`.
    fn shard_id(&self) -> Option<&str>;

    /// The payload as UTF-8 text.
    fn data_utf8(&self) -> Result<&str, DataError> {
        std::str::from_utf8(self.data_bytes())
            .map_err(|e| DataError::new(self.sequence_number(), DataErrorKind::NotUtf8(e)))
    }

    /// The payload parsed as JSON into `T`.
    ///
    /// The error tells data that is not JSON at all ([`DataErrorKind::NotJson`]) from
    /// JSON that does not fit `T` ([`DataErrorKind::UnexpectedJson`]).
    fn data_json<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        serde_json::from_slice(self.data_bytes())
            .map_err(|e| DataError::new(self.sequence_number(), DataErrorKind::from_json(e)))
    }
}

impl RecordExt for KinesisEventRecord {
    fn data_bytes(&self) -> &[u8] {
        &self.kinesis.data.0
    }

    fn sequence_number(&self) -> &str {
        &self.kinesis.sequence_number
    }

    fn partition_key(&self) -> &str {
        &self.kinesis.partition_key
    }

    fn shard_id(&self) -> Option<&str> {
        let event_id = self.event_id.as_deref()?;
        event_id
            .split_once(':')
            .map(|(shard, _)| shard)
            .filter(|shard| !shard.is_empty())
    }
}

/// A record's `data` could not be read as asked: the record's sequence number and why.
///
/// Its `Display` reads `record 4959…: data is not JSON: expected value at line 1
/// column 1`; `?` turns it into a handler [`Error`](crate::Error).
#[derive(Debug)]
pub struct DataError {
    sequence_number: String,
    kind: DataErrorKind,
}

/// Why a record's `data` could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataErrorKind {
    /// The data is not valid UTF-8.
    NotUtf8(std::str::Utf8Error),
    /// The data is not JSON (a syntax error, or it ends too early).
    NotJson(serde_json::Error),
    /// The data is JSON, but not of the shape asked for.
    UnexpectedJson(serde_json::Error),
}

impl DataErrorKind {
    fn from_json(error: serde_json::Error) -> Self {
        match error.classify() {
            serde_json::error::Category::Data => Self::UnexpectedJson(error),
            _ => Self::NotJson(error),
        }
    }
}

impl DataError {
    /// An error about the record with this sequence number.
    pub fn new(sequence_number: impl Into<String>, kind: DataErrorKind) -> Self {
        Self {
            sequence_number: sequence_number.into(),
            kind,
        }
    }

    /// The sequence number of the record whose data could not be read.
    pub fn sequence_number(&self) -> &str {
        &self.sequence_number
    }

    /// Why it could not be read.
    pub fn kind(&self) -> &DataErrorKind {
        &self.kind
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: ", self.sequence_number)?;
        match &self.kind {
            DataErrorKind::NotUtf8(e) => write!(f, "data is not UTF-8: {e}"),
            DataErrorKind::NotJson(e) => write!(f, "data is not JSON: {e}"),
            DataErrorKind::UnexpectedJson(e) => {
                write!(f, "data is JSON but not of the expected shape: {e}")
            }
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            DataErrorKind::NotUtf8(e) => Some(e),
            DataErrorKind::NotJson(e) | DataErrorKind::UnexpectedJson(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KinesisEvent;

    /// One record in Lambda's exact format, with `data` given as base64.
    fn record(event_id: &str, data_base64: &str) -> KinesisEventRecord {
        let json = format!(
            r#"{{"Records":[{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"key-7","sequenceNumber":"4959","data":"{data_base64}","approximateArrivalTimestamp":1545084650.987}},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"{event_id}","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}}]}}"#
        );
        let mut event: KinesisEvent = serde_json::from_str(&json).unwrap();
        event.records.remove(0)
    }

    #[test]
    fn reads_bytes_text_and_json() {
        let r = record("shardId-000000000003:4959", "eyJuIjoxfQ=="); // {"n":1}
        assert_eq!(r.data_bytes(), br#"{"n":1}"#);
        assert_eq!(r.data_utf8().unwrap(), r#"{"n":1}"#);
        let value: serde_json::Value = r.data_json().unwrap();
        assert_eq!(value["n"], 1);
        assert_eq!(r.sequence_number(), "4959");
        assert_eq!(r.partition_key(), "key-7");
        assert_eq!(r.shard_id(), Some("shardId-000000000003"));
    }

    #[test]
    fn shard_id_needs_an_event_id_with_a_colon() {
        assert_eq!(record("no-colon", "").shard_id(), None);
        assert_eq!(record(":4959", "").shard_id(), None);
        let mut r = record("shardId-0:1", "");
        r.event_id = None;
        assert_eq!(r.shard_id(), None);
    }

    #[test]
    fn not_utf8_names_the_record() {
        let r = record("shardId-0:4959", "//4="); // 0xff 0xfe
        let error = r.data_utf8().unwrap_err();
        assert_eq!(error.sequence_number(), "4959");
        assert!(matches!(error.kind(), DataErrorKind::NotUtf8(_)));
        assert!(
            error
                .to_string()
                .starts_with("record 4959: data is not UTF-8: "),
            "{error}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn not_json_and_unexpected_json_are_told_apart() {
        let text = record("shardId-0:4959", "aGVsbG8="); // hello
        let error = text.data_json::<serde_json::Value>().unwrap_err();
        assert!(matches!(error.kind(), DataErrorKind::NotJson(_)));
        assert_eq!(
            error.to_string(),
            "record 4959: data is not JSON: expected value at line 1 column 1"
        );

        let truncated = record("shardId-0:4959", "eyJuIjo="); // {"n":
        let error = truncated.data_json::<serde_json::Value>().unwrap_err();
        assert!(matches!(error.kind(), DataErrorKind::NotJson(_)));

        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Order {
            id: u64,
        }
        let other = record("shardId-0:4959", "eyJuIjoxfQ=="); // {"n":1}
        let error = other.data_json::<Order>().unwrap_err();
        assert!(matches!(error.kind(), DataErrorKind::UnexpectedJson(_)));
        assert_eq!(
            error.to_string(),
            "record 4959: data is JSON but not of the expected shape: missing field `id` at line 1 column 7"
        );
    }

    #[test]
    fn a_data_error_converts_into_a_handler_error() {
        fn read(r: &KinesisEventRecord) -> Result<String, crate::Error> {
            Ok(r.data_utf8()?.to_owned())
        }
        let error = read(&record("shardId-0:4959", "//4=")).unwrap_err();
        assert!(error.to_string().starts_with("record 4959:"));
    }
}
