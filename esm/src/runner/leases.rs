//! The lease keeper: one task per mapping that holds this instance's shard leases.
//!
//! Every renewal period (a third of the lease duration) it renews the leases it
//! holds, reads the mapping's rows, and claims what [`crate::core::lease::plan`]
//! says: free and expired leases, then a few stolen from the most loaded instance,
//! until the fleet is balanced. It publishes what it holds as [`Holdings`]; the
//! mapping loop starts a runner for each held shard and stops the runner of a shard
//! whose lease was lost. It runs apart from the mapping loop so that a slow
//! ListShards or a busy loop never delays a renewal.
//!
//! A lease is lost when a renewal's condition fails (another instance took it), or
//! when no renewal succeeded for a whole lease duration (the store is unreachable:
//! by then a peer may have taken it). On shutdown the mapping stops its runners
//! first, so their last checkpoints are written, then the keeper releases every
//! lease so that peers take them at once.
//!
//! With the local store the keeper is the same code: the store is this process's
//! alone, every lease is free, and the first round takes them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::core::lease::{plan, ClaimKind, LeaseRules, LeaseState, LeaseWatch};
use crate::metrics::MappingMetrics;
use crate::store::{CheckpointStore, Lease, StoreError, StoredShard};

/// How many renewals are in flight at once.
const RENEW_CONCURRENCY: usize = 16;

/// What the keeper holds, as of its last round.
#[derive(Clone, Debug, Default)]
pub struct Holdings {
    /// Whether a round has completed (before the first, nothing is held yet).
    pub settled: bool,
    /// Every shard's row as last read: checkpoints, finished flags, owners.
    pub rows: BTreeMap<String, StoredShard>,
    /// The leases this instance holds, by shard.
    pub held: BTreeMap<String, Lease>,
}

/// The mapping's side of its lease keeper.
pub struct LeaseKeeper {
    holdings: watch::Receiver<Arc<Holdings>>,
    readable: watch::Sender<Option<BTreeSet<String>>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts the keeper of `mapping` for instance `me`.
    pub fn start(
        store: Arc<dyn CheckpointStore>,
        mapping: &str,
        me: &str,
        rules: LeaseRules,
        metrics: Arc<MappingMetrics>,
    ) -> Self {
        let (holdings_tx, holdings) = watch::channel(Arc::new(Holdings::default()));
        let (readable, readable_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let keeper = Keeper {
            store,
            mapping: mapping.to_string(),
            me: me.to_string(),
            rules,
            metrics,
            watch: LeaseWatch::default(),
            held: BTreeMap::new(),
            renewed: HashMap::new(),
            rows: BTreeMap::new(),
            settled: false,
            readable: readable_rx,
            out: holdings_tx,
        };
        let span = tracing::info_span!("leases", mapping = %mapping, instance = %me);
        let task = tokio::spawn(keep(keeper, wake.clone(), stop.clone()).instrument(span));
        Self {
            holdings,
            readable,
            wake,
            stop,
            task,
        }
    }

    /// Follows the keeper's holdings.
    pub fn holdings(&self) -> watch::Receiver<Arc<Holdings>> {
        self.holdings.clone()
    }

    /// The shards that may be read now (listed, every parent finished, not
    /// finished): only these are claimed. Starts a round at once when it changed.
    pub fn set_readable(&self, shards: BTreeSet<String>) {
        if self.readable.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&shards);
            *current = Some(shards);
            changed
        }) {
            self.wake.notify_one();
        }
    }

    /// Starts a round now (new shards were recorded, a shard finished).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Releases every lease held and ends the keeper. Call it once the shard
    /// runners have stopped, so their last checkpoints are written.
    pub async fn release_all(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the lease keeper panicked");
        }
    }
}

/// The keeper's own state.
struct Keeper {
    store: Arc<dyn CheckpointStore>,
    mapping: String,
    me: String,
    rules: LeaseRules,
    metrics: Arc<MappingMetrics>,
    watch: LeaseWatch,
    held: BTreeMap<String, Lease>,
    /// When each held lease was last renewed (or taken).
    renewed: HashMap<String, Instant>,
    rows: BTreeMap<String, StoredShard>,
    settled: bool,
    /// `None` until the mapping has listed its shards.
    readable: watch::Receiver<Option<BTreeSet<String>>>,
    out: watch::Sender<Arc<Holdings>>,
}

async fn keep(mut keeper: Keeper, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        keeper.round().await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(keeper.rules.renew_every()) => {}
        }
    }
    keeper.release_all().await;
}

impl Keeper {
    /// One round: renew, read, claim, publish.
    async fn round(&mut self) {
        self.renew().await;
        match self.store.load(&self.mapping).await {
            Ok(rows) => {
                self.rows = rows;
                self.check_held().await;
                // Settled once a round has planned with the listed shards: what
                // this instance holds is known (`/readyz` waits for it).
                self.settled = self.claim().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the lease table; holding what is held")
            }
        }
        self.publish();
    }

