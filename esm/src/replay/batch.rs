//! One batch of `esm replay`: what an on-failure record names, its records (read
//! back from the stream through the runner's own reader, or taken from an S3
//! object's payload), and what is done with them (written, or invoked once and
//! judged by the runner's rules).

use std::io::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use crate::core::event::EventEncoder;
use crate::core::failure::{judge, Fate, LastFailure};
use crate::core::kpl::{self, Expansion};
use crate::core::on_failure::SavedPayload;
use crate::core::record::{Record, SequenceNumber};
use crate::invoke::{BatchEvent, Invocation, Invoker, Outcome, Payload};
use crate::metrics::MappingMetrics;
use crate::runner::MappingSpec;
use crate::source::polling::{PollingConfig, PollingReader};
use crate::source::{read_through, ReadFrom, SourceError};

/// How many passing read failures in a row (throttling, an expired iterator, the
/// network) a batch's read survives.
const MAX_READ_RETRIES: u32 = 10;

/// The batch an on-failure record names (`KinesisBatchInfo`).
#[derive(Debug)]
pub(super) struct BatchInfo {
    pub shard_id: String,
    pub stream_arn: String,
    pub start: SequenceNumber,
    pub end: SequenceNumber,
    pub batch_size: usize,
}

impl BatchInfo {
    /// `KinesisBatchInfo` of an on-failure record.
    pub(super) fn of(record: &Value) -> Result<BatchInfo, String> {
        let info = record
            .get("KinesisBatchInfo")
            .ok_or("no KinesisBatchInfo")?;
        let text = |key: &str| {
            info.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("KinesisBatchInfo.{key} is missing"))
        };
        let seq = |key: &str| {
            text(key).and_then(|s| {
                SequenceNumber::parse(s)
                    .ok_or_else(|| format!("KinesisBatchInfo.{key} is not a sequence number"))
            })
        };
        let batch_size = info
            .get("batchSize")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("KinesisBatchInfo.batchSize is missing")?;
        Ok(BatchInfo {
            shard_id: text("shardId")?,
            stream_arn: text("streamArn")?,
            start: seq("startSequenceNumber")?,
            end: seq("endSequenceNumber")?,
            batch_size,
        })
    }

    /// `shard START..END`, for messages.
    pub(super) fn range(&self) -> String {
        format!(
            "{} {}..{}",
            self.shard_id,
            self.start.as_str(),
            self.end.as_str()
        )
    }
}

/// The records of a batch, as replay got them.
pub(super) enum Records {
    /// Read back from the stream.
    Read(Vec<Record>),
    /// Kept in an S3 object's payload: written and invoked exactly as stored.
    Saved(SavedPayload),
}

impl Records {
    /// How many.
    pub(super) fn len(&self) -> usize {
        match self {
            Records::Read(records) => records.len(),
            Records::Saved(saved) => saved.records.len(),
        }
    }
}

/// What was read back for a batch.
pub(super) struct Fetched {
    pub records: Vec<Record>,
    /// How many of the batch's records the stream no longer holds.
    pub expired: usize,
}

/// Reads `info`'s batch back from the stream with the runner's polling reader
/// (`AT_SEQUENCE_NUMBER` its first record, through its last), at the mapping's
/// GetRecords budget. Records the stream no longer holds are told to `say` by
/// shard and sequence number and counted, never skipped silently.
pub(super) async fn fetch(
    client: &aws_sdk_kinesis::Client,
    spec: &MappingSpec,
    metrics: &Arc<MappingMetrics>,
    info: &BatchInfo,
    say: &impl Fn(String),
) -> Result<Fetched, String> {
    let expired_all = |why: &str| {
        say(format!(
            "expired: shard {} records {}..{} ({} records): {why}",
            info.shard_id,
            info.start.as_str(),
            info.end.as_str(),
            info.batch_size
        ));
        Fetched {
            records: Vec::new(),
            expired: info.batch_size.max(1),
        }
    };
    let mut reader = PollingReader::new(
        client.clone(),
        PollingConfig {
            stream_arn: info.stream_arn.clone(),
            shard_id: info.shard_id.clone(),
            from: ReadFrom::AtSequence(info.start.clone()),
            calls_per_second: spec.calls_per_second,
            limit: i32::try_from(info.batch_size.clamp(1, 10_000)).unwrap_or(10_000),
        },
        metrics.clone(),
    );
    let records = match read_through(&mut reader, &info.end, MAX_READ_RETRIES).await {
        Ok(records) => expand(records, spec.deaggregate, metrics, say),
        Err(SourceError::NotFound(why)) => return Ok(expired_all(&why)),
        Err(SourceError::Fatal(why)) => return Err(why),
    };

    let mut expired = info.batch_size.saturating_sub(records.len());
    match records.first() {
        Some(first) if *first.sequence() > info.start => {
            expired = expired.max(1);
            say(format!(
                "expired: shard {} records from {} up to (not including) {} ({} of {} records)",
                info.shard_id,
                info.start.as_str(),
                first.sequence().as_str(),
                expired,
                info.batch_size
            ));
        }
        None => return Ok(expired_all("no record left in the range")),
        Some(_) if expired > 0 => say(format!(
            "expired: shard {} range {}..{}: {} of {} records are no longer in the stream",
            info.shard_id,
            info.start.as_str(),
            info.end.as_str(),
            expired,
            info.batch_size
        )),
        Some(_) => {}
    }
    Ok(Fetched { records, expired })
}

