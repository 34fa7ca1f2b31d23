//! What a shard's checkpoint record holds: where reading starts, how far it got,
//! whether the shard is finished. The store keeps it; the shard machine decides it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Position;

/// Where a shard with no checkpoint starts reading, decided when the shard is first seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartAt {
    /// The oldest record in the shard.
    TrimHorizon,
    /// Only records put after the reader starts.
    Latest,
    /// The first record at or after this time.
    AtTimestamp {
        /// The time.
        timestamp: DateTime<Utc>,
    },
}

/// What the store keeps for one shard of one mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// Where reading starts while there is no checkpoint. Shards present when a mapping
    /// first starts take its `starting_position`; shards born later (children of a
    /// reshard) start at the trim horizon so none of their records is missed.
    pub start: StartAt,
    /// Every record at or before this position is done.
    pub checkpoint: Option<Position>,
    /// The shard is closed and every record in it is done: its children may be read.
    pub finished: bool,
}

impl ShardCheckpoint {
    /// A shard seen for the first time, starting at `start`.
    pub fn new(start: StartAt) -> Self {
        Self {
            start,
            checkpoint: None,
            finished: false,
        }
    }
}
