//! One mapping: discover the stream's shards, run a shard runner for each readable
//! one whose lease this instance holds, pick up new shards while running, and start
//! children when parents finish (whichever instance finished them).
//!
//! Leases come from the mapping's [`LeaseKeeper`]: the mapping tells it which shards
//! may be read, it says which of them this instance holds. A runner starts for a
//! held, readable shard with the checkpoint the take returned, and is stopped when
//! its lease is lost. On shutdown the runners stop first (writing their last
//! checkpoints), then the keeper releases the leases.
//!
//! Each shard runner is a task of its own. One that fails or panics (a bug, a user
//! service whose `Clone` panics) is restarted alone, after a backoff that grows while
//! it keeps failing; the other shards go on untouched. A restarted runner resumes from
//! the stored checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::leases::{Holdings, LeaseKeeper};
use super::shard::ShardRunner;
use super::MappingContext;
use crate::core::backoff::Backoff;
use crate::core::lineage::{Lineage, ShardInfo};
use crate::core::shard::ShardExit;
use crate::source::discovery::{list_shards, DiscoveryError};
use crate::source::kinesis::stream_retention;
use crate::status::ShardPlace;
use crate::store::{Lease, ShardCheckpoint, StartAt, StoreError};

/// New shards' rows written at once when a listing finds many (a stream's first).
const CONCURRENT_CREATES: usize = 64;

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
    let mut states: BTreeMap<String, ShardCheckpoint> = ctx
        .store
        .load(&spec.name)
        .await?
        .into_iter()
        .map(|(shard, row)| (shard, row.checkpoint))
        .collect();
    let mut first_listing = states.is_empty();
    let keeper = LeaseKeeper::start(
        ctx.store.clone(),
        &spec.name,
        &ctx.instance,
        ctx.lease_rules,
        ctx.metrics.clone(),
    );
    let mut holdings_rx = keeper.holdings();
    let mut holdings: Arc<Holdings> = holdings_rx.borrow_and_update().clone();
    let mut lineage: Option<Lineage> = None;
    // The running shard runners, each with the token that stops it alone and the
    // lease it writes under.
    let mut running: HashMap<String, Running> = HashMap::new();
    // The lease each shard's last runner started under: a runner started under
    // another one (a new tenure) starts from the checkpoint the keeper read when it
    // took the lease, the latest there is.
    let mut tenure: HashMap<String, Lease> = HashMap::new();
    let mut tasks: JoinSet<(String, ShardExit)> = JoinSet::new();
    // Which shard each task runs, so that a panic (which loses the task's output)
    // still names its shard.
    let mut task_shards: HashMap<Id, String> = HashMap::new();
    let mut restarts = Restarts::default();
    // The lease each shard's runner lost (a refused checkpoint write), so that it is
    // not started again under the same lease before the keeper notices.
    let mut refused: HashMap<String, Lease> = HashMap::new();
    // The stream's retention: the effective maximum record age when
    // maximum_record_age_in_seconds is -1 (read once, before any shard starts).
    let mut retention: Option<Duration> = None;
    let needs_retention = spec.policy.max_age.is_none();
    let retry = Backoff::new(
        Duration::from_secs(1),
        spec.discovery_interval.max(Duration::from_secs(1)),
    );
    let mut failures = 0u32;
    tracing::info!(stream = %spec.stream_arn, known_shards = states.len(), instance = %ctx.instance, "starting mapping");

    loop {
        // Discover, record new shards.
        let listed_at = chrono::Utc::now();
        let next_discovery = match list_shards(&ctx.client, &spec.stream_arn).await {
            Ok(listed) => {
                failures = 0;
                let mut new_shards = Vec::new();
                for shard in listed.shards() {
                    if !states.contains_key(&shard.id) {
                        // Shards there at the mapping's first start take its starting
                        // position; shards born later are read from their beginning.
                        // LATEST is pinned to the time of that first listing, so a
                        // restart before the first checkpoint does not skip records put
                        // in between. With several instances, the first to record a
                        // shard decides.
                        let start = match (&spec.start, first_listing) {
                            (_, false) => StartAt::TrimHorizon,
                            (StartAt::Latest, true) => StartAt::AtTimestamp(listed_at),
                            (start, true) => start.clone(),
                        };
                        let state = ShardCheckpoint::new(start);
                        let parents: Vec<String> = shard.parents().map(str::to_owned).collect();
                        new_shards.push((shard.id.clone(), state, parents));
                    }
                }
                // Recorded together (a local store commits them at once; DynamoDB
                // takes them a few dozen at a time), so that a thousand shards start
                // in one round trip's time rather than a thousand.
                let recorded = !new_shards.is_empty();
                for chunk in new_shards.chunks(CONCURRENT_CREATES) {
                    let creates = chunk.iter().map(|(id, state, parents)| {
                        ctx.store.create(&spec.name, id, state, parents)
                    });
                    futures::future::try_join_all(creates).await?;
                }
                for (id, state, _) in new_shards {
                    tracing::info!(shard = %id, start = ?state.start, "new shard");
                    states.insert(id, state);
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
                lineage = Some(listed);
                if recorded {
                    keeper.wake();
                }
                restarts
                    .next_due()
                    .filter(|due| *due > Instant::now())
                    .map_or(spec.discovery_interval, |due| {
                        (due - Instant::now()).min(spec.discovery_interval)
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

        // Start what may start; then wait for the next discovery, new holdings, a
        // shard's end, or shutdown.
        let sleep = tokio::time::sleep(next_discovery);
        tokio::pin!(sleep);
        loop {
            if let Some(lineage) = &lineage {
                let readable = report_listing(&ctx, lineage, &states, &holdings);
                keeper.set_readable(readable.iter().map(|s| s.id.clone()).collect());
                if !cancel.is_cancelled() && (retention.is_some() || !needs_retention) {
                    let now = Instant::now();
                    for shard in readable {
                        let id = &shard.id;
                        let Some(lease) = holdings.held.get(id) else {
                            continue;
                        };
                        if refused.get(id) == Some(lease) {
                            // Its checkpoint write was refused under this very lease;
                            // the keeper has not caught up yet.
                            continue;
                        }
                        if running.contains_key(id) || !restarts.may_start(id, now) {
                            continue;
                        }
                        if tenure.get(id) != Some(lease) {
                            if let Some(row) = holdings.rows.get(id) {
                                states.insert(id.clone(), row.checkpoint.clone());
                            }
                            tenure.insert(id.clone(), lease.clone());
                        }
                        let state = states
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| ShardCheckpoint::new(StartAt::TrimHorizon));
                        let reporter = ctx.board.runner_started(id);
                        let runner = ShardRunner::new(
                            ctx.clone(),
                            shard,
                            state,
                            lease.clone(),
                            retention,
                            reporter,
                        );
                        let token = cancel.child_token();
                        running.insert(
                            id.clone(),
                            Running {
                                token: token.clone(),
                                lease: lease.clone(),
                            },
                        );
                        restarts.started(id, now);
                        let task_id = id.clone();
                        let handle = tasks.spawn(async move { (task_id, runner.run(token).await) });
                        task_shards.insert(handle.id(), id.clone());
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::info!(shards = running.len(), "stopping mapping");
                    while let Some(joined) = tasks.join_next().await {
                        if let Err(e) = joined {
                            tracing::error!(error = %e, "a shard runner panicked");
                        }
                    }
                    // The runners wrote their last checkpoints: give the leases up,
                    // so that peers take the shards at once.
                    keeper.release_all().await;
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
                Ok(()) = holdings_rx.changed() => {
                    holdings = holdings_rx.borrow_and_update().clone();
                    refused.retain(|shard, lease| holdings.held.get(shard) == Some(lease));
                    for (shard, row) in &holdings.rows {
                        if !running.contains_key(shard) {
                            states.insert(shard.clone(), row.checkpoint.clone());
                        } else if row.checkpoint.finished {
                            if let Some(state) = states.get_mut(shard) {
                                state.finished = true;
                            }
                        }
                    }
                    // A shard whose lease was lost (or lost and taken back: a new
                    // lease) stops after its in-flight work; its checkpoint writes are
                    // refused by the store.
                    for (shard, run) in &running {
                        if holdings.held.get(shard) != Some(&run.lease) && !run.token.is_cancelled() {
                            tracing::info!(shard = %shard, "stopping the shard's runner: this instance no longer holds its lease");
                            run.token.cancel();
                        }
                    }
                }
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
                    let ran_under = running.remove(&id).map(|run| run.lease);
                    // Still held under the lease the runner wrote with.
                    let held = ran_under.is_some() && holdings.held.get(&id) == ran_under.as_ref();
                    match exit {
                        ShardExit::Finished { children } => {
                            restarts.forget(&id);
                            if let Some(state) = states.get_mut(&id) {
                                state.finished = true;
                            }
                            ctx.board.runner_ended(&id, states.get(&id));
                            ctx.metrics.forget_shard(&id);
                            keeper.wake();
                            tracing::info!(shard = %id, ?children, "shard finished; looking for its children");
                            break;
                        }
                        ShardExit::Stopped => ctx.board.runner_ended(&id, None),
                        ShardExit::LeaseLost(reason) => {
                            restarts.forget(&id);
                            if let Some(lease) = ran_under {
                                refused.insert(id.clone(), lease);
                            }
                            tracing::info!(shard = %id, %reason, "shard runner stopped: this instance no longer holds its lease");
                            ctx.board.runner_ended(&id, None);
                            // The keeper learns of it at once, not at its next round.
                            keeper.wake();
                        }
                        ShardExit::Failed(reason) if !held => {
                            restarts.forget(&id);
                            tracing::info!(shard = %id, %reason, "shard runner stopped: this instance no longer holds its lease");
                            ctx.board.runner_ended(&id, None);
                        }
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

/// A running shard runner.
struct Running {
    /// Stops this runner alone.
    token: CancellationToken,
    /// The lease it writes its checkpoints under.
    lease: Lease,
}

/// Tells the status board what the mapping knows: each listed shard's place,
/// parents, stored checkpoint and lease owner. Returns the shards that may be read
/// now (listed, every parent finished, not finished).
fn report_listing<'a>(
    ctx: &MappingContext,
    lineage: &'a Lineage,
    states: &BTreeMap<String, ShardCheckpoint>,
    holdings: &Holdings,
) -> Vec<&'a ShardInfo> {
    let is_finished = |id: &str| states.get(id).is_some_and(|s| s.finished);
    let mut listed = Vec::with_capacity(lineage.len());
    let mut readable = Vec::new();
    for shard in lineage.shards() {
        let place = if is_finished(&shard.id) {
            ShardPlace::Finished
        } else if lineage.parents_finished(shard, is_finished) {
            readable.push(shard);
            ShardPlace::Readable
        } else {
            ShardPlace::WaitingForParent
        };
        let parents = shard.parents().map(str::to_owned).collect();
        let owner = holdings
            .rows
            .get(&shard.id)
            .and_then(|row| row.lease.owner.clone());
        let mine = holdings.held.contains_key(&shard.id);
        ctx.board.listed(
            &shard.id,
            place,
            parents,
            states.get(&shard.id),
            owner,
            mine,
        );
        listed.push(shard.id.as_str());
    }
    ctx.board.listing_done(&listed, holdings.settled);
    readable
}

/// Reloads the stored checkpoints, so a restarted runner resumes from the last one.
async fn reload(ctx: &MappingContext, states: &mut BTreeMap<String, ShardCheckpoint>) {
    match ctx.store.load(&ctx.spec.name).await {
        Ok(fresh) => {
            *states = fresh
                .into_iter()
                .map(|(shard, row)| (shard, row.checkpoint))
                .collect()
        }
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
