//! Reading a stream: which shards there are ([`discovery`]) and their records
//! ([`polling`] with GetRecords, or [`fanout`] with SubscribeToShard).
//!
//! A shard's records arrive through a [`ShardSource`]: the shard runner asks it for one
//! page at a time, only while the shard state machine wants more, so reading overlaps
//! invocations while memory stays bounded. Polling with GetRecords and enhanced
//! fan-out (SubscribeToShard) are the two sources; they produce the same pages, so
//! the shard state machine does not know which one feeds it.

pub mod consumer;
pub mod discovery;
pub mod fanout;
pub mod kinesis;
pub mod polling;

use futures::future::BoxFuture;

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
