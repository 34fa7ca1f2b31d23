//! The batcher: records in, a batch out when `batch_size`, the batching window or the
//! 6 MB payload cap says so.
//!
//! It never sleeps and never reads a clock: the runner passes `now` in and asks
//! [`Batcher::wake_at`] when to come back. That keeps Lambda's batching rules in one
//! place that property tests drive with simulated time.
//!
//! The rules, as Lambda's event source mapping applies them:
//! - a batch holds at most `batch_size` records and its serialized event is at most
//!   6 MB; whichever limit is reached first closes the batch;
//! - otherwise records are gathered until `maximum_batching_window_in_seconds` has
//!   passed since the first of them arrived (a window of 0 invokes with whatever one
//!   read returned);
//! - at the end of a shard, or on shutdown, whatever is pending goes out at once;
//! - with a tumbling window, a batch holds the records of one window only, and the
//!   window's fields and state count against the 6 MB cap.
//!
//! A single record whose event alone is above the cap cannot be invoked at all; it
//! comes out alone as an [`Batch::oversized`] batch so the failure rules can deal
//! with it instead of stalling the shard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::{EventEncoder, MAX_EVENT_BYTES};
use super::record::{Position, Record};

/// The three limits that close a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// `batch_size`: the most records in one invocation.
    pub max_records: usize,
    /// `maximum_batching_window_in_seconds`: how long to gather records.
    pub window: Duration,
    /// The largest serialized event, [`MAX_EVENT_BYTES`] unless a test says otherwise.
    pub max_event_bytes: usize,
}

impl BatchLimits {
    /// Limits with Lambda's 6 MB payload cap.
    pub fn new(max_records: usize, window: Duration) -> Self {
        Self {
            max_records: max_records.max(1),
            window,
            max_event_bytes: MAX_EVENT_BYTES,
        }
    }
}

/// Records handed to the function in one invocation, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The records, in shard order (shared with the invocations' events, not copied).
    pub records: Arc<[Record]>,
    /// Each record's arrival ordinal in its shard (the checkpoint tracker's key), in
    /// step with `records`.
    pub ordinals: Vec<u64>,
    /// The exact size of the serialized event for these records.
    pub event_len: usize,
    /// The memory the records hold ([`Record::memory_size`], summed).
    pub memory: usize,
    /// The tumbling window the records fall in (its key; 0 without windows).
    pub window: i64,
}

impl Batch {
    /// Whether the event for this batch is above the payload cap (only ever a batch of
    /// one record that is too large by itself).
    pub fn oversized(&self, limits: &BatchLimits) -> bool {
        self.event_len > limits.max_event_bytes
    }

    /// The position of the first record.
    pub fn first_position(&self) -> Option<&Position> {
        self.records.first().map(|r| &r.position)
    }

