//! A stream record and the position a checkpoint points at.
//!
//! Kinesis sequence numbers are decimal strings of up to 128 digits, larger than any
//! machine integer, so [`SequenceNumber`] orders them numerically by length first and
//! then digit by digit. A [`Position`] is a sequence number plus a sub-sequence number:
//! a KPL aggregated Kinesis record holds several user records that share its sequence
//! number, and checkpoints and `batchItemFailures` must be able to point between them.
//! A plain record is user record 0 of its Kinesis record.
//!
//! Checkpoints written before sub-sequence numbers were stored have none; they meant
//! "the whole Kinesis record is done", and read back as [`Position::WHOLE_RECORD`],
//! which sorts after every user record of that Kinesis record.

use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A Kinesis sequence number, compared numerically.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Wraps a sequence number as Kinesis returned it. Returns `None` unless it is a
    /// non-empty string of ASCII digits.
    pub fn parse(s: impl Into<String>) -> Option<Self> {
        let s = s.into();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            Some(Self(s))
        } else {
            None
        }
    }

    /// The decimal string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The significant digits (leading zeros dropped), used for numeric comparison.
    fn digits(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() {
            "0"
        } else {
            trimmed
        }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.digits(), other.digits());
        a.len()
            .cmp(&b.len())
            .then_with(|| a.cmp(b))
            // Kinesis never sends leading zeros; the tie-break keeps Ord consistent with Eq.
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A point in a shard: one user record of one Kinesis record. A checkpoint at a
/// position means every record at or before it is done.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The Kinesis sequence number.
    pub sequence: SequenceNumber,
    /// The user record within the Kinesis record: 0 for a plain record.
    #[serde(default = "whole_record")]
    pub sub_sequence: u64,
}

fn whole_record() -> u64 {
    Position::WHOLE_RECORD
}

impl Position {
    /// The sub-sequence of a checkpoint that covers a whole Kinesis record, whatever it
    /// holds (how checkpoints stored without a sub-sequence read back).
    pub const WHOLE_RECORD: u64 = u64::MAX;

    /// The position of a plain (not aggregated) record: user record 0.
    pub fn plain(sequence: SequenceNumber) -> Self {
        Self {
            sequence,
            sub_sequence: 0,
        }
    }

    /// The position of user record `sub_sequence` of a Kinesis record.
    pub fn new(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self {
            sequence,
            sub_sequence,
        }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sequence
            .cmp(&other.sequence)
            .then_with(|| self.sub_sequence.cmp(&other.sub_sequence))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub_sequence {
            0 | Self::WHOLE_RECORD => write!(f, "{}", self.sequence),
            sub => write!(f, "{}/{}", self.sequence, sub),
        }
    }
}

/// One record read from a shard, ready to be batched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its place in the shard.
    pub position: Position,
    /// The partition key the producer chose.
    pub partition_key: String,
    /// The explicit hash key, when the producer set one (used by parallelization).
    pub explicit_hash_key: Option<String>,
    /// The payload, as put (not base64).
    pub data: Bytes,
    /// When Kinesis accepted the record (millisecond precision).
    pub approximate_arrival: DateTime<Utc>,
}

impl Record {
    /// The record's sequence number.
    pub fn sequence(&self) -> &SequenceNumber {
        &self.position.sequence
    }

    /// The bytes this record holds in memory, as the memory bounds count them: its
    /// data, key and sequence number, plus a fixed allowance for the rest.
    pub fn memory_size(&self) -> usize {
        const FIXED: usize = 128;
        self.data.len()
            + self.partition_key.len()
            + self.explicit_hash_key.as_ref().map_or(0, String::len)
            + self.position.sequence.as_str().len()
            + FIXED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).unwrap()
    }

    #[test]
    fn rejects_non_digits() {
        assert!(SequenceNumber::parse("").is_none());
        assert!(SequenceNumber::parse("12a").is_none());
        assert!(SequenceNumber::parse("-1").is_none());
    }

    #[test]
    fn compares_numerically_not_lexically() {
        assert!(seq("9") < seq("10"));
        assert!(seq("0010") < seq("11"));
        let a = seq("49590338271490256608559692538361571095921575989136588898");
        let b = seq("49590338271490256608559692540925702759324208523137515618");
        assert!(a < b);
    }

    #[test]
    fn sub_records_sort_inside_their_kinesis_record() {
        let whole = Position::new(seq("5"), Position::WHOLE_RECORD);
        let sub = Position::new(seq("5"), 7);
        assert!(Position::plain(seq("5")) < sub);
        assert!(sub < whole);
        assert!(whole < Position::plain(seq("6")));
    }

    #[test]
    fn a_checkpoint_stored_without_a_sub_sequence_covers_the_whole_record() {
        let legacy: Position = serde_json::from_str(r#"{"sequence":"42"}"#).unwrap();
        assert_eq!(legacy, Position::new(seq("42"), Position::WHOLE_RECORD));
        assert!(Position::new(seq("42"), 1_000) < legacy);
        let now = serde_json::to_string(&Position::new(seq("42"), 3)).unwrap();
        assert_eq!(now, r#"{"sequence":"42","sub_sequence":3}"#);
        assert_eq!(
            serde_json::from_str::<Position>(&now).unwrap(),
            Position::new(seq("42"), 3)
        );
    }

    proptest! {
        #[test]
        fn order_matches_u128(a in any::<u128>(), b in any::<u128>()) {
            prop_assert_eq!(seq(&a.to_string()).cmp(&seq(&b.to_string())), a.cmp(&b));
        }
    }
}
