//! KPL de-aggregation: one Kinesis record in, the user records it carries out.
//!
//! The Kinesis Producer Library packs many small *user records* into one Kinesis
//! record to save on PutRecords calls and shard throughput. Lambda (with KCL's rules)
//! hands the function the user records, not the pack, so esm does too when a mapping
//! has `deaggregate = true` (the default).
//!
//! The format is KPL's: the 4 bytes [`KPL_MAGIC`], a protobuf [`AggregatedRecord`]
//! (proto2), and a 16-byte MD5 of the protobuf bytes. Each user record has its own
//! partition key and, optionally, explicit hash key (indices into tables shared by
//! the pack), and its data. The schema is declared here with `prost`'s derive, no
//! code generation step.
//!
//! What a user record is to the rest of esm: a [`Record`] with its own partition key,
//! explicit hash key and data, the Kinesis record's arrival time, and the position
//! `(sequence, sub_sequence = its index in the pack)`. So checkpoints point between
//! the user records of a pack, a restart resumes after the last one handled, filters
//! and lanes see each user record, and the event carries the pack's sequence number
//! (Lambda has no sub-sequence field).
//!
//! What is *not* an aggregate is left alone, as KCL does:
//! - a record that does not start with the magic is a plain record;
//! - a record that starts with the magic but whose checksum, protobuf, required
//!   fields or key-table indices are wrong is passed through as the plain record it
//!   is, with the reason ([`DeaggregationError`]) so the caller can warn and count.
//!   Nothing is lost: the function sees the bytes as they were put.
//!
//! An aggregate holding no user records expands to nothing (KCL's behaviour): there is
//! nothing to hand the function.
//!
//! [`aggregate`] is the other direction, KPL's encoder in small, for tests and
//! benchmarks (round trips, corrupt packs, the e2e fixtures' cross-check).

use bytes::{BufMut as _, Bytes, BytesMut};
use md5::{Digest as _, Md5};
use prost::Message as _;

use super::record::{Position, Record};

/// The first bytes of a KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// KPL's `AggregatedRecord` message: key tables shared by the pack, and the records.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    /// The partition keys the records point into.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// The explicit hash keys the records point into.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, in the order they were put.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedEntry>,
}

/// KPL's `Tag` message (KPL writes none; parsed so a pack with tags still decodes).
///
/// `key` is `required` in the schema; it is declared optional here so a missing one is
/// seen (prost does not check required fields) and the pack refused, as KCL's parser
/// would.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    /// The tag's key (required in the schema).
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// The tag's value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// KPL's `Record` message: one user record.
///
/// `partition_key_index` and `data` are `required` in the schema; they are declared
/// optional here so a missing one is seen, as for [`Tag::key`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedEntry {
    /// Index into [`AggregatedRecord::partition_key_table`] (required).
    #[prost(uint64, optional, tag = "1")]
    pub partition_key_index: Option<u64>,
    /// Index into [`AggregatedRecord::explicit_hash_key_table`].
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user record's data (required).
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub data: Option<Bytes>,
    /// Tags (unused by esm).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// Why a record that starts with [`KPL_MAGIC`] was passed through whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeaggregationError {
    /// Too short to hold the magic, a protobuf and the checksum.
    #[error("too short for an aggregate ({len} bytes)")]
    TooShort {
        /// The record's data length.
        len: usize,
    },
    /// The MD5 trailer does not match the protobuf bytes.
    #[error("the MD5 checksum does not match")]
    Checksum,
    /// The protobuf does not decode.
    #[error("the protobuf does not decode: {0}")]
    Protobuf(String),
    /// A field the schema requires is missing.
    #[error("user record {index} has no {field}")]
    MissingField {
        /// The user record.
        index: usize,
        /// The field.
        field: &'static str,
    },
    /// A key index points outside its table.
    #[error("user record {index}: {table} index {value} is outside the table of {len}")]
    BadIndex {
        /// The user record.
        index: usize,
        /// Which table.
        table: &'static str,
        /// The index it gave.
        value: u64,
        /// The table's length.
        len: usize,
    },
}

