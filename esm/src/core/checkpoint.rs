//! What a shard's checkpoint record holds: where reading starts, how far it got,
//! whether the shard is finished. The store keeps it; the shard machine decides it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Position;

/// Where a shard with no checkpoint starts reading, decided when the shard is first seen.
///
/// It is also a mapping's `starting_position` as the config reads it: `TRIM_HORIZON`,
/// `LATEST`, or `AT_TIMESTAMP` with `starting_position_timestamp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredStartAt", into = "StoredStartAt")]
pub enum StartAt {
    /// The oldest record in the shard.
    TrimHorizon,
    /// Only records put after the reader starts.
    Latest,
    /// The first record at or after this time.
    AtTimestamp(DateTime<Utc>),
}

/// How a [`StartAt`] is stored in a checkpoint record, e.g.
/// `{"type":"AT_TIMESTAMP","timestamp":"2026-11-22T00:00:00Z"}`: the format stored
/// checkpoints already have, so it must not change.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum StoredStartAt {
    TrimHorizon,
    Latest,
    AtTimestamp { timestamp: DateTime<Utc> },
}

impl From<StoredStartAt> for StartAt {
    fn from(stored: StoredStartAt) -> Self {
        match stored {
            StoredStartAt::TrimHorizon => StartAt::TrimHorizon,
            StoredStartAt::Latest => StartAt::Latest,
            StoredStartAt::AtTimestamp { timestamp } => StartAt::AtTimestamp(timestamp),
        }
    }
}

impl From<StartAt> for StoredStartAt {
    fn from(start: StartAt) -> Self {
        match start {
            StartAt::TrimHorizon => StoredStartAt::TrimHorizon,
            StartAt::Latest => StoredStartAt::Latest,
            StartAt::AtTimestamp(timestamp) => StoredStartAt::AtTimestamp { timestamp },
        }
    }
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn start_positions_are_stored_as_before() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        for (start, json) in [
            (StartAt::TrimHorizon, r#"{"type":"TRIM_HORIZON"}"#),
            (StartAt::Latest, r#"{"type":"LATEST"}"#),
            (
                StartAt::AtTimestamp(at),
                r#"{"type":"AT_TIMESTAMP","timestamp":"2026-11-22T00:00:00Z"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&start).unwrap(), json);
            assert_eq!(serde_json::from_str::<StartAt>(json).unwrap(), start);
        }
    }
}
