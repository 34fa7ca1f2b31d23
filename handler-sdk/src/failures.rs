//! Reporting the records of a batch that failed (`batchItemFailures`).

use serde::{Deserialize, Deserializer, Serialize};

use crate::events::{KinesisEventRecord, KinesisEventResponse};
use crate::RecordExt;

/// The records of a batch that failed: a handler's response with partial batch
/// failures.
///
/// It serializes exactly as Lambda expects, `{"batchItemFailures":[{"itemIdentifier":
/// "SEQ"}, …]}`, and `{"batchItemFailures":[]}` when nothing failed (the whole batch
/// succeeded), so a handler can return it as it is. Failures keep the order they were
/// added in.
///
/// The event source mapping applies it only when the mapping has
/// `function_response_types = ["ReportBatchItemFailures"]`; without that the response
/// is ignored and the invocation counts as a success. With it, the checkpoint moves to
/// just before the **lowest** failed sequence number, and every record from there on
/// is delivered again: records after a failure are retried whether they were
/// reported or not. So on a stream the usual pattern is to stop at the first failure,
/// which also keeps the records of a shard in order:
///
/// ```
/// use handler_sdk::events::KinesisEvent;
/// use handler_sdk::{BatchItemFailures, Error, LambdaEvent, RecordExt};
///
/// async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<BatchItemFailures, Error> {
///     let mut failures = BatchItemFailures::new();
///     for record in &event.payload.records {
///         if let Err(error) = record.data_json::<serde_json::Value>() {
///             eprintln!("{error}");
///             failures.fail(record);
///             break; // the records after it come back in the retry
///         }
///     }
///     Ok(failures)
/// }
/// ```
///
/// Reporting every failed record is correct too (only the lowest one moves the
/// checkpoint), e.g. collected from an iterator:
///
/// ```
/// # use handler_sdk::events::KinesisEvent;
/// # use handler_sdk::{BatchItemFailures, RecordExt};
/// # fn report(event: &KinesisEvent) -> BatchItemFailures {
/// let failures: BatchItemFailures = event
///     .records
///     .iter()
///     .filter(|record| record.data_utf8().is_err())
///     .collect();
/// # failures
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemFailures {
    #[serde(default, deserialize_with = "null_as_empty")]
    batch_item_failures: Vec<BatchItemFailure>,
}

/// One entry of `batchItemFailures`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchItemFailure {
    item_identifier: String,
}

/// `"batchItemFailures": null` means none, as it does for Lambda.
fn null_as_empty<'de, D>(deserializer: D) -> Result<Vec<BatchItemFailure>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::deserialize(deserializer)?.unwrap_or_default())
}

impl BatchItemFailures {
    /// No failures: the whole batch succeeded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `record` as failed (by its sequence number).
    pub fn fail(&mut self, record: &KinesisEventRecord) -> &mut Self {
        self.fail_sequence_number(record.sequence_number())
    }

    /// Reports the record with this sequence number as failed.
    ///
    /// The sequence number must be one of this batch's: Lambda (and esm) fail the
    /// whole batch when an `itemIdentifier` is empty or names no record of it.
    pub fn fail_sequence_number(&mut self, sequence_number: impl Into<String>) -> &mut Self {
        self.batch_item_failures.push(BatchItemFailure {
            item_identifier: sequence_number.into(),
        });
        self
    }

    /// Whether nothing failed.
    pub fn is_empty(&self) -> bool {
        self.batch_item_failures.is_empty()
    }

    /// How many records were reported.
    pub fn len(&self) -> usize {
        self.batch_item_failures.len()
    }

    /// The reported sequence numbers, in the order they were added.
    pub fn sequence_numbers(&self) -> impl Iterator<Item = &str> + '_ {
        self.batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
    }

    /// The same failures as `aws_lambda_events`'s [`KinesisEventResponse`], which
    /// serializes identically.
    pub fn into_response(self) -> KinesisEventResponse {
        let mut response = KinesisEventResponse::default();
        response.set_failures(
            self.batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier),
        );
        response
    }
}