    /// The position of the last record: where the checkpoint goes when the batch is done.
    pub fn last_position(&self) -> Option<&Position> {
        self.records.last().map(|r| &r.position)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A record waiting in the batcher.
#[derive(Debug)]
struct Pending {
    record: Record,
    /// The bytes it adds to an event.
    event_len: usize,
    /// Its arrival ordinal in the shard.
    ordinal: u64,
    /// Its tumbling window (0 without windows): a batch never spans two.
    window: i64,
}

/// Gathers records into batches.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    encoder: EventEncoder,
    pending: VecDeque<Pending>,
    /// The memory the pending records hold.
    pending_memory: usize,
    /// When the current window opened: the arrival of the oldest pending record.
    window_opened: Option<Instant>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(limits: BatchLimits, encoder: EventEncoder) -> Self {
        Self {
            limits,
            encoder,
            pending: VecDeque::new(),
            pending_memory: 0,
            window_opened: None,
        }
    }

    /// The limits this batcher applies.
    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// The encoder that measures (and later writes) the events.
    pub fn encoder(&self) -> &EventEncoder {
        &self.encoder
    }

    /// Adds a record read at `now`, with its arrival ordinal in the shard (any
    /// increasing number; the batches carry it back out).
    pub fn push(&mut self, record: Record, ordinal: u64, now: Instant) {
        self.push_in_window(record, ordinal, now, 0);
    }

    /// Adds a record that falls in tumbling window `window` (a key that never
    /// decreases): a batch holds records of one window only.
    pub fn push_in_window(&mut self, record: Record, ordinal: u64, now: Instant, window: i64) {
        let event_len = self.encoder.record_len(&record);
        if self.pending.is_empty() {
            self.window_opened = Some(now);
        }
        self.pending_memory += record.memory_size();
        self.pending.push_back(Pending {
            record,
            event_len,
            ordinal,
            window,
        });
    }

    /// How many records wait to be batched.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The memory the records waiting to be batched hold.
    pub fn pending_memory(&self) -> usize {
        self.pending_memory
    }

    /// The tumbling window of the oldest pending record.
    pub fn front_window(&self) -> Option<i64> {
        self.pending.front().map(|p| p.window)
    }

    /// When the window of the pending records closes, if any are pending.
    pub fn wake_at(&self) -> Option<Instant> {
        self.window_opened.map(|opened| opened + self.limits.window)
    }

    /// The next batch, if one is due at `now`. With `flush` (end of shard, shutdown)
    /// pending records go out without waiting for the window.
    pub fn next_batch(&mut self, now: Instant, flush: bool) -> Option<Batch> {
        self.next_batch_with(now, flush, 0)
    }

    /// [`next_batch`](Self::next_batch) for an event that carries `reserve` bytes
    /// beyond its records (a tumbling window's fields and state), counted against the
    /// payload cap. A record of a later tumbling window closes the batch.
    pub fn next_batch_with(&mut self, now: Instant, flush: bool, reserve: usize) -> Option<Batch> {
        let opened = self.window_opened?;
        let (count, event_len) = self.fitting_prefix(reserve);
        let full = count == self.limits.max_records || count < self.pending.len();
        let window_closed = now >= opened + self.limits.window;
        if !(full || window_closed || flush) {
            return None;
        }
        let window = self.pending.front().map_or(0, |p| p.window);
        let mut records = Vec::with_capacity(count);
        let mut ordinals = Vec::with_capacity(count);
        let mut memory = 0;
        for pending in self.pending.drain(..count) {
            memory += pending.record.memory_size();
            records.push(pending.record);
            ordinals.push(pending.ordinal);
        }
        let batch = Batch {
            records: records.into(),
            ordinals,
            event_len,
            memory,
            window,
        };
        self.pending_memory -= batch.memory;
        self.window_opened = if self.pending.is_empty() {
            None
        } else {
            Some(now)
        };
        Some(batch)
    }

    /// How many pending records fit in one batch, and the event size for them. Always
    /// at least one record when any is pending, even one above the cap by itself.
    fn fitting_prefix(&self, reserve: usize) -> (usize, usize) {
        let mut len = EventEncoder::empty_event_len() + reserve;
        let mut count = 0;
        let window = self.pending.front().map(|p| p.window);
        for (i, pending) in self.pending.iter().enumerate() {
            if count == self.limits.max_records || Some(pending.window) != window {
                break;
            }
            let next = len + pending.event_len + usize::from(i > 0);
            if next > self.limits.max_event_bytes && count > 0 {
                break;
            }
            len = next;
            count += 1;
        }
        (count, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::EventSource;
    use crate::core::record::SequenceNumber;
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn encoder() -> EventEncoder {
        EventEncoder::new(&EventSource {
            stream_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/s".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/esm".into(),
            shard_id: "shardId-000000000000".into(),
        })
    }

    fn record(n: u64, size: usize) -> Record {
        Record {
            position: Position::plain(SequenceNumber::parse((1000 + n).to_string()).unwrap()),
            partition_key: format!("k{}", n % 7),
            explicit_hash_key: None,
            data: Bytes::from(vec![b'x'; size]),
            approximate_arrival: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
        }
    }

    #[test]
    fn window_zero_invokes_with_what_was_read() {
        let t0 = crate::sim_clock::origin();
        let mut b = Batcher::new(BatchLimits::new(100, Duration::ZERO), encoder());
        for n in 0..3 {
            b.push(record(n, 10), n, t0);
        }
        let batch = b.next_batch(t0, false).unwrap();
        assert_eq!(batch.len(), 3);
        assert!(b.next_batch(t0, false).is_none());
        assert_eq!(b.wake_at(), None);
    }

    #[test]
    fn waits_for_the_window_unless_full() {
        let t0 = crate::sim_clock::origin();
        let window = Duration::from_secs(5);
        let mut b = Batcher::new(BatchLimits::new(3, window), encoder());
        b.push(record(0, 10), 0, t0);
        b.push(record(1, 10), 1, t0 + Duration::from_secs(1));
        assert!(b.next_batch(t0 + Duration::from_secs(4), false).is_none());
        assert_eq!(b.wake_at(), Some(t0 + window));
        assert_eq!(b.next_batch(t0 + window, false).unwrap().len(), 2);
        for n in 2..6 {
            b.push(record(n, 10), n, t0 + window);
        }
        assert_eq!(b.next_batch(t0 + window, false).unwrap().len(), 3);
        assert!(b.next_batch(t0 + window, false).is_none());
        assert_eq!(b.next_batch(t0 + window, true).unwrap().len(), 1);
    }

    #[test]
    fn the_payload_cap_closes_a_batch() {
        let t0 = crate::sim_clock::origin();
        // 1.5 MB of data becomes 2 MB of base64: three fit in 6 MB, four do not.
        let mut b = Batcher::new(BatchLimits::new(10_000, Duration::from_secs(60)), encoder());
        for n in 0..4 {
            b.push(record(n, 1_500_000), n, t0);
        }
        let batch = b.next_batch(t0, false).unwrap();
        assert_eq!(batch.len(), 3);
        assert!(batch.event_len <= MAX_EVENT_BYTES);
        assert!(batch.event_len + 2_000_000 > MAX_EVENT_BYTES);
        assert!(
            b.next_batch(t0, false).is_none(),
            "the fourth waits for its window"
        );
    }

    #[test]
    fn a_record_too_large_alone_comes_out_alone() {
        let t0 = crate::sim_clock::origin();
        let limits = BatchLimits {
            max_records: 10,
            window: Duration::ZERO,
            max_event_bytes: 1_000,
        };
        let mut b = Batcher::new(limits, encoder());
        b.push(record(0, 2_000), 0, t0);
        b.push(record(1, 10), 1, t0);
        let first = b.next_batch(t0, false).unwrap();
        assert_eq!(first.len(), 1);
        assert!(first.oversized(&limits));
        let second = b.next_batch(t0, false).unwrap();
        assert!(!second.oversized(&limits));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Push(usize),
        Advance(u64),
        Poll,
        Flush,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..3_000).prop_map(Step::Push),
            2 => (0u64..4_000).prop_map(Step::Advance),
            3 => Just(Step::Poll),
            1 => Just(Step::Flush),
        ]
    }

    proptest! {
        /// Whatever arrives, in whatever rhythm: every record comes out exactly once, in
        /// order; no batch breaks a limit; no batch leaves before its window unless full
        /// or flushed; and nothing waits past its window.
        #[test]
        fn batches_respect_every_limit(
            max_records in 1usize..20,
            window_ms in 0u64..3_000,
            max_event_bytes in 1_500usize..20_000,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let limits = BatchLimits { max_records, window: Duration::from_millis(window_ms), max_event_bytes };
            let enc = encoder();
            let mut b = Batcher::new(limits, enc.clone());
            let t0 = crate::sim_clock::origin();
            let mut now = t0;
            let (mut pushed, mut out) = (0u64, Vec::new());
            for s in steps {
                match s {
                    Step::Push(size) => { b.push(record(pushed, size), pushed, now); pushed += 1; }
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    Step::Poll | Step::Flush => {
                        let flush = matches!(s, Step::Flush);
                        let was_pending = b.pending_len();
                        let wake = b.wake_at();
                        match b.next_batch(now, flush) {
                            Some(batch) => {
                                prop_assert!(!batch.is_empty());
                                prop_assert!(batch.len() <= max_records);
                                prop_assert_eq!(batch.event_len, enc.event_len(batch.records.iter()));
                                prop_assert_eq!(batch.memory, batch.records.iter().map(Record::memory_size).sum::<usize>());
                                prop_assert_eq!(batch.ordinals.len(), batch.len());
                                prop_assert!(batch.event_len <= max_event_bytes || batch.len() == 1);
                                let full = batch.len() == max_records || batch.len() < was_pending;
                                prop_assert!(full || flush || wake.is_some_and(|w| now >= w));
                                out.extend(batch.records.iter().cloned());
                            }
                            None => {
                                prop_assert!(!flush || was_pending == 0);
                                prop_assert!(wake.is_none_or(|w| now < w));
                            }
                        }
                    }
                }
            }
            while let Some(batch) = b.next_batch(now, true) { out.extend(batch.records.iter().cloned()); }
            prop_assert_eq!(out.len() as u64, pushed);
            for (i, r) in out.iter().enumerate() {
                prop_assert_eq!(r, &record(i as u64, r.data.len()));
            }
        }
    }
}
