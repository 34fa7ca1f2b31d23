//! The shard driver: carries out what the shard state machine decides.
//!
//! Every rule about a shard's records lives in [`crate::core::shard::ShardMachine`].
//! This driver only does the I/O and the concurrency around it: it reads pages from
//! the [`ShardSource`] while the machine wants them (drawing memory from the
//! process-wide [`MemoryBudget`]), runs the invocations, destination sends and
//! checkpoint writes the machine asks for — several invocations at once, one per
//! lane — and feeds each result back as an input, with the time and a random seed.
//! It ends when the machine says the shard has ended, which is never while an
//! invocation is in flight.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::budget::{MemoryBudget, Reservation};
use super::{notes, MappingContext};
use crate::core::event::{EventEncoder, EventSource};
use crate::core::lineage::ShardInfo;
use crate::core::on_failure::{on_failure_record, payload_event, GiveUpContext};
use crate::core::partition::LaneRouter;
use crate::core::shard::{
    DeliveryRequest, Effect, Env, Input, InvokeRequest, Page, SaveError, ShardExit, ShardMachine,
    ShardSettings, MAX_PAGE_MEMORY,
};
use crate::destination::GivenUp;
use crate::invoke::{Invocation, Outcome, Payload};
use crate::metrics::ShardGauges;
use crate::source::fanout::{FanOutConfig, FanOutReader};
use crate::source::polling::{PollingConfig, PollingReader, MAX_GET_RECORDS_LIMIT};
use crate::source::{ReadOutcome, ShardSource, SourceError};
use crate::status::{ShardReporter, SnapshotRequest};
use crate::store::{Lease, ShardCheckpoint, StoreError};
use prometheus_client::metrics::gauge::Gauge;

/// A read in progress: it hands the source back with the page.
type Reading = BoxFuture<
    'static,
    (
        Box<dyn ShardSource>,
        Result<(Page, Reservation), SourceError>,
    ),
>;

/// Runs one shard until it finishes, fails or is cancelled.
pub struct ShardRunner {
    ctx: Arc<MappingContext>,
    machine: ShardMachine,
    lease: Lease,
    reporter: ShardReporter,
    gauges: ShardGauges,
}

/// What wakes the driver: an input for the machine, or a request for its state.
enum Step {
    Input(Input),
    Snapshot(SnapshotRequest),
}

impl ShardRunner {
    /// A runner for `shard`, resuming from `state` and writing its checkpoints
    /// under `lease`; `retention` is the stream's retention period, when the failure
    /// rules need it. It reports through `reporter` (`/readyz`, `/status`).
    pub fn new(
        ctx: Arc<MappingContext>,
        shard: &ShardInfo,
        state: ShardCheckpoint,
        lease: Lease,
        retention: Option<std::time::Duration>,
        reporter: ShardReporter,
    ) -> Self {
        let spec = &ctx.spec;
        let mut rules = spec.policy.clone();
        rules.retention = retention;
        let settings = ShardSettings {
            shard_id: shard.id.clone(),
            limits: spec.limits,
            rules,
            router: LaneRouter::new(shard.hash_start, shard.hash_end, spec.parallelization),
            tumbling: spec.tumbling,
            filter: spec.filter.clone(),
            encoder: EventEncoder::new(&EventSource {
                stream_arn: spec.stream_arn.clone(),
                region: spec.region.clone(),
                invoke_identity_arn: spec.invoke_identity_arn.clone(),
                shard_id: shard.id.clone(),
            }),
            has_destination: ctx.destination.is_some(),
            deaggregate: spec.deaggregate,
            destination_backoff: ShardSettings::DESTINATION_BACKOFF,
            store_backoff: ShardSettings::STORE_BACKOFF,
        };
        let machine = ShardMachine::new(settings, state);
        let gauges = ctx.metrics.shard(&shard.id);
        Self {
            ctx,
            machine,
            lease,
            reporter,
            gauges,
        }
    }

