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
