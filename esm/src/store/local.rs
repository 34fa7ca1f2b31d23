//! The embedded default store: one `redb` file in `[store] path`.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store: a committed write survives a
//! crash or a power cut (each commit is fsynced), there is no server to run and no C
//! code to build, and its file lock keeps a second esm process from writing the same
//! checkpoints. SQLite would do the job too, at the price of a C build and a schema for
//! what is a key-value table.
//!
//! Layout: one table, key `"<mapping>\u{1f}<shard>"`, value the JSON of a
//! [`ShardCheckpoint`] (small, readable with any redb tool, easy to migrate).
//!
//! Checkpoint saves go through [`group_commit`](super::group_commit): one commit
//! serves every save that arrived within `[store] commit_interval_ms`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use redb::{Database, DatabaseError, ReadableDatabase as _, TableDefinition};

use super::group_commit::GroupCommit;
use super::{CheckpointStore, Lease, LeaseState, ShardCheckpoint, StoreError, StoredShard};

/// The one table: a checkpoint per mapping and shard.
pub(super) const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const KEY_SEPARATOR: char = '\u{1f}';

/// The file inside `[store] path`.
pub const FILE_NAME: &str = "checkpoints.redb";

/// Checkpoints in a local redb file.
#[derive(Clone)]
pub struct LocalStore {
    /// Commits checkpoint saves in groups (dropped first: it commits what is queued).
    committer: Arc<GroupCommit>,
    db: Arc<Database>,
    /// The leases this process handed out (the file lock makes it the only
    /// process; leases keep a runner that lost its shard, in a restart or to
    /// `esm checkpoint`, from writing).
    leases: Arc<Mutex<HashMap<String, LeaseState>>>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish()
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store in directory `dir`; each save is committed
    /// as soon as the commit before it is done.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Duration::ZERO)
    }

    /// Opens the store in `dir`, committing checkpoint saves together at most once per
    /// `commit_interval`.
    pub fn open_with(dir: &Path, commit_interval: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create store directory {}: {e}",
                dir.display()
            ))
        })?;
        let path: PathBuf = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.display().to_string(),
            },
            other => StoreError::Backend(format!("cannot open {}: {other}", path.display())),
        })?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(CHECKPOINTS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        Ok(Self {
            committer: Arc::new(GroupCommit::start(db.clone(), commit_interval)?),
            db,
            leases: Arc::default(),
        })
    }

    fn load_blocking(
        &self,
        mapping: &str,
    ) -> Result<BTreeMap<String, ShardCheckpoint>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(CHECKPOINTS).map_err(backend)?;
        let prefix = format!("{mapping}{KEY_SEPARATOR}");
        let mut out = BTreeMap::new();
        for entry in table.range(prefix.as_str()..).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let Some(shard) = key.value().strip_prefix(&prefix) else {
                break;
            };
            let state: ShardCheckpoint = serde_json::from_slice(value.value()).map_err(|e| {
                StoreError::Backend(format!("corrupt checkpoint for {mapping}/{shard}: {e}"))
            })?;
            out.insert(shard.to_string(), state);
        }
        Ok(out)
    }

    fn get_blocking(&self, key: &str) -> Result<Option<ShardCheckpoint>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(CHECKPOINTS).map_err(backend)?;
        let Some(value) = table.get(key).map_err(backend)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| StoreError::Backend(format!("corrupt checkpoint {key:?}: {e}")))
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

impl LocalStore {
    /// Checks that `lease` is `shard`'s current lease in this process, and applies
    /// `change` to it.
    fn with_lease<T>(
        &self,
        mapping: &str,
        shard: &str,
        lease: &Lease,
        change: impl FnOnce(&mut LeaseState) -> T,
    ) -> Result<T, StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let current = leases.entry(key(mapping, shard)).or_default();
        if current.owner.as_deref() != Some(lease.owner.as_str())
            || current.counter != lease.counter
        {
            return Err(lost(mapping, shard, current));
        }
        Ok(change(current))
    }

    fn lease_of(&self, mapping: &str, shard: &str) -> LeaseState {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .get(&key(mapping, shard))
            .cloned()
            .unwrap_or_default()
    }
}

