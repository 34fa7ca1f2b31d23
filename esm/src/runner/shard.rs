//! The per-shard loop: read, batch, invoke, decide, checkpoint.
//!
//! A shard runner is a small actor. Its inputs arrive as `Event`s — a page from the
//! reader, the end of an invocation, a timer, shutdown — and [`ShardRunner::run`]
//! handles one at a time against one state struct, [`ShardStatus`], which is what
//! `/status` will serialise. The rules it follows:
//!
//! - one batch in flight per shard; reading the next page overlaps it, but at most
//!   one page waits in the channel and the batcher is only fed while it holds less than
//!   a batch, so memory per shard stays bounded;
//! - the checkpoint moves only after a batch succeeded (or was dropped by the failure
//!   rules), and only once the store says it is durable;
//! - on shutdown it stops reading, lets the batch in flight finish, checkpoints it and
//!   leaves; a batch waiting for a retry is left for the next run to read again;
//! - at the end of a closed shard it drains what is pending, then records the shard as
//!   finished so its children may be read.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::MappingContext;
use crate::core::batch::{Batch, Batcher};
use crate::core::event::{EventEncoder, EventSource};
use crate::core::failure::{Action, BatchProgress, Condition, Outcome};
use crate::core::record::Position;
use crate::invoke::Invocation;
use crate::source::polling::{self, PollingConfig, MAX_GET_RECORDS_LIMIT};
use crate::source::{Page, ReadFrom, SourceError};
use crate::store::{Lease, ShardCheckpoint, StartAt, StoreError};

/// What a shard runner is doing, for logs and `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking the lease and starting the reader.
    Starting,
    /// Reading and invoking.
    Reading,
    /// Waiting to retry a failed batch.
    Retrying,
    /// Shutting down: the batch in flight finishes, nothing new is read.
    Stopping,
    /// The shard is closed and every record is done.
    Finished,
    /// Stopped on shutdown.
    Stopped,
}

/// The observable state of one shard runner.
#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard_id: String,
    /// What it is doing.
    pub phase: Phase,
    /// The last durable checkpoint.
    pub checkpoint: Option<Position>,
    /// `MillisBehindLatest` of the last read.
    pub millis_behind_latest: Option<i64>,
}

/// How a shard runner ended.
#[derive(Debug)]
pub enum ShardExit {
    /// The shard is closed and done; these are its children.
    Finished {
        /// Child shard ids named by the last read.
        children: Vec<String>,
    },
    /// Stopped on shutdown.
    Stopped,
    /// The reader or the store failed for good; the mapping may start it again later.
    Failed(String),
}

/// An input to the actor.
enum Event {
    /// The reader sent a page, or failed.
    Page(Result<Page, SourceError>),
    /// The reader is gone (its channel closed).
    ReaderGone,
    /// The invocation in flight ended.
    Invoked(Outcome),
    /// A timer fired: the batching window closed, or a retry is due.
    Timer,
    /// Shutdown was asked for.
    Shutdown,
}

/// The batch being worked on.
struct InFlight {
    batch: Batch,
    /// What the failure rules still have to do with it.
    progress: BatchProgress,
    /// The records of the invocation running or last run.
    range: std::ops::Range<usize>,
    /// When the next attempt is due, after a failure.
    retry_at: Option<Instant>,
}

/// Runs one shard until it finishes, fails or is cancelled.
pub struct ShardRunner {
    ctx: Arc<MappingContext>,
    state: ShardCheckpoint,
    status: ShardStatus,
    lease: Option<Lease>,
}

impl ShardRunner {
    /// A runner for `shard_id`, resuming from `state`.
    pub fn new(ctx: Arc<MappingContext>, shard_id: String, state: ShardCheckpoint) -> Self {
        let status = ShardStatus {
            shard_id,
            phase: Phase::Starting,
            checkpoint: state.checkpoint.clone(),
            millis_behind_latest: None,
        };
        Self {
            ctx,
            state,
            status,
            lease: None,
        }
    }

