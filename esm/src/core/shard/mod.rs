//! The shard state machine: every rule of Lambda's that decides what happens to a
//! shard's records, as one pure value.
//!
//! A [`ShardMachine`] takes [`Input`]s — a page read, a failed read, an invocation's
//! outcome, a destination's or the store's answer, a timer, shutdown — each with the
//! time and some randomness passed in through [`Env`], and answers [`Effect`]s:
//! invoke lane L with this event, deliver these records to the destination, save
//! this checkpoint, and [`Note`]s for the log and the metrics. Between inputs the
//! driver asks it three questions: does it [want a page](ShardMachine::wants_read),
//! [when to wake it](ShardMachine::wake_at) without any other input, and whether it
//! has [ended](ShardMachine::exit). Nothing here does I/O, reads a clock or draws a
//! random number, so tests drive it with a scripted reader and invoker under
//! simulated time.
//!
//! The rules it holds, each in one place:
//! - **de-aggregation** ([`crate::core::kpl`]): with `deaggregate`, each KPL
//!   aggregated record becomes its user records as the page is taken, before skipping,
//!   filtering and lanes, so everything below works on user records: each is filtered
//!   by its own data and key, routed by its own key, and done at its own position
//!   `(sequence, sub-sequence)`. One that fails to decode goes on as a plain record,
//!   with a [`Note::DeaggregationFailed`];
//! - **lanes** ([`crate::core::partition`]): records go to one of
//!   `parallelization_factor` lanes by the hash of their partition key; each lane has
//!   its own batcher and failure progress (`lane.rs`), so up to N invocations run at
//!   once and order holds per key;
//! - **batching** ([`crate::core::batch`]) and **failures**
//!   ([`crate::core::failure`]) per lane; a record too large to invoke is given up as
//!   `PayloadTooLarge`;
//! - **the checkpoint** ([`tracker`]): the low-water mark of done records across
//!   lanes. It is saved one write at a time, and no invocation starts while it is ahead
//!   of what the store holds, nor further than [`ShardSettings::max_ahead`] records
//!   past the oldest record not done, so a crash re-delivers at most what was in
//!   flight and what other lanes finished beyond the mark, a bounded number;
//! - **where reading resumes**: at the checkpoint's Kinesis record, skipping user
//!   records at or before the checkpoint (so a checkpoint inside a KPL aggregate
//!   resumes inside it);
//! - **memory**: reading pauses while the shard holds more than two events' worth of
//!   records per lane ([`ShardMachine::wants_read`]);
//! - **ending**: at the end of a closed shard pending records go out at once, and the
//!   shard is finished once every record is done and the finished flag is saved; on
//!   shutdown, or when the reader failed, nothing new starts and the machine ends once
//!   nothing is in flight, so the same records are never in two invocations at once.

mod lane;
pub mod tracker;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use lane::{Lane, LaneStatus};
pub use tracker::{CheckpointTracker, Settled, SettledCounts};

use super::backoff::Backoff;
use super::batch::{BatchLimits, Batcher};
use super::checkpoint::{ShardCheckpoint, StartAt};
use super::event::{BatchEvent, EventEncoder};
use super::failure::{Condition, FailureRules, Judged, LastFailure, Outcome};
use super::filter::FilterCriteria;
use super::kpl::{self, DeaggregationError, Expansion, KPL_MAGIC};
use super::partition::LaneRouter;
use super::record::{Position, Record, SequenceNumber};
use super::window::{Tumbling, WindowBounds};

/// The most memory one GetRecords page can take: 10 MiB of data, plus the fixed
/// allowance of [`Record::memory_size`] for each of up to 10,000 records, plus keys.
pub const MAX_PAGE_MEMORY: usize = 10 * 1024 * 1024 + 10_000 * 512;

