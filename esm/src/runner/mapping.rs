//! One mapping: discover the stream's shards, run a shard runner for each readable
//! one, pick up new shards while running, and start children when parents finish.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::shard::{ShardExit, ShardRunner};
use super::MappingContext;
use crate::core::backoff::Backoff;
use crate::source::discovery::{list_shards, DiscoveryError};
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
                            (StartAt::Latest, true) => StartAt::AtTimestamp {
                                timestamp: listed_at,
                            },
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
                let is_finished = |id: &str| states.get(id).is_some_and(|s| s.finished);
                let readable: Vec<String> = lineage
                    .readable(is_finished)
                    .filter(|s| !running.contains(&s.id))
                    .map(|s| s.id.clone())
                    .collect();
                if !cancel.is_cancelled() {
                    for id in readable {
                        let state = states
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| ShardCheckpoint::new(StartAt::TrimHorizon));
                        let runner = ShardRunner::new(ctx.clone(), id.clone(), state);
                        let token = cancel.child_token();
                        running.insert(id.clone());
                        tasks.spawn(async move { (id, runner.run(token).await) });
                    }
                }
                spec.discovery_interval
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
                    return Ok(());
                }
                _ = &mut sleep => break,
                Some(joined) = tasks.join_next() => {
                    let (id, exit) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::error!(error = %e, "a shard runner panicked; it will be restarted");
                            // We cannot tell which shard; rebuild the running set at the next discovery.
                            running.clear();
                            tasks.abort_all();
                            break;
                        }
                    };
                    running.remove(&id);
                    match exit {
                        ShardExit::Finished { children } => {
                            if let Some(state) = states.get_mut(&id) {
                                state.finished = true;
                            }
                            tracing::info!(shard = %id, ?children, "shard finished; looking for its children");
                            break;
                        }
                        ShardExit::Stopped => {}
                        ShardExit::Failed(reason) => {
                            // Reload its checkpoint; it restarts at the next discovery.
                            tracing::warn!(shard = %id, %reason, "shard runner failed; it will restart");
                            if let Ok(fresh) = ctx.store.load(&spec.name).await {
                                states = fresh;
                            }
                        }
                    }
                }
            }
        }
    }
}