    /// Runs the shard to its end, inside a span naming mapping and shard.
    pub async fn run(self, cancel: CancellationToken) -> ShardExit {
        let span = tracing::info_span!("shard", mapping = %self.ctx.spec.name, shard = %self.status.shard_id);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(mut self, cancel: CancellationToken) -> ShardExit {
        let spec = self.ctx.spec.clone();
        let shard_id = self.status.shard_id.clone();
        match self.ctx.store.acquire(&spec.name, &shard_id).await {
            Ok(lease) => self.lease = Some(lease),
            Err(e) => return ShardExit::Failed(e.to_string()),
        }
        let from = match (&self.state.checkpoint, &self.state.start) {
            (Some(p), _) => ReadFrom::AfterSequence(p.sequence.clone()),
            (None, StartAt::TrimHorizon) => ReadFrom::TrimHorizon,
            (None, StartAt::Latest) => ReadFrom::Latest,
            (None, StartAt::AtTimestamp { timestamp }) => ReadFrom::AtTimestamp(*timestamp),
        };
        tracing::info!(from = ?from, "reading shard");
        let reader_cancel = cancel.child_token();
        let (tx, mut pages) = mpsc::channel(1);
        let reader = tokio::spawn(
            polling::run(
                self.ctx.client.clone(),
                PollingConfig {
                    stream_arn: spec.stream_arn.clone(),
                    shard_id: shard_id.clone(),
                    from,
                    calls_per_second: spec.calls_per_second,
                    limit: MAX_GET_RECORDS_LIMIT,
                },
                tx,
                self.ctx.metrics.clone(),
                reader_cancel.clone(),
            )
            .in_current_span(),
        );
        let _stop_reader = reader_cancel.clone().drop_guard();

        let encoder = EventEncoder::new(&EventSource {
            stream_arn: spec.stream_arn.clone(),
            region: spec.region.clone(),
            invoke_identity_arn: spec.invoke_identity_arn.clone(),
            shard_id: shard_id.clone(),
        });
        let mut batcher = Batcher::new(spec.limits, encoder);
        let mut in_flight: Option<InFlight> = None;
        let mut invocation: Option<BoxFuture<'static, Outcome>> = None;
        let mut children: Option<Vec<String>> = None;
        let mut stopping = false;
        let mut warned_aggregated = false;
        self.status.phase = Phase::Reading;

        let exit = 'run: loop {
            let now = Instant::now();
            // Start (or restart) work when the shard is idle: take the next batch
            // when none is in flight, and ask the failure rules what to do with it.
            if invocation.is_none() && !stopping {
                loop {
                    if in_flight.is_none() {
                        let Some(batch) = batcher.next_batch(now, children.is_some()) else {
                            break;
                        };
                        if batch.oversized(batcher.limits()) {
                            if let Err(e) = self.drop_oversized(&batch).await {
                                break 'run ShardExit::Failed(e.to_string());
                            }
                            continue;
                        }
                        in_flight = Some(InFlight {
                            progress: BatchProgress::new(batch.len()),
                            range: 0..0,
                            batch,
                            retry_at: None,
                        });
                    }
                    match self.next_step(&mut in_flight, batcher.encoder(), now).await {
                        Ok(Some(call)) => {
                            invocation = Some(call);
                            self.status.phase = Phase::Reading;
                            break;
                        }
                        // Waiting for a retry.
                        Ok(None) if in_flight.is_some() => break,
                        // The batch is finished: on to the next one.
                        Ok(None) => {}
                        Err(e) => break 'run ShardExit::Failed(e.to_string()),
                    }
                }
            }
            if stopping && invocation.is_none() {
                break ShardExit::Stopped;
            }
            if let Some(kids) = &children {
                if in_flight.is_none() && batcher.pending_len() == 0 {
                    self.state.finished = true;
                    if let Err(e) = self.save().await {
                        break ShardExit::Failed(e.to_string());
                    }
                    break ShardExit::Finished {
                        children: kids.clone(),
                    };
                }
            }

            let want_page =
                !stopping && children.is_none() && batcher.pending_len() < spec.limits.max_records;
            let timer_at = match &in_flight {
                Some(flight) if invocation.is_none() => flight.retry_at,
                Some(_) => None,
                None => batcher.wake_at(),
            };
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => Event::Shutdown,
                outcome = poll_some(&mut invocation), if invocation.is_some() => Event::Invoked(outcome),
                page = pages.recv(), if want_page => page.map_or(Event::ReaderGone, Event::Page),
                _ = sleep_until(timer_at), if timer_at.is_some() => Event::Timer,
            };

            match event {
                Event::Shutdown => {
                    stopping = true;
                    self.status.phase = Phase::Stopping;
                    reader_cancel.cancel();
                    if invocation.is_some() {
                        tracing::info!("shutting down: letting the batch in flight finish");
                    }
                }
                Event::Page(Ok(page)) => {
                    self.status.millis_behind_latest = page.millis_behind_latest;
                    let now = Instant::now();
                    if spec.deaggregate
                        && !warned_aggregated
                        && page.records.iter().any(is_kpl_aggregated)
                    {
                        warned_aggregated = true;
                        tracing::warn!("KPL-aggregated records found: de-aggregation is not built yet, so they reach the function as the Kinesis records they are");
                    }
                    for record in page.records {
                        batcher.push(record, now);
                    }
                    if let Some(kids) = page.end {
                        tracing::info!(children = ?kids, "reached the end of the closed shard");
                        children = Some(kids);
                    }
                }
                Event::Page(Err(e)) => {
                    tracing::error!(error = %e, "the shard reader stopped");
                    break ShardExit::Failed(e.to_string());
                }
                Event::ReaderGone => {
                    if !stopping {
                        break ShardExit::Failed("the shard reader ended unexpectedly".into());
                    }
                }
                Event::Invoked(outcome) => {
                    invocation = None;
                    let Some(flight) = in_flight.as_mut() else {
                        continue;
                    };
                    self.log_outcome(flight, &outcome);
                    let settled = flight.progress.record(
                        &spec.policy,
                        &flight.batch,
                        &outcome,
                        rand::random(),
                    );
                    if let Err(e) = self.settle(flight, settled).await {
                        break ShardExit::Failed(e.to_string());
                    }
                    if !flight.progress.is_finished() {
                        self.status.phase = Phase::Retrying;
                    }
                }
                Event::Timer => {}
            }
        };
        reader_cancel.cancel();
        let _ = reader.await;
        self.status.phase = match exit {
            ShardExit::Finished { .. } => Phase::Finished,
            _ => Phase::Stopped,
        };
        tracing::info!(checkpoint = ?self.status.checkpoint.as_ref().map(ToString::to_string), phase = ?self.status.phase, "shard runner ended");
        exit
    }

    /// Asks the failure rules what to do next with the batch in flight: settles what
    /// they settle, and starts an invocation when one is due. Clears `in_flight` when
    /// the batch is finished.
    async fn next_step(
        &mut self,
        in_flight: &mut Option<InFlight>,
        encoder: &EventEncoder,
        now: Instant,
    ) -> Result<Option<BoxFuture<'static, Outcome>>, StoreError> {
        let rules = self.ctx.spec.policy.clone();
        loop {
            let Some(flight) = in_flight.as_mut() else {
                return Ok(None);
            };
            if flight.retry_at.is_some_and(|at| at > now) {
                return Ok(None);
            }
            flight.retry_at = None;
            match flight
                .progress
                .next(&rules, &flight.batch, chrono::Utc::now())
            {
                None => {
                    *in_flight = None;
                    return Ok(None);
                }
                Some(Action::Wait(delay)) => {
                    flight.retry_at = Some(now + delay);
                    self.status.phase = Phase::Retrying;
                    return Ok(None);
                }
                Some(Action::Invoke(range)) => {
                    flight.range = range;
                    return Ok(Some(self.invoke(flight, encoder)));
                }
                Some(settled) => self.settle(flight, vec![settled]).await?,
            }
        }
    }

    /// Starts the invocation of the records in flight.
    fn invoke(&self, flight: &InFlight, encoder: &EventEncoder) -> BoxFuture<'static, Outcome> {
        let spec = &self.ctx.spec;
        let records = &flight.batch.records[flight.range.clone()];
        let mut payload = Vec::with_capacity(encoder.event_len(records));
        encoder.encode(records, &mut payload);
        self.ctx.metrics.invoked_events.add(records.len() as u64);
        tracing::debug!(
            records = records.len(),
            bytes = payload.len(),
            first = %display_position(records.first().map(|r| &r.position)),
            last = %display_position(records.last().map(|r| &r.position)),
            attempt = flight.progress.attempt() + 1,
            "invoking"
        );
        self.ctx.invoker.invoke(Invocation {
            payload: Bytes::from(payload),
            request_id: uuid::Uuid::new_v4().to_string(),
            function_arn: spec.function_arn.clone(),
            timeout: spec.timeout,
            deadline: SystemTime::now() + spec.timeout,
        })
    }

    /// Carries out what the failure rules settled: records done are checkpointed;
    /// records given up are logged with their sequence range, counted as dropped and
    /// checkpointed past (on-failure destinations come with their own issue).
    async fn settle(&mut self, flight: &InFlight, settled: Vec<Action>) -> Result<(), StoreError> {
        for action in settled {
            let range = match action {
                Action::Done(range) => range,
                Action::GiveUp {
                    range,
                    condition,
                    invocations,
                    last_failure,
                } => {
                    let records = &flight.batch.records[range.clone()];
                    match self.ctx.destination.clone() {
                        Some(destination) => {
                            self.deliver(
                                &*destination,
                                records,
                                condition,
                                invocations,
                                last_failure,
                            )
                            .await;
                        }
                        None => {
                            let dropped = &self.ctx.metrics.dropped_events;
                            match condition {
                                Condition::RecordAgeExceeded => &dropped.record_age,
                                Condition::RetryAttemptsExhausted => &dropped.retries_exhausted,
                            }
                            .add(records.len() as u64);
                            tracing::warn!(
                                first = %display_position(records.first().map(|r| &r.position)),
                                last = %display_position(records.last().map(|r| &r.position)),
                                records = records.len(),
                                condition = condition.as_str(),
                                approximate_invoke_count = invocations,
                                "dropping records: no on-failure destination"
                            );
                        }
                    }
                    range
                }
                Action::Invoke(_) | Action::Wait(_) => continue,
            };
            if let Some(last) = range
                .end
                .checked_sub(1)
                .and_then(|i| flight.batch.records.get(i))
            {
                self.state.checkpoint = Some(last.position.clone());
                self.save().await?;
            }
        }
        Ok(())
    }

    fn log_outcome(&self, flight: &InFlight, outcome: &Outcome) {
        let metrics = &self.ctx.metrics;
        metrics.invocations.count(outcome);
        let slice = &flight.batch.records[flight.range.clone()];
        let first = display_position(slice.first().map(|r| &r.position));
        let last = display_position(slice.last().map(|r| &r.position));
        let records = slice.len();
        let attempt = flight.progress.attempt() + 1;
        match outcome {
            Outcome::Returned { .. } => {}
            Outcome::FunctionError {
                error_type,
                message,
            } => {
                metrics.failed_invoke_events.add(records as u64);
                tracing::warn!(%first, %last, records, attempt, %error_type, %message, "the function returned an error; the batch will be retried");
            }
            Outcome::Timeout => {
                metrics.failed_invoke_events.add(records as u64);
                tracing::warn!(%first, %last, records, attempt, timeout = ?self.ctx.spec.timeout, "the function timed out; the batch will be retried");
            }
            Outcome::Crash { reason } => {
                metrics.failed_invoke_events.add(records as u64);
                tracing::warn!(%first, %last, records, attempt, %reason, "the function crashed; the batch will be retried");
            }
            Outcome::NotInvoked { reason } => {
                tracing::warn!(%first, %last, records, attempt, %reason, "the function could not be invoked; the batch will be retried");
            }
        }
    }

    /// Sends the on-failure record for `records` to the destination, retrying with
    /// backoff until it is accepted: the checkpoint must not pass records that are
    /// neither handled nor delivered.
    async fn deliver(
        &self,
        destination: &dyn crate::destination::FailureDestination,
        records: &[crate::core::record::Record],
        condition: Condition,
        invocations: u32,
        last_failure: crate::core::failure::LastFailure,
    ) {
        let spec = &self.ctx.spec;
        let request_id = uuid::Uuid::new_v4().to_string();
        let ctx = crate::core::on_failure::GiveUpContext {
            request_id: &request_id,
            function_arn: &spec.function_arn,
            stream_arn: &spec.stream_arn,
            shard_id: &self.status.shard_id,
            condition,
            invocations,
            last_failure,
            now: chrono::Utc::now(),
        };
        let Some(record) = crate::core::on_failure::on_failure_record(&ctx, records) else {
            return;
        };
        let backoff =
            crate::core::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut attempt = 0u32;
        loop {
            match destination.send(&record).await {
                Ok(()) => {
                    self.ctx
                        .metrics
                        .destination_delivered_events
                        .add(records.len() as u64);
                    tracing::warn!(
                        first = %display_position(records.first().map(|r| &r.position)),
                        last = %display_position(records.last().map(|r| &r.position)),
                        records = records.len(),
                        condition = condition.as_str(),
                        approximate_invoke_count = invocations,
                        destination = destination.arn(),
                        "records sent to the on-failure destination"
                    );
                    return;
                }
                Err(e) => {
                    self.ctx.metrics.destination_delivery_failures.inc();
                    let delay = backoff.delay(attempt, rand::random());
                    attempt = attempt.saturating_add(1);
                    tracing::error!(error = %e, destination = destination.arn(), ?delay, "cannot send to the on-failure destination; retrying (the checkpoint waits)");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A batch whose one record is above the payload cap can never be invoked: log it
    /// with its sequence number, count it as dropped, checkpoint past it.
    async fn drop_oversized(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.ctx
            .metrics
            .dropped_events
            .oversized
            .add(batch.len() as u64);
        tracing::warn!(
            first = %display_position(batch.first_position()),
            last = %display_position(batch.last_position()),
            records = batch.len(),
            bytes = batch.event_len,
            "dropping records: a record above the 6 MB invocation payload cap can never be invoked"
        );
        if let Some(last) = batch.last_position() {
            self.state.checkpoint = Some(last.clone());
            self.save().await?;
        }
        Ok(())
    }

    /// Writes the shard's state, retrying passing failures with backoff until it is
    /// durable. A lost lease is returned at once.
    async fn save(&mut self) -> Result<(), StoreError> {
        let spec = &self.ctx.spec;
        let Some(lease) = self.lease.as_ref() else {
            return Err(StoreError::Backend("no lease held".into()));
        };
        let mut attempt = 0u32;
        loop {
            match self
                .ctx
                .store
                .save(&spec.name, &self.status.shard_id, &self.state, lease)
                .await
            {
                Ok(()) => {
                    self.status.checkpoint = self.state.checkpoint.clone();
                    return Ok(());
                }
                Err(e @ StoreError::LeaseLost { .. }) => return Err(e),
                Err(e) => {
                    let delay = crate::core::backoff::Backoff::new(
                        Duration::from_millis(100),
                        Duration::from_secs(10),
                    )
                    .delay(attempt, rand::random());
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, ?delay, "checkpoint write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The state `/status` shows.
    pub fn status(&self) -> &ShardStatus {
        &self.status
    }
}

/// Whether a record is a KPL aggregate (it starts with the KPL magic number).
fn is_kpl_aggregated(record: &crate::core::record::Record) -> bool {
    record.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2])
}

fn display_position(p: Option<&Position>) -> String {
    p.map(ToString::to_string).unwrap_or_default()
}

/// Awaits the future in `slot`; never completes when there is none.
async fn poll_some<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    match slot.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
