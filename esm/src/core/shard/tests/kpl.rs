//! KPL de-aggregation in the shard machine: user records are what is filtered,
//! routed, batched, checkpointed and retried; `deaggregate = false` leaves aggregates
//! whole.

use super::*;
use crate::core::filter::FilterCriteria;
use crate::core::kpl::{aggregate, UserRecord};

/// Kinesis record `n`: an aggregate of `users` (key, data) arrived at `wall0`.
fn packed(n: u64, users: &[(&str, &str)]) -> Record {
    let users: Vec<UserRecord> = users
        .iter()
        .map(|(key, data)| UserRecord {
            partition_key: (*key).to_string(),
            explicit_hash_key: None,
            data: Bytes::from((*data).to_string()),
        })
        .collect();
    let mut r = record(n, "outer-key", 0);
    r.data = aggregate(&users);
    r
}

/// `(record number, sub-sequence)` of a position.
fn at(p: &Position) -> (u64, u64) {
    (number(&p.sequence), p.sub_sequence)
}

/// `(record number, partition key)` of every record of every invocation, in order.
fn invoked_keys(sim: &Sim) -> Vec<(u64, String)> {
    sim.invoked
        .iter()
        .flat_map(|(_, records)| {
            records
                .iter()
                .map(|(seq, key)| (seq.parse::<u64>().unwrap() - 1_000_000, key.clone()))
        })
        .collect()
}

/// Lets every checkpoint write in flight succeed.
fn save_all(sim: &mut Sim) {
    while sim.saving.is_some() {
        sim.save_ok();
    }
}

fn report_failures() -> FailureRules {
    FailureRules {
        report_item_failures: true,
        ..rules()
    }
}

fn failing(record: u64) -> Outcome {
    Outcome::Returned {
        response: Bytes::from(format!(
            r#"{{"batchItemFailures":[{{"itemIdentifier":"{}"}}]}}"#,
            seq(record)
        ))
        .into(),
    }
}

