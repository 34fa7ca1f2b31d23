//! The shard machine under simulated time, with a scripted reader, invoker,
//! destination and store: every rule at one lane and at several.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::core::event::EventSource;
use crate::core::failure::Outcome;

mod filtering;
mod kpl;
mod windows;

const SHARD: &str = "shardId-000000000000";

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::parse((1_000_000 + n).to_string()).unwrap()
}

fn wall0() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
}

/// Record `n` with key `key` and `size` bytes of data, arrived at `wall0`.
fn record(n: u64, key: &str, size: usize) -> Record {
    Record {
        position: Position::plain(seq(n)),
        partition_key: key.to_string(),
        explicit_hash_key: None,
        data: Bytes::from(vec![b'x'; size]),
        approximate_arrival: wall0(),
    }
}

fn page(records: Vec<Record>) -> Page {
    Page {
        records,
        millis_behind_latest: Some(0),
        end: None,
        issued_at: None,
    }
}

fn rules() -> FailureRules {
    FailureRules::default()
}

fn settings(
    lanes: usize,
    batch_size: usize,
    rules: FailureRules,
    destination: bool,
) -> ShardSettings {
    ShardSettings {
        shard_id: SHARD.into(),
        limits: BatchLimits::new(batch_size, Duration::ZERO),
        rules,
        router: LaneRouter::new(0, u128::MAX, lanes),
        tumbling: None,
        filter: Default::default(),
        encoder: EventEncoder::new(&EventSource {
            stream_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/s".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/esm".into(),
            shard_id: SHARD.into(),
        }),
        has_destination: destination,
        deaggregate: true,
        destination_backoff: ShardSettings::DESTINATION_BACKOFF,
        store_backoff: ShardSettings::STORE_BACKOFF,
    }
}