/// A failed lease condition: the lease is `current` now.
fn lost(mapping: &str, shard: &str, current: &LeaseState) -> StoreError {
    StoreError::LeaseLost {
        mapping: mapping.to_string(),
        shard: shard.to_string(),
        holder: current.owner.clone().unwrap_or_else(|| "nobody".into()),
    }
}

fn key(mapping: &str, shard: &str) -> String {
    format!("{mapping}{KEY_SEPARATOR}{shard}")
}

impl CheckpointStore for LocalStore {
    fn load(
        &self,
        mapping: &str,
    ) -> BoxFuture<'_, Result<BTreeMap<String, StoredShard>, StoreError>> {
        let (this, mapping) = (self.clone(), mapping.to_string());
        async move {
            let loaded = {
                let (this, mapping) = (this.clone(), mapping.clone());
                blocking(move || this.load_blocking(&mapping)).await?
            };
            Ok(loaded
                .into_iter()
                .map(|(shard, checkpoint)| {
                    let lease = this.lease_of(&mapping, &shard);
                    (shard, StoredShard { checkpoint, lease })
                })
                .collect())
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        _parents: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let queued = serde_json::to_vec(state)
            .map_err(|e| StoreError::Backend(e.to_string()))
            .map(|value| self.committer.create(key(mapping, shard), value));
        async move { queued?.await }.boxed()
    }

