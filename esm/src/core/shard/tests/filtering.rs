//! Event filtering in the shard machine: records that match no pattern are done as
//! soon as they are read, never invoked, and counted.

use super::*;
use crate::core::filter::FilterCriteria;

fn filtered(lanes: usize, batch_size: usize) -> ShardSettings {
    let mut s = settings(lanes, batch_size, rules(), false);
    s.filter = FilterCriteria::parse(&[r#"{"data": {"kind": ["order"]}}"#]).unwrap();
    s
}

/// Record `n` with key `key` and JSON data of this kind.
fn of_kind(n: u64, key: &str, kind: &str) -> Record {
    let mut r = record(n, key, 0);
    r.data = Bytes::from(format!(r#"{{"n":{n},"kind":"{kind}"}}"#));
    r
}

fn filtered_out(notes: &[Note]) -> usize {
    notes
        .iter()
        .map(|n| match n {
            Note::FilteredOut { records } => *records,
            _ => 0,
        })
        .sum()
}

#[test]
fn records_matching_no_pattern_are_never_invoked_and_the_checkpoint_passes_them() {
    for lanes in [1, 3] {
        let mut sim = Sim::fresh(filtered(lanes, 10));
        let keys = keys_for_lanes(lanes);
        let kinds = ["order", "click", "click", "order", "click", "click"];
        let records = kinds
            .iter()
            .enumerate()
            .map(|(n, kind)| of_kind(n as u64, &keys[n % lanes], kind))
            .collect();
        sim.feed(Input::Page(page(records)));
        let invoked: Vec<u64> = sim
            .invoked
            .iter()
            .flat_map(|(_, records)| {
                records
                    .iter()
                    .map(|(seq, _)| seq.parse::<u64>().unwrap() - 1_000_000)
            })
            .collect();
        let mut invoked_sorted = invoked.clone();
        invoked_sorted.sort();
        assert_eq!(invoked_sorted, [0, 3], "lanes {lanes}");
        assert_eq!(filtered_out(&sim.notes), 4);
        for lane in sim.invoking.keys().copied().collect::<Vec<_>>() {
            sim.answer(lane, ok());
            if sim.saving.is_some() {
                sim.save_ok();
            }
        }
        // The trailing filtered records are done too: the checkpoint is the last one.
        assert_eq!(
            sim.checkpoint().map(|p| number(&p.sequence)),
            Some(5),
            "lanes {lanes}"
        );
        assert_eq!(sim.m.state().settled.filtered, 4);
    }
}

#[test]
fn a_page_where_every_record_is_filtered_out_still_moves_the_checkpoint() {
    let mut sim = Sim::fresh(filtered(1, 10));
    sim.feed(Input::Page(page(vec![
        of_kind(0, "k", "click"),
        of_kind(1, "k", "view"),
    ])));
    assert!(sim.invoked.is_empty());
    assert_eq!(sim.saves.len(), 1);
    assert_eq!(
        number(&sim.saves[0].checkpoint.clone().unwrap().sequence),
        1
    );
}

#[test]
fn data_that_is_not_json_matches_no_data_pattern() {
    let mut sim = Sim::fresh(filtered(1, 10));
    sim.feed(Input::Page(page(vec![record(0, "k", 10)])));
    assert!(sim.invoked.is_empty());
    assert_eq!(filtered_out(&sim.notes), 1);
}

/// A record still KPL-aggregated (`deaggregate = false`, or one that fails to
/// de-aggregate) passes unfiltered, with one warning.
#[test]
fn kpl_aggregated_records_are_never_filtered_out() {
    for deaggregate in [false, true] {
        let mut s = filtered(1, 10);
        s.deaggregate = deaggregate;
        let mut sim = Sim::fresh(s);
        let mut aggregated = record(0, "k", 0);
        aggregated.data = Bytes::from([&KPL_MAGIC[..], b"not json"].concat());
        sim.feed(Input::Page(page(vec![
            aggregated,
            of_kind(1, "k", "click"),
        ])));
        assert_eq!(sim.invoked.len(), 1);
        assert_eq!(sim.invoked[0].1.len(), 1);
        assert_eq!(
            sim.notes
                .iter()
                .filter(|n| matches!(n, Note::AggregatedNotFiltered))
                .count(),
            1
        );
        assert_eq!(
            sim.notes
                .iter()
                .filter(|n| matches!(n, Note::DeaggregationFailed { .. }))
                .count(),
            usize::from(deaggregate)
        );
    }
}

#[test]
fn without_patterns_every_record_is_kept() {
    let mut sim = Sim::fresh(settings(1, 10, rules(), false));
    sim.feed(Input::Page(page(vec![
        record(0, "k", 10),
        of_kind(1, "k", "click"),
    ])));
    assert_eq!(sim.invoked[0].1.len(), 2);
    assert_eq!(filtered_out(&sim.notes), 0);
}

#[test]
fn a_filtered_record_of_a_later_window_ends_the_open_window() {
    let mut s = filtered(1, 10);
    s.tumbling = crate::core::window::Tumbling::new(Duration::from_secs(5));
    let mut sim = Sim::fresh(s);
    sim.feed(Input::Page(page(vec![of_kind(0, "k", "order")])));
    sim.answer(
        0,
        Outcome::Returned {
            response: Bytes::from_static(br#"{"state":{"n":1}}"#).into(),
        },
    );
    let mut later = of_kind(1, "k", "click");
    later.approximate_arrival = wall0() + chrono::Duration::seconds(5);
    sim.feed(Input::Page(page(vec![later])));
    let last = &sim.events[1];
    assert_eq!(last["isFinalInvokeForWindow"], true);
    assert_eq!(last["Records"].as_array().unwrap().len(), 0);
}