impl From<BatchItemFailures> for KinesisEventResponse {
    fn from(failures: BatchItemFailures) -> Self {
        failures.into_response()
    }
}

impl<'a> FromIterator<&'a KinesisEventRecord> for BatchItemFailures {
    fn from_iter<I: IntoIterator<Item = &'a KinesisEventRecord>>(records: I) -> Self {
        let mut failures = Self::new();
        failures.extend(records);
        failures
    }
}

impl<'a> Extend<&'a KinesisEventRecord> for BatchItemFailures {
    fn extend<I: IntoIterator<Item = &'a KinesisEventRecord>>(&mut self, records: I) {
        for record in records {
            self.fail(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KinesisEvent;

    fn event(sequence_numbers: &[&str]) -> KinesisEvent {
        let records: Vec<String> = sequence_numbers
            .iter()
            .map(|seq| {
                format!(
                    r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"k","sequenceNumber":"{seq}","data":"","approximateArrivalTimestamp":1545084650.987}},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:{seq}","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}}"#
                )
            })
            .collect();
        serde_json::from_str(&format!(r#"{{"Records":[{}]}}"#, records.join(","))).unwrap()
    }

    #[test]
    fn nothing_failed_serializes_as_an_empty_list() {
        let failures = BatchItemFailures::new();
        assert!(failures.is_empty());
        assert_eq!(
            serde_json::to_string(&failures).unwrap(),
            r#"{"batchItemFailures":[]}"#
        );
    }

    #[test]
    fn failures_serialize_exactly_as_lambda_expects() {
        let event = event(&["100", "200", "300"]);
        let mut failures = BatchItemFailures::new();
        failures.fail(&event.records[1]).fail_sequence_number("300");
        assert_eq!(failures.len(), 2);
        assert_eq!(
            failures.sequence_numbers().collect::<Vec<_>>(),
            ["200", "300"]
        );
        assert_eq!(
            serde_json::to_string(&failures).unwrap(),
            r#"{"batchItemFailures":[{"itemIdentifier":"200"},{"itemIdentifier":"300"}]}"#
        );
    }

    #[test]
    fn collects_and_extends_from_records() {
        let event = event(&["1", "2", "3", "4"]);
        let mut failures: BatchItemFailures = event.records.iter().skip(2).collect();
        assert_eq!(failures.sequence_numbers().collect::<Vec<_>>(), ["3", "4"]);
        failures.extend(event.records.first());
        assert_eq!(
            failures.sequence_numbers().collect::<Vec<_>>(),
            ["3", "4", "1"]
        );
    }

    #[test]
    fn converts_to_the_aws_lambda_events_response_which_serializes_the_same() {
        let event = event(&["49590338271490256608559692538361571095921575989136588898"]);
        let failures: BatchItemFailures = event.records.iter().collect();
        let ours = serde_json::to_string(&failures).unwrap();
        let response: KinesisEventResponse = failures.into();
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(serde_json::to_string(&response).unwrap(), ours);
        assert_eq!(
            ours,
            r#"{"batchItemFailures":[{"itemIdentifier":"49590338271490256608559692538361571095921575989136588898"}]}"#
        );
        let empty: KinesisEventResponse = BatchItemFailures::new().into();
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"batchItemFailures":[]}"#
        );
    }

    #[test]
    fn reads_lambdas_spellings_of_no_failures() {
        for body in [
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
            "{}",
        ] {
            let failures: BatchItemFailures = serde_json::from_str(body).unwrap();
            assert!(failures.is_empty(), "{body}");
        }
        let failures: BatchItemFailures =
            serde_json::from_str(r#"{"batchItemFailures":[{"itemIdentifier":"7"}]}"#).unwrap();
        assert_eq!(failures.sequence_numbers().collect::<Vec<_>>(), ["7"]);
    }
}
