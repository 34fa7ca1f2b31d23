//! What a running esm says about itself: `/readyz` and `/status`, and what
//! `esm status` prints.
//!
//! The [`StatusBoard`] is written by the runners and read by the server. Each mapping
//! loop writes what it learns from listing shards (which shards exist, which may be
//! read, which wait for a parent, which are finished, and their stored checkpoints);
//! each shard runner marks its shard read after its first page. Nothing on the hot
//! path touches the board's lock: a shard's live state is asked for only when
//! `/status` is requested, through a channel its runner answers between two steps,
//! with the state machine's own [`ShardState`](crate::core::shard::ShardState).
//!
//! Ready means: every enabled mapping has listed its shards, and every shard this
//! instance may read now (parents finished, not finished itself) has been read at
//! least once. Shards waiting for a parent do not count (nor, once leases exist,
//! shards a peer holds).

mod board;
pub mod query;

use serde::{Deserialize, Serialize};

pub use board::{MappingBoard, ShardPlace, ShardReporter, SnapshotRequest, StatusBoard};

/// The whole status document (`/status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every mapping is ready (`/readyz`).
    pub ready: bool,
    /// The enabled mappings, in config order.
    pub mappings: Vec<MappingStatus>,
}

/// One mapping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MappingStatus {
    /// Its name.
    pub name: String,
    /// Its shards have been listed at least once.
    pub listed: bool,
    /// Listed, and every shard it may read has been read at least once.
    pub ready: bool,
    /// Its shards, by id.
    pub shards: Vec<ShardStatus>,
}

/// One shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard_id: String,
    /// `reading`, `closed_parent` (a closed shard being read to its end), `starting`
    /// (readable, its runner not running yet or restarting), `held_by_peer` (another
    /// instance holds its lease), `waiting_for_parent`, `held` (read from a lease table: an
    /// instance holds it),
    /// `finished`, `stopping`, `failing`, or `stopped` (read from the store of a
    /// stopped esm).
    pub state: String,
    /// Its parents (a reshard's children wait for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// The instance holding the shard's lease (`null` while nobody does; with the
    /// local store, this process once it runs the shard).
    pub lease_owner: Option<String>,
    /// The durable checkpoint: every record at or before it is done
    /// (`SEQUENCE` or `SEQUENCE/SUB_SEQUENCE`).
    pub checkpoint: Option<String>,
    /// It has been read at least once since esm started.
    pub read: bool,
    /// `esm_iterator_age_milliseconds`, while it runs.
    pub iterator_age_ms: Option<u64>,
    /// `MillisBehindLatest` of its last read, while it runs.
    pub millis_behind_latest: Option<i64>,
    /// Lanes waiting to retry a failed invocation, while it runs.
    pub retries_pending: Option<usize>,
    /// The shard state machine's whole observable state, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<serde_json::Value>,
}
