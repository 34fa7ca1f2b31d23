//! A stream record and the position a checkpoint points at.
//!
//! Kinesis sequence numbers are decimal strings of up to 128 digits, larger than any
//! machine integer, so [`SequenceNumber`] orders them numerically by length first and
//! then digit by digit. A [`Position`] is a sequence number plus an optional
//! sub-sequence: once KPL de-aggregation lands, one Kinesis record expands into several
//! user records that share a sequence number, and checkpoints and `batchItemFailures`
//! must be able to point between them. Until then the sub-sequence is always `None`,
//! meaning "the whole Kinesis record".

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

/// A point in a shard: everything at or before it is done.
///
/// `sub_sequence: None` covers the whole Kinesis record; `Some(n)` (KPL user records,
/// later) covers user records `0..=n` of it. `None` sorts after every `Some`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The Kinesis sequence number.
    pub sequence: SequenceNumber,
    /// The user record within an aggregated record, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_sequence: Option<u64>,
}

impl Position {
    /// The position covering a whole Kinesis record.
    pub fn whole(sequence: SequenceNumber) -> Self {
        Self {
            sequence,
            sub_sequence: None,
        }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sequence.cmp(&other.sequence).then_with(|| {
            match (self.sub_sequence, other.sub_sequence) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(&b),
            }
        })
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
            None => write!(f, "{}", self.sequence),
            Some(sub) => write!(f, "{}/{}", self.sequence, sub),
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
    fn whole_record_sorts_after_its_sub_records() {
        let whole = Position::whole(seq("5"));
        let sub = Position {
            sequence: seq("5"),
            sub_sequence: Some(7),
        };
        assert!(sub < whole);
        assert!(whole < Position::whole(seq("6")));
    }

    proptest! {
        #[test]
        fn order_matches_u128(a in any::<u128>(), b in any::<u128>()) {
            prop_assert_eq!(seq(&a.to_string()).cmp(&seq(&b.to_string())), a.cmp(&b));
        }
    }
}