    /// Runs the shard to its end, inside a span naming mapping and shard.
    pub async fn run(self, cancel: CancellationToken) -> ShardExit {
        let span = tracing::info_span!("shard", mapping = %self.ctx.spec.name, shard = %self.machine.settings().shard_id);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(mut self, cancel: CancellationToken) -> ShardExit {
        let ctx = self.ctx.clone();
        let spec = &ctx.spec;
        let shard_id = self.machine.settings().shard_id.clone();
        let lease = self.lease.clone();
        let from = self.machine.read_from();
        tracing::info!(from = ?from, lanes = self.machine.settings().router.lanes(), "reading shard");
        let reader: Box<dyn ShardSource> = match &spec.consumer_arn {
            Some(consumer_arn) => Box::new(FanOutReader::new(
                ctx.client.clone(),
                FanOutConfig {
                    stream_arn: spec.stream_arn.clone(),
                    consumer_arn: consumer_arn.clone(),
                    shard_id: shard_id.clone(),
                    from,
                    resubscribe_after: spec.resubscribe_after,
                },
                ctx.metrics.clone(),
            )),
            None => Box::new(PollingReader::new(
                ctx.client.clone(),
                PollingConfig {
                    stream_arn: spec.stream_arn.clone(),
                    shard_id: shard_id.clone(),
                    from,
                    calls_per_second: spec.calls_per_second,
                    limit: MAX_GET_RECORDS_LIMIT,
                },
                ctx.metrics.clone(),
            )),
        };
        let mut source = Some(reader);
        let mut io = InFlight::default();
        let mut held = Reservation::default();
        let mut shutting_down = false;

        let exit = loop {
            if let Some(exit) = self.machine.exit() {
                break exit.clone();
            }
            if io.reading.is_none() && self.machine.wants_read() {
                if let Some(source) = source.take() {
                    io.reading = Some(read_page(source, ctx.budget.clone()).boxed());
                }
            }
            let wake = self.machine.wake_at();
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    io.reading = None;
                    Step::Input(Input::Shutdown)
                }
                Some((lane, outcome, took)) = io.invocations.next() => {
                    ctx.metrics.invocation_duration.observe(took.as_secs_f64());
                    Step::Input(Input::Invoked { lane, outcome })
                }
                Some((lane, result)) = io.deliveries.next() => Step::Input(Input::Delivered { lane, result }),
                result = poll_some(&mut io.saving) => Step::Input(Input::Saved(result)),
                (back, result) = poll_some(&mut io.reading) => {
                    source = Some(back);
                    Step::Input(match result {
                        Ok((page, reservation)) => {
                            held.merge(reservation);
                            self.reporter.mark_read();
                            Input::Page(page)
                        }
                        Err(e) => Input::ReadFailed(e.to_string()),
                    })
                }
                Some(reply) = self.reporter.requests.recv() => Step::Snapshot(reply),
                _ = sleep_until(wake) => Step::Input(Input::Timer),
            };
            let input = match step {
                Step::Input(input) => input,
                Step::Snapshot(reply) => {
                    let _ =
                        reply.send(serde_json::to_value(self.machine.state()).unwrap_or_default());
                    continue;
                }
            };
            if matches!(input, Input::Saved(_)) {
                io.saving = None;
            }
            if matches!(input, Input::Page(_) | Input::ReadFailed(_)) {
                io.reading = None;
            }
            let mut env = Env::new(Instant::now(), chrono::Utc::now(), rand::random());
            for effect in self.machine.on(input, &mut env) {
                self.carry_out(effect, &lease, &mut io);
            }
            ctx.budget.resize(&mut held, self.machine.buffered_bytes());
            self.publish_gauges();
        };
        tracing::info!(checkpoint = ?self.machine.state().saved.checkpoint.as_ref().map(ToString::to_string), phase = ?self.machine.state().phase, "shard runner ended");
        exit
    }

    /// Sets the shard's gauges from the machine's state.
    fn publish_gauges(&self) {
        let state = self.machine.state();
        let age = i64::try_from(state.iterator_age_ms).unwrap_or(i64::MAX);
        self.gauges.iterator_age_ms.set(age);
        if let Some(behind) = state.millis_behind_latest {
            self.gauges.millis_behind_latest.set(behind);
        }
    }

    /// Starts what the machine asked for.
    fn carry_out(&self, effect: Effect, lease: &Lease, io: &mut InFlight) {
        let ctx = &self.ctx;
        match effect {
            Effect::Invoke(request) => io.invocations.push(self.invoke(request)),
            Effect::Deliver(request) => io.deliveries.push(self.deliver(request)),
            Effect::Save(state) => {
                let (ctx, lease) = (ctx.clone(), lease.clone());
                let shard = self.machine.settings().shard_id.clone();
                io.saving = Some(
                    async move {
                        let saved = ctx.store.save(&ctx.spec.name, &shard, &state, &lease).await;
                        let checkpoint = state.checkpoint.as_ref().map(ToString::to_string);
                        match saved {
                            Ok(()) => {
                                tracing::debug!(checkpoint, finished = state.finished, lease_counter = lease.counter, "checkpoint saved");
                                Ok(())
                            }
                            Err(e @ StoreError::LeaseLost { .. }) => {
                                tracing::warn!(checkpoint, lease_counter = lease.counter, error = %e, "checkpoint write refused: this instance no longer holds the shard's lease");
                                Err(SaveError::LeaseLost(e.to_string()))
                            }
                            Err(other) => Err(SaveError::Failed(other.to_string())),
                        }
                    }
                    .boxed(),
                );
            }
            Effect::Note(note) => notes::report(&note, &ctx.spec, &ctx.metrics),
        }
    }

    fn invoke(&self, request: InvokeRequest) -> BoxFuture<'static, (usize, Outcome, Duration)> {
        let spec = &self.ctx.spec;
        let metrics = &self.ctx.metrics;
        metrics.invoked_events.add(request.records as u64);
        metrics.batch_records.observe(request.records as f64);
        tracing::debug!(
            lane = request.lane,
            records = request.records,
            bytes = request.event.len(),
            first = %notes::display(request.first.as_ref()),
            last = %notes::display(request.last.as_ref()),
            attempt = request.attempt,
            "invoking"
        );
        let lane = request.lane;
        let call = self.ctx.invoker.invoke(Invocation {
            payload: Payload::Batch(request.event),
            request_id: request.request_id,
            function_arn: spec.function_arn.clone(),
            timeout: spec.timeout,
            deadline: SystemTime::now() + spec.timeout,
        });
        let in_flight = InFlightGauge::enter(metrics.concurrent_invocations.clone());
        async move {
            let started = Instant::now();
            let outcome = call.await;
            drop(in_flight);
            (lane, outcome, started.elapsed())
        }
        .boxed()
    }

    fn deliver(&self, request: DeliveryRequest) -> BoxFuture<'static, (usize, Result<(), String>)> {
        let lane = request.lane;
        let Some(destination) = self.ctx.destination.clone() else {
            let error = "no on-failure destination is configured".to_string();
            return async move { (lane, Err(error)) }.boxed();
        };
        let spec = &self.ctx.spec;
        let shard_id = self.machine.settings().shard_id.clone();
        let now = chrono::Utc::now();
        let record = on_failure_record(
            &GiveUpContext {
                request_id: &request.request_id,
                function_arn: &spec.function_arn,
                stream_arn: &spec.stream_arn,
                shard_id: &shard_id,
                condition: request.condition,
                invocations: request.invocations,
                last_failure: request.last_failure,
                now,
            },
            &request.records,
        );
        // Only a destination that keeps the payload (S3) gets the event built.
        let event = if destination.keeps_payload() {
            payload_event(&self.machine.settings().encoder, &request.records)
        } else {
            Vec::new()
        };
        async move {
            let result = match record {
                Some(record) => destination
                    .send(GivenUp {
                        record: &record,
                        shard_id: &shard_id,
                        request_id: &request.request_id,
                        at: now,
                        event: &event,
                    })
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            };
            (lane, result)
        }
        .boxed()
    }
}