/// One read from a shard.
#[derive(Debug, Default)]
pub struct Page {
    /// The records, in sequence order (possibly none).
    pub records: Vec<Record>,
    /// How far the reader is behind the tip of the shard.
    pub millis_behind_latest: Option<i64>,
    /// `Some` when the shard is closed and fully read: its children, by id.
    pub end: Option<Vec<String>>,
    /// When the read was issued (wall clock): with `millis_behind_latest` 0, every
    /// record that arrived before it has been read (it ends tumbling windows).
    pub issued_at: Option<DateTime<Utc>>,
}

/// Where a reader starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest record.
    TrimHorizon,
    /// Records put from now on.
    Latest,
    /// The first record at or after this time.
    AtTimestamp(DateTime<Utc>),
    /// This record and those after it (resuming from a checkpoint).
    AtSequence(SequenceNumber),
    /// The records after this one.
    AfterSequence(SequenceNumber),
}

/// What a shard needs to know that does not change while it runs.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// The shard.
    pub shard_id: String,
    /// Batch size, window, payload cap (per lane).
    pub limits: BatchLimits,
    /// The failure rules.
    pub rules: FailureRules,
    /// Which lane each record goes to.
    pub router: LaneRouter,
    /// `tumbling_window_in_seconds`, when set (only ever with one lane).
    pub tumbling: Option<Tumbling>,
    /// `filter_criteria`: records that match no pattern are done as soon as read.
    pub filter: FilterCriteria,
    /// Writes the events.
    pub encoder: EventEncoder,
    /// Whether records given up go to an on-failure destination (else they are
    /// logged with their range and dropped).
    pub has_destination: bool,
    /// `deaggregate`: expand KPL aggregated records into their user records as they
    /// are read; with `false` they reach the function as the Kinesis records they are.
    pub deaggregate: bool,
    /// The wait between attempts at a failed destination send.
    pub destination_backoff: Backoff,
    /// The wait between attempts at a failed checkpoint write.
    pub store_backoff: Backoff,
}

impl ShardSettings {
    /// The backoff for destination sends: 200 ms doubling to 30 s.
    pub const DESTINATION_BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    /// The backoff for checkpoint writes: 100 ms doubling to 10 s.
    pub const STORE_BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

    /// Reading pauses while the shard holds at least this much memory: two events'
    /// worth (2 × 6 MB) per lane.
    pub fn pause_memory(&self) -> usize {
        self.router.lanes() * 2 * self.limits.max_event_bytes
    }

    /// Reading pauses while the shard holds at least this many records: two batches
    /// per lane (so small records are not read far ahead either).
    pub fn pause_records(&self) -> usize {
        self.router.lanes() * 2 * self.limits.max_records
    }

    /// How far lanes may run ahead of the oldest record not done, in records: an
    /// invocation starts only if its first record is within two batches per lane of
    /// it. So a lane that is slow or retrying holds the others back once they are that
    /// far ahead, and a crash delivers again at most about this many records beyond
    /// the batches in flight. With one lane it never holds anything back.
    pub fn max_ahead(&self) -> u64 {
        self.pause_records() as u64
    }

    /// The most memory the shard's records can take: the pause bound, plus the one
    /// page that may arrive while it is reached, plus one event in flight per lane.
    pub fn memory_bound(&self) -> usize {
        self.pause_memory() + MAX_PAGE_MEMORY + self.router.lanes() * self.limits.max_event_bytes
    }
}

/// The time and randomness of one step, passed in by the driver.
#[derive(Clone, Debug)]
pub struct Env {
    /// The monotonic time (batching windows, retries, backoff).
    pub now: Instant,
    /// The wall-clock time (record age, which Kinesis stamps in wall time).
    pub wall: DateTime<Utc>,
    /// A random seed; jitter and request ids are drawn from it.
    seed: u64,
}

impl Env {
    /// The environment of one step.
    pub fn new(now: Instant, wall: DateTime<Utc>, seed: u64) -> Self {
        Self { now, wall, seed }
    }

