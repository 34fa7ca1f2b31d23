//! Tumbling windows in the shard machine, under simulated time.

use serde_json::{json, Value};

use super::*;
use crate::core::window::Tumbling;

const WINDOW: Duration = Duration::from_secs(5);

fn windowed(batch_size: usize, rules: FailureRules, destination: bool) -> ShardSettings {
    let mut s = settings(1, batch_size, rules, destination);
    s.tumbling = Tumbling::new(WINDOW);
    s
}

/// Record `n`, arrived `ms` milliseconds after `wall0` (a window start).
fn arrived(n: u64, ms: i64) -> Record {
    let mut r = record(n, "k", 10);
    r.approximate_arrival = wall0() + chrono::Duration::milliseconds(ms);
    r
}

/// A page read by a call issued at `issued_ms` after `wall0`, `behind` ms behind.
fn page_at(records: Vec<Record>, issued_ms: i64, behind: i64) -> Page {
    Page {
        records,
        millis_behind_latest: Some(behind),
        end: None,
        issued_at: Some(wall0() + chrono::Duration::milliseconds(issued_ms)),
    }
}

fn with_state(state: Value) -> Outcome {
    Outcome::Returned {
        response: Bytes::from(serde_json::to_vec(&json!({ "state": state })).unwrap()).into(),
    }
}

/// The sequence numbers (as `n`) of an event's records.
fn numbers(event: &Value) -> Vec<u64> {
    event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["kinesis"]["sequenceNumber"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                - 1_000_000
        })
        .collect()
}

fn window_start(event: &Value) -> String {
    event["window"]["start"].as_str().unwrap().to_string()
}

