//! One mapping: discover the stream's shards, run a shard runner for each readable
//! one, pick up new shards while running, and start children when parents finish.
//!
//! Each shard runner is a task of its own. One that fails or panics (a bug, a user
//! service whose `Clone` panics) is restarted alone, after a backoff that grows while
//! it keeps failing; the other shards go on untouched. A restarted runner resumes from
//! the stored checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::shard::ShardRunner;
use super::MappingContext;
use crate::core::backoff::Backoff;
use crate::core::lineage::Lineage;
use crate::core::shard::ShardExit;
use crate::source::discovery::{list_shards, DiscoveryError};
use crate::source::kinesis::stream_retention;
use crate::status::ShardPlace;
use crate::store::{ShardCheckpoint, StartAt, StoreError};

/// Why a mapping stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the mapping until `cancel` fires and every shard runner has stopped.
pub async fn run(ctx: Arc<MappingContext>, cancel: CancellationToken) -> Result<(), MappingError> {
    let span = tracing::info_span!("mapping", mapping = %ctx.spec.name);
    run_inner(ctx, cancel).instrument(span).await
}

async fn run_inner(
    ctx: Arc<MappingContext>,
    cancel: CancellationToken,
) -> Result<(), MappingError> {
    let spec = &ctx.spec;
    let mut states: BTreeMap<String, ShardCheckpoint> = ctx.store.load(&spec.name).await?;
    let mut first_listing = states.is_empty();
    let mut running: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, ShardExit)> = JoinSet::new();
    // Which shard each task runs, so that a panic (which loses the task's output)
    // still names its shard.
    let mut task_shards: HashMap<Id, String> = HashMap::new();
    let mut restarts = Restarts::default();
    // The stream's retention: the effective maximum record age when
    // maximum_record_age_in_seconds is -1 (read once, before any shard starts).
    let mut retention: Option<Duration> = None;
    let needs_retention = spec.policy.max_age.is_none();
    let retry = Backoff::new(
        Duration::from_secs(1),
        spec.discovery_interval.max(Duration::from_secs(1)),
    );
    let mut failures = 0u32;
    tracing::info!(stream = %spec.stream_arn, known_shards = states.len(), "starting mapping");

    loop {
        // Discover, record new shards, start the readable ones.
        let listed_at = chrono::Utc::now();
        let next_discovery = match list_shards(&ctx.client, &spec.stream_arn).await {
            Ok(lineage) => {
                failures = 0;
                for shard in lineage.shards() {
                    if !states.contains_key(&shard.id) {
                        // Shards there at the mapping's first start take its starting
                        // position; shards born later are read from their beginning.
                        // LATEST is pinned to the time of that first listing, so a
                        // restart before the first checkpoint does not skip records put
                        // in between.
                        let start = match (&spec.start, first_listing) {
                            (_, false) => StartAt::TrimHorizon,
                            (StartAt::Latest, true) => StartAt::AtTimestamp(listed_at),
                            (start, true) => start.clone(),
                        };
                        let state = ShardCheckpoint::new(start);
                        let lease = ctx.store.acquire(&spec.name, &shard.id).await?;
                        ctx.store
                            .save(&spec.name, &shard.id, &state, &lease)
                            .await?;
                        tracing::info!(shard = %shard.id, start = ?state.start, "new shard");
                        states.insert(shard.id.clone(), state);
                    }
                }
                first_listing = false;
                if needs_retention && retention.is_none() {
                    match stream_retention(&ctx.client, &spec.stream_arn).await {
                        Ok(period) => {
                            tracing::info!(retention = ?period, "the stream's retention period is the maximum record age (maximum_record_age_in_seconds = -1)");
                            retention = Some(period);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the stream's retention period (DescribeStreamSummary); shards start once it is read")
                        }
                    }
                }
                let now = Instant::now();
                let is_finished = |id: &str| states.get(id).is_some_and(|s| s.finished);
                report_listing(&ctx, &lineage, &states);
                let readable: Vec<_> = lineage
                    .readable(is_finished)
                    .filter(|s| !running.contains(&s.id) && restarts.may_start(&s.id, now))
                    .cloned()
                    .collect();
                if !cancel.is_cancelled() && (retention.is_some() || !needs_retention) {
                    for shard in readable {
                        let id = shard.id.clone();
                        let state = states
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| ShardCheckpoint::new(StartAt::TrimHorizon));
                        let reporter = ctx.board.runner_started(&id);
                        let runner =
                            ShardRunner::new(ctx.clone(), &shard, state, retention, reporter);
                        let token = cancel.child_token();
                        running.insert(id.clone());
                        restarts.started(&id, now);
                        let handle = tasks.spawn(async move { (id, runner.run(token).await) });
                        task_shards.insert(handle.id(), shard.id);
                    }
                }
                // Wake for the next restart that is due, but never sooner than a
                // restart can happen (one past due waits for the usual listing).
                restarts
                    .next_due()
                    .filter(|due| *due > now)
                    .map_or(spec.discovery_interval, |due| {
                        (due - now).min(spec.discovery_interval)
                    })
            }
            Err(DiscoveryError::Source(e)) => {
                failures = failures.saturating_add(1);
                tracing::error!(error = %e, "cannot list the stream's shards; will retry");
                retry.delay(failures, rand::random())
            }
            Err(DiscoveryError::Transient(e)) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "listing shards failed; will retry");
                retry.delay(failures, rand::random())
            }
        };

        // Wait for the next discovery, a shard's end, or shutdown.
        let sleep = tokio::time::sleep(next_discovery);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(shards = running.len(), "stopping mapping");
                    while let Some(joined) = tasks.join_next().await {
                        if let Err(e) = joined {
                            tracing::error!(error = %e, "a shard runner panicked");
                        }
                    }
                    let m = &ctx.metrics;
                    tracing::info!(
                        polled = m.polled_events.get(),
                        filtered_out = m.filtered_out_events.get(),
                        invoked = m.invoked_events.get(),
                        failed_invoke = m.failed_invoke_events.get(),
                        delivered_to_destination = m.destination_delivered_events.get(),
                        dropped = m.dropped_events.total(),
                        fanout_resubscriptions = m.fanout_resubscriptions.total(),
                        "mapping stopped; its totals since start"
                    );
                    return Ok(());
                }
                _ = &mut sleep => break,
                Some(joined) = tasks.join_next_with_id() => {
                    let (id, exit) = match joined {
                        Ok((task, done)) => {
                            task_shards.remove(&task);
                            done
                        }
                        Err(e) => {
                            let Some(id) = task_shards.remove(&e.id()) else {
                                continue;
                            };
                            let delay = restarts.failed(&id, Instant::now(), rand::random());
                            tracing::error!(shard = %id, error = %e, ?delay, "a shard runner panicked; it restarts alone after a backoff");
                            running.remove(&id);
                            reload(&ctx, &mut states).await;
                            ctx.board.runner_ended(&id, states.get(&id));
                            break;
                        }
                    };
                    running.remove(&id);
                    match exit {
                        ShardExit::Finished { children } => {
                            restarts.forget(&id);
                            if let Some(state) = states.get_mut(&id) {
                                state.finished = true;
                            }
                            ctx.board.runner_ended(&id, states.get(&id));
                            ctx.metrics.forget_shard(&id);
                            tracing::info!(shard = %id, ?children, "shard finished; looking for its children");
                            break;
                        }
                        ShardExit::Stopped => ctx.board.runner_ended(&id, None),
                        ShardExit::Failed(reason) => {
                            let delay = restarts.failed(&id, Instant::now(), rand::random());
                            tracing::warn!(shard = %id, %reason, ?delay, "shard runner failed; it restarts after a backoff");
                            reload(&ctx, &mut states).await;
                            ctx.board.runner_ended(&id, states.get(&id));
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Tells the status board what a listing found: each shard's place, parents and
/// stored checkpoint.
fn report_listing(
    ctx: &MappingContext,
    lineage: &Lineage,
    states: &BTreeMap<String, ShardCheckpoint>,
) {
    let is_finished = |id: &str| states.get(id).is_some_and(|s| s.finished);
    let mut listed = Vec::with_capacity(lineage.len());
    for shard in lineage.shards() {
        let place = if is_finished(&shard.id) {
            ShardPlace::Finished
        } else if lineage.parents_finished(shard, is_finished) {
            ShardPlace::Readable
        } else {
            ShardPlace::WaitingForParent
        };
        let parents = shard.parents().map(str::to_owned).collect();
        ctx.board
            .listed(&shard.id, place, parents, states.get(&shard.id));
        listed.push(shard.id.as_str());
    }
    ctx.board.listing_done(&listed);
}

/// Reloads the stored checkpoints, so a restarted runner resumes from the last one.
async fn reload(ctx: &MappingContext, states: &mut BTreeMap<String, ShardCheckpoint>) {
    match ctx.store.load(&ctx.spec.name).await {
        Ok(fresh) => *states = fresh,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reload checkpoints; keeping the ones in memory")
        }
    }
}

/// When failed shard runners may start again.
#[derive(Debug, Default)]
struct Restarts {
    shards: HashMap<String, Restart>,
}

#[derive(Debug)]
struct Restart {
    /// Failures in a row.
    failures: u32,
    /// When the runner last started.
    started: Instant,
    /// Not before this time.
    not_before: Option<Instant>,
}

impl Restarts {
    /// 1 s doubling to 60 s; a runner that ran longer than that before failing starts
    /// the count again.
    const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    fn may_start(&self, shard: &str, now: Instant) -> bool {
        self.shards
            .get(shard)
            .and_then(|r| r.not_before)
            .is_none_or(|at| at <= now)
    }

    fn started(&mut self, shard: &str, now: Instant) {
        let entry = self.shards.entry(shard.to_string()).or_insert(Restart {
            failures: 0,
            started: now,
            not_before: None,
        });
        entry.started = now;
        entry.not_before = None;
    }

    /// Records a failure; returns the wait before the next start.
    fn failed(&mut self, shard: &str, now: Instant, jitter: f64) -> Duration {
        let Some(entry) = self.shards.get_mut(shard) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(entry.started) > Self::BACKOFF.max {
            entry.failures = 0;
        }
        let delay = Self::BACKOFF.delay(entry.failures, jitter);
        entry.failures = entry.failures.saturating_add(1);
        entry.not_before = Some(now + delay);
        delay
    }

    fn forget(&mut self, shard: &str) {
        self.shards.remove(shard);
    }

    /// The earliest time a waiting runner may start.
    fn next_due(&self) -> Option<Instant> {
        self.shards.values().filter_map(|r| r.not_before).min()
    }
}
