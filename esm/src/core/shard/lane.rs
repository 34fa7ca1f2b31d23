//! A lane: one of a shard's `parallelization_factor` concurrent streams of batches.
//!
//! Each lane has its own batcher (batch size, batching window, 6 MB cap) and works on
//! one batch at a time under the failure rules (retries, record age, bisect, partial
//! batch failures, the on-failure destination), so a retrying lane holds back only
//! the keys routed to it. A lane is driven by [`Lane::advance`], which runs until it
//! has to wait: for an invocation or a delivery in flight, a retry's due time, the
//! batching window, or the shard's permission to start work.
//!
//! With a tumbling window (only ever with one lane) the lane also carries the open
//! window: its state, passed from one invocation to the next, and the checkpoint it
//! holds at the window's start until the window's final invocation is done. A batch
//! never spans two windows; once a window has ended ([`WindowClock::has_ended`]) its
//! last batch, or an invocation with no records, goes out with
//! `isFinalInvokeForWindow`. A state above 1 MB ends the window early: the next
//! invocation carries no records and `isWindowTerminatedEarly`, and the window goes on
//! with fresh state from a checkpoint after it.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::tracker::{CheckpointTracker, Settled};
use super::{DeliveryRequest, Effect, Env, InvokeRequest, Note, ShardSettings};
use crate::core::batch::{Batch, Batcher};
use crate::core::event::{BatchEvent, WindowFields};
use crate::core::failure::{
    Action, BatchProgress, Condition, InvocationOutcome, LastFailure, Outcome,
};
use crate::core::record::{Position, Record};
use crate::core::response::{verdict, Response, Verdict};
use crate::core::window::{self, WindowBounds, WindowClock, EMPTY_STATE, MAX_STATE_BYTES};

/// What a lane may do in one step, as the shard decides it.
pub(super) struct Ctx<'a> {
    pub settings: &'a ShardSettings,
    pub tracker: &'a mut CheckpointTracker,
    pub env: &'a mut Env,
    pub effects: &'a mut Vec<Effect>,
    /// The checkpoint the store holds: invocations wait while the tracker is ahead
    /// of it and of the write in flight.
    pub saved: Option<&'a Position>,
    /// The checkpoint of the write in flight, if one is.
    pub saving: Option<Option<&'a Position>>,
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
    /// so far (up to the lane's open window, which `hold`s the checkpoint at its start)
    /// is durably checkpointed, or is in the checkpoint write in flight. A lane so runs
    /// its next batch while the last one's checkpoint is committed, and a crash
    /// delivers again at most two batches per lane: the one whose checkpoint was being
    /// written and the one started meanwhile.
    fn may_invoke(&self, hold: Option<&Option<Position>>) -> bool {
        let checkpoint = match hold {
            Some(hold) => hold.as_ref(),
            None => self.tracker.checkpoint(),
        };
        let covered = match self.saving {
            Some(writing) => checkpoint == writing,
            None => checkpoint == self.saved,
        };
        self.may_start && covered
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
    /// Its last invocation is the window's final one (`isFinalInvokeForWindow`).
    closes_window: bool,
    /// Its last invocation ends the window early (`isWindowTerminatedEarly`).
    ends_window_early: bool,
}

/// The tumbling window a lane is invoking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenWindow {
    /// The window.
    pub bounds: WindowBounds,
    /// The state the next invocation carries (compact JSON).
    #[serde(skip)]
    state: Bytes,
    /// The size of that state.
    pub state_bytes: usize,
    /// The checkpoint stays here, at the window's start, until its final invocation is
    /// done: after a crash the window is read again and its state rebuilt.
    pub hold: Option<Position>,
    /// The state went over 1 MB: the next invocation ends the window early.
    pub terminate_early: bool,
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
    /// The open tumbling window, if any.
    window: Option<OpenWindow>,
    /// What tells whether a window has ended.
    clock: WindowClock,
}

