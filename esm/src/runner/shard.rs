//! The per-shard loop: read, batch, invoke, decide, checkpoint.
//!
//! A shard runner is a small actor. Its inputs arrive as [`Event`]s — a page from the
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
use crate::core::failure::{Attempts, Decision, Outcome};
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
    payload: Bytes,
    attempts: Attempts,
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

        let exit = loop {
            let now = Instant::now();
            // Start (or restart) work when the shard is idle.
            if invocation.is_none() {
                if in_flight.is_none() && !stopping {
                    if let Some(batch) = batcher.next_batch(now, children.is_some()) {
                        let mut buf = Vec::with_capacity(batch.event_len);
                        batcher.encoder().encode(&batch.records, &mut buf);
                        in_flight = Some(InFlight {
                            batch,
                            payload: Bytes::from(buf),
                            attempts: Attempts::default(),
                            retry_at: None,
                        });
                    }
                }
                let due = in_flight
                    .as_ref()
                    .is_some_and(|f| !stopping && f.retry_at.is_none_or(|at| at <= now));
                if due
                    && in_flight
                        .as_ref()
                        .is_some_and(|f| f.batch.oversized(batcher.limits()))
                {
                    let decision = in_flight
                        .as_ref()
                        .and_then(|f| spec.policy.decide_oversized(&f.batch));
                    match self.apply(decision, &mut in_flight).await {
                        Ok(()) => continue,
                        Err(e) => break ShardExit::Failed(e.to_string()),
                    }
                }
                if let Some(flight) = in_flight.as_mut().filter(|_| due) {
                    flight.retry_at = None;
                    invocation = Some(self.invoke(flight));
                    self.status.phase = Phase::Reading;
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
                    flight.attempts.count(&outcome);
                    self.log_outcome(flight, &outcome);
                    let decision = spec.policy.decide(
                        &flight.batch,
                        &outcome,
                        flight.attempts,
                        rand::random(),
                    );
                    if let Some(Decision::Retry { delay }) = &decision {
                        flight.retry_at = Some(Instant::now() + *delay);
                        self.status.phase = Phase::Retrying;
                        continue;
                    }
                    if let Err(e) = self.apply(decision, &mut in_flight).await {
                        break ShardExit::Failed(e.to_string());
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

    /// Starts the invocation of the batch in flight.
    fn invoke(&self, flight: &InFlight) -> BoxFuture<'static, Outcome> {
        let spec = &self.ctx.spec;
        let metrics = &self.ctx.metrics;
        metrics.invoked_events.add(flight.batch.len() as u64);
        tracing::debug!(
            records = flight.batch.len(),
            bytes = flight.payload.len(),
            first = %display_position(flight.batch.first_position()),
            last = %display_position(flight.batch.last_position()),
            attempt = flight.attempts.total() + 1,
            "invoking"
        );
        self.ctx.invoker.invoke(Invocation {
            payload: flight.payload.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
            function_arn: spec.function_arn.clone(),
            timeout: spec.timeout,
            deadline: SystemTime::now() + spec.timeout,
        })
    }

    fn log_outcome(&self, flight: &InFlight, outcome: &Outcome) {
        let metrics = &self.ctx.metrics;
        metrics.invocations.count(outcome);
        let first = display_position(flight.batch.first_position());
        let last = display_position(flight.batch.last_position());
        let records = flight.batch.len();
        let attempt = flight.attempts.total();
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

    /// Carries out a decision that ends the batch in flight: checkpoint past it.
    async fn apply(
        &mut self,
        decision: Option<Decision>,
        in_flight: &mut Option<InFlight>,
    ) -> Result<(), StoreError> {
        let Some(flight) = in_flight.take() else {
            return Ok(());
        };
        let checkpoint = match decision {
            Some(Decision::Checkpoint(position)) => position,
            Some(Decision::Drop { reason, checkpoint }) => {
                self.ctx
                    .metrics
                    .dropped_events
                    .add(flight.batch.len() as u64);
                tracing::warn!(
                    first = %display_position(flight.batch.first_position()),
                    last = %display_position(flight.batch.last_position()),
                    records = flight.batch.len(),
                    reason,
                    "dropping records: they can never be invoked"
                );
                checkpoint
            }
            Some(Decision::Retry { .. }) | None => return Ok(()),
        };
        self.state.checkpoint = Some(checkpoint);
        self.save().await
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