/// KPL de-aggregation for replay, the one place where records read back from the
/// stream are expanded into their user records, with the runner's de-aggregator
/// ([`crate::core::kpl`]) when the mapping has `deaggregate = true`. On-failure
/// records name Kinesis sequence ranges only, so a batch that started inside an
/// aggregate replays that aggregate's earlier siblings too. An aggregate that does
/// not decode goes through whole, said and counted, as in the runner. (Records
/// taken from an S3 payload are already as the function got them and do not come
/// through here.)
pub(super) fn expand(
    records: Vec<Record>,
    deaggregate: bool,
    metrics: &MappingMetrics,
    say: &impl Fn(String),
) -> Vec<Record> {
    if !deaggregate {
        return records;
    }
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let sequence = record.sequence().as_str().to_owned();
        if let Expansion::PassedThrough(why) = kpl::expand_into(record, &mut out) {
            metrics.deaggregation_failures.inc();
            say(format!(
                "KPL record {sequence} is not a valid aggregate ({why}): replayed whole"
            ));
        }
    }
    out
}

/// What happens to a batch's records.
pub(super) enum Sink {
    /// Invoke the mapping's function, once, and judge the outcome.
    Invoke(Arc<dyn Invoker>),
    /// Write them as event records, one per line.
    Out(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    /// Writes or invokes `records` of the batch from `encoder`'s shard; `Err` says
    /// why the batch failed.
    pub(super) async fn take(
        &mut self,
        spec: &MappingSpec,
        encoder: &EventEncoder,
        records: &Records,
    ) -> Result<(), String> {
        match self {
            Sink::Out(out) => {
                let mut line = Vec::new();
                let mut write = |json: &[u8]| {
                    line.clear();
                    line.extend_from_slice(json);
                    line.push(b'\n');
                    out.write_all(&line)
                };
                let written = match records {
                    Records::Read(records) => records.iter().try_for_each(|r| {
                        let mut json = Vec::new();
                        encoder.encode_record(r, &mut json);
                        write(&json)
                    }),
                    Records::Saved(saved) => saved.records.iter().try_for_each(|r| write(&r.json)),
                };
                written.map_err(|e| format!("cannot write the records: {e}"))
            }
            Sink::Invoke(invoker) => {
                let (payload, owned);
                let invoked: &[Record] = match records {
                    Records::Read(records) => {
                        payload = Payload::Batch(BatchEvent::of_records(
                            encoder.clone(),
                            records.to_vec(),
                        ));
                        records
                    }
                    Records::Saved(saved) => {
                        payload = Payload::Json(saved.event.clone());
                        owned = saved
                            .records
                            .iter()
                            .map(|r| r.record.clone())
                            .collect::<Vec<_>>();
                        &owned
                    }
                };
                let outcome = invoker
                    .invoke(Invocation {
                        payload,
                        request_id: uuid::Uuid::new_v4().to_string(),
                        function_arn: spec.function_arn.clone(),
                        timeout: spec.timeout,
                        deadline: SystemTime::now() + spec.timeout,
                    })
                    .await;
                judged(&outcome, spec.policy.report_item_failures, invoked)
            }
        }
    }
}

/// The runner's judgement of `outcome` ([`judge`]): `Ok` when every record
/// succeeded, else why not.
fn judged(outcome: &Outcome, report_item_failures: bool, records: &[Record]) -> Result<(), String> {
    let judgement = judge(outcome, report_item_failures, records);
    if let Some(why) = judgement.judged.unreadable_response {
        return Err(format!(
            "the response is not a batchItemFailures answer: {why}"
        ));
    }
    match (judgement.fate, outcome) {
        (Fate::Succeeded, _) => Ok(()),
        (
            Fate::FailedFrom {
                first,
                how: LastFailure::ItemFailures,
            },
            _,
        ) => Err(format!(
            "the function reported failures from {}",
            records
                .get(first)
                .map(|r| r.sequence().as_str())
                .unwrap_or_default()
        )),
        (
            _,
            Outcome::FunctionError {
                error_type,
                message,
            },
        ) => Err(format!("function error {error_type}: {message}")),
        (_, Outcome::Timeout) => Err("the function timed out".into()),
        (_, Outcome::Crash { reason }) => Err(format!("the function crashed: {reason}")),
        (_, Outcome::NotInvoked { reason }) => Err(format!("not invoked: {reason}")),
        (Fate::FailedFrom { .. } | Fate::NotInvoked, Outcome::Returned { .. }) => {
            Err("the function failed".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::Position;
    use bytes::Bytes;

    const RECORD: &str = r#"{"requestContext":{"condition":"RetryAttemptsExhausted"},"KinesisBatchInfo":{"shardId":"shardId-000000000000","startSequenceNumber":"100","endSequenceNumber":"109","batchSize":10,"streamArn":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}}"#;

    #[test]
    fn reads_the_batch_info() {
        let info = BatchInfo::of(&serde_json::from_str(RECORD).unwrap()).unwrap();
        assert_eq!(info.shard_id, "shardId-000000000000");
        assert_eq!(info.start.as_str(), "100");
        assert_eq!(info.end.as_str(), "109");
        assert_eq!(info.batch_size, 10);
        assert!(BatchInfo::of(&serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn expansion_de_aggregates_like_the_runner() {
        let record = |seq: &str, data: &'static [u8]| Record {
            position: Position::plain(SequenceNumber::parse(seq).unwrap()),
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::from_static(data),
            approximate_arrival: chrono::DateTime::UNIX_EPOCH,
        };
        let plain = record("1", b"x");
        let users: Vec<_> = [b"a", b"b"]
            .iter()
            .map(|d| crate::core::kpl::UserRecord {
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(d.as_slice()),
            })
            .collect();
        let aggregated = Record {
            data: crate::core::kpl::aggregate(&users),
            ..record("2", b"")
        };
        let mut broken = record("3", b"");
        broken.data = Bytes::from([crate::core::kpl::KPL_MAGIC.as_slice(), b"junk"].concat());
        let metrics = MappingMetrics::default();
        let said = std::cell::RefCell::new(Vec::new());
        let say = |line: String| said.borrow_mut().push(line);
        let input = vec![plain.clone(), aggregated.clone(), broken.clone()];
        let out = expand(input.clone(), true, &metrics, &say);
        let data: Vec<&[u8]> = out.iter().map(|r| r.data.as_ref()).collect();
        assert_eq!(data[..3], [b"x".as_slice(), b"a", b"b"]);
        assert_eq!(out[3], broken);
        assert_eq!(out[1].position.sub_sequence, 0);
        assert_eq!(out[2].position.sub_sequence, 1);
        assert_eq!(metrics.deaggregation_failures.get(), 1);
        assert!(said.borrow()[0].contains("KPL record 3 is not a valid aggregate"));
        // deaggregate = false: as they are.
        assert_eq!(expand(input.clone(), false, &metrics, &say), input);
    }

    #[test]
    fn judges_like_the_runner() {
        let records: Vec<Record> = ["1", "2"]
            .iter()
            .map(|s| Record {
                position: Position::plain(SequenceNumber::parse(*s).unwrap()),
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::new(),
                approximate_arrival: chrono::DateTime::UNIX_EPOCH,
            })
            .collect();
        let returned = |body: &'static str| Outcome::Returned {
            response: Bytes::from_static(body.as_bytes()).into(),
        };
        assert_eq!(judged(&returned("{}"), true, &records), Ok(()));
        assert_eq!(
            judged(
                &returned(r#"{"batchItemFailures":[{"itemIdentifier":"2"}]}"#),
                true,
                &records
            ),
            Err("the function reported failures from 2".into())
        );
        // Without ReportBatchItemFailures the body is not read.
        assert_eq!(
            judged(
                &returned(r#"{"batchItemFailures":[{"itemIdentifier":"2"}]}"#),
                false,
                &records
            ),
            Ok(())
        );
        assert!(judged(&returned("[1]"), true, &records)
            .unwrap_err()
            .contains("not a batchItemFailures answer"));
        assert_eq!(
            judged(&Outcome::Timeout, false, &records),
            Err("the function timed out".into())
        );
        assert!(judged(
            &Outcome::NotInvoked {
                reason: "busy".into()
            },
            false,
            &records
        )
        .is_err());
    }
}