    /// Renews every held lease, [`RENEW_CONCURRENCY`] at a time: an instance with
    /// hundreds of shards renews them all well within a renewal period.
    async fn renew(&mut self) {
        let now = Instant::now();
        let renewals: Vec<_> = self
            .held
            .iter()
            .map(|(shard, lease)| {
                let (store, mapping) = (self.store.clone(), self.mapping.clone());
                let (shard, lease) = (shard.clone(), lease.clone());
                async move {
                    let result = store.renew(&mapping, &shard, &lease).await;
                    (shard, result)
                }
            })
            .collect();
        let results: Vec<(String, Result<(), StoreError>)> = futures::stream::iter(renewals)
            .buffer_unordered(RENEW_CONCURRENCY)
            .collect()
            .await;
        for (shard, result) in results {
            match result {
                Ok(()) => {
                    self.renewed.insert(shard, now);
                }
                Err(StoreError::LeaseLost { holder, .. }) => {
                    self.lost(&shard, &format!("it is now held by {holder}"));
                }
                Err(e) => {
                    let since = self.renewed.get(&shard).copied().unwrap_or(now);
                    if now.saturating_duration_since(since) >= self.rules.duration {
                        self.lost(
                            &shard,
                            &format!(
                                "it could not be renewed for a whole lease duration ({:?}; last error: {e})",
                                self.rules.duration
                            ),
                        );
                    } else {
                        tracing::warn!(shard = %shard, error = %e, "cannot renew a lease; trying again next round");
                    }
                }
            }
        }
    }

    /// Compares what is held with the rows just read: a lease whose row shows
    /// another owner or counter is lost; a finished shard's lease is released.
    async fn check_held(&mut self) {
        let held: Vec<(String, Lease)> = self
            .held
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect();
        for (shard, lease) in held {
            let Some(row) = self.rows.get(&shard) else {
                self.lost(&shard, "its row is gone from the table");
                continue;
            };
            if row.lease.owner.as_deref() != Some(lease.owner.as_str())
                || row.lease.counter != lease.counter
            {
                let holder = row.lease.owner.clone().unwrap_or_else(|| "nobody".into());
                self.lost(&shard, &format!("it is now held by {holder}"));
            } else if row.checkpoint.finished {
                self.release(&shard, &lease, "its shard is finished").await;
            }
        }
    }

    /// Claims what the plan says; false when the mapping has not listed its shards
    /// yet (nothing to plan with).
    async fn claim(&mut self) -> bool {
        let now = Instant::now();
        self.watch
            .observe(self.rows.iter().map(|(s, r)| (s.as_str(), &r.lease)), now);
        let Some(readable) = self.readable.borrow().clone() else {
            return false;
        };
        let active: BTreeMap<String, LeaseState> = self
            .rows
            .iter()
            .filter(|(shard, row)| readable.contains(*shard) && !row.checkpoint.finished)
            .map(|(shard, row)| (shard.clone(), row.lease.clone()))
            .collect();
        let claims = plan(
            &self.me,
            &active,
            &self.watch,
            now,
            &self.rules,
            rand::random(),
        );
        for claim in claims {
            let taken = self
                .store
                .take(&self.mapping, &claim.shard, &self.me, &claim.expected)
                .await;
            match taken {
                Ok((lease, row)) => {
                    let from = claim.expected.owner.as_deref().unwrap_or("nobody");
                    match claim.kind {
                        ClaimKind::Take => {
                            self.metrics.lease_events.taken.inc();
                            tracing::info!(shard = %claim.shard, from, counter = lease.counter, "took a lease");
                        }
                        ClaimKind::Steal => {
                            self.metrics.lease_events.stolen.inc();
                            tracing::info!(shard = %claim.shard, from, counter = lease.counter, "stole a lease to balance the fleet");
                        }
                    }
                    self.renewed.insert(claim.shard.clone(), now);
                    self.held.insert(claim.shard.clone(), lease);
                    self.rows.insert(claim.shard, row);
                }
                Err(StoreError::LeaseLost { holder, .. }) => {
                    tracing::debug!(shard = %claim.shard, %holder, "another instance claimed the lease first");
                }
                Err(e) => tracing::warn!(shard = %claim.shard, error = %e, "cannot claim a lease"),
            }
        }
        true
    }

    fn lost(&mut self, shard: &str, why: &str) {
        if self.held.remove(shard).is_some() {
            self.renewed.remove(shard);
            self.metrics.lease_events.lost.inc();
            tracing::warn!(shard = %shard, "lost the lease: {why}; the shard's runner stops after its in-flight invocation, and its checkpoint writes are refused");
        }
    }

    async fn release(&mut self, shard: &str, lease: &Lease, why: &str) {
        self.held.remove(shard);
        self.renewed.remove(shard);
        match self.store.release(&self.mapping, shard, lease).await {
            Ok(()) => {
                self.metrics.lease_events.released.inc();
                tracing::info!(shard = %shard, "released the lease: {why}");
            }
            Err(e) => {
                tracing::warn!(shard = %shard, error = %e, "cannot release a lease; it expires instead")
            }
        }
    }

    async fn release_all(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (shard, lease) in &held {
            self.release(shard, lease, "shutting down").await;
        }
        self.publish();
    }

    fn publish(&self) {
        self.metrics
            .leases_held
            .set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
        self.out.send_replace(Arc::new(Holdings {
            settled: self.settled,
            rows: self.rows.clone(),
            held: self.held.clone(),
        }));
    }
}

/// This instance's name in the lease table: the host name (a pod's name in
/// Kubernetes) and a random suffix, so that a restarted instance never mistakes
/// its predecessor's leases for its own.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "esm".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}