    /// The next pseudo-random number (SplitMix64 over the seed).
    fn next_u64(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A jitter in `0.0..1.0`.
    fn jitter(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A fresh request id (a version-4 UUID).
    fn request_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// Something that happened, for the machine to take in.
#[derive(Debug)]
pub enum Input {
    /// The reader returned a page.
    Page(Page),
    /// The reader stopped for good (the stream is gone, access denied).
    ReadFailed(String),
    /// Lane `lane`'s invocation ended.
    Invoked {
        /// The lane.
        lane: usize,
        /// How it ended.
        outcome: Outcome,
    },
    /// Lane `lane`'s send to the on-failure destination ended.
    Delivered {
        /// The lane.
        lane: usize,
        /// `Err` with what went wrong.
        result: Result<(), String>,
    },
    /// The checkpoint write ended.
    Saved(Result<(), SaveError>),
    /// A time the machine asked to be woken at has come.
    Timer,
    /// Stop: let what is in flight end, start nothing new.
    Shutdown,
}

/// Why a checkpoint write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveError {
    /// Another owner holds the shard now: stop, and write nothing more.
    LeaseLost(String),
    /// A failure that may pass: the write is tried again with backoff.
    Failed(String),
}

/// Something for the driver to do.
#[derive(Debug)]
pub enum Effect {
    /// Invoke the function.
    Invoke(InvokeRequest),
    /// Send records given up to the on-failure destination.
    Deliver(DeliveryRequest),
    /// Write the shard's checkpoint record (answer with [`Input::Saved`]).
    Save(ShardCheckpoint),
    /// Tell the log and the metrics.
    Note(Note),
}

/// An invocation to start (answer with [`Input::Invoked`]).
#[derive(Clone, Debug)]
pub struct InvokeRequest {
    /// The lane it belongs to.
    pub lane: usize,
    /// A fresh request id.
    pub request_id: String,
    /// The event, written as Lambda's JSON only by an invoker that needs the bytes.
    pub event: BatchEvent,
    /// How many records it holds.
    pub records: usize,
    /// Its first record.
    pub first: Option<Position>,
    /// Its last record.
    pub last: Option<Position>,
    /// Which invocation of these records this is (1 for the first).
    pub attempt: u32,
}

/// Records given up, to send to the destination (answer with [`Input::Delivered`]).
#[derive(Clone, Debug)]
pub struct DeliveryRequest {
    /// The lane.
    pub lane: usize,
    /// The on-failure record's `requestId` (the same on every attempt).
    pub request_id: String,
    /// The records, in shard order.
    pub records: Vec<Record>,
    /// Why they were given up.
    pub condition: Condition,
    /// Invocations that carried them.
    pub invocations: u32,
    /// How their last invocation failed.
    pub last_failure: LastFailure,
}

/// Records given up, for a log line and a counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaveUp {
    /// The lane.
    pub lane: usize,
    /// The first record.
    pub first: Option<Position>,
    /// The last record.
    pub last: Option<Position>,
    /// How many.
    pub records: usize,
    /// Why.
    pub condition: Condition,
    /// Invocations that carried them.
    pub invocations: u32,
}

/// What the log and the metrics are told.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// An invocation ended, whatever its outcome: it is counted, and logged when it
    /// failed.
    Invoked {
        /// The lane.
        lane: usize,
        /// The first record (only when it failed, for the log).
        first: Option<Position>,
        /// The last record (only when it failed, for the log).
        last: Option<Position>,
        /// How many records it carried.
        records: usize,
        /// Which invocation of them it was.
        attempt: u32,
        /// How it ended, as the invoker reported it.
        outcome: Outcome,
        /// How it counts: the `outcome` label and the records failed.
        judged: Judged,
    },
    /// Records given up with no destination: logged with their range and skipped.
    Dropped(GaveUp),
    /// Records given up and accepted by the destination.
    Delivered(GaveUp),
    /// A send to the destination failed; it is tried again.
    DeliveryFailed {
        /// The lane.
        lane: usize,
        /// What went wrong.
        error: String,
        /// When it is tried again.
        retry_in: Duration,
    },
    /// A checkpoint write failed; it is tried again.
    SaveFailed {
        /// What went wrong.
        error: String,
        /// When it is tried again.
        retry_in: Duration,
    },
    /// The closed shard was read to its end.
    EndOfShard {
        /// Its children.
        children: Vec<String>,
    },
    /// The reader stopped; the shard ends once nothing is in flight.
    ReaderFailed {
        /// Why.
        reason: String,
    },
    /// A page was taken: this many records read, counted after de-aggregation (user
    /// records, what the function is handed; `esm_polled_events_total`).
    Polled {
        /// How many.
        records: usize,
    },
    /// A record starting with the KPL magic is not a valid aggregate: it goes on as a
    /// plain record (KCL's behaviour), warned about and counted.
    DeaggregationFailed {
        /// The Kinesis record.
        sequence: SequenceNumber,
        /// What is wrong with it.
        reason: DeaggregationError,
    },
    /// Records matched no filter pattern: done without an invocation.
    FilteredOut {
        /// How many.
        records: usize,
    },
    /// KPL aggregated records were kept although filters are set (`deaggregate =
    /// false`, or they failed to de-aggregate): their data is not the user's JSON, and
    /// filtering them would lose the user records inside.
    AggregatedNotFiltered,
    /// A tumbling window's invocation that carried no records (its final one, or the
    /// one ending it early) was given up: the window's aggregate is lost, and its
    /// records are not read again.
    WindowInvocationGaveUp {
        /// The lane.
        lane: usize,
        /// The window.
        window: Option<WindowBounds>,
        /// Why.
        condition: Condition,
        /// Invocations made.
        invocations: u32,
    },
}