fn rfc3339(ms: i64) -> String {
    (wall0() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn is_final(event: &Value) -> bool {
    event["isFinalInvokeForWindow"].as_bool().unwrap()
}

fn is_early(event: &Value) -> bool {
    event["isWindowTerminatedEarly"].as_bool().unwrap()
}

#[test]
fn invocations_of_a_window_carry_its_state_and_the_final_one_moves_the_checkpoint() {
    let mut sim = Sim::fresh(windowed(2, rules(), false));
    sim.feed(Input::Page(page(vec![
        arrived(0, 0),
        arrived(1, 1_000),
        arrived(2, 2_000),
        arrived(3, 3_000),
    ])));
    let first = sim.events[0].clone();
    assert_eq!(numbers(&first), [0, 1]);
    assert_eq!(first["state"], json!({}));
    assert_eq!(
        first["window"],
        json!({"start": rfc3339(0), "end": rfc3339(5_000)})
    );
    assert_eq!(first["shardId"], SHARD);
    assert_eq!(
        first["eventSourceARN"],
        "arn:aws:kinesis:us-east-1:000000000000:stream/s"
    );
    assert!(!is_final(&first) && !is_early(&first));
    // Lambda's key order.
    let text = String::from_utf8(sim.payloads[0].to_vec()).unwrap();
    // The last occurrence: `eventSourceARN` is also a field of each record.
    let at = |key: &str| text.rfind(&format!("\"{key}\":")).unwrap();
    let order = [
        "Records",
        "window",
        "state",
        "shardId",
        "eventSourceARN",
        "isFinalInvokeForWindow",
        "isWindowTerminatedEarly",
    ];
    assert!(
        order.windows(2).all(|pair| at(pair[0]) < at(pair[1])),
        "{text}"
    );

    sim.answer(0, with_state(json!({"n": 2})));
    assert_eq!(numbers(&sim.events[1]), [2, 3]);
    assert_eq!(sim.events[1]["state"], json!({"n": 2}));
    assert!(!is_final(&sim.events[1]));
    sim.answer(0, with_state(json!({"n": 4})));
    // The window has not ended: no final invocation, and the checkpoint is held at
    // the window's start although every record is handled.
    assert!(sim.invoking.is_empty());
    assert!(sim.saves.is_empty());
    assert_eq!(sim.m.state().checkpoint, None);

    // A record of the next window ends it: the final invocation has no records.
    sim.feed(Input::Page(page(vec![arrived(4, 5_000)])));
    let last = sim.events[2].clone();
    assert_eq!(numbers(&last), Vec::<u64>::new());
    assert_eq!(last["state"], json!({"n": 4}));
    assert!(is_final(&last) && !is_early(&last));
    sim.answer(0, with_state(json!({})));
    // The checkpoint moves past the window; the next window's first batch starts
    // while that write is committed (the window holds the checkpoint at its start).
    assert_eq!(sim.saves.len(), 1);
    assert_eq!(
        number(&sim.saves[0].checkpoint.clone().unwrap().sequence),
        3
    );
    assert_eq!(sim.events.len(), 4);
    sim.save_ok();
    assert_eq!(numbers(&sim.events[3]), [4]);
    assert_eq!(sim.events[3]["state"], json!({}));
    assert_eq!(window_start(&sim.events[3]), rfc3339(5_000));
}

#[test]
fn the_last_batch_is_final_when_the_next_window_is_already_read() {
    let mut sim = Sim::fresh(windowed(10, rules(), false));
    sim.feed(Input::Page(page(vec![
        arrived(0, 4_000),
        arrived(1, 4_999),
        arrived(2, 5_000),
        arrived(3, 9_000),
        arrived(4, 10_001),
    ])));
    // One batch per window, never spanning two; the first is final at once.
    assert_eq!(numbers(&sim.events[0]), [0, 1]);
    assert!(is_final(&sim.events[0]));
    sim.answer(0, with_state(json!({"a": 1})));
    sim.save_ok();
    assert_eq!(numbers(&sim.events[1]), [2, 3]);
    assert_eq!(window_start(&sim.events[1]), rfc3339(5_000));
    assert_eq!(sim.events[1]["state"], json!({}));
    assert!(is_final(&sim.events[1]));
    sim.answer(0, with_state(json!({"b": 1})));
    sim.save_ok();
    assert_eq!(numbers(&sim.events[2]), [4]);
    assert!(!is_final(&sim.events[2]));
}

#[test]
fn a_quiet_window_ends_when_a_read_issued_after_its_end_finds_the_shard_caught_up() {
    let mut sim = Sim::fresh(windowed(10, rules(), false));
    sim.feed(Input::Page(page_at(vec![arrived(0, 1_000)], 1_500, 0)));
    assert!(!is_final(&sim.events[0]));
    sim.answer(0, with_state(json!({"n": 1})));
    // Issued before the end: not ended, however caught up.
    sim.feed(Input::Page(page_at(vec![], 4_999, 0)));
    // Issued after the end but behind: records of the window may be unread.
    sim.feed(Input::Page(page_at(vec![], 6_000, 2_000)));
    assert_eq!(sim.events.len(), 1);
    // Issued at the end, caught up: the window has ended.
    sim.feed(Input::Page(page_at(vec![], 5_000, 0)));
    assert_eq!(sim.events.len(), 2);
    assert!(is_final(&sim.events[1]));
    assert_eq!(numbers(&sim.events[1]), Vec::<u64>::new());
    assert_eq!(sim.events[1]["state"], json!({"n": 1}));
    sim.answer(0, with_state(json!({})));
    assert_eq!(
        number(&sim.saves[0].checkpoint.clone().unwrap().sequence),
        0
    );
}

#[test]
fn records_waiting_for_the_batching_window_go_out_final_when_the_window_ends() {
    let mut s = windowed(10, rules(), false);
    s.limits = BatchLimits::new(10, Duration::from_secs(60));
    let mut sim = Sim::fresh(s);
    sim.feed(Input::Page(page_at(vec![arrived(0, 1_000)], 1_000, 0)));
    assert!(
        sim.events.is_empty(),
        "the batching window holds the record"
    );
    sim.feed(Input::Page(page_at(vec![], 5_200, 0)));
    assert_eq!(numbers(&sim.events[0]), [0]);
    assert!(is_final(&sim.events[0]));
}

#[test]
fn a_response_without_state_is_a_failure_retried_with_the_same_state() {
    let mut sim = Sim::fresh(windowed(1, rules(), false));
    sim.feed(Input::Page(page(vec![arrived(0, 0), arrived(1, 100)])));
    sim.answer(0, with_state(json!({"n": 1})));
    sim.answer(
        0,
        Outcome::Returned {
            response: Bytes::from_static(br#"{"batchItemFailures": []}"#).into(),
        },
    );
    assert!(matches!(
        sim.notes.last(),
        Some(Note::Invoked {
            outcome: Outcome::FunctionError { .. },
            ..
        })
    ));
    sim.wake();
    assert_eq!(numbers(&sim.events[2]), [1]);
    assert_eq!(sim.events[2]["state"], json!({"n": 1}));
    sim.answer(0, error());
    sim.wake();
    assert_eq!(sim.events[3]["state"], json!({"n": 1}));
    sim.answer(0, with_state(json!({"n": 2})));
    sim.feed(Input::Page(page(vec![arrived(2, 5_000)])));
    assert_eq!(sim.events[4]["state"], json!({"n": 2}));
    assert!(is_final(&sim.events[4]));
}

#[test]
fn with_item_failures_the_state_returned_goes_on_with_the_retried_records() {
    let mut r = rules();
    r.report_item_failures = true;
    let mut sim = Sim::fresh(windowed(3, r, false));
    sim.feed(Input::Page(page(vec![
        arrived(0, 0),
        arrived(1, 100),
        arrived(2, 200),
    ])));
    let failed = seq(1).as_str().to_string();
    sim.answer(
        0,
        Outcome::Returned {
            response: Bytes::from(
                serde_json::to_vec(&json!({
                    "state": {"n": 1},
                    "batchItemFailures": [{"itemIdentifier": failed}]
                }))
                .unwrap(),
            )
            .into(),
        },
    );
    sim.wake();
    assert_eq!(numbers(&sim.events[1]), [1, 2]);
    assert_eq!(sim.events[1]["state"], json!({"n": 1}));
}

#[test]
fn a_state_over_1_mb_ends_the_window_early_and_it_goes_on_with_fresh_state() {
    let mut sim = Sim::fresh(windowed(1, rules(), false));
    sim.feed(Input::Page(page(vec![arrived(0, 0), arrived(1, 100)])));
    let big = "x".repeat(crate::core::window::MAX_STATE_BYTES);
    sim.answer(0, with_state(json!({ "big": big })));
    // The next invocation has no records and ends the window early.
    let early = sim.events[1].clone();
    assert_eq!(numbers(&early), Vec::<u64>::new());
    assert!(is_early(&early) && !is_final(&early));
    assert_eq!(early["state"]["big"].as_str().unwrap().len(), big.len());
    sim.answer(0, with_state(json!({})));
    // An early end is a checkpoint boundary: record 0 is saved before going on.
    assert_eq!(
        number(&sim.saves[0].checkpoint.clone().unwrap().sequence),
        0
    );
    sim.save_ok();
    assert_eq!(numbers(&sim.events[2]), [1]);
    assert_eq!(sim.events[2]["state"], json!({}));
    assert_eq!(window_start(&sim.events[2]), rfc3339(0));
}

#[test]
fn the_end_of_a_closed_shard_ends_its_open_window_early() {
    let mut sim = Sim::fresh(windowed(10, rules(), false));
    sim.feed(Input::Page(page(vec![arrived(0, 0)])));
    sim.answer(0, with_state(json!({"n": 1})));
    sim.feed(Input::Page(Page {
        records: vec![],
        millis_behind_latest: Some(0),
        end: Some(vec!["shardId-000000000001".into()]),
        issued_at: None,
    }));
    let last = sim.events[1].clone();
    assert!(is_final(&last) && is_early(&last));
    assert_eq!(last["state"], json!({"n": 1}));
    sim.answer(0, with_state(json!({})));
    sim.save_ok();
    assert!(sim.m.state().saved.finished);
}

#[test]
fn a_restart_mid_window_reads_the_window_again_from_its_start() {
    let mut sim = Sim::fresh(windowed(1, rules(), false));
    // Window 0 closes with record 0; window 1 has records 1 and 2 handled when the
    // process dies.
    sim.feed(Input::Page(page(vec![
        arrived(0, 0),
        arrived(1, 5_000),
        arrived(2, 6_000),
    ])));
    sim.answer(0, with_state(json!({})));
    sim.save_ok();
    sim.answer(0, with_state(json!({"n": 1})));
    sim.answer(0, with_state(json!({"n": 2})));
    assert_eq!(
        sim.m
            .state()
            .saved
            .checkpoint
            .as_ref()
            .map(|p| number(&p.sequence)),
        Some(0)
    );
    let stored = sim.m.state().saved.clone();

    let mut again = Sim::new(windowed(1, rules(), false), stored);
    assert_eq!(again.m.read_from(), ReadFrom::AtSequence(seq(0)));
    again.feed(Input::Page(page(vec![
        arrived(0, 0),
        arrived(1, 5_000),
        arrived(2, 6_000),
    ])));
    assert_eq!(numbers(&again.events[0]), [1]);
    assert_eq!(again.events[0]["state"], json!({}));
}

#[test]
fn an_empty_final_invocation_that_runs_out_of_retries_is_logged_and_the_window_closes() {
    let mut r = rules();
    r.max_retries = Some(1);
    let mut sim = Sim::fresh(windowed(10, r, true));
    sim.feed(Input::Page(page(vec![arrived(0, 0)])));
    sim.answer(0, with_state(json!({"n": 1})));
    sim.feed(Input::Page(page(vec![arrived(1, 5_000)])));
    assert!(is_final(&sim.events[1]));
    sim.answer(0, error());
    sim.wake();
    assert!(is_final(&sim.events[2]));
    sim.answer(0, error());
    assert!(
        sim.delivering.is_empty(),
        "nothing to deliver for no records"
    );
    assert!(sim.notes.iter().any(|n| matches!(
        n,
        Note::WindowInvocationGaveUp {
            condition: Condition::RetryAttemptsExhausted,
            invocations: 2,
            ..
        }
    )));
    assert_eq!(
        number(&sim.saves[0].checkpoint.clone().unwrap().sequence),
        0
    );
}

/// How a scripted function answers a windowed invocation.
#[derive(Clone, Debug)]
enum WindowReply {
    Ok,
    NoState,
    Error,
}

fn window_reply() -> impl Strategy<Value = WindowReply> {
    prop_oneof![
        6 => Just(WindowReply::Ok),
        1 => Just(WindowReply::NoState),
        1 => Just(WindowReply::Error),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// No batch spans two windows; each invocation carries the state the previous
    /// successful invocation of its window returned (`{}` at the start); each window
    /// that had records gets exactly one successful final invocation, after its last
    /// records; every record is handled.
    #[test]
    fn windows_are_invoked_in_order_with_their_state(
        gaps in proptest::collection::vec(0i64..3_000, 1..40),
        batch_size in 1usize..5,
        page_size in 1usize..6,
        replies in proptest::collection::vec(window_reply(), 64),
    ) {
        let mut sim = Sim::fresh(windowed(batch_size, rules(), false));
        let mut ms = 0;
        let records: Vec<Record> = gaps.iter().enumerate().map(|(n, gap)| {
            ms += gap;
            arrived(n as u64, ms)
        }).collect();
        let total = records.len();
        let window_of = |n: u64| (gaps[..=n as usize].iter().sum::<i64>()) / 5_000;
        let mut pages: Vec<Vec<Record>> = records.chunks(page_size).map(<[Record]>::to_vec).collect();
        pages.reverse();
        // Each window's state as the function last returned it, and the counts.
        let mut state: HashMap<String, u64> = HashMap::new();
        let mut finals: HashMap<String, u32> = HashMap::new();
        let mut handled = vec![0u32; total];
        let mut step = 0;
        let mut reply_at = 0;
        while step < 2_000 {
            step += 1;
            if sim.saving.is_some() {
                sim.save_ok();
                continue;
            }
            if let Some(request) = sim.invoking.get(&0) {
                let event: Value = serde_json::from_slice(&request.event.to_json()).unwrap();
                let start = window_start(&event);
                let nums = numbers(&event);
                // One window per batch.
                let windows: std::collections::BTreeSet<i64> = nums.iter().map(|n| window_of(*n)).collect();
                prop_assert!(windows.len() <= 1, "a batch spans windows: {nums:?}");
                let expected = state.get(&start).copied().unwrap_or(0);
                let carried = event["state"]["n"].as_u64().unwrap_or(0);
                prop_assert_eq!(carried, expected, "state out of order in {}", start);
                // Every third answer succeeds, so every window gets through.
                let reply = if reply_at % 3 == 2 { WindowReply::Ok } else { replies[reply_at % replies.len()].clone() };
                reply_at += 1;
                match reply {
                    WindowReply::Ok => {
                        let n = carried + nums.len() as u64;
                        for k in &nums { handled[*k as usize] += 1; }
                        if is_final(&event) {
                            *finals.entry(start.clone()).or_default() += 1;
                            prop_assert_eq!(n, state_total(&records, &start), "final state of {}", start);
                            state.remove(&start);
                        } else {
                            state.insert(start, n);
                        }
                        sim.answer(0, with_state(json!({"n": n})));
                    }
                    WindowReply::NoState => sim.answer(0, Outcome::Returned { response: Bytes::from_static(b"{}").into() }),
                    WindowReply::Error => sim.answer(0, error()),
                }
                continue;
            }
            if let Some(p) = pages.pop() {
                let issued = ms + 10_000;
                let last = pages.is_empty();
                sim.feed(Input::Page(page_at(p, if last { issued } else { 0 }, if last { 0 } else { 1_000 })));
                continue;
            }
            if sim.m.wake_at().is_some() {
                sim.wake();
                continue;
            }
            break;
        }
        let windows: std::collections::BTreeSet<i64> = (0..total as u64).map(window_of).collect();
        prop_assert_eq!(finals.len(), windows.len(), "finals: {:?}", finals);
        prop_assert!(finals.values().all(|n| *n == 1));
        prop_assert!(handled.iter().all(|n| *n >= 1), "a record was never handled");
        prop_assert_eq!(number(&sim.m.state().saved.checkpoint.clone().unwrap().sequence), total as u64 - 1);
    }
}

/// The number of records in the window starting at `start`.
fn state_total(records: &[Record], start: &str) -> u64 {
    records
        .iter()
        .filter(|r| {
            let w = Tumbling::new(WINDOW)
                .unwrap()
                .window_of(r.approximate_arrival);
            w.start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true) == start
        })
        .count() as u64
}