/// Counts one invocation in `esm_concurrent_invocations` while it lives (also when
/// its future is dropped unfinished, on a shutdown timeout).
struct InFlightGauge(Gauge);

impl InFlightGauge {
    fn enter(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The I/O a shard has in flight.
#[derive(Default)]
struct InFlight {
    invocations: FuturesUnordered<BoxFuture<'static, (usize, Outcome, Duration)>>,
    deliveries: FuturesUnordered<BoxFuture<'static, (usize, Result<(), String>)>>,
    saving: Option<BoxFuture<'static, Result<(), SaveError>>>,
    reading: Option<Reading>,
}

/// Reads the next page: waits for the source's turn, reserves a page's worth of the
/// memory budget, reads; passing failures go round again.
async fn read_page(
    mut source: Box<dyn ShardSource>,
    budget: MemoryBudget,
) -> (
    Box<dyn ShardSource>,
    Result<(Page, Reservation), SourceError>,
) {
    loop {
        source.wait_turn().await;
        let reservation = budget.reserve(MAX_PAGE_MEMORY).await;
        match source.read().await {
            ReadOutcome::Page(page) => return (source, Ok((page, reservation))),
            ReadOutcome::Retry => continue,
            ReadOutcome::Stop(e) => return (source, Err(e)),
        }
    }
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