/// What became of one Kinesis record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expansion {
    /// Not an aggregate: the record itself was pushed.
    Plain,
    /// An aggregate: this many user records were pushed (possibly none).
    Aggregated {
        /// How many.
        user_records: usize,
    },
    /// It starts with the magic but is not a valid aggregate: the record itself was
    /// pushed, as a plain record.
    PassedThrough(DeaggregationError),
}

/// Expands `record` into its user records, in order, pushing them onto `out`; a plain
/// record, or an aggregate that fails to decode, is pushed as it is. Never panics,
/// whatever the bytes.
pub fn expand_into(record: Record, out: &mut Vec<Record>) -> Expansion {
    if !record.data.starts_with(&KPL_MAGIC) {
        out.push(record);
        return Expansion::Plain;
    }
    match decode(&record) {
        Ok(aggregate) => {
            let user_records = aggregate.records.len();
            out.reserve(user_records);
            let AggregatedRecord {
                partition_key_table,
                explicit_hash_key_table,
                records,
            } = aggregate;
            for (index, entry) in records.into_iter().enumerate() {
                // decode() checked every index and required field.
                let key = entry
                    .partition_key_index
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| partition_key_table.get(i))
                    .cloned()
                    .unwrap_or_default();
                let explicit_hash_key = entry
                    .explicit_hash_key_index
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| explicit_hash_key_table.get(i))
                    .cloned();
                out.push(Record {
                    position: Position::new(record.position.sequence.clone(), index as u64),
                    partition_key: key,
                    explicit_hash_key,
                    data: entry.data.unwrap_or_default(),
                    approximate_arrival: record.approximate_arrival,
                });
            }
            Expansion::Aggregated { user_records }
        }
        Err(error) => {
            out.push(record);
            Expansion::PassedThrough(error)
        }
    }
}

/// Expands `record` into its user records (see [`expand_into`]).
pub fn expand(record: Record) -> (Vec<Record>, Expansion) {
    let mut out = Vec::new();
    let expansion = expand_into(record, &mut out);
    (out, expansion)
}

/// Checks and decodes an aggregate (the record starts with the magic).
fn decode(record: &Record) -> Result<AggregatedRecord, DeaggregationError> {
    let data = &record.data;
    let len = data.len();
    if len < KPL_MAGIC.len() + DIGEST_LEN {
        return Err(DeaggregationError::TooShort { len });
    }
    let body_end = len - DIGEST_LEN;
    let body = data.slice(KPL_MAGIC.len()..body_end);
    if Md5::digest(&body).as_slice() != &data[body_end..] {
        return Err(DeaggregationError::Checksum);
    }
    let aggregate =
        AggregatedRecord::decode(body).map_err(|e| DeaggregationError::Protobuf(e.to_string()))?;
    let (keys, hash_keys) = (
        aggregate.partition_key_table.len(),
        aggregate.explicit_hash_key_table.len(),
    );
    for (index, entry) in aggregate.records.iter().enumerate() {
        let key = entry
            .partition_key_index
            .ok_or(DeaggregationError::MissingField {
                index,
                field: "partition_key_index",
            })?;
        check_index(index, "partition_key", key, keys)?;
        if let Some(hash_key) = entry.explicit_hash_key_index {
            check_index(index, "explicit_hash_key", hash_key, hash_keys)?;
        }
        if entry.data.is_none() {
            return Err(DeaggregationError::MissingField {
                index,
                field: "data",
            });
        }
        if entry.tags.iter().any(|t| t.key.is_none()) {
            return Err(DeaggregationError::MissingField {
                index,
                field: "tag key",
            });
        }
    }
    Ok(aggregate)
}

fn check_index(
    index: usize,
    table: &'static str,
    value: u64,
    len: usize,
) -> Result<(), DeaggregationError> {
    if usize::try_from(value).is_ok_and(|v| v < len) {
        Ok(())
    } else {
        Err(DeaggregationError::BadIndex {
            index,
            table,
            value,
            len,
        })
    }
}