/// What a shard is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading and invoking.
    Reading,
    /// The closed shard was read to its end: what is left goes out, then it finishes.
    Draining,
    /// Shutting down: what is in flight ends, nothing new starts.
    Stopping,
    /// The reader or the store failed: what is in flight ends, then the shard stops.
    Failing,
    /// The shard is closed and every record is done.
    Finished,
    /// Stopped on shutdown.
    Stopped,
    /// Stopped after a failure; the mapping starts it again.
    Failed,
}

/// How a shard ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardExit {
    /// The shard is closed and done; these are its children.
    Finished {
        /// Child shard ids named by the last read.
        children: Vec<String>,
    },
    /// Stopped on shutdown.
    Stopped,
    /// The reader or the store failed; the mapping may start it again later.
    Failed(String),
    /// A checkpoint write was refused: another instance holds the shard's lease now.
    /// The mapping does not start it again unless it takes the lease back.
    LeaseLost(String),
}

/// The whole state of one shard: what `/status` shows and what tests assert on.
#[derive(Debug, Serialize)]
pub struct ShardState {
    /// The shard.
    pub shard_id: String,
    /// What it is doing.
    pub phase: Phase,
    /// What the store holds (once the write in flight, if any, is done).
    pub saved: ShardCheckpoint,
    /// The checkpoint write in flight.
    pub saving: Option<ShardCheckpoint>,
    /// Every record at or before this is done (the tracker's low-water mark).
    pub checkpoint: Option<Position>,
    /// Records read and not yet passed by the checkpoint.
    pub outstanding_records: usize,
    /// Records done, by how.
    pub settled: SettledCounts,
    /// The lanes.
    pub lanes: Vec<Lane>,
    /// Memory the shard's records take.
    pub buffered_bytes: usize,
    /// `MillisBehindLatest` of the last read.
    pub millis_behind_latest: Option<i64>,
    /// Lambda's `IteratorAge`, per shard: when an invocation ends, the age of its last
    /// record (now − its arrival in the stream); 0 while the shard is caught up with
    /// nothing held, so a quiet stream raises no alarm.
    pub iterator_age_ms: u64,
    /// Lanes waiting to retry a failed invocation.
    pub retries_pending: usize,
    /// The children, once the closed shard was read to its end.
    pub children: Option<Vec<String>>,
    /// Why the shard is failing, when it is.
    pub failure: Option<String>,
    /// How it ended, once it has.
    pub exit: Option<ShardExit>,
    #[serde(skip)]
    tracker: CheckpointTracker,
    /// Records at or before this (the stored checkpoint) are skipped when read again.
    #[serde(skip)]
    skip_through: Option<Position>,
    #[serde(skip)]
    save_failures: u32,
    #[serde(skip)]
    save_retry_at: Option<Instant>,
    #[serde(skip)]
    lease_lost: bool,
    #[serde(skip)]
    warned_aggregated_filter: bool,
}

