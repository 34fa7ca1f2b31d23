//! KPL-aggregated traffic for the end-to-end tests: user records packed by AWS's
//! own Python package `aws_kinesis_agg` (`tests/python/kpl_aggregate.py`, installed
//! by `scripts/emulators.sh install-python`), put as the Kinesis records KPL would
//! put, and the user records the function should see.
//!
//! The packing is done by AWS's code, not esm's encoder, so the tests check esm
//! against the format as producers write it. Each aggregate is also expanded with
//! esm's de-aggregator here, as a cross-check that fails loudly if the two disagree.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::{put_entries, BatchLine, PutRecord};

/// A user record to aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Its partition key.
    pub key: String,
    /// Its data.
    pub data: Vec<u8>,
}

/// One aggregated Kinesis record put, and the user records inside it.
#[derive(Clone, Debug)]
pub struct PutAggregate {
    /// Where it landed.
    pub put: PutRecord,
    /// Its user records, in order.
    pub users: Vec<UserRecord>,
}

/// One user record as the function should see it, or saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeenUser {
    /// `kinesis.sequenceNumber`: the aggregate's, shared with its siblings.
    pub seq: String,
    /// The user record's partition key.
    pub key: String,
    /// The start of its data, as the recorder writes it (64 characters).
    pub data: String,
}

#[derive(Deserialize)]
struct AggregateLine {
    partition_key: String,
    data: String,
    user_records: usize,
}

/// The test venv's Python, which must have `aws_kinesis_agg`. Panics (never skips)
/// when it is missing: `scripts/test` installs it.
pub fn python() -> String {
    let python = std::env::var("ESM_TEST_PYTHON").expect(
        "ESM_TEST_PYTHON is not set: run through scripts/test, or eval \"$(scripts/emulators.sh env)\"",
    );
    let ok = Command::new(&python)
        .args(["-c", "import aws_kinesis_agg.aggregator"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import aws_kinesis_agg: run scripts/emulators.sh install-python"
    );
    python
}

/// Packs `users`, in order, at most `per` to an aggregate, with `aws_kinesis_agg`;
/// returns each aggregate's (partition key, data, user record count).
pub fn aggregate_with_python(users: &[UserRecord], per: usize) -> Vec<(String, Vec<u8>, usize)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kpl_aggregate.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(per.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run kpl_aggregate.py");
    let mut input = String::new();
    for u in users {
        let line = serde_json::json!({"partition_key": u.key, "data": b64.encode(&u.data)});
        input.push_str(&format!("{line}\n"));
    }
    // Written from a thread: the script writes aggregates while it reads, and both
    // pipes are bounded.
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("kpl_aggregate.py");
    writer
        .join()
        .expect("the writer thread")
        .expect("write to kpl_aggregate.py");
    assert!(out.status.success(), "kpl_aggregate.py failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let a: AggregateLine = serde_json::from_str(line).expect("an aggregate line");
            let data = b64.decode(a.data).expect("base64");
            (a.partition_key, data, a.user_records)
        })
        .collect()
}

/// Aggregates `users` (at most `per` to a Kinesis record) and puts the aggregates, in
/// order; returns where each landed with its user records.
pub async fn put_aggregated(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    users: Vec<UserRecord>,
    per: usize,
) -> Vec<PutAggregate> {
    let packed = aggregate_with_python(&users, per);
    let mut rest = users.as_slice();
    let mut groups = Vec::with_capacity(packed.len());
    for (_, data, count) in &packed {
        let (group, tail) = rest.split_at(*count);
        rest = tail;
        check_with_esm(data, group);
        groups.push(group.to_vec());
    }
    assert!(rest.is_empty(), "kpl_aggregate.py left user records out");
    let entries = packed
        .into_iter()
        .map(|(key, data, _)| (key, data))
        .collect();
    let put = put_entries(client, stream, entries).await;
    put.into_iter()
        .zip(groups)
        .map(|(put, users)| PutAggregate { put, users })
        .collect()
}

/// Asserts that esm's de-aggregator expands `data` into `users`.
fn check_with_esm(data: &[u8], users: &[UserRecord]) {
    use esm::core::kpl::{expand, Expansion};
    use esm::core::record::{Position, Record, SequenceNumber};
    let record = Record {
        position: Position::plain(SequenceNumber::parse("1").expect("a sequence number")),
        partition_key: String::new(),
        explicit_hash_key: None,
        data: bytes::Bytes::copy_from_slice(data),
        approximate_arrival: chrono::Utc::now(),
    };
    let (out, how) = expand(record);
    assert_eq!(
        how,
        Expansion::Aggregated {
            user_records: users.len()
        }
    );
    for (got, want) in out.iter().zip(users) {
        assert_eq!(
            (got.partition_key.as_str(), &got.data[..]),
            (want.key.as_str(), &want.data[..])
        );
    }
}

/// The start of `data` as the recorder writes it.
fn prefix(data: &[u8]) -> String {
    String::from_utf8_lossy(data).chars().take(64).collect()
}

/// The user records the function should see, per shard, in order.
pub fn expected_users(put: &[PutAggregate]) -> BTreeMap<String, Vec<SeenUser>> {
    let mut out: BTreeMap<String, Vec<SeenUser>> = BTreeMap::new();
    for a in put {
        out.entry(a.put.shard.clone())
            .or_default()
            .extend(a.users.iter().map(|u| SeenUser {
                seq: a.put.seq.clone(),
                key: u.key.clone(),
                data: prefix(&u.data),
            }));
    }
    out
}

/// The user records the function saw, per shard, in the order it saw them.
pub fn seen_users(batches: &[BatchLine]) -> BTreeMap<String, Vec<SeenUser>> {
    let mut out: BTreeMap<String, Vec<SeenUser>> = BTreeMap::new();
    for b in batches {
        out.entry(b.shard.clone())
            .or_default()
            .extend(b.records.iter().map(|r| SeenUser {
                seq: r.seq.clone(),
                key: r.key.clone(),
                data: r.data.clone(),
            }));
    }
    out
}

/// `n` JSON user records `{"u":N,"kind":KIND,"pad":"…"}` of about 100 bytes, keys
/// `user-{N % 16}`; `kind(N)` names each one's kind.
pub fn json_users(n: usize, kind: impl Fn(usize) -> &'static str) -> Vec<UserRecord> {
    (0..n)
        .map(|i| {
            let head = format!(r#"{{"u":{i},"kind":"{}","pad":""#, kind(i));
            let pad = "x".repeat(100usize.saturating_sub(head.len() + 2));
            UserRecord {
                key: format!("user-{}", i % 16),
                data: format!(r#"{head}{pad}"}}"#).into_bytes(),
            }
        })
        .collect()
}

/// The number `N` of a user record made by [`json_users`], from its data's start.
pub fn user_number(data: &str) -> usize {
    data.strip_prefix(r#"{"u":"#)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a test user record: {data}"))
}
