//! Reading a stream: which shards there are ([`discovery`]) and their records
//! ([`polling`]).
//!
//! A shard reader runs as its own task and hands [`Page`]s to the shard runner through
//! a bounded channel, so reading the next page overlaps the invocation of the current
//! batch while memory stays bounded. Polling with GetRecords is the first reader;
//! enhanced fan-out (SubscribeToShard) will be a second one producing the same pages.

pub mod discovery;
pub mod kinesis;
pub mod polling;

use chrono::{DateTime, Utc};

use crate::core::record::{Record, SequenceNumber};

/// One read from a shard.
#[derive(Debug, Default)]
pub struct Page {
    /// The records, in sequence order (possibly none).
    pub records: Vec<Record>,
    /// How far the reader is behind the tip of the shard.
    pub millis_behind_latest: Option<i64>,
    /// `Some` when the shard is closed and fully read: its children, by id.
    pub end: Option<Vec<String>>,
}

/// Where a reader starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest record.
    TrimHorizon,
    /// Records put from now on.
    Latest,
    /// The first record at or after this time.
    AtTimestamp(DateTime<Utc>),
    /// The record after this one (resuming from a checkpoint).
    AfterSequence(SequenceNumber),
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