/// One shard's rules and state.
#[derive(Debug)]
pub struct ShardMachine {
    settings: ShardSettings,
    state: ShardState,
}

impl ShardMachine {
    /// A shard resuming from what the store holds.
    pub fn new(settings: ShardSettings, stored: ShardCheckpoint) -> Self {
        let lanes = (0..settings.router.lanes())
            .map(|i| Lane::new(i, Batcher::new(settings.limits, settings.encoder.clone())))
            .collect();
        let state = ShardState {
            shard_id: settings.shard_id.clone(),
            phase: Phase::Reading,
            checkpoint: stored.checkpoint.clone(),
            outstanding_records: 0,
            settled: SettledCounts::default(),
            lanes,
            buffered_bytes: 0,
            millis_behind_latest: None,
            iterator_age_ms: 0,
            retries_pending: 0,
            children: None,
            failure: None,
            exit: None,
            tracker: CheckpointTracker::new(stored.checkpoint.clone()),
            skip_through: stored.checkpoint.clone(),
            save_failures: 0,
            save_retry_at: None,
            lease_lost: false,
            warned_aggregated_filter: false,
            saving: None,
            saved: stored,
        };
        Self { settings, state }
    }

    /// The settings.
    pub fn settings(&self) -> &ShardSettings {
        &self.settings
    }

    /// The whole state.
    pub fn state(&self) -> &ShardState {
        &self.state
    }

    /// Where the reader starts: at the checkpoint's Kinesis record (the records at or
    /// before the checkpoint are skipped), else where the shard was set to start.
    pub fn read_from(&self) -> ReadFrom {
        match (&self.state.saved.checkpoint, &self.state.saved.start) {
            (Some(p), _) => ReadFrom::AtSequence(p.sequence.clone()),
            (None, StartAt::TrimHorizon) => ReadFrom::TrimHorizon,
            (None, StartAt::Latest) => ReadFrom::Latest,
            (None, StartAt::AtTimestamp(timestamp)) => ReadFrom::AtTimestamp(*timestamp),
            (None, StartAt::AtSequence(sequence)) => ReadFrom::AtSequence(sequence.clone()),
        }
    }

    /// Whether the driver should read the next page: the shard is reading, has not
    /// reached its end, and holds less than two events' worth of records per lane.
    pub fn wants_read(&self) -> bool {
        self.state.phase == Phase::Reading
            && self.state.buffered_bytes < self.settings.pause_memory()
            && self.records_held() < self.settings.pause_records()
    }

    /// When to feed [`Input::Timer`] if nothing else happens first.
    pub fn wake_at(&self) -> Option<Instant> {
        let may_start = self.may_start();
        self.state
            .lanes
            .iter()
            .filter_map(|lane| lane.wake_at(may_start))
            .chain(self.state.save_retry_at.filter(|_| !self.state.lease_lost))
            .min()
    }

    /// How the shard ended, once it has: the driver stops then.
    pub fn exit(&self) -> Option<&ShardExit> {
        self.state.exit.as_ref()
    }

    /// The memory the shard's records take (what the process-wide budget counts).
    pub fn buffered_bytes(&self) -> usize {
        self.state.buffered_bytes
    }

