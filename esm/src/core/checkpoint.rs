//! What a shard's checkpoint record holds: where reading starts, how far it got,
//! whether the shard is finished. The store keeps it; the shard machine decides it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::{Position, SequenceNumber};

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
    /// This record and those after it: only ever set by `esm checkpoint set
    /// --sequence` (a mapping's `starting_position` cannot be a sequence number).
    AtSequence(SequenceNumber),
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
    AtSequenceNumber { sequence: SequenceNumber },
}

impl From<StoredStartAt> for StartAt {
    fn from(stored: StoredStartAt) -> Self {
        match stored {
            StoredStartAt::TrimHorizon => StartAt::TrimHorizon,
            StoredStartAt::Latest => StartAt::Latest,
            StoredStartAt::AtTimestamp { timestamp } => StartAt::AtTimestamp(timestamp),
            StoredStartAt::AtSequenceNumber { sequence } => StartAt::AtSequence(sequence),
        }
    }
}

impl From<StartAt> for StoredStartAt {
    fn from(start: StartAt) -> Self {
        match start {
            StartAt::TrimHorizon => StoredStartAt::TrimHorizon,
            StartAt::Latest => StoredStartAt::Latest,
            StartAt::AtTimestamp(timestamp) => StoredStartAt::AtTimestamp { timestamp },
            StartAt::AtSequence(sequence) => StoredStartAt::AtSequenceNumber { sequence },
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

    /// The shard moved by `esm checkpoint set` to `to`, at wall-clock time `now`:
    /// reading starts there on the next run, as for a shard seen for the first time.
    /// No record counts as done any more, and a finished shard is read again (its
    /// children, already read, wait for it to finish again and then resume from
    /// their own checkpoints).
    pub fn moved_to(to: &MoveTo, now: DateTime<Utc>) -> Self {
        Self::new(match to {
            MoveTo::Sequence(sequence) => StartAt::AtSequence(sequence.clone()),
            MoveTo::Timestamp(timestamp) => StartAt::AtTimestamp(*timestamp),
            MoveTo::TrimHorizon => StartAt::TrimHorizon,
            // Pinned to now, as a mapping's first LATEST is: the records already in
            // the shard are skipped, and none put after this command is.
            MoveTo::Latest => StartAt::AtTimestamp(now),
        })
    }

    /// Where the next run reads first, for people: `after SEQ`, `at SEQ`,
    /// `at 2026-11-22T10:00:00Z`, `TRIM_HORIZON`, `LATEST`.
    pub fn next_read(&self) -> String {
        match (&self.checkpoint, &self.start) {
            (Some(p), _) => format!("after {p}"),
            (None, StartAt::AtSequence(sequence)) => format!("at {sequence}"),
            (None, StartAt::AtTimestamp(t)) => {
                format!(
                    "at {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )
            }
            (None, StartAt::TrimHorizon) => "TRIM_HORIZON".to_owned(),
            (None, StartAt::Latest) => "LATEST".to_owned(),
        }
    }
}

/// Where `esm checkpoint set` moves a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveTo {
    /// This record is the next one read (`--sequence`, as `AT_SEQUENCE_NUMBER`).
    Sequence(SequenceNumber),
    /// The first record at or after this time (`--at-timestamp`).
    Timestamp(DateTime<Utc>),
    /// The oldest record (`--trim-horizon`).
    TrimHorizon,
    /// Only records put after the command (`--latest`).
    Latest,
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
            (
                StartAt::AtSequence(SequenceNumber::parse("4959").unwrap()),
                r#"{"type":"AT_SEQUENCE_NUMBER","sequence":"4959"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&start).unwrap(), json);
            assert_eq!(serde_json::from_str::<StartAt>(json).unwrap(), start);
        }
    }

    #[test]
    fn a_moved_shard_starts_where_it_was_moved_and_holds_no_checkpoint() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        let seq = SequenceNumber::parse("4959").unwrap();
        for (to, start, next) in [
            (
                MoveTo::Sequence(seq.clone()),
                StartAt::AtSequence(seq.clone()),
                "at 4959",
            ),
            (
                MoveTo::Timestamp(at),
                StartAt::AtTimestamp(at),
                "at 2026-11-22T00:00:00.000Z",
            ),
            (MoveTo::TrimHorizon, StartAt::TrimHorizon, "TRIM_HORIZON"),
            (
                MoveTo::Latest,
                StartAt::AtTimestamp(now),
                "at 2026-12-01T10:00:00.000Z",
            ),
        ] {
            let moved = ShardCheckpoint::moved_to(&to, now);
            assert_eq!(moved, ShardCheckpoint::new(start));
            assert!(!moved.finished);
            assert_eq!(moved.next_read(), next);
        }
        let done = ShardCheckpoint {
            checkpoint: Some(Position::plain(seq)),
            ..ShardCheckpoint::new(StartAt::TrimHorizon)
        };
        assert_eq!(done.next_read(), "after 4959");
    }
}