/// A user record to pack with [`aggregate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Its partition key.
    pub partition_key: String,
    /// Its explicit hash key, if any.
    pub explicit_hash_key: Option<String>,
    /// Its data.
    pub data: Bytes,
}

/// Packs `records` into the data of one Kinesis record, as KPL does: magic, protobuf
/// (keys shared through the tables), MD5. For tests and benchmarks.
pub fn aggregate(records: &[UserRecord]) -> Bytes {
    let mut message = AggregatedRecord::default();
    for r in records {
        let partition_key_index = table_index(&mut message.partition_key_table, &r.partition_key);
        let explicit_hash_key_index = r
            .explicit_hash_key
            .as_ref()
            .map(|k| table_index(&mut message.explicit_hash_key_table, k));
        message.records.push(AggregatedEntry {
            partition_key_index: Some(partition_key_index),
            explicit_hash_key_index,
            data: Some(r.data.clone()),
            tags: Vec::new(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(KPL_MAGIC.len() + body.len() + DIGEST_LEN);
    out.put_slice(&KPL_MAGIC);
    out.put_slice(&body);
    out.put_slice(&Md5::digest(&body));
    out.freeze()
}

/// The index of `key` in `table`, appending it when new.
fn table_index(table: &mut Vec<String>, key: &str) -> u64 {
    let index = table.iter().position(|k| k == key).unwrap_or_else(|| {
        table.push(key.to_owned());
        table.len() - 1
    });
    index as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::SequenceNumber;
    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;

    fn arrival() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()
    }

    fn kinesis(data: Bytes) -> Record {
        Record {
            position: Position::plain(SequenceNumber::parse("4959").unwrap()),
            partition_key: "outer".into(),
            explicit_hash_key: Some("1".into()),
            data,
            approximate_arrival: arrival(),
        }
    }

    fn user(key: &str, hash: Option<&str>, data: &str) -> UserRecord {
        UserRecord {
            partition_key: key.into(),
            explicit_hash_key: hash.map(Into::into),
            data: Bytes::from(data.to_owned()),
        }
    }

    /// The data of an aggregate whose protobuf is `body` (with a correct checksum).
    fn framed(body: &[u8]) -> Bytes {
        [&KPL_MAGIC[..], body, &Md5::digest(body)[..]]
            .concat()
            .into()
    }

    #[test]
    fn an_aggregate_expands_into_its_user_records_in_order() {
        let users = [
            user("a", None, "one"),
            user("b", Some("340282366920938463463374607431768211455"), "two"),
            user("a", None, ""),
        ];
        let (out, how) = expand(kinesis(aggregate(&users)));
        assert_eq!(how, Expansion::Aggregated { user_records: 3 });
        let seq = SequenceNumber::parse("4959").unwrap();
        for (i, (got, want)) in out.iter().zip(&users).enumerate() {
            assert_eq!(got.position, Position::new(seq.clone(), i as u64));
            assert_eq!(got.partition_key, want.partition_key);
            assert_eq!(got.explicit_hash_key, want.explicit_hash_key);
            assert_eq!(got.data, want.data);
            assert_eq!(got.approximate_arrival, arrival());
        }
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn keys_are_shared_through_the_tables() {
        let users = [user("k", None, "1"), user("k", None, "2")];
        let data = aggregate(&users);
        let body = &data[4..data.len() - 16];
        let message = AggregatedRecord::decode(body).unwrap();
        assert_eq!(message.partition_key_table, ["k"]);
        assert!(message.explicit_hash_key_table.is_empty());
    }

    #[test]
    fn a_record_without_the_magic_is_plain() {
        let plain = kinesis(Bytes::from_static(b"{\"a\":1}"));
        let (out, how) = expand(plain.clone());
        assert_eq!(how, Expansion::Plain);
        assert_eq!(out, [plain]);
    }

    #[test]
    fn an_empty_aggregate_expands_to_nothing() {
        let (out, how) = expand(kinesis(aggregate(&[])));
        assert_eq!(how, Expansion::Aggregated { user_records: 0 });
        assert!(out.is_empty());
    }

    #[test]
    fn a_bad_checksum_passes_the_record_through() {
        let mut data = aggregate(&[user("a", None, "x")]).to_vec();
        let last = data.len() - 1;
        data[last] ^= 1;
        let record = kinesis(data.into());
        let (out, how) = expand(record.clone());
        assert_eq!(how, Expansion::PassedThrough(DeaggregationError::Checksum));
        assert_eq!(out, [record]);
    }

    #[test]
    fn a_record_too_short_passes_through() {
        let record = kinesis(Bytes::from_static(&[0xF3, 0x89, 0x9A, 0xC2, 1, 2]));
        let (out, how) = expand(record.clone());
        assert_eq!(
            how,
            Expansion::PassedThrough(DeaggregationError::TooShort { len: 6 })
        );
        assert_eq!(out, [record]);
    }

    #[test]
    fn a_protobuf_that_does_not_decode_passes_through() {
        // Field 3 (records), length-delimited, claiming 100 bytes that are not there.
        let record = kinesis(framed(&[0x1A, 100, 1]));
        let (out, how) = expand(record.clone());
        assert!(matches!(
            how,
            Expansion::PassedThrough(DeaggregationError::Protobuf(_))
        ));
        assert_eq!(out, [record]);
    }

    #[test]
    fn a_key_index_outside_its_table_passes_through() {
        let message = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![AggregatedEntry {
                partition_key_index: Some(1),
                explicit_hash_key_index: None,
                data: Some(Bytes::new()),
                tags: vec![],
            }],
        };
        let (_, how) = expand(kinesis(framed(&message.encode_to_vec())));
        assert_eq!(
            how,
            Expansion::PassedThrough(DeaggregationError::BadIndex {
                index: 0,
                table: "partition_key",
                value: 1,
                len: 1
            })
        );
        let mut message = message;
        message.records[0].partition_key_index = Some(0);
        message.records[0].explicit_hash_key_index = Some(0);
        let (_, how) = expand(kinesis(framed(&message.encode_to_vec())));
        assert!(matches!(
            how,
            Expansion::PassedThrough(DeaggregationError::BadIndex {
                table: "explicit_hash_key",
                ..
            })
        ));
    }

    #[test]
    fn a_missing_required_field_passes_through() {
        let entry = AggregatedEntry {
            partition_key_index: Some(0),
            explicit_hash_key_index: None,
            data: Some(Bytes::new()),
            tags: vec![],
        };
        let mut cases = Vec::new();
        let mut no_key = entry.clone();
        no_key.partition_key_index = None;
        cases.push((no_key, "partition_key_index"));
        let mut no_data = entry.clone();
        no_data.data = None;
        cases.push((no_data, "data"));
        let mut no_tag_key = entry;
        no_tag_key.tags.push(Tag {
            key: None,
            value: Some("v".into()),
        });
        cases.push((no_tag_key, "tag key"));
        for (entry, field) in cases {
            let message = AggregatedRecord {
                partition_key_table: vec!["a".into()],
                explicit_hash_key_table: vec![],
                records: vec![entry],
            };
            let (_, how) = expand(kinesis(framed(&message.encode_to_vec())));
            assert_eq!(
                how,
                Expansion::PassedThrough(DeaggregationError::MissingField { index: 0, field })
            );
        }
    }

    #[test]
    fn a_pack_with_tags_decodes() {
        let message = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![AggregatedEntry {
                partition_key_index: Some(0),
                explicit_hash_key_index: None,
                data: Some(Bytes::from_static(b"d")),
                tags: vec![Tag {
                    key: Some("t".into()),
                    value: None,
                }],
            }],
        };
        let (out, how) = expand(kinesis(framed(&message.encode_to_vec())));
        assert_eq!(how, Expansion::Aggregated { user_records: 1 });
        assert_eq!(out[0].data, Bytes::from_static(b"d"));
    }

    /// The wire bytes of one aggregate as Python's `aws_kinesis_agg` 1.2.x writes it
    /// (keys "k0", "k1"; data "a", "bb"): the encoder here and the one the e2e tests
    /// use agree on the format.
    #[test]
    fn the_encoder_writes_kpls_wire_format() {
        let data = aggregate(&[user("k0", None, "a"), user("k1", None, "bb")]);
        let body = &data[4..data.len() - 16];
        let want: &[u8] = &[
            0x0A, 2, b'k', b'0', 0x0A, 2, b'k', b'1', // partition_key_table
            0x1A, 5, 0x08, 0, 0x1A, 1, b'a', // record 0: key 0, data "a"
            0x1A, 6, 0x08, 1, 0x1A, 2, b'b', b'b', // record 1: key 1, data "bb"
        ];
        assert_eq!(body, want);
        assert_eq!(&data[..4], &KPL_MAGIC);
    }

    fn users() -> impl Strategy<Value = Vec<UserRecord>> {
        proptest::collection::vec(
            (
                "[a-z0-9]{1,8}",
                proptest::option::of("[0-9]{1,39}"),
                proptest::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(|(partition_key, explicit_hash_key, data)| UserRecord {
                    partition_key,
                    explicit_hash_key,
                    data: data.into(),
                }),
            0..40,
        )
    }

    /// What must hold for any expansion: it never panics, a pass-through or plain
    /// record is the record itself, and user records carry the Kinesis record's
    /// sequence number and arrival time with sub-sequences 0, 1, 2, ….
    fn check(record: Record) -> Result<Expansion, TestCaseError> {
        let (out, how) = expand(record.clone());
        match &how {
            Expansion::Plain | Expansion::PassedThrough(_) => {
                prop_assert_eq!(&out, &[record]);
            }
            Expansion::Aggregated { user_records } => {
                prop_assert_eq!(out.len(), *user_records);
                for (i, r) in out.iter().enumerate() {
                    prop_assert_eq!(&r.position.sequence, &record.position.sequence);
                    prop_assert_eq!(r.position.sub_sequence, i as u64);
                    prop_assert_eq!(r.approximate_arrival, record.approximate_arrival);
                }
            }
        }
        Ok(how)
    }

    proptest! {
        #[test]
        fn encode_then_expand_gives_the_user_records_back(users in users()) {
            let (out, how) = expand(kinesis(aggregate(&users)));
            prop_assert_eq!(how, Expansion::Aggregated { user_records: users.len() });
            let back: Vec<UserRecord> = out
                .into_iter()
                .map(|r| UserRecord {
                    partition_key: r.partition_key,
                    explicit_hash_key: r.explicit_hash_key,
                    data: r.data,
                })
                .collect();
            prop_assert_eq!(back, users);
        }

        #[test]
        fn arbitrary_bytes_expand_or_pass_through(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            check(kinesis(data.into()))?;
        }

        #[test]
        fn arbitrary_bytes_after_the_magic_pass_through(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let record = kinesis([&KPL_MAGIC[..], &data].concat().into());
            // Without a matching checksum nothing decodes.
            prop_assert!(matches!(check(record)?, Expansion::PassedThrough(_)));
        }

        #[test]
        fn arbitrary_protobuf_bytes_with_a_good_checksum_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            check(kinesis(framed(&body)))?;
        }

        /// A valid aggregate with bytes flipped, cut or added anywhere: it expands
        /// (only if the corruption left a valid aggregate) or passes through whole.
        #[test]
        fn corrupt_aggregates_expand_or_pass_through(
            users in users(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            extra in proptest::collection::vec(any::<u8>(), 0..4),
            reframe in any::<bool>(),
        ) {
            let mut data = aggregate(&users).to_vec();
            // Corrupt the whole record, or (reframe) the protobuf alone with the
            // checksum made right again, so the decoder and the index checks meet it.
            let mut body = data[4..data.len() - 16].to_vec();
            let target = if reframe { &mut body } else { &mut data };
            for (at, mask) in &flips {
                if !target.is_empty() {
                    let i = at.index(target.len());
                    target[i] ^= mask;
                }
            }
            if let Some(at) = cut {
                let keep = at.index(target.len() + 1);
                target.truncate(keep);
            }
            target.extend_from_slice(&extra);
            let bytes: Bytes = if reframe { framed(&body) } else { data.into() };
            check(kinesis(bytes))?;
        }
    }
}