    /// Takes one input; returns what to do about it.
    pub fn on(&mut self, input: Input, env: &mut Env) -> Vec<Effect> {
        let mut effects = Vec::new();
        match input {
            Input::Page(page) => self.take_page(page, env.now, &mut effects),
            Input::ReadFailed(reason) => {
                if self.may_start() {
                    self.fail(reason.clone());
                    effects.push(Effect::Note(Note::ReaderFailed { reason }));
                }
            }
            Input::Invoked { lane, outcome } => {
                if let Some(arrival) = self
                    .state
                    .lanes
                    .get(lane)
                    .and_then(Lane::invoking_last_arrival)
                {
                    self.state.iterator_age_ms = age_ms(env.wall, arrival);
                }
                self.with_lane(lane, env, &mut effects, |lane, ctx| {
                    lane.on_invoked(&outcome, ctx)
                });
            }
            Input::Delivered { lane, result } => {
                self.with_lane(lane, env, &mut effects, |lane, ctx| {
                    lane.on_delivered(result, ctx)
                });
            }
            Input::Saved(result) => self.on_saved(result, env, &mut effects),
            Input::Timer => {}
            Input::Shutdown => {
                if self.may_start() {
                    self.state.phase = Phase::Stopping;
                }
            }
        }
        self.advance(env, &mut effects);
        effects
    }

    /// Reading, or draining a closed shard: new work may start.
    fn may_start(&self) -> bool {
        matches!(self.state.phase, Phase::Reading | Phase::Draining)
    }

    /// The checkpoint to save: the tracker's low-water mark, held back at the start
    /// of an open tumbling window until its final invocation is done.
    fn checkpoint_to_save(&self) -> Option<&Position> {
        let state = &self.state;
        state
            .lanes
            .iter()
            .filter_map(Lane::hold)
            .map(Option::as_ref)
            .fold(state.tracker.checkpoint(), |checkpoint, hold| {
                checkpoint.min(hold)
            })
    }

    fn records_held(&self) -> usize {
        self.state.lanes.iter().map(Lane::records).sum()
    }

    fn fail(&mut self, reason: String) {
        self.state.phase = Phase::Failing;
        self.state.failure.get_or_insert(reason);
    }

    fn take_page(&mut self, page: Page, now: Instant, effects: &mut Vec<Effect>) {
        if self.state.phase != Phase::Reading {
            // A read that ended after the shard stopped reading: its records are read
            // again by the next runner.
            return;
        }
        self.state.millis_behind_latest = page.millis_behind_latest;
        let records = self.expand(page.records, effects);
        if !records.is_empty() {
            effects.push(Effect::Note(Note::Polled {
                records: records.len(),
            }));
        }
        let mut filtered = 0;
        for record in records {
            if let Some(skip) = &self.state.skip_through {
                if record.position <= *skip {
                    continue;
                }
                self.state.skip_through = None;
            }
            let ordinal = self.state.tracker.admit();
            if !self.kept(&record, effects) {
                self.state
                    .tracker
                    .done(&[ordinal], |_| &record.position, Settled::Filtered);
                filtered += 1;
                // A filtered record still shows that time moved on: it ends the
                // windows before its own.
                if let Some(tumbling) = &self.settings.tumbling {
                    for lane in &mut self.state.lanes {
                        lane.saw_arrival(tumbling, record.approximate_arrival);
                    }
                }
                continue;
            }
            let lane = self.settings.router.lane_of(&record);
            self.state.lanes[lane].push(record, ordinal, now, &self.settings);
        }
        if filtered > 0 {
            effects.push(Effect::Note(Note::FilteredOut { records: filtered }));
        }
        if let Some(issued_at) = page.issued_at {
            for lane in &mut self.state.lanes {
                lane.read(issued_at, page.millis_behind_latest);
            }
        }
        if let Some(children) = page.end {
            effects.push(Effect::Note(Note::EndOfShard {
                children: children.clone(),
            }));
            self.state.children = Some(children);
            self.state.phase = Phase::Draining;
        }
    }

