//! Reading a stream: which shards there are ([`discovery`]) and their records
//! ([`polling`] with GetRecords, or [`fanout`] with SubscribeToShard).
//!
//! A shard's records arrive through a [`ShardSource`]: the shard runner asks it for one
//! page at a time, only while the shard state machine wants more, so reading overlaps
//! invocations while memory stays bounded. Polling with GetRecords and enhanced
//! fan-out (SubscribeToShard) are the two sources; they produce the same pages, so
//! the shard state machine does not know which one feeds it.
//!
//! Sources hand out Kinesis records as read. They do not count
//! `esm_polled_events_total`: the shard machine does, once a page's KPL aggregates are
//! expanded, so the count is of the records the function is handed (user records).

pub mod consumer;
pub mod discovery;
pub mod fanout;
pub mod kinesis;
pub mod polling;

use std::time::Instant;

use aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder;
use aws_sdk_kinesis::types::ShardIteratorType;
use futures::future::BoxFuture;
use futures::FutureExt as _;

use crate::core::record::{Record, SequenceNumber};

pub use crate::core::shard::{Page, ReadFrom};

/// One attempt at reading a page.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A page (possibly empty).
    Page(Page),
    /// A passing failure (throttled, expired iterator, network): wait for the next
    /// turn and read again.
    Retry,
    /// The source cannot go on.
    Stop(SourceError),
}

/// Where a shard's pages come from.
pub trait ShardSource: Send + 'static {
    /// Waits until the next read may be made (the call budget, a backoff).
    fn wait_turn(&mut self) -> BoxFuture<'_, ()>;
    /// Makes one read.
    fn read(&mut self) -> BoxFuture<'_, ReadOutcome>;
}

/// A reader's [`ShardSource::wait_turn`]: sleeps until `at`, at once without one.
fn wait_until(at: Option<Instant>) -> BoxFuture<'static, ()> {
    async move {
        if let Some(at) = at {
            tokio::time::sleep_until(at.into()).await;
        }
    }
    .boxed()
}

/// Sets where a GetShardIterator request starts: right after `after` (the last
/// record a reader handed out) when there is one, else at `from`.
fn iterator_from(
    request: GetShardIteratorFluentBuilder,
    after: Option<&SequenceNumber>,
    from: &ReadFrom,
) -> GetShardIteratorFluentBuilder {
    match (after, from) {
        (Some(seq), _) | (None, ReadFrom::AfterSequence(seq)) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq.as_str()),
        (None, ReadFrom::AtSequence(seq)) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(seq.as_str()),
        (None, ReadFrom::TrimHorizon) => {
            request.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        (None, ReadFrom::Latest) => request.shard_iterator_type(ShardIteratorType::Latest),
        (None, ReadFrom::AtTimestamp(t)) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_smithy_types::DateTime::from_millis(
                t.timestamp_millis(),
            )),
    }
}

/// Kinesis's records as esm's, skipping (with a log line naming `call`) any whose
/// sequence number is malformed.
fn convert_records(raw: Vec<aws_sdk_kinesis::types::Record>, call: &str) -> Vec<Record> {
    let mut records = Vec::with_capacity(raw.len());
    for r in raw {
        match kinesis::to_record(r) {
            Some(record) => records.push(record),
            None => tracing::error!(
                "{call} returned a record with a malformed sequence number; skipping it"
            ),
        }
    }
    records
}

