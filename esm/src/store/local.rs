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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use redb::{Database, DatabaseError, ReadableDatabase as _, TableDefinition};

use super::{CheckpointStore, Lease, ShardCheckpoint, StoreError};

const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const KEY_SEPARATOR: char = '\u{1f}';

/// The file inside `[store] path`.
pub const FILE_NAME: &str = "checkpoints.redb";

/// Checkpoints in a local redb file.
#[derive(Clone)]
pub struct LocalStore {
    db: Arc<Database>,
    owner: String,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("owner", &self.owner)
            .finish()
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
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
        Ok(Self {
            db: Arc::new(db),
            owner: format!("local-{}", std::process::id()),
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

    fn save_blocking(
        &self,
        mapping: &str,
        shard: &str,
        state: &ShardCheckpoint,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        let key = format!("{mapping}{KEY_SEPARATOR}{shard}");
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(CHECKPOINTS).map_err(backend)?;
            table
                .insert(key.as_str(), value.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)
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

impl CheckpointStore for LocalStore {
    fn load(
        &self,
        mapping: &str,
    ) -> BoxFuture<'_, Result<BTreeMap<String, ShardCheckpoint>, StoreError>> {
        let (this, mapping) = (self.clone(), mapping.to_string());
        blocking(move || this.load_blocking(&mapping)).boxed()
    }

    fn acquire<'a>(
        &'a self,
        _mapping: &'a str,
        _shard: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        // The file lock already makes this process the only writer.
        let lease = Lease {
            owner: self.owner.clone(),
            counter: 1,
        };
        async move { Ok(lease) }.boxed()
    }

    fn save<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        _lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (this, mapping, shard, state) = (
            self.clone(),
            mapping.to_string(),
            shard.to_string(),
            state.clone(),
        );
        blocking(move || this.save_blocking(&mapping, &shard, &state)).boxed()
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
            let lease = store.acquire("orders", "shardId-1").await.unwrap();
            state.checkpoint = Some(Position::plain(SequenceNumber::parse("42").unwrap()));
            store
                .save("orders", "shardId-1", &state, &lease)
                .await
                .unwrap();
            let other = ShardCheckpoint::new(StartAt::Latest);
            store
                .save("orders-2", "shardId-1", &other, &lease)
                .await
                .unwrap();
            store
                .save("order", "shardId-9", &other, &lease)
                .await
                .unwrap();
        }
        let store = LocalStore::open(dir.path()).unwrap();
        let loaded = store.load("orders").await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["shardId-1"], state);
        assert_eq!(store.load("nothing").await.unwrap().len(), 0);
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
}