    /// A page's records as the function is to see them: with `deaggregate`, each KPL
    /// aggregate expanded into its user records, in order; one that does not decode
    /// goes on whole, with a note. Records at or before the checkpoint are expanded
    /// too: the skip is per user record.
    fn expand(&self, records: Vec<Record>, effects: &mut Vec<Effect>) -> Vec<Record> {
        if !self.settings.deaggregate {
            return records;
        }
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            if let Expansion::PassedThrough(reason) = kpl::expand_into(record, &mut out) {
                if let Some(passed) = out.last() {
                    effects.push(Effect::Note(Note::DeaggregationFailed {
                        sequence: passed.sequence().clone(),
                        reason,
                    }));
                }
            }
        }
        out
    }

    /// Whether `record` passes the filter criteria. A record still KPL-aggregated
    /// (with `deaggregate = false`, or one that failed to de-aggregate) always does,
    /// with a warning once: its data is not the user's JSON, and filtering it out would
    /// lose the user records inside.
    fn kept(&mut self, record: &Record, effects: &mut Vec<Effect>) -> bool {
        let filter = &self.settings.filter;
        if filter.is_empty() {
            return true;
        }
        if record.data.starts_with(&KPL_MAGIC) {
            if !self.state.warned_aggregated_filter {
                self.state.warned_aggregated_filter = true;
                effects.push(Effect::Note(Note::AggregatedNotFiltered));
            }
            return true;
        }
        filter.keeps(&record.partition_key, &record.data)
    }

    /// Runs `f` on lane `index` with the step's context.
    fn with_lane(
        &mut self,
        index: usize,
        env: &mut Env,
        effects: &mut Vec<Effect>,
        f: impl FnOnce(&mut Lane, &mut lane::Ctx<'_>),
    ) {
        let may_start = self.may_start();
        let flush = self.state.phase == Phase::Draining;
        let state = &mut self.state;
        let Some(lane) = state.lanes.get_mut(index) else {
            return;
        };
        let mut ctx = lane::Ctx {
            settings: &self.settings,
            tracker: &mut state.tracker,
            env,
            effects,
            saved: state.saved.checkpoint.as_ref(),
            saving: state.saving.as_ref().map(|w| w.checkpoint.as_ref()),
            max_ahead: self.settings.max_ahead(),
            may_start,
            flush,
        };
        f(lane, &mut ctx);
    }

    fn on_saved(
        &mut self,
        result: Result<(), SaveError>,
        env: &mut Env,
        effects: &mut Vec<Effect>,
    ) {
        let Some(written) = self.state.saving.take() else {
            return;
        };
        match result {
            Ok(()) => {
                self.state.saved = written;
                self.state.save_failures = 0;
                if self.state.saved.finished {
                    self.state.phase = Phase::Finished;
                    self.state.exit = Some(ShardExit::Finished {
                        children: self.state.children.clone().unwrap_or_default(),
                    });
                }
            }
            Err(SaveError::LeaseLost(reason)) => {
                // Another instance owns the shard: nothing more is written or started;
                // what is in flight ends, then the shard stops.
                self.state.lease_lost = true;
                self.state.failure.get_or_insert(reason);
                if self.may_start() {
                    self.state.phase = Phase::Failing;
                }
            }
            Err(SaveError::Failed(error)) => {
                let retry_in = self
                    .settings
                    .store_backoff
                    .delay(self.state.save_failures, env.jitter());
                self.state.save_failures = self.state.save_failures.saturating_add(1);
                self.state.save_retry_at = Some(env.now + retry_in);
                effects.push(Effect::Note(Note::SaveFailed { error, retry_in }));
            }
        }
    }

    /// Moves every lane on, then the checkpoint, then checks whether the shard ended.
    fn advance(&mut self, env: &mut Env, effects: &mut Vec<Effect>) {
        if self.state.exit.is_some() {
            return;
        }
        for index in 0..self.state.lanes.len() {
            self.with_lane(index, env, effects, |lane, ctx| lane.advance(ctx));
        }
        if self.save_if_due(env, effects) {
            // The write covers every record done: lanes may start their next batches
            // while it is committed.
            for index in 0..self.state.lanes.len() {
                self.with_lane(index, env, effects, |lane, ctx| lane.advance(ctx));
            }
        }
        self.end_if_done();
        let checkpoint = self.checkpoint_to_save().cloned();
        let state = &mut self.state;
        state.buffered_bytes = state.lanes.iter().map(Lane::memory).sum();
        state.checkpoint = checkpoint;
        state.outstanding_records = state.tracker.outstanding();
        state.settled = state.tracker.counts();
        state.retries_pending = state.lanes.iter().filter(|l| l.retrying()).count();
        if state.millis_behind_latest == Some(0) && state.outstanding_records == 0 {
            state.iterator_age_ms = 0;
        }
    }

    /// Starts a checkpoint write when the tracker is ahead of the store (one at a
    /// time), or when a drained closed shard is ready to be marked finished. Returns
    /// whether it started one.
    fn save_if_due(&mut self, env: &Env, effects: &mut Vec<Effect>) -> bool {
        let checkpoint = self.checkpoint_to_save().cloned();
        let state = &mut self.state;
        if state.saving.is_some() || state.lease_lost || state.exit.is_some() {
            return false;
        }
        if state.save_retry_at.is_some_and(|at| at > env.now) {
            return false;
        }
        state.save_retry_at = None;
        let checkpoint = checkpoint.as_ref();
        let finished = state.phase == Phase::Draining
            && state.tracker.outstanding() == 0
            && state.lanes.iter().all(Lane::is_empty);
        if checkpoint == state.saved.checkpoint.as_ref() && finished == state.saved.finished {
            return false;
        }
        let write = ShardCheckpoint {
            start: state.saved.start.clone(),
            checkpoint: checkpoint.cloned(),
            finished,
        };
        state.saving = Some(write.clone());
        effects.push(Effect::Save(write));
        true
    }

    /// Ends a stopping or failing shard once nothing is in flight and everything done
    /// is saved (or can no longer be).
    fn end_if_done(&mut self) {
        let checkpoint = self.checkpoint_to_save().cloned();
        let state = &mut self.state;
        if !matches!(state.phase, Phase::Stopping | Phase::Failing) {
            return;
        }
        let quiet = state.saving.is_none() && !state.lanes.iter().any(Lane::in_flight);
        let saved = state.lease_lost || checkpoint.as_ref() == state.saved.checkpoint.as_ref();
        if !(quiet && saved) {
            return;
        }
        let (phase, exit) = match (state.phase, &state.failure) {
            (_, Some(reason)) if state.lease_lost => {
                (Phase::Stopped, ShardExit::LeaseLost(reason.clone()))
            }
            (Phase::Failing, Some(reason)) => (Phase::Failed, ShardExit::Failed(reason.clone())),
            _ => (Phase::Stopped, ShardExit::Stopped),
        };
        state.phase = phase;
        state.exit = Some(exit);
    }
}

/// Milliseconds from `arrival` to `now` (0 when the clocks disagree).
fn age_ms(now: DateTime<Utc>, arrival: DateTime<Utc>) -> u64 {
    u64::try_from((now - arrival).num_milliseconds()).unwrap_or(0)
}

impl Condition {
    /// The `reason` label of `esm_dropped_events_total` for records given up this way
    /// without a destination.
    pub fn drop_reason(&self) -> &'static str {
        match self {
            Condition::RecordAgeExceeded => "record_age",
            Condition::RetryAttemptsExhausted => "retries_exhausted",
            Condition::PayloadTooLarge => "oversized",
        }
    }
}
