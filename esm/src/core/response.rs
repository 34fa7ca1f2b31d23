//! What a function's response says about its batch, with `ReportBatchItemFailures`.
//!
//! Lambda's rules (SPEC §3, recorded against AWS): an empty body, `""`, `null`, `[]`,
//! `{}`, `{"batchItemFailures": []}` and `{"batchItemFailures": null}` mean the whole
//! batch succeeded; `{"batchItemFailures": [{"itemIdentifier": SEQ}, …]}` means the
//! records from the lowest failed sequence number on failed; an item whose
//! `itemIdentifier` is missing, null, empty or not a sequence number of the batch
//! fails the whole batch, and so does a body that is not JSON (Lambda leaves that
//! undocumented; failing is what loses nothing).
//!
//! An `itemIdentifier` is a sequence number, and the user records of one KPL aggregate
//! share theirs: it names the *first* record of the batch with that sequence number,
//! so a retry starts at the aggregate's first user record in the batch and none is
//! skipped (siblings that had succeeded run again).

use bytes::Bytes;
use serde_json::Value;

use super::record::Record;

/// What a function answered, as the invoker got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The body, as the function serialized it.
    Body(Bytes),
    /// What an in-process handler returned, read from its value without JSON: the
    /// `itemIdentifier` of each `batchItemFailures` item (`None` for a missing or
    /// null one), or `None` for no list at all. Judged exactly as the JSON of that
    /// value would be.
    Items(Option<Vec<Option<String>>>),
}

impl From<Bytes> for Response {
    fn from(body: Bytes) -> Self {
        Self::Body(body)
    }
}

impl From<&'static str> for Response {
    fn from(body: &'static str) -> Self {
        Self::Body(Bytes::from_static(body.as_bytes()))
    }
}

impl Response {
    /// The body, when the function's answer came as JSON.
    pub fn body(&self) -> Option<&Bytes> {
        match self {
            Self::Body(body) => Some(body),
            Self::Items(_) => None,
        }
    }
}

/// The verdict on a batch from a response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record succeeded.
    Success,
    /// The function named `named` records in `batchItemFailures` (each counted
    /// once); the lowest of them is at index `first`. The records before it
    /// succeeded, and those from it on are retried.
    FailedFrom {
        /// The index of the lowest failed record.
        first: usize,
        /// How many distinct records of the batch were named.
        named: usize,
    },
    /// The whole batch failed; the reason is for the log line.
    Failed(String),
}

/// Reads `response` against `records` (the records of the invocation, in order).
pub fn verdict(response: &Response, records: &[Record]) -> Verdict {
    match response {
        Response::Body(body) => batch_item_failures(body, records),
        Response::Items(None) => Verdict::Success,
        Response::Items(Some(items)) => named_records(
            items.iter().map(|id| match id.as_deref() {
                Some("") => Err("an itemIdentifier is empty".to_owned()),
                Some(id) => Ok(id),
                None => Err("a batchItemFailures item has no itemIdentifier".to_owned()),
            }),
            records,
        ),
    }
}

/// Reads `body` against `records` (the records of the invocation, in order).
pub fn batch_item_failures(body: &[u8], records: &[Record]) -> Verdict {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Verdict::Success;
    }
    let value: Value = match serde_json::from_slice(trimmed) {
        Ok(v) => v,
        Err(e) => return Verdict::Failed(format!("the response is not JSON ({e})")),
    };
    let items = match &value {
        Value::Null => return Verdict::Success,
        Value::String(s) if s.is_empty() => return Verdict::Success,
        Value::Array(a) if a.is_empty() => return Verdict::Success,
        Value::Object(map) => match map.get("batchItemFailures") {
            None | Some(Value::Null) => return Verdict::Success,
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Verdict::Failed(format!("batchItemFailures is not a list: {}", kind(other)))
            }
        },
        other => {
            return Verdict::Failed(format!(
                "the response is {}, not a batchItemFailures object",
                kind(other)
            ))
        }
    };
    named_records(
        items.iter().map(|item| match item.get("itemIdentifier") {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
            Some(Value::String(_)) => Err("an itemIdentifier is empty".to_owned()),
            None | Some(Value::Null) => {
                Err("a batchItemFailures item has no itemIdentifier".to_owned())
            }
            Some(other) => Err(format!(
                "an itemIdentifier is {}, not a string",
                kind(other)
            )),
        }),
        records,
    )
}