#[test]
fn an_aggregate_reaches_the_function_as_its_user_records() {
    let mut sim = Sim::fresh(settings(1, 10, rules(), false));
    let mut plain = record(1, "p", 3);
    plain.data = Bytes::from_static(b"raw");
    sim.feed(Input::Page(page(vec![
        packed(0, &[("a", "one"), ("b", "two"), ("a", "three")]),
        plain,
    ])));
    assert_eq!(sim.polled, 4, "polled counts user records");
    assert_eq!(
        invoked_keys(&sim),
        [
            (0, "a".into()),
            (0, "b".into()),
            (0, "a".into()),
            (1, "p".into())
        ]
    );
    // The event: the Kinesis record's sequence number (shared), eventID, arrival;
    // the user record's key and data.
    let records = sim.events[0]["Records"].as_array().unwrap();
    let data: Vec<&str> = records
        .iter()
        .map(|r| r["kinesis"]["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["b25l", "dHdv", "dGhyZWU=", "cmF3"]);
    for r in &records[..3] {
        assert_eq!(r["kinesis"]["sequenceNumber"], seq(0).as_str());
        assert_eq!(r["eventID"], format!("{SHARD}:{}", seq(0)));
        assert_eq!(
            r["kinesis"]["approximateArrivalTimestamp"],
            records[3]["kinesis"]["approximateArrivalTimestamp"]
        );
    }
    sim.answer(0, ok());
    save_all(&mut sim);
    assert_eq!(sim.checkpoint().map(|p| at(&p)), Some((1, 0)));
    assert_eq!(sim.m.state().settled.handled, 4);
}

#[test]
fn with_deaggregate_false_an_aggregate_passes_whole() {
    let mut s = settings(1, 10, rules(), false);
    s.deaggregate = false;
    let mut sim = Sim::fresh(s);
    sim.feed(Input::Page(page(vec![packed(
        0,
        &[("a", "1"), ("b", "2")],
    )])));
    assert_eq!(sim.polled, 1);
    assert_eq!(invoked_keys(&sim), [(0, "outer-key".into())]);
    assert!(sim.notes.is_empty(), "{:?}", sim.notes);
}

#[test]
fn a_corrupt_aggregate_passes_through_whole_with_a_note() {
    let mut sim = Sim::fresh(settings(1, 10, rules(), false));
    let mut bad = packed(0, &[("a", "1")]);
    let mut data = bad.data.to_vec();
    let last = data.len() - 1;
    data[last] ^= 0xFF;
    bad.data = data.into();
    sim.feed(Input::Page(page(vec![bad, packed(1, &[("b", "2")])])));
    assert_eq!(
        invoked_keys(&sim),
        [(0, "outer-key".into()), (1, "b".into())]
    );
    assert_eq!(
        sim.notes,
        [Note::DeaggregationFailed {
            sequence: seq(0),
            reason: crate::core::kpl::DeaggregationError::Checksum,
        }]
    );
}

#[test]
fn filters_apply_to_each_user_record() {
    let mut s = settings(1, 10, rules(), false);
    s.filter = FilterCriteria::parse(&[r#"{"data": {"kind": ["order"]}}"#]).unwrap();
    let mut sim = Sim::fresh(s);
    sim.feed(Input::Page(page(vec![
        packed(
            0,
            &[
                ("a", r#"{"kind":"order","n":0}"#),
                ("b", r#"{"kind":"click","n":1}"#),
                ("c", r#"{"kind":"order","n":2}"#),
            ],
        ),
        packed(1, &[("d", r#"{"kind":"click","n":3}"#)]),
    ])));
    assert_eq!(invoked_keys(&sim), [(0, "a".into()), (0, "c".into())]);
    let filtered: usize = sim
        .notes
        .iter()
        .map(|n| match n {
            Note::FilteredOut { records } => *records,
            _ => 0,
        })
        .sum();
    assert_eq!(filtered, 2);
    assert!(!sim.notes.contains(&Note::AggregatedNotFiltered));
    sim.answer(0, ok());
    save_all(&mut sim);
    // The trailing filtered user record is done too.
    assert_eq!(sim.checkpoint().map(|p| at(&p)), Some((1, 0)));
    assert_eq!(sim.m.state().settled.filtered, 2);
}

#[test]
fn lanes_route_user_records_by_their_own_keys() {
    let keys = keys_for_lanes(3);
    let mut sim = Sim::fresh(settings(3, 10, rules(), false));
    let users: Vec<(&str, &str)> = (0..9).map(|i| (keys[i % 3].as_str(), "x")).collect();
    sim.feed(Input::Page(page(vec![packed(0, &users)])));
    assert_eq!(sim.invoking.len(), 3, "one invocation per lane");
    for (lane, records) in &sim.invoked {
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|(_, key)| *key == keys[*lane]));
    }
    // Each lane's records are its user records in order.
    let firsts: BTreeMap<usize, (u64, u64)> = sim
        .invoking
        .iter()
        .map(|(lane, r)| (*lane, at(r.first.as_ref().unwrap())))
        .collect();
    assert_eq!(
        firsts,
        BTreeMap::from([(0, (0, 0)), (1, (0, 1)), (2, (0, 2))])
    );
    for lane in 0..3 {
        sim.answer(lane, ok());
    }
    save_all(&mut sim);
    assert_eq!(sim.checkpoint().map(|p| at(&p)), Some((0, 8)));
}

#[test]
fn an_explicit_hash_key_routes_a_user_record() {
    let router = LaneRouter::new(0, u128::MAX, 4);
    let mut sim = Sim::fresh(settings(4, 10, rules(), false));
    // The top of the range is lane 3, whatever the partition key.
    let top = u128::MAX.to_string();
    let mut r = record(0, "outer", 0);
    r.data = aggregate(&[UserRecord {
        partition_key: "any".into(),
        explicit_hash_key: Some(top.clone()),
        data: Bytes::from_static(b"x"),
    }]);
    sim.feed(Input::Page(page(vec![r])));
    assert_eq!(router.lane_of_hash(u128::MAX), 3);
    assert_eq!(sim.invoked.len(), 1);
    assert_eq!(sim.invoked[0].0, 3);
}

#[test]
fn a_checkpoint_inside_an_aggregate_resumes_after_it() {
    let users: Vec<(&str, &str)> = (0..5).map(|_| ("k", "x")).collect();
    let pages = || page(vec![packed(0, &users), record(1, "k", 1)]);
    let mut sim = Sim::fresh(settings(1, 2, rules(), false));
    sim.feed(Input::Page(pages()));
    sim.answer(0, ok());
    assert_eq!(
        sim.saving
            .as_ref()
            .and_then(|s| s.checkpoint.as_ref())
            .map(at),
        Some((0, 1)),
        "the checkpoint points between user records"
    );
    sim.save_ok();
    // A crash now: a new runner reads from the aggregate again.
    let stored = sim.m.state().saved.clone();
    let mut again = Sim::new(settings(1, 10, rules(), false), stored);
    assert_eq!(again.m.read_from(), ReadFrom::AtSequence(seq(0)));
    again.feed(Input::Page(pages()));
    let firsts: Vec<(u64, u64)> = again
        .invoking
        .values()
        .map(|r| at(r.first.as_ref().unwrap()))
        .collect();
    assert_eq!(
        firsts,
        [(0, 2)],
        "resumes after the last handled user record"
    );
    assert_eq!(
        again.invoked[0].1.len(),
        4,
        "user records 2, 3, 4 and record 1"
    );
    again.answer(0, ok());
    save_all(&mut again);
    assert_eq!(again.checkpoint().map(|p| at(&p)), Some((1, 0)));
}

#[test]
fn a_failure_naming_an_aggregate_retries_from_its_first_user_record() {
    let mut sim = Sim::fresh(settings(1, 10, report_failures(), false));
    sim.feed(Input::Page(page(vec![
        record(0, "k", 1),
        packed(1, &[("a", "1"), ("b", "2"), ("c", "3")]),
        record(2, "k", 1),
    ])));
    assert_eq!(sim.invoked[0].1.len(), 5);
    // The function names the aggregate's sequence number (shared by 3 user records):
    // the retry starts at its first user record, so none is skipped.
    sim.answer(0, failing(1));
    assert_eq!(
        sim.saving
            .as_ref()
            .and_then(|s| s.checkpoint.as_ref())
            .map(at),
        Some((0, 0))
    );
    sim.save_ok();
    sim.wake();
    let retry = sim.invoking.get(&0).expect("a retry");
    assert_eq!(retry.first.as_ref().map(at), Some((1, 0)));
    assert_eq!(retry.records, 4);
    assert_eq!(
        invoked_keys(&sim)[5..],
        [
            (1, "a".into()),
            (1, "b".into()),
            (1, "c".into()),
            (2, "k".into())
        ]
    );
}

#[test]
fn a_failure_naming_an_aggregate_split_across_batches_retries_from_its_first_user_record_in_the_batch(
) {
    let mut sim = Sim::fresh(settings(1, 2, report_failures(), false));
    sim.feed(Input::Page(page(vec![packed(
        0,
        &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
    )])));
    sim.answer(0, ok());
    sim.save_ok();
    assert_eq!(sim.checkpoint().map(|p| at(&p)), Some((0, 1)));
    // The second batch holds user records 2 and 3; the function names their shared
    // sequence number: both are retried, the first batch's are not run again.
    let second = sim.invoking.get(&0).unwrap();
    assert_eq!(second.first.as_ref().map(at), Some((0, 2)));
    sim.answer(0, failing(0));
    assert!(sim.saving.is_none(), "nothing new is done");
    sim.wake();
    let retry = sim.invoking.get(&0).expect("a retry");
    assert_eq!(retry.first.as_ref().map(at), Some((0, 2)));
    assert_eq!(retry.records, 2);
    sim.answer(0, ok());
    sim.save_ok();
    assert_eq!(sim.checkpoint().map(|p| at(&p)), Some((0, 3)));
}

#[test]
fn batch_item_failures_names_the_first_sibling() {
    use crate::core::kpl::expand;
    use crate::core::response::{batch_item_failures, Verdict};
    let (mut records, _) = expand(packed(1, &[("a", "1"), ("b", "2"), ("c", "3")]));
    records.insert(0, record(0, "k", 1));
    let body = format!(
        r#"{{"batchItemFailures":[{{"itemIdentifier":"{}"}}]}}"#,
        seq(1)
    );
    assert_eq!(
        batch_item_failures(body.as_bytes(), &records),
        Verdict::FailedFrom { first: 1, named: 1 }
    );
}
