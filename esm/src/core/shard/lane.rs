//! A lane: one of a shard's `parallelization_factor` concurrent streams of batches.
//!
//! Each lane has its own batcher (batch size, batching window, 6 MB cap) and works on
//! one batch at a time under the failure rules (retries, record age, bisect, partial
//! batch failures, the on-failure destination), so a retrying lane holds back only
//! the keys routed to it. A lane is driven by [`Lane::advance`], which runs until it
//! has to wait: for an invocation or a delivery in flight, a retry's due time, the
//! batching window, or the shard's permission to start work.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::tracker::{CheckpointTracker, Settled};
use super::{DeliveryRequest, Effect, Env, InvokeRequest, Note, ShardSettings};
use crate::core::batch::{Batch, Batcher};
use crate::core::failure::{Action, BatchProgress, Condition, LastFailure, Outcome};
use crate::core::record::{Position, Record};

/// What a lane may do in one step, as the shard decides it.
pub(super) struct Ctx<'a> {
    pub settings: &'a ShardSettings,
    pub tracker: &'a mut CheckpointTracker,
    pub env: &'a mut Env,
    pub effects: &'a mut Vec<Effect>,
    /// The checkpoint the store holds: invocations wait while the tracker is ahead
    /// of it.
    pub saved: Option<&'a Position>,
    /// A checkpoint write is in flight.
    pub saving: bool,
    /// How far ahead of the oldest record not done (in records read) an invocation
    /// may start.
    pub max_ahead: u64,
    /// New batches, invocations and deliveries may start (not stopping).
    pub may_start: bool,
    /// Pending records go out without waiting for the window (end of the shard).
    pub flush: bool,
}

impl Ctx<'_> {
    /// Whether an invocation may start now: the shard is running and every record done
    /// so far is durably checkpointed, so a crash re-delivers only what is in flight.
    fn may_invoke(&self) -> bool {
        self.may_start && !self.saving && self.tracker.checkpoint() == self.saved
    }

    /// Whether a batch whose first record has `ordinal` is close enough to the
    /// checkpoint to be invoked: lanes run ahead of the slowest one only so far, which
    /// bounds what a crash delivers again. The lane holding the checkpoint back is
    /// always close enough.
    fn close_enough(&self, ordinal: u64) -> bool {
        ordinal
            < self
                .tracker
                .first_outstanding()
                .saturating_add(self.max_ahead)
    }
}

/// The batch a lane is working on.
#[derive(Debug)]
struct Work {
    batch: Batch,
    progress: BatchProgress,
    /// Decisions of the failure rules still to carry out, in shard order.
    settled: VecDeque<Action>,
    wait: Wait,
}

/// What a lane's batch is waiting for.
#[derive(Clone, Debug)]
enum Wait {
    /// Nothing: the lane can go on.
    Ready,
    /// The invocation of this range of the batch is running.
    Invoking {
        range: Range<usize>,
        event_len: usize,
    },
    /// A failed invocation is retried at this time.
    RetryAt(Instant),
    /// Records given up are being sent to the on-failure destination.
    Delivering(Delivery),
    /// The send failed; it is tried again at this time.
    DeliveryRetryAt(Delivery, Instant),
}

/// Records given up, on their way to the destination.
#[derive(Clone, Debug)]
struct Delivery {
    range: Range<usize>,
    condition: Condition,
    invocations: u32,
    last_failure: LastFailure,
    /// One request id for every attempt at this delivery.
    request_id: String,
    attempt: u32,
}

/// One lane of a shard.
#[derive(Debug)]
pub struct Lane {
    index: usize,
    batcher: Batcher,
    work: Option<Work>,
}

/// What `/status` shows of a lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LaneStatus {
    /// The lane's index.
    pub lane: usize,
    /// Records waiting to be batched.
    pub pending_records: usize,
    /// Records in the batch being worked on.
    pub batch_records: usize,
    /// `idle`, `invoking`, `retrying`, `delivering` or `waiting`.
    pub state: &'static str,
    /// Invocations so far of the records to invoke next.
    pub attempt: u32,
}

impl Serialize for Lane {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.status().serialize(serializer)
    }
}

impl Lane {
    /// An empty lane.
    pub(super) fn new(index: usize, batcher: Batcher) -> Self {
        Self {
            index,
            batcher,
            work: None,
        }
    }

    /// The lane's observable state.
    pub fn status(&self) -> LaneStatus {
        let (batch_records, state, attempt) = match &self.work {
            None => (0, "idle", 0),
            Some(work) => (
                work.batch.len(),
                match work.wait {
                    Wait::Ready => "waiting",
                    Wait::Invoking { .. } => "invoking",
                    Wait::RetryAt(_) => "retrying",
                    Wait::Delivering(_) | Wait::DeliveryRetryAt(..) => "delivering",
                },
                work.progress.attempt(),
            ),
        };
        LaneStatus {
            lane: self.index,
            pending_records: self.batcher.pending_len(),
            batch_records,
            state,
            attempt,
        }
    }