    fn take<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        owner: &'a str,
        expected: &'a LeaseState,
    ) -> BoxFuture<'a, Result<(Lease, StoredShard), StoreError>> {
        async move {
            let lease = {
                let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
                let current = leases.entry(key(mapping, shard)).or_default();
                if current != expected {
                    return Err(lost(mapping, shard, current));
                }
                current.owner = Some(owner.to_string());
                current.counter += 1;
                current.heartbeat += 1;
                current.clone()
            };
            let checkpoint = {
                let (this, key) = (self.clone(), key(mapping, shard));
                blocking(move || this.get_blocking(&key)).await?
            }
            .ok_or_else(|| {
                StoreError::Backend(format!("no checkpoint recorded for {mapping}/{shard}"))
            })?;
            let held = Lease {
                owner: owner.to_string(),
                counter: lease.counter,
            };
            Ok((held, StoredShard { checkpoint, lease }))
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with_lease(mapping, shard, lease, |l| l.heartbeat += 1);
        async move { result }.boxed()
    }

    fn release<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with_lease(mapping, shard, lease, |l| l.owner = None);
        async move { result }.boxed()
    }

    fn save<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let queued = self
            .with_lease(mapping, shard, lease, |_| ())
            .and_then(|()| {
                let value =
                    serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
                Ok(self.committer.write(key(mapping, shard), value))
            });
        async move { queued?.await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{Position, SequenceNumber};
    use crate::store::StartAt;

    #[tokio::test]
    async fn survives_reopening_and_keeps_mappings_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ShardCheckpoint::new(StartAt::TrimHorizon);
        {
            let store = LocalStore::open(dir.path()).unwrap();
            for (mapping, shard) in [
                ("orders", "shardId-1"),
                ("orders-2", "shardId-1"),
                ("order", "shardId-9"),
            ] {
                store
                    .create(mapping, shard, &ShardCheckpoint::new(StartAt::Latest), &[])
                    .await
                    .unwrap();
            }
            let (lease, _) = store
                .take("orders", "shardId-1", "me", &LeaseState::default())
                .await
                .unwrap();
            state.checkpoint = Some(Position::plain(SequenceNumber::parse("42").unwrap()));
            store
                .save("orders", "shardId-1", &state, &lease)
                .await
                .unwrap();
        }
        let store = LocalStore::open(dir.path()).unwrap();
        let loaded = store.load("orders").await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["shardId-1"].checkpoint, state);
        // Leases do not outlive the process that held them.
        assert_eq!(loaded["shardId-1"].lease, LeaseState::default());
        assert_eq!(store.load("nothing").await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn keeps_the_lease_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        crate::store::conformance::check(&store).await;
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LocalStore::open(dir.path()).unwrap();
        match LocalStore::open(dir.path()) {
            Err(StoreError::InUse { .. }) => {}
            other => panic!("expected InUse, got {other:?}"),
        }
    }

    /// Shards `shard-0`..`shard-{n}` of mapping `m`, recorded and leased to `me`.
    async fn leased(store: &LocalStore, n: usize) -> Vec<(String, Lease)> {
        let mut out = Vec::new();
        for i in 0..n {
            let shard = format!("shard-{i}");
            let start = ShardCheckpoint::new(StartAt::TrimHorizon);
            store.create("m", &shard, &start, &[]).await.unwrap();
            let (lease, _) = store
                .take("m", &shard, "me", &LeaseState::default())
                .await
                .unwrap();
            out.push((shard, lease));
        }
        out
    }

    fn at(seq: usize) -> ShardCheckpoint {
        let mut state = ShardCheckpoint::new(StartAt::TrimHorizon);
        state.checkpoint = Some(Position::plain(
            SequenceNumber::parse(seq.to_string()).unwrap(),
        ));
        state
    }

    #[tokio::test]
    async fn saves_that_arrive_together_share_one_commit_and_each_is_durable_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        // A long interval: every save below is queued before the first commit.
        let store = LocalStore::open_with(dir.path(), Duration::from_secs(1)).unwrap();
        // A shard's first row, created alone: one commit.
        let shards = leased(&store, 1).await;
        assert_eq!(store.committer.commits(), 1);
        // A hundred shards' first rows created together: one commit.
        let creates: Vec<_> = (1..100).map(|i| format!("shard-{i}")).collect();
        let start = ShardCheckpoint::new(StartAt::TrimHorizon);
        let created = creates
            .iter()
            .map(|shard| store.create("m", shard, &start, &[]));
        for result in futures::future::join_all(created).await {
            result.unwrap();
        }
        assert_eq!(store.committer.commits(), 2);
        let mut shards = shards;
        for shard in creates {
            let (lease, _) = store
                .take("m", &shard, "me", &LeaseState::default())
                .await
                .unwrap();
            shards.push((shard, lease));
        }
        let before = store.committer.commits();
        let states: Vec<_> = (1..=shards.len()).map(at).collect();
        let saves: Vec<_> = shards
            .iter()
            .zip(&states)
            .map(|((shard, lease), state)| store.save("m", shard, state, lease))
            .collect();
        for result in futures::future::join_all(saves).await {
            result.unwrap();
        }
        assert_eq!(store.committer.commits() - before, 1);
        let loaded = store.load("m").await.unwrap();
        for (i, (shard, _)) in shards.iter().enumerate() {
            assert_eq!(loaded[shard].checkpoint, at(i + 1), "{shard}");
        }
        // A later save of the same shard replaces the earlier one in the queue.
        let (shard, lease) = &shards[0];
        let (earlier, later) = (at(500), at(501));
        let (first, second) = (
            store.save("m", shard, &earlier, lease),
            store.save("m", shard, &later, lease),
        );
        let (first, second) = futures::join!(first, second);
        first.unwrap();
        second.unwrap();
        assert_eq!(store.load("m").await.unwrap()[shard].checkpoint, at(501));
        // Creating a row that exists leaves it as it is, also when its save is queued
        // in the same commit.
        let (latest, later) = (ShardCheckpoint::new(StartAt::Latest), at(502));
        let (again, save) = futures::join!(
            store.create("m", shard, &latest, &[]),
            store.save("m", shard, &later, lease),
        );
        again.unwrap();
        save.unwrap();
        store
            .create("m", shard, &ShardCheckpoint::new(StartAt::Latest), &[])
            .await
            .unwrap();
        assert_eq!(store.load("m").await.unwrap()[shard].checkpoint, at(502));
    }

    #[tokio::test]
    async fn closing_the_store_commits_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalStore::open_with(dir.path(), Duration::from_secs(1)).unwrap();
            let shards = leased(&store, 1).await;
            let (shard, lease) = &shards[0];
            // Queued, and nobody waits for it.
            drop(store.save("m", shard, &at(7), lease));
        }
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.load("m").await.unwrap()["shard-0"].checkpoint, at(7));
    }
}