/// Reads one shard's records up to and including `end` through `source` (a reader
/// started where the range begins, e.g. at `ReadFrom::AtSequence`), page by page,
/// with the reader's own pacing, backoff and fresh iterators after an expired
/// one: `esm replay` reads a failed batch back exactly as the runner reads.
/// It stops after `end`, at the shard's end, or once caught up (an empty page with
/// nothing behind it), so a range whose records are gone ends too. More than
/// `max_retries` passing failures in a row end it with [`SourceError::Fatal`].
pub async fn read_through(
    source: &mut dyn ShardSource,
    end: &SequenceNumber,
    max_retries: u32,
) -> Result<Vec<Record>, SourceError> {
    let mut records = Vec::new();
    let mut retries = 0;
    loop {
        source.wait_turn().await;
        let page = match source.read().await {
            ReadOutcome::Page(page) => page,
            ReadOutcome::Retry if retries < max_retries => {
                retries += 1;
                continue;
            }
            ReadOutcome::Retry => {
                return Err(SourceError::Fatal(format!(
                    "gave up after {retries} failed reads in a row"
                )))
            }
            ReadOutcome::Stop(e) => return Err(e),
        };
        retries = 0;
        let caught_up = page.records.is_empty() && page.millis_behind_latest.is_none_or(|m| m == 0);
        for record in page.records {
            if record.sequence() > end {
                return Ok(records);
            }
            let last = record.sequence() == end;
            records.push(record);
            if last {
                return Ok(records);
            }
        }
        if caught_up || page.end.is_some() {
            return Ok(records);
        }
    }
}

/// Why a reader stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The stream or shard does not exist (deleted, or a wrong ARN).
    #[error("{0}")]
    NotFound(String),
    /// Access is denied, or the request is invalid: retrying will not help.
    #[error("{0}")]
    Fatal(String),
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use super::*;
    use crate::core::record::Position;

    /// A source that answers from a script.
    struct Scripted(VecDeque<ReadOutcome>);

    impl ShardSource for Scripted {
        fn wait_turn(&mut self) -> BoxFuture<'_, ()> {
            async {}.boxed()
        }
        fn read(&mut self) -> BoxFuture<'_, ReadOutcome> {
            let next = self
                .0
                .pop_front()
                .unwrap_or_else(|| ReadOutcome::Stop(SourceError::Fatal("script ended".into())));
            async move { next }.boxed()
        }
    }

    fn seq(n: u32) -> SequenceNumber {
        SequenceNumber::parse(format!("{n:05}")).unwrap()
    }

    fn page(seqs: &[u32], behind: i64) -> ReadOutcome {
        ReadOutcome::Page(Page {
            records: seqs
                .iter()
                .map(|n| Record {
                    position: Position::plain(seq(*n)),
                    partition_key: "k".into(),
                    explicit_hash_key: None,
                    data: Bytes::new(),
                    approximate_arrival: chrono::DateTime::UNIX_EPOCH,
                })
                .collect(),
            millis_behind_latest: Some(behind),
            end: None,
            issued_at: None,
        })
    }

    async fn read(script: Vec<ReadOutcome>, end: u32) -> Result<Vec<String>, SourceError> {
        let mut source = Scripted(script.into());
        read_through(&mut source, &seq(end), 2)
            .await
            .map(|records| {
                records
                    .iter()
                    .map(|r| r.sequence().as_str().to_string())
                    .collect()
            })
    }

    #[tokio::test]
    async fn reads_through_the_end_across_pages_and_passing_failures() {
        let got = read(
            vec![
                page(&[1, 2], 1000),
                ReadOutcome::Retry,
                page(&[], 500),
                page(&[3, 4, 5], 0),
            ],
            4,
        )
        .await
        .unwrap();
        assert_eq!(got, ["00001", "00002", "00003", "00004"]);
    }

    #[tokio::test]
    async fn stops_when_caught_up_or_past_the_end() {
        // The end record is gone: the next record is past it.
        assert_eq!(read(vec![page(&[1, 6], 0)], 4).await.unwrap(), ["00001"]);
        // Nothing left to read.
        assert_eq!(
            read(vec![page(&[1], 10), page(&[], 0)], 4).await.unwrap(),
            ["00001"]
        );
    }

    #[tokio::test]
    async fn gives_up_after_too_many_failures_and_stops_on_a_stop() {
        let retries = vec![ReadOutcome::Retry, ReadOutcome::Retry, ReadOutcome::Retry];
        assert!(matches!(read(retries, 4).await, Err(SourceError::Fatal(_))));
        let gone = vec![ReadOutcome::Stop(SourceError::NotFound("gone".into()))];
        assert!(matches!(read(gone, 4).await, Err(SourceError::NotFound(_))));
    }
}