/// What `/status` shows of a lane.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// The open tumbling window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<OpenWindow>,
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
            window: None,
            clock: WindowClock::default(),
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
            window: self.window.clone(),
        }
    }

    /// Takes a record read at `now`.
    pub(super) fn push(
        &mut self,
        record: Record,
        ordinal: u64,
        now: Instant,
        settings: &ShardSettings,
    ) {
        match &settings.tumbling {
            Some(tumbling) => {
                let window = self.clock.admit(tumbling, record.approximate_arrival);
                self.batcher
                    .push_in_window(record, ordinal, now, window.key());
            }
            None => self.batcher.push(record, ordinal, now),
        }
    }

    /// A record that arrived at `arrival` was read but not kept (filtered out): it
    /// ends the windows before its own all the same.
    pub(super) fn saw_arrival(
        &mut self,
        tumbling: &crate::core::window::Tumbling,
        arrival: DateTime<Utc>,
    ) {
        self.clock.admit(tumbling, arrival);
    }

    /// A read issued at `issued_at` returned `millis_behind_latest` (for when a
    /// tumbling window has ended).
    pub(super) fn read(&mut self, issued_at: DateTime<Utc>, millis_behind_latest: Option<i64>) {
        self.clock.read(issued_at, millis_behind_latest);
    }

    /// Where the lane's open window holds the checkpoint (`Some(None)`: before any
    /// record); `None` without an open window.
    pub(super) fn hold(&self) -> Option<&Option<Position>> {
        self.window.as_ref().map(|w| &w.hold)
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
        self.batcher.pending_memory() + work + self.window.as_ref().map_or(0, |w| w.state.len())
    }

    /// Whether an invocation or a delivery of this lane is in flight.
    pub(super) fn in_flight(&self) -> bool {
        matches!(
            self.work.as_ref().map(|w| &w.wait),
            Some(Wait::Invoking { .. } | Wait::Delivering(_))
        )
    }

    /// Whether the lane waits to retry a failed invocation.
    pub(super) fn retrying(&self) -> bool {
        matches!(self.work.as_ref().map(|w| &w.wait), Some(Wait::RetryAt(_)))
    }

    /// Whether the lane holds no record at all, and no open window.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_none() && self.batcher.pending_len() == 0 && self.window.is_none()
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
                if !ctx.may_start || !self.start_work(ctx) {
                    return;
                }
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
                        if range.is_empty() {
                            // A window's invocation without records ran out: nothing
                            // to deliver, but the log says which window lost its end.
                            let bounds = self.window.as_ref().map(|w| w.bounds);
                            ctx.effects.push(Effect::Note(Note::WindowInvocationGaveUp {
                                lane: self.index,
                                window: bounds,
                                condition,
                                invocations,
                            }));
                            continue;
                        }
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
                self.finish_work(ctx);
                continue;
            }
            let first = work
                .batch
                .ordinals
                .first()
                .copied()
                .unwrap_or_else(|| ctx.tracker.first_outstanding());
            let hold = self.window.as_ref().map(|w| &w.hold);
            if !ctx.may_invoke(hold) || !ctx.close_enough(first) {
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

    /// Takes up the next piece of work: a window's invocation without records when one
    /// is due, else the next batch. Returns whether there is work.
    fn start_work(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let now = ctx.env.now;
        let Some(tumbling) = ctx.settings.tumbling else {
            let Some(batch) = self.batcher.next_batch(now, ctx.flush) else {
                return false;
            };
            self.work = Some(Work::new(batch, ctx.settings, false, false));
            return true;
        };
        // The end of a closed shard ends its open window early.
        let ended = |lane: &Self, bounds: &WindowBounds| ctx.flush || lane.clock.has_ended(bounds);
        if let Some(open) = &self.window {
            let more = self.batcher.front_window() == Some(open.bounds.key());
            let closes = !more && ended(self, &open.bounds);
            if open.terminate_early || closes {
                // Nothing left of the window to invoke, but an invocation is due: the
                // final one, or the one that ends the window early.
                let early = open.terminate_early || ctx.flush;
                self.work = Some(Work::new(Batch::default(), ctx.settings, closes, early));
                return true;
            }
        }
        let front = self.batcher.front_window();
        let flush = front.is_some_and(|key| ended(self, &tumbling.window_at(key)));
        let reserve = match (&self.window, front) {
            (Some(open), Some(key)) if open.bounds.key() == key => {
                ctx.settings.encoder.window_fields_len(&WindowFields {
                    bounds: open.bounds,
                    state: open.state.clone(),
                    is_final: false,
                    terminated_early: false,
                })
            }
            (_, Some(key)) => ctx.settings.encoder.window_fields_len(&WindowFields {
                bounds: tumbling.window_at(key),
                state: Bytes::from_static(EMPTY_STATE),
                is_final: false,
                terminated_early: false,
            }),
            (_, None) => 0,
        };
        let Some(batch) = self
            .batcher
            .next_batch_with(now, ctx.flush || flush, reserve)
        else {
            return false;
        };
        let bounds = tumbling.window_at(batch.window);
        if self.window.as_ref().map(|w| w.bounds) != Some(bounds) {
            // The window's first batch: fresh state, and the checkpoint held here.
            self.window = Some(OpenWindow {
                bounds,
                state: Bytes::from_static(EMPTY_STATE),
                state_bytes: EMPTY_STATE.len(),
                hold: ctx.tracker.checkpoint().cloned(),
                terminate_early: false,
            });
        }
        let closes = self.batcher.front_window() != Some(batch.window) && ended(self, &bounds);
        self.work = Some(Work::new(batch, ctx.settings, closes, closes && ctx.flush));
        true
    }

    /// The lane's work is done: a window's final invocation closes it (the checkpoint
    /// moves past it), an early end starts it again with fresh state.
    fn finish_work(&mut self, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.take() else {
            return;
        };
        if work.closes_window {
            self.window = None;
        } else if work.ends_window_early {
            if let Some(open) = &mut self.window {
                open.state = Bytes::from_static(EMPTY_STATE);
                open.state_bytes = EMPTY_STATE.len();
                open.hold = ctx.tracker.checkpoint().cloned();
                open.terminate_early = false;
            }
        }
    }

    /// The window fields of an invocation of `range` of the work's batch.
    fn window_fields(&self, work: &Work, range: &Range<usize>) -> Option<WindowFields> {
        let open = self.window.as_ref()?;
        let last = range.end == work.batch.len();
        Some(WindowFields {
            bounds: open.bounds,
            state: open.state.clone(),
            is_final: work.closes_window && last,
            terminated_early: work.ends_window_early && last,
        })
    }

    /// Starts the invocation of `range` of the batch.
    fn invoke(&mut self, range: Range<usize>, ctx: &mut Ctx<'_>) {
        let Some(work) = self.work.as_ref() else {
            return;
        };
        // The batcher counted the whole batch's event (for a window, with an estimate
        // of its fields); a part's (after a bisection) and a window's are counted again.
        let window = self.window_fields(work, &range);
        let known = range == (0..work.batch.len()) && window.is_none();
        let event = BatchEvent::new(
            ctx.settings.encoder.clone(),
            work.batch.records.clone(),
            range.clone(),
            window,
            known.then_some(work.batch.event_len),
        );
        let event_len = event.len();
        let (first, last) = span(event.records());
        ctx.effects.push(Effect::Invoke(InvokeRequest {
            lane: self.index,
            request_id: ctx.env.request_id(),
            records: event.records().len(),
            event,
            first,
            last,
            attempt: work.progress.attempt() + 1,
        }));
        if let Some(work) = self.work.as_mut() {
            work.wait = Wait::Invoking { range, event_len };
        }
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
        let windowed;
        let outcome = match (&mut self.window, outcome) {
            (Some(open), Outcome::Returned { response }) => {
                windowed = take_state(open, response, &work.batch.records[range.clone()], ctx);
                windowed.as_ref().unwrap_or(outcome)
            }
            _ => outcome,
        };
        let attempt = work.progress.attempt() + 1;
        let recorded =
            work.progress
                .record(&ctx.settings.rules, &work.batch, outcome, ctx.env.jitter());
        let records = &work.batch.records[range.clone()];
        let (first, last) = if recorded.judged.outcome == InvocationOutcome::Ok {
            (None, None)
        } else {
            span(records)
        };
        ctx.effects.push(Effect::Note(Note::Invoked {
            lane: self.index,
            first,
            last,
            records: records.len(),
            attempt,
            outcome: outcome.clone(),
            judged: recorded.judged,
        }));
        work.settled.extend(recorded.settled);
        work.wait = Wait::Ready;
    }

    /// When the last record of the invocation in flight arrived in the stream.
    pub(super) fn invoking_last_arrival(&self) -> Option<DateTime<Utc>> {
        let work = self.work.as_ref()?;
        let Wait::Invoking { range, .. } = &work.wait else {
            return None;
        };
        work.batch.records[range.clone()]
            .last()
            .map(|r| r.approximate_arrival)
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

/// Takes the state from a windowed invocation's response into the open window.
/// Returns the outcome to record instead, when the response has no state (a failed
/// invocation, Lambda's rule). The state is kept unless the whole invocation failed
/// (a malformed `batchItemFailures`); with item failures, it is the state after the
/// records before the first failure, which are done, and the rest is retried with it.
fn take_state(
    open: &mut OpenWindow,
    response: &Response,
    records: &[Record],
    ctx: &Ctx<'_>,
) -> Option<Outcome> {
    let read = match response.body() {
        Some(body) => window::read_state(body),
        None => Err(window::NO_STATE.to_owned()),
    };
    let state = match read {
        Ok(state) => state,
        Err(message) => {
            return Some(Outcome::FunctionError {
                error_type: "InvalidWindowResponse".to_owned(),
                message,
            })
        }
    };
    if ctx.settings.rules.report_item_failures
        && matches!(verdict(response, records), Verdict::Failed(_))
    {
        return None;
    }
    open.terminate_early = state.len() > MAX_STATE_BYTES;
    open.state_bytes = state.len();
    open.state = state;
    None
}

impl Work {
    fn new(
        batch: Batch,
        settings: &ShardSettings,
        closes_window: bool,
        ends_window_early: bool,
    ) -> Self {
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
                closes_window,
                ends_window_early,
            };
        }
        Self {
            // A window's invocation without records is one piece of no records.
            progress: if batch.is_empty() {
                BatchProgress::no_records()
            } else {
                BatchProgress::new(batch.len())
            },
            batch,
            settled: VecDeque::new(),
            wait: Wait::Ready,
            closes_window,
            ends_window_early,
        }
    }
}

/// The first and last positions of `records` (for logs).
fn span(records: &[Record]) -> (Option<Position>, Option<Position>) {
    let position = |r: Option<&Record>| r.map(|r| r.position.clone());
    (position(records.first()), position(records.last()))
}