    /// Takes a record read at `now`.
    pub(super) fn push(&mut self, record: Record, ordinal: u64, now: Instant) {
        self.batcher.push(record, ordinal, now);
    }

    /// Records held: waiting to be batched or in the batch being worked on.
    pub(super) fn records(&self) -> usize {
        self.batcher.pending_len() + self.work.as_ref().map_or(0, |w| w.batch.len())
    }

    /// Memory held: the records, plus the event of an invocation in flight.
    pub(super) fn memory(&self) -> usize {
        let work = self.work.as_ref().map_or(0, |w| {
            w.batch.memory
                + match w.wait {
                    Wait::Invoking { event_len, .. } => event_len,
                    _ => 0,
                }
        });
        self.batcher.pending_memory() + work
    }

    /// Whether an invocation or a delivery of this lane is in flight.
    pub(super) fn in_flight(&self) -> bool {
        matches!(
            self.work.as_ref().map(|w| &w.wait),
            Some(Wait::Invoking { .. } | Wait::Delivering(_))
        )
    }

    /// Whether the lane holds no record at all.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_none() && self.batcher.pending_len() == 0
    }

    /// When the lane next has something to do without any other input.
    pub(super) fn wake_at(&self, may_start: bool) -> Option<Instant> {
        match &self.work {
            None if may_start => self.batcher.wake_at(),
            None => None,
            Some(work) => match &work.wait {
                Wait::RetryAt(at) | Wait::DeliveryRetryAt(_, at) => Some(*at),
                _ => None,
            },
        }
    }

    /// Goes on until the lane has to wait.
    pub(super) fn advance(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.env.now;
        loop {
            let Some(work) = self.work.as_mut() else {
                if !ctx.may_start {
                    return;
                }
                let Some(batch) = self.batcher.next_batch(now, ctx.flush) else {
                    return;
                };
                self.work = Some(Work::new(batch, ctx.settings));
                continue;
            };
            match &work.wait {
                Wait::Invoking { .. } | Wait::Delivering(_) => return,
                Wait::RetryAt(at) if *at > now => return,
                Wait::RetryAt(_) => work.wait = Wait::Ready,
                Wait::DeliveryRetryAt(_, at) if *at > now || !ctx.may_start => return,
                Wait::DeliveryRetryAt(delivery, _) => {
                    let delivery = delivery.clone();
                    self.deliver(delivery, ctx);
                    return;
                }
                Wait::Ready => {}
            }
            if let Some(action) = work.settled.pop_front() {
                match action {
                    Action::Done(range) => self.mark(range, Settled::Handled, ctx),
                    Action::GiveUp {
                        range,
                        condition,
                        invocations,
                        last_failure,
                    } => {
                        if !ctx.settings.has_destination {
                            self.note_gave_up(&range, condition, invocations, false, ctx);
                            self.mark(range, Settled::Dropped, ctx);
                            continue;
                        }
                        if !ctx.may_start {
                            work.settled.push_front(Action::GiveUp {
                                range,
                                condition,
                                invocations,
                                last_failure,
                            });
                            return;
                        }
                        let delivery = Delivery {
                            range,
                            condition,
                            invocations,
                            last_failure,
                            request_id: ctx.env.request_id(),
                            attempt: 0,
                        };
                        self.deliver(delivery, ctx);
                        return;
                    }
                    Action::Invoke(_) | Action::Wait(_) => {}
                }
                continue;
            }
            if work.progress.is_finished() {
                self.work = None;
                continue;
            }
            let first = work.batch.ordinals.first().copied().unwrap_or_default();
            if !ctx.may_invoke() || !ctx.close_enough(first) {
                return;
            }
            match work
                .progress
                .next(&ctx.settings.rules, &work.batch, ctx.env.wall)
            {
                None => self.work = None,
                Some(Action::Wait(delay)) => {
                    work.wait = Wait::RetryAt(now + delay);
                    return;
                }
                Some(Action::Invoke(range)) => {
                    self.invoke(range, ctx);
                    return;
                }
                Some(settled) => work.settled.push_back(settled),
            }
        }
    }

    /// Starts the invocation of `range` of the batch.
    fn invoke(&mut self, range: Range<usize>, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.as_mut() else {
            return;
        };
        let records = &work.batch.records[range.clone()];
        let encoder = &ctx.settings.encoder;
        let event_len = if range.len() == work.batch.len() {
            work.batch.event_len
        } else {
            encoder.event_len(records)
        };
        let mut payload = Vec::with_capacity(event_len);
        encoder.encode(records, &mut payload);
        let (first, last) = span(records);
        ctx.effects.push(Effect::Invoke(InvokeRequest {
            lane: self.index,
            request_id: ctx.env.request_id(),
            payload: Bytes::from(payload),
            records: records.len(),
            first,
            last,
            attempt: work.progress.attempt() + 1,
        }));
        work.wait = Wait::Invoking { range, event_len };
    }

    /// Sends records given up to the destination (again, after a failed send).
    fn deliver(&mut self, delivery: Delivery, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.as_mut() else {
            return;
        };
        ctx.effects.push(Effect::Deliver(DeliveryRequest {
            lane: self.index,
            request_id: delivery.request_id.clone(),
            records: work.batch.records[delivery.range.clone()].to_vec(),
            condition: delivery.condition,
            invocations: delivery.invocations,
            last_failure: delivery.last_failure,
        }));
        work.wait = Wait::Delivering(delivery);
    }

    /// Records the end of this lane's invocation.
    pub(super) fn on_invoked(&mut self, outcome: &Outcome, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.as_mut() else {
            return;
        };
        let Wait::Invoking { range, .. } = &work.wait else {
            return;
        };
        if !matches!(outcome, Outcome::Returned { .. }) {
            let records = &work.batch.records[range.clone()];
            let (first, last) = span(records);
            ctx.effects.push(Effect::Note(Note::InvocationFailed {
                lane: self.index,
                first,
                last,
                records: records.len(),
                attempt: work.progress.attempt() + 1,
                outcome: outcome.clone(),
            }));
        }
        let settled =
            work.progress
                .record(&ctx.settings.rules, &work.batch, outcome, ctx.env.jitter());
        work.settled.extend(settled);
        work.wait = Wait::Ready;
    }

    /// Records the end of this lane's send to the destination.
    pub(super) fn on_delivered(&mut self, result: Result<(), String>, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.as_mut() else {
            return;
        };
        let Wait::Delivering(delivery) = &work.wait else {
            return;
        };
        let mut delivery = delivery.clone();
        match result {
            Ok(()) => {
                work.wait = Wait::Ready;
                self.note_gave_up(
                    &delivery.range,
                    delivery.condition,
                    delivery.invocations,
                    true,
                    ctx,
                );
                self.mark(delivery.range, Settled::Delivered, ctx);
            }
            Err(error) => {
                let retry_in = ctx
                    .settings
                    .destination_backoff
                    .delay(delivery.attempt, ctx.env.jitter());
                delivery.attempt = delivery.attempt.saturating_add(1);
                ctx.effects.push(Effect::Note(Note::DeliveryFailed {
                    lane: self.index,
                    error,
                    retry_in,
                }));
                work.wait = Wait::DeliveryRetryAt(delivery, ctx.env.now + retry_in);
            }
        }
    }

    /// Marks `range` of the batch done in the tracker.
    fn mark(&mut self, range: Range<usize>, how: Settled, ctx: &mut Ctx<'_>) {
        if let Some(work) = &self.work {
            let records = &work.batch.records[range.clone()];
            ctx.tracker
                .done(&work.batch.ordinals[range], |i| &records[i].position, how);
        }
    }

    fn note_gave_up(
        &self,
        range: &Range<usize>,
        condition: Condition,
        invocations: u32,
        delivered: bool,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(work) = &self.work else {
            return;
        };
        let records = &work.batch.records[range.clone()];
        let (first, last) = span(records);
        let gave_up = super::GaveUp {
            lane: self.index,
            first,
            last,
            records: records.len(),
            condition,
            invocations,
        };
        ctx.effects.push(Effect::Note(if delivered {
            Note::Delivered(gave_up)
        } else {
            Note::Dropped(gave_up)
        }));
    }
}

impl Work {
    fn new(batch: Batch, settings: &ShardSettings) -> Self {
        if batch.oversized(&settings.limits) {
            // A record too large to be invoked at all: given up as it is.
            let mut settled = VecDeque::new();
            settled.push_back(Action::GiveUp {
                range: 0..batch.len(),
                condition: Condition::PayloadTooLarge,
                invocations: 0,
                last_failure: LastFailure::None,
            });
            return Self {
                batch,
                progress: BatchProgress::new(0),
                settled,
                wait: Wait::Ready,
            };
        }
        Self {
            progress: BatchProgress::new(batch.len()),
            batch,
            settled: VecDeque::new(),
            wait: Wait::Ready,
        }
    }
}

/// The first and last positions of `records` (for logs).
fn span(records: &[Record]) -> (Option<Position>, Option<Position>) {
    let position = |r: Option<&Record>| r.map(|r| r.position.clone());
    (position(records.first()), position(records.last()))
}