/// (sequence number, partition key) of each record of an event.
fn records_of(payload: &[u8]) -> Vec<(String, String)> {
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
    event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kinesis"]["sequenceNumber"].as_str().unwrap().to_string(),
                r["kinesis"]["partitionKey"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The number `n` of record `n`.
fn number(sequence: &SequenceNumber) -> u64 {
    sequence.as_str().parse::<u64>().unwrap() - 1_000_000
}

/// The machine and the I/O it has in flight.
struct Sim {
    m: ShardMachine,
    now: Instant,
    wall: DateTime<Utc>,
    seed: u64,
    invoking: BTreeMap<usize, InvokeRequest>,
    delivering: BTreeMap<usize, DeliveryRequest>,
    saving: Option<ShardCheckpoint>,
    /// The last checkpoint write acknowledged.
    durable: ShardCheckpoint,
    /// Every invocation started: lane and records.
    invoked: Vec<(usize, Vec<(String, String)>)>,
    /// Every invocation's event, parsed.
    events: Vec<serde_json::Value>,
    /// Every invocation's event, as sent.
    payloads: Vec<Bytes>,
    /// Every note but [`Note::Polled`], which is summed in `polled`.
    notes: Vec<Note>,
    /// Records polled (user records, after de-aggregation).
    polled: usize,
    saves: Vec<ShardCheckpoint>,
    max_concurrent: usize,
}

impl Sim {
    fn new(settings: ShardSettings, stored: ShardCheckpoint) -> Self {
        Self {
            durable: stored.clone(),
            m: ShardMachine::new(settings, stored),
            now: crate::sim_clock::origin(),
            wall: wall0(),
            seed: 7,
            invoking: BTreeMap::new(),
            delivering: BTreeMap::new(),
            saving: None,
            invoked: Vec::new(),
            events: Vec::new(),
            payloads: Vec::new(),
            notes: Vec::new(),
            polled: 0,
            saves: Vec::new(),
            max_concurrent: 0,
        }
    }

    fn fresh(settings: ShardSettings) -> Self {
        Self::new(settings, ShardCheckpoint::new(StartAt::TrimHorizon))
    }

    fn feed(&mut self, input: Input) {
        let mut env = Env::new(self.now, self.wall, self.seed);
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        for effect in self.m.on(input, &mut env) {
            match effect {
                Effect::Invoke(request) => {
                    // Everything done is durable, or in the write in flight: what a
                    // crash delivers again stays bounded.
                    let done = self.m.state().checkpoint.clone();
                    let covered = match &self.saving {
                        Some(writing) => writing.checkpoint == done,
                        None => self.durable.checkpoint == done,
                    };
                    assert!(
                        covered,
                        "an invocation started with records done beyond the checkpoint write"
                    );
                    let payload = request.event.to_json();
                    self.invoked.push((request.lane, records_of(&payload)));
                    self.events.push(serde_json::from_slice(&payload).unwrap());
                    self.payloads.push(payload);
                    let previous = self.invoking.insert(request.lane, request);
                    assert!(previous.is_none(), "two invocations in one lane");
                }
                Effect::Deliver(request) => {
                    let previous = self.delivering.insert(request.lane, request);
                    assert!(previous.is_none(), "two deliveries in one lane");
                }
                Effect::Save(state) => {
                    assert!(self.saving.is_none(), "two checkpoint writes at once");
                    self.saves.push(state.clone());
                    self.saving = Some(state);
                }
                Effect::Note(Note::Polled { records }) => self.polled += records,
                Effect::Note(note) => self.notes.push(note),
            }
        }
        self.max_concurrent = self.max_concurrent.max(self.invoking.len());
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.wall += chrono::Duration::from_std(by).unwrap();
    }

    /// Goes to the machine's next wake-up time and feeds the timer.
    fn wake(&mut self) {
        let at = self.m.wake_at().expect("the machine asked for no timer");
        if at > self.now {
            self.advance(at - self.now);
        }
        self.feed(Input::Timer);
    }

    fn save_ok(&mut self) {
        self.durable = self.saving.take().expect("no checkpoint write in flight");
        self.feed(Input::Saved(Ok(())));
    }

    fn answer(&mut self, lane: usize, outcome: Outcome) {
        assert!(
            self.invoking.remove(&lane).is_some(),
            "lane {lane} has no invocation"
        );
        self.feed(Input::Invoked { lane, outcome });
    }

    fn deliver(&mut self, lane: usize, result: Result<(), String>) {
        assert!(
            self.delivering.remove(&lane).is_some(),
            "lane {lane} has no delivery"
        );
        self.feed(Input::Delivered { lane, result });
    }

    fn checkpoint(&self) -> Option<Position> {
        self.m.state().saved.checkpoint.clone()
    }
}

fn ok() -> Outcome {
    Outcome::Returned {
        response: Bytes::new().into(),
    }
}

fn error() -> Outcome {
    Outcome::FunctionError {
        error_type: "E".into(),
        message: "boom".into(),
    }
}

fn keys_for_lanes(lanes: usize) -> Vec<String> {
    // One key per lane of a full-range shard.
    let router = LaneRouter::new(0, u128::MAX, lanes);
    let mut keys = vec![String::new(); lanes];
    let mut found = 0;
    for i in 0.. {
        let key = format!("key-{i}");
        let lane = router.lane_of_hash(crate::core::partition::hash_key(&key));
        if keys[lane].is_empty() {
            keys[lane] = key;
            found += 1;
            if found == lanes {
                break;
            }
        }
    }
    keys
}

#[test]
fn one_lane_invokes_in_order_and_checkpoints_each_batch() {
    let mut sim = Sim::fresh(settings(1, 4, rules(), false));
    assert!(sim.m.wants_read());
    sim.feed(Input::Page(page(
        (0..10).map(|n| record(n, "k", 10)).collect(),
    )));
    assert_eq!(sim.invoked.len(), 1);
    assert_eq!(sim.invoked[0].1.len(), 4);
    sim.answer(0, ok());
    // The next batch starts while the first one's checkpoint is written...
    assert_eq!(
        sim.saving.as_ref().unwrap().checkpoint,
        Some(Position::plain(seq(3)))
    );
    assert_eq!(sim.invoked.len(), 2);
    // ...and the one after it waits until that write is durable.
    sim.answer(0, ok());
    assert!(sim.invoking.is_empty());
    assert_eq!(sim.invoked.len(), 2);
    sim.save_ok();
    assert_eq!(
        sim.saving.as_ref().unwrap().checkpoint,
        Some(Position::plain(seq(7)))
    );
    assert_eq!(sim.invoked.len(), 3);
    sim.answer(0, ok());
    sim.save_ok();
    sim.save_ok();
    let sizes: Vec<usize> = sim.invoked.iter().map(|(_, r)| r.len()).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(sim.checkpoint(), Some(Position::plain(seq(9))));
    assert_eq!(sim.m.state().settled.handled, 10);
}

#[test]
fn lanes_run_at_once_and_the_checkpoint_waits_for_the_slowest() {
    let keys = keys_for_lanes(3);
    let mut sim = Sim::fresh(settings(3, 10, rules(), false));
    // Records 0..9 cycle through the three lanes' keys.
    let records = (0..9)
        .map(|n| record(n, &keys[n as usize % 3], 10))
        .collect();
    sim.feed(Input::Page(page(records)));
    assert_eq!(sim.invoking.len(), 3, "one invocation per lane");
    // Lanes 1 and 2 finish; lane 0 (records 0, 3, 6) still runs: nothing is checkpointed.
    sim.answer(1, ok());
    assert!(sim.saving.is_none());
    sim.answer(2, ok());
    assert!(sim.saving.is_none());
    assert_eq!(sim.m.state().checkpoint, None);
    sim.answer(0, ok());
    assert_eq!(
        sim.saving.as_ref().unwrap().checkpoint,
        Some(Position::plain(seq(8)))
    );
}

#[test]
fn a_failing_lane_holds_back_only_its_keys_and_the_checkpoint() {
    let keys = keys_for_lanes(2);
    let rules = FailureRules {
        max_retries: Some(1),
        ..rules()
    };
    let mut sim = Sim::fresh(settings(2, 1, rules, false));
    let records = (0..4)
        .map(|n| record(n, &keys[n as usize % 2], 10))
        .collect();
    sim.feed(Input::Page(page(records)));
    // Lane 0 (records 0, 2) fails; lane 1 (records 1, 3) goes on.
    sim.answer(0, error());
    sim.answer(1, ok());
    assert!(sim.saving.is_none(), "record 0 is not done: no checkpoint");
    // Lane 1 goes on with record 3 while lane 0 waits for its retry.
    assert_eq!(
        sim.invoking.get(&1).unwrap().first,
        Some(Position::plain(seq(3)))
    );
    sim.answer(1, ok());
    sim.wake();
    assert_eq!(
        sim.invoking.get(&0).unwrap().first,
        Some(Position::plain(seq(0)))
    );
    // The retry fails too: record 0 is given up (dropped, no destination), and the
    // checkpoint moves past it and record 1, up to record 2 which lane 0 has next.
    sim.answer(0, error());
    assert!(
        matches!(&sim.notes[..], [.., Note::Dropped(g)] if g.first == Some(Position::plain(seq(0))))
    );
    assert_eq!(
        sim.saving.as_ref().unwrap().checkpoint,
        Some(Position::plain(seq(1)))
    );
}

#[test]
fn lanes_run_ahead_of_a_slow_lane_only_so_far() {
    // Lane 0 gets every fourth record, lane 1 the rest; lane 0 never answers.
    let keys = keys_for_lanes(2);
    let mut sim = Sim::fresh(settings(2, 2, rules(), false));
    let max_ahead = sim.m.settings().max_ahead();
    assert_eq!(max_ahead, 8);
    let records = (0..40)
        .map(|n| record(n, &keys[usize::from(n % 4 != 0)], 10))
        .collect();
    sim.feed(Input::Page(page(records)));
    while let Some(request) = sim.invoking.get(&1).cloned() {
        sim.answer(1, ok());
        while sim.saving.is_some() {
            sim.save_ok();
        }
        assert!(number(&request.first.unwrap().sequence) < max_ahead);
    }
    // Lane 1 stopped at the bound: records 1..=7 (bar 4) are done, the next batch
    // (9, 10) starts beyond 0 + 8 and waits for lane 0.
    assert_eq!(sim.m.state().lanes[1].status().state, "waiting");
    sim.answer(0, ok());
    while sim.saving.is_some() {
        sim.save_ok();
    }
    assert!(
        sim.invoking.contains_key(&1),
        "lane 1 goes on once lane 0 moved the mark"
    );
}

#[test]
fn a_reader_failure_waits_for_the_invocations_in_flight() {
    let mut sim = Sim::fresh(settings(1, 2, rules(), false));
    sim.feed(Input::Page(page(
        (0..4).map(|n| record(n, "k", 10)).collect(),
    )));
    assert_eq!(sim.invoking.len(), 1);
    sim.feed(Input::ReadFailed("ResourceNotFoundException".into()));
    assert_eq!(sim.m.exit(), None, "must not end while an invocation runs");
    assert!(!sim.m.wants_read());
    sim.answer(0, ok());
    assert!(
        sim.invoking.is_empty(),
        "nothing new starts once the reader failed"
    );
    assert_eq!(
        sim.m.exit(),
        None,
        "the checkpoint of what was done is written first"
    );
    sim.save_ok();
    assert_eq!(
        sim.m.exit(),
        Some(&ShardExit::Failed("ResourceNotFoundException".into()))
    );
    assert_eq!(sim.checkpoint(), Some(Position::plain(seq(1))));
    assert_eq!(sim.invoked.len(), 1);
}

#[test]
fn shutdown_lets_the_invocation_finish_and_checkpoints_it() {
    let mut sim = Sim::fresh(settings(2, 5, rules(), false));
    let keys = keys_for_lanes(2);
    sim.feed(Input::Page(page(
        (0..6)
            .map(|n| record(n, &keys[n as usize % 2], 10))
            .collect(),
    )));
    sim.feed(Input::Shutdown);
    assert_eq!(sim.m.exit(), None);
    sim.answer(0, ok());
    sim.answer(1, ok());
    while sim.saving.is_some() {
        sim.save_ok();
    }
    assert_eq!(sim.m.exit(), Some(&ShardExit::Stopped));
    assert_eq!(sim.checkpoint(), Some(Position::plain(seq(5))));
}

#[test]
fn a_closed_shard_drains_then_finishes_with_its_children() {
    let mut sim = Sim::fresh(settings(1, 100, rules(), false));
    let mut last = page((0..3).map(|n| record(n, "k", 10)).collect());
    last.end = Some(vec!["shardId-000000000001".into()]);
    sim.feed(Input::Page(last));
    assert!(!sim.m.wants_read());
    sim.answer(0, ok());
    // Every record is done: the last checkpoint and the finished flag are written
    // together, then the shard ends.
    let write = sim.saving.clone().unwrap();
    assert!(write.finished);
    assert_eq!(write.checkpoint, Some(Position::plain(seq(2))));
    assert_eq!(sim.m.exit(), None);
    sim.save_ok();
    assert_eq!(
        sim.m.exit(),
        Some(&ShardExit::Finished {
            children: vec!["shardId-000000000001".into()]
        })
    );
}

#[test]
fn reading_resumes_at_the_checkpoint_record_and_skips_what_is_done() {
    let stored = ShardCheckpoint {
        start: StartAt::TrimHorizon,
        checkpoint: Some(Position::plain(seq(5))),
        finished: false,
    };
    let mut sim = Sim::new(settings(1, 100, rules(), false), stored);
    assert_eq!(sim.m.read_from(), ReadFrom::AtSequence(seq(5)));
    sim.feed(Input::Page(page(
        (5..8).map(|n| record(n, "k", 10)).collect(),
    )));
    let seqs: Vec<&str> = sim.invoked[0].1.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(seqs, [seq(6).as_str(), seq(7).as_str()]);
}

#[test]
fn a_legacy_whole_record_checkpoint_skips_the_whole_record() {
    let stored: ShardCheckpoint = serde_json::from_str(&format!(
        r#"{{"start":{{"type":"TRIM_HORIZON"}},"checkpoint":{{"sequence":"{}"}},"finished":false}}"#,
        seq(5)
    ))
    .unwrap();
    let mut sim = Sim::new(settings(1, 100, rules(), false), stored);
    let mut sub = record(5, "k", 10);
    sub.position.sub_sequence = 3;
    sim.feed(Input::Page(page(vec![sub, record(6, "k", 10)])));
    assert_eq!(sim.invoked[0].1.len(), 1);
}

#[test]
fn reading_pauses_at_the_memory_bound_while_a_lane_retries() {
    // 1 MB records, a function that always fails, batch size 10,000: the shard holds
    // at most two events' worth per lane plus a page, however long it retries.
    let mut sim = Sim::fresh(settings(1, 10_000, rules(), false));
    let bound = sim.m.settings().memory_bound();
    let mut n = 0;
    for _ in 0..200 {
        if sim.m.wants_read() {
            sim.feed(Input::Page(page(
                (n..n + 10).map(|i| record(i, "k", 1_000_000)).collect(),
            )));
            n += 10;
        }
        if sim.invoking.contains_key(&0) {
            sim.answer(0, error());
        } else {
            sim.wake();
        }
        assert!(
            sim.m.buffered_bytes() <= bound,
            "{} > {bound}",
            sim.m.buffered_bytes()
        );
    }
    assert!(!sim.m.wants_read());
    let held = sim.m.buffered_bytes();
    assert!(
        held >= sim.m.settings().pause_memory() && held < 40_000_000,
        "{held}"
    );
    assert!(n <= 40, "read {n} MB for a shard stuck retrying");
}

#[test]
fn a_record_too_large_to_invoke_goes_to_the_destination_as_payload_too_large() {
    let mut settings = settings(1, 10, rules(), true);
    settings.limits.max_event_bytes = 2_000;
    let mut sim = Sim::fresh(settings);
    sim.feed(Input::Page(page(vec![
        record(0, "k", 5_000),
        record(1, "k", 10),
    ])));
    assert!(sim.invoking.is_empty());
    let delivery = sim.delivering.get(&0).unwrap();
    assert_eq!(delivery.condition, Condition::PayloadTooLarge);
    assert_eq!(delivery.invocations, 0);
    assert_eq!(delivery.records.len(), 1);
    // A failed send is retried with the same request id; the checkpoint waits.
    let id = delivery.request_id.clone();
    sim.deliver(0, Err("queue unreachable".into()));
    assert!(sim.saving.is_none());
    sim.wake();
    assert_eq!(sim.delivering.get(&0).unwrap().request_id, id);
    sim.deliver(0, Ok(()));
    sim.save_ok();
    assert_eq!(sim.checkpoint(), Some(Position::plain(seq(0))));
    assert_eq!(sim.invoking.get(&0).unwrap().records, 1);
}

#[test]
fn a_record_too_large_without_a_destination_is_dropped_as_oversized() {
    let mut settings = settings(1, 10, rules(), false);
    settings.limits.max_event_bytes = 2_000;
    let mut sim = Sim::fresh(settings);
    sim.feed(Input::Page(page(vec![record(0, "k", 5_000)])));
    assert!(
        matches!(&sim.notes[..], [Note::Dropped(g)] if g.condition == Condition::PayloadTooLarge)
    );
    assert_eq!(Condition::PayloadTooLarge.drop_reason(), "oversized");
    sim.save_ok();
    assert_eq!(sim.m.state().settled.dropped, 1);
}

#[test]
fn with_unlimited_retries_and_age_records_are_given_up_at_the_retention_period() {
    let rules = FailureRules {
        retention: Some(Duration::from_secs(24 * 3600)),
        ..rules()
    };
    let mut sim = Sim::fresh(settings(1, 10, rules, false));
    sim.feed(Input::Page(page(
        (0..3).map(|n| record(n, "k", 10)).collect(),
    )));
    let mut invocations = 0;
    while sim.notes.iter().all(|n| !matches!(n, Note::Dropped(_))) {
        assert!(
            invocations < 10_000,
            "still retrying after {:?}",
            sim.wall - wall0()
        );
        if sim.invoking.contains_key(&0) {
            invocations += 1;
            sim.answer(0, error());
        } else {
            sim.wake();
        }
    }
    let age = sim.wall - wall0();
    assert!(
        age > chrono::Duration::hours(24) && age < chrono::Duration::hours(25),
        "{age}"
    );
    assert!(matches!(
        &sim.notes[..],
        [.., Note::Dropped(g)] if g.condition == Condition::RecordAgeExceeded && g.records == 3
    ));
    sim.save_ok();
    assert_eq!(sim.checkpoint(), Some(Position::plain(seq(2))));
}

#[test]
fn the_state_serialises_for_status() {
    let keys = keys_for_lanes(2);
    let mut sim = Sim::fresh(settings(2, 5, rules(), false));
    sim.feed(Input::Page(page(
        (0..6)
            .map(|n| record(n, &keys[n as usize % 2], 10))
            .collect(),
    )));
    sim.answer(0, ok());
    let status = serde_json::to_value(sim.m.state()).unwrap();
    assert_eq!(status["shard_id"], SHARD);
    assert_eq!(status["phase"], "reading");
    assert_eq!(status["checkpoint"]["sequence"], seq(0).as_str());
    assert_eq!(status["saving"]["checkpoint"]["sub_sequence"], 0);
    assert_eq!(status["lanes"][0]["state"], "idle");
    assert_eq!(status["lanes"][1]["state"], "invoking");
    assert_eq!(status["lanes"][1]["batch_records"], 3);
    assert_eq!(status["settled"]["handled"], 3);
    assert_eq!(status["outstanding_records"], 5);
}

#[test]
fn a_lost_lease_stops_the_shard_without_writing_again() {
    let mut sim = Sim::fresh(settings(1, 2, rules(), false));
    sim.feed(Input::Page(page(
        (0..4).map(|n| record(n, "k", 10)).collect(),
    )));
    sim.answer(0, ok());
    // The next batch started while the checkpoint was written; the write is refused.
    assert_eq!(sim.invoking.len(), 1);
    sim.saving = None;
    sim.feed(Input::Saved(Err(SaveError::LeaseLost("held by b".into()))));
    // The invocation in flight ends; nothing more is started or written.
    assert_eq!(sim.m.exit(), None);
    sim.answer(0, ok());
    assert!(sim.invoking.is_empty() && sim.saving.is_none());
    assert_eq!(sim.saves.len(), 1);
    assert_eq!(
        sim.m.exit(),
        Some(&ShardExit::LeaseLost("held by b".into()))
    );
}

#[test]
fn a_failed_checkpoint_write_is_retried_after_a_backoff() {
    let mut sim = Sim::fresh(settings(1, 2, rules(), false));
    sim.feed(Input::Page(page(
        (0..2).map(|n| record(n, "k", 10)).collect(),
    )));
    sim.answer(0, ok());
    sim.saving = None;
    sim.feed(Input::Saved(Err(SaveError::Failed("disk full".into()))));
    assert!(sim.saving.is_none());
    assert!(matches!(&sim.notes[..], [.., Note::SaveFailed { .. }]));
    sim.wake();
    assert!(sim.saving.is_some());
}

/// What a scripted function does with one invocation.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Ok,
    Error,
    NotInvoked,
    /// `batchItemFailures` naming the record at this fraction of the batch.
    ItemFailure(u8),
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        6 => Just(Reply::Ok),
        2 => Just(Reply::Error),
        1 => Just(Reply::NotInvoked),
        2 => (0u8..100).prop_map(Reply::ItemFailure),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any lanes, batch size, failure rules and function behaviour: every record is
    /// settled exactly once; no record is invoked after a later record of its key was
    /// handled; the checkpoint never passes a record in flight; and the shard finishes
    /// at its last record.
    #[test]
    fn every_record_is_settled_once_in_key_order(
        lanes in 1usize..=5,
        batch_size in 1usize..8,
        keys in 1usize..12,
        pages in proptest::collection::vec(0usize..15, 1..8),
        max_retries in 0u32..3,
        bisect in any::<bool>(),
        report in any::<bool>(),
        destination in any::<bool>(),
        replies in proptest::collection::vec(reply(), 1..64),
        failed_sends in proptest::collection::vec(any::<bool>(), 1..8),
        max_age in proptest::option::of(1u64..30),
    ) {
        let rules = FailureRules {
            max_retries: Some(max_retries),
            max_age: max_age.map(Duration::from_secs),
            bisect,
            report_item_failures: report,
            ..rules()
        };
        let mut sim = Sim::fresh(settings(lanes, batch_size, rules, destination));
        let key_of = |n: u64| format!("k{}", n % keys as u64);
        let total: u64 = pages.iter().sum::<usize>() as u64;
        let mut next = 0u64;
        let mut pages_left = pages.clone();
        let (mut replies_used, mut sends) = (0usize, 0usize);
        // The highest record of each key handled by a fully successful invocation.
        let mut handled_up_to: HashMap<String, u64> = HashMap::new();
        let mut checked = 0;
        for _ in 0..20_000 {
            if sim.m.exit().is_some() { break; }
            // New invocations keep key order.
            for (_, records) in &sim.invoked[checked..] {
                for (s, k) in records {
                    let n: u64 = s.parse::<u64>().unwrap() - 1_000_000;
                    prop_assert!(handled_up_to.get(k).is_none_or(|&h| n > h), "record {n} of {k} invoked after a later one was handled");
                }
            }
            checked = sim.invoked.len();
            // The checkpoint never passes a record in flight.
            if let Some(cp) = sim.m.state().checkpoint.clone() {
                for r in sim.invoking.values() { prop_assert!(r.first.as_ref().unwrap() > &cp); }
                for d in sim.delivering.values() { prop_assert!(d.records[0].position > cp); }
            }
            if sim.saving.is_some() {
                sim.save_ok();
            } else if let Some((&lane, request)) = sim.invoking.iter().next() {
                let records = records_of(&request.event.to_json());
                let r = match replies[replies_used % replies.len()] {
                    // A function that can never be invoked is retried forever (no
                    // retry is consumed): let it come back eventually.
                    Reply::NotInvoked if replies_used > 200 => Reply::Ok,
                    r => r,
                };
                replies_used += 1;
                let outcome = match r {
                    Reply::Ok => {
                        for (s, k) in &records {
                            let n = s.parse::<u64>().unwrap() - 1_000_000;
                            handled_up_to.insert(k.clone(), n);
                        }
                        ok()
                    }
                    Reply::Error => error(),
                    Reply::NotInvoked => Outcome::NotInvoked { reason: "busy".into() },
                    Reply::ItemFailure(f) => {
                        let i = usize::from(f) * records.len() / 100;
                        Outcome::Returned { response: Bytes::from(format!(r#"{{"batchItemFailures":[{{"itemIdentifier":"{}"}}]}}"#, records[i].0)).into() }
                    }
                };
                sim.answer(lane, outcome);
            } else if let Some(&lane) = sim.delivering.keys().next() {
                let fail = failed_sends[sends % failed_sends.len()] && sends < 20;
                sends += 1;
                sim.deliver(lane, if fail { Err("unreachable".into()) } else { Ok(()) });
            } else if sim.m.wants_read() && !pages_left.is_empty() {
                let n = pages_left.remove(0) as u64;
                let mut p = page((next..next + n).map(|i| record(i, &key_of(i), 20)).collect());
                next += n;
                if pages_left.is_empty() { p.end = Some(vec![]); }
                sim.feed(Input::Page(p));
            } else {
                sim.wake();
            }
        }
        prop_assert_eq!(sim.m.exit(), Some(&ShardExit::Finished { children: vec![] }));
        let counts = sim.m.state().settled;
        prop_assert_eq!(counts.ignored, 0);
        prop_assert_eq!(counts.handled + counts.delivered + counts.dropped, total);
        prop_assert!(destination || counts.delivered == 0);
        prop_assert!(!destination || counts.dropped == 0);
        if total > 0 {
            prop_assert_eq!(sim.checkpoint(), Some(Position::plain(seq(total - 1))));
        }
        prop_assert!(sim.max_concurrent <= lanes);
    }
}

/// The `Invoked` notes so far: (outcome label, records, failed records).
fn judged(sim: &Sim) -> Vec<(&'static str, usize, usize)> {
    sim.notes
        .iter()
        .filter_map(|n| match n {
            Note::Invoked {
                records, judged, ..
            } => Some((judged.outcome.label(), *records, judged.failed_records)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_iterator_age_is_the_last_records_age_at_each_invocation_end_and_0_when_caught_up() {
    let mut sim = Sim::fresh(settings(1, 2, rules(), false));
    // Four records that arrived at wall0; the stream is 5 s ahead of them.
    let mut first = page((0..4).map(|n| record(n, "k", 10)).collect());
    first.millis_behind_latest = Some(5_000);
    sim.feed(Input::Page(first));
    assert_eq!(sim.m.state().iterator_age_ms, 0, "no invocation has ended");
    // The handler is slow: the first batch ends 3 s later, failing.
    sim.advance(Duration::from_secs(3));
    sim.answer(0, error());
    assert_eq!(sim.m.state().iterator_age_ms, 3_000);
    assert_eq!(sim.m.state().retries_pending, 1);
    // It rises while the handler fails...
    sim.wake();
    sim.advance(Duration::from_secs(4));
    sim.answer(0, ok());
    sim.save_ok();
    // (the retry waited out its backoff before those 4 s)
    let age = (sim.wall - wall0()).num_milliseconds() as u64;
    assert!(age > 7_000);
    assert_eq!(sim.m.state().iterator_age_ms, age);
    assert_eq!(sim.m.state().retries_pending, 0);
    // ... and stays at the last batch's age while records are still held, even
    // when a read says the shard is caught up.
    sim.feed(Input::Page(page(vec![])));
    assert_eq!(sim.m.state().iterator_age_ms, age);
    sim.advance(Duration::from_millis(500));
    sim.answer(0, ok());
    sim.save_ok();
    // Every record is done and the last read was at the tip: a quiet shard is 0.
    assert_eq!(sim.m.state().iterator_age_ms, 0);
    assert_eq!(
        judged(&sim),
        [("function_error", 2, 2), ("ok", 2, 0), ("ok", 2, 0)]
    );
}

#[test]
fn partial_failures_count_the_records_named() {
    let rules = FailureRules {
        report_item_failures: true,
        ..FailureRules::default()
    };
    let mut sim = Sim::fresh(settings(1, 4, rules, false));
    sim.feed(Input::Page(page(
        (0..4).map(|n| record(n, "k", 10)).collect(),
    )));
    let named = |ns: &[u64]| Outcome::Returned {
        response: Bytes::from(format!(
            r#"{{"batchItemFailures":[{}]}}"#,
            ns.iter()
                .map(|n| format!(r#"{{"itemIdentifier":"{}"}}"#, seq(*n)))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .into(),
    };
    sim.answer(0, named(&[3, 1]));
    sim.save_ok();
    sim.wake();
    sim.answer(
        0,
        Outcome::Returned {
            response: Bytes::from_static(b"not json").into(),
        },
    );
    sim.wake();
    sim.answer(0, ok());
    sim.save_ok();
    assert_eq!(
        judged(&sim),
        [
            ("partial_failure", 4, 2),
            ("partial_failure", 3, 3),
            ("ok", 3, 0)
        ]
    );
}