/// The verdict from the `itemIdentifier`s of `batchItemFailures`, in the order named
/// (each already checked to be a non-empty string, or the reason it is not).
fn named_records<'a>(
    ids: impl ExactSizeIterator<Item = Result<&'a str, String>>,
    records: &[Record],
) -> Verdict {
    // Indices of the named records (the list is short: at most the batch).
    let mut named: Vec<usize> = Vec::with_capacity(ids.len());
    for id in ids {
        let id = match id {
            Ok(id) => id,
            Err(reason) => return Verdict::Failed(reason),
        };
        match records.iter().position(|r| r.sequence().as_str() == id) {
            Some(i) => named.push(i),
            None => {
                return Verdict::Failed(format!(
                    "itemIdentifier {id:?} is not a sequence number of this batch"
                ))
            }
        }
    }
    named.sort_unstable();
    named.dedup();
    match named.first() {
        None => Verdict::Success,
        Some(&first) => Verdict::FailedFrom {
            first,
            named: named.len(),
        },
    }
}

/// What kind of JSON value `v` is, for messages: `null`, `a boolean`, `a number`,
/// `a string`, `an array`, `an object`.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{Position, SequenceNumber};
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};

    fn records() -> Vec<Record> {
        ["10", "11", "12", "13"]
            .iter()
            .map(|s| Record {
                position: Position::plain(SequenceNumber::parse(*s).unwrap()),
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::new(),
                approximate_arrival: Utc.timestamp_millis_opt(0).unwrap(),
            })
            .collect()
    }

    fn verdict(body: &str) -> Verdict {
        batch_item_failures(body.as_bytes(), &records())
    }

    #[test]
    fn every_success_form_lambda_accepts() {
        for body in [
            "",
            "  ",
            "\"\"",
            "null",
            "[]",
            "{}",
            r#"{"batchItemFailures": []}"#,
            r#"{"batchItemFailures": null}"#,
            r#"{"other": 1}"#,
        ] {
            assert_eq!(verdict(body), Verdict::Success, "{body:?}");
        }
    }

    #[test]
    fn the_lowest_failed_record_wins() {
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"12"},{"itemIdentifier":"11"}]}"#),
            Verdict::FailedFrom { first: 1, named: 2 }
        );
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"10"}]}"#),
            Verdict::FailedFrom { first: 0, named: 1 }
        );
        // A record named twice is one failed record.
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"13"},{"itemIdentifier":"13"}]}"#),
            Verdict::FailedFrom { first: 3, named: 1 }
        );
    }

    #[test]
    fn a_sequence_number_shared_by_user_records_names_the_first_of_them() {
        // User records of one KPL aggregate share its sequence number: naming it fails
        // the batch from the first of them in the batch, so none is skipped.
        let mut records = records();
        for (i, r) in records.iter_mut().enumerate().skip(1) {
            r.position = Position::new(SequenceNumber::parse("11").unwrap(), i as u64 - 1);
        }
        assert_eq!(
            batch_item_failures(
                br#"{"batchItemFailures":[{"itemIdentifier":"11"}]}"#,
                &records
            ),
            Verdict::FailedFrom { first: 1, named: 1 }
        );
    }

    #[test]
    fn malformed_responses_fail_the_whole_batch() {
        for body in [
            "not json",
            "{\"batchItemFailures\":",
            r#"{"batchItemFailures":[{}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"99"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":12}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"11"},{"itemIdentifier":"99"}]}"#,
            r#"{"batchItemFailures":"12"}"#,
            "42",
            "\"text\"",
            "[1]",
        ] {
            assert!(
                matches!(verdict(body), Verdict::Failed(_)),
                "{body:?} should fail the batch"
            );
        }
    }
}
