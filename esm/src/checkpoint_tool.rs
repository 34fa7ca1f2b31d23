//! `esm checkpoint show|set`: see and move a mapping's checkpoints without recreating
//! the mapping (which is all Lambda offers).
//!
//! It works on the local store while esm is stopped: the store's file lock is held by
//! a running esm, so opening it tells whether one runs, and the command refuses with
//! a message saying so rather than racing the runner. On the DynamoDB store it works
//! while the fleet runs, through each shard's lease: take, write, release. Where a moved shard starts is
//! decided in the core ([`ShardCheckpoint::moved_to`]); this module only reads and
//! writes the store and prints.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, StoreConfig};
use crate::core::checkpoint::{MoveTo, ShardCheckpoint};
use crate::store::dynamodb::DynamoStore;
use crate::store::local::{LocalStore, FILE_NAME};
use crate::store::{CheckpointStore, StoreError, StoredShard};

/// Why `esm checkpoint` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The arguments name something that does not exist (exit code 2).
    #[error("{0}")]
    BadArguments(String),
    /// The store cannot be used now (exit code 1).
    #[error("{0}")]
    Unavailable(String),
}

impl CheckpointError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckpointError::BadArguments(_) => crate::exit::EXIT_BAD_CONFIG,
            CheckpointError::Unavailable(_) => crate::exit::EXIT_FAILURE,
        }
    }
}

/// Opens the store of `config`: the local one unless a running esm holds it, or
/// the DynamoDB table (which is never created here). Returns it with a
/// description for the output.
async fn open_store(
    config: &Config,
) -> Result<(Box<dyn CheckpointStore>, String), CheckpointError> {
    let path = match &config.store {
        StoreConfig::Local { path, .. } => path,
        StoreConfig::DynamoDb { table, region, .. } => {
            let region = crate::store::dynamodb::table_region(config, region.as_deref());
            let store = DynamoStore::open(table, &region, false)
                .await
                .map_err(|e| CheckpointError::Unavailable(e.to_string()))?;
            return Ok((
                Box::new(store),
                format!("DynamoDB table {table} ({region})"),
            ));
        }
    };
    let shown = path.display().to_string();
    if !Path::new(path).join(FILE_NAME).exists() {
        return Err(CheckpointError::Unavailable(format!(
            "there is no checkpoint store at {shown} (esm has not run with this config)"
        )));
    }
    let store = LocalStore::open(path).map_err(|e| match e {
        StoreError::InUse { .. } => CheckpointError::Unavailable(format!(
            "the checkpoint store at {shown} is in use by a running esm: stop it first \
             (checkpoints move only while esm is stopped; `esm status` shows a running one's)"
        )),
        other => CheckpointError::Unavailable(other.to_string()),
    })?;
    Ok((Box::new(store), format!("checkpoint store at {shown}")))
}

/// Checks that `mapping` is in the config.
fn check_mapping(config: &Config, mapping: &str) -> Result<(), CheckpointError> {
    if config.mappings.iter().any(|m| m.name == mapping) {
        return Ok(());
    }
    let names: Vec<&str> = config.mappings.iter().map(|m| m.name.as_str()).collect();
    Err(CheckpointError::BadArguments(format!(
        "no mapping named {mapping:?} in the config (it has: {})",
        names.join(", ")
    )))
}

/// The shards to act on: `shard` alone, or every shard the store knows.
fn pick<'a>(
    known: &'a BTreeMap<String, StoredShard>,
    mapping: &str,
    shard: Option<&str>,
) -> Result<Vec<(&'a String, &'a StoredShard)>, CheckpointError> {
    match shard {
        Some(id) => known
            .get_key_value(id)
            .map(|found| vec![found])
            .ok_or_else(|| {
                CheckpointError::BadArguments(format!(
                    "mapping {mapping} has no shard {id} in the store (it has: {})",
                    known.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }),
        None if known.is_empty() => Err(CheckpointError::Unavailable(format!(
            "mapping {mapping} has no shard in the store yet: run esm once first"
        ))),
        None => Ok(known.iter().collect()),
    }
}

/// `esm checkpoint show`: one line per shard.
pub async fn show(
    config: &Config,
    mapping: &str,
    shard: Option<&str>,
) -> Result<String, CheckpointError> {
    check_mapping(config, mapping)?;
    let (store, place) = open_store(config).await?;
    let known = store
        .load(mapping)
        .await
        .map_err(|e| CheckpointError::Unavailable(e.to_string()))?;
    let rows = pick(&known, mapping, shard)?;
    Ok(table(&place, mapping, &rows))
}

/// `esm checkpoint set`: moves `shard` (or every shard) to `to`; returns what it
/// wrote, as `show` prints it.
///
/// Each shard is moved through its lease: the lease is taken (from whoever holds
/// it: a running instance's runner for that shard stops, and its checkpoint writes
/// are refused from then on), the checkpoint written, and the lease released, so
/// that an instance takes the shard again and reads from the new position.
pub async fn set(
    config: &Config,
    mapping: &str,
    shard: Option<&str>,
    to: &MoveTo,
) -> Result<String, CheckpointError> {
    check_mapping(config, mapping)?;
    let (store, place) = open_store(config).await?;
    let unavailable = |e: StoreError| CheckpointError::Unavailable(e.to_string());
    let known = store.load(mapping).await.map_err(unavailable)?;
    let picked: Vec<String> = pick(&known, mapping, shard)?
        .into_iter()
        .map(|(id, _)| id.clone())
        .collect();
    let moved = ShardCheckpoint::moved_to(to, chrono::Utc::now());
    let me = format!("esm-checkpoint-{:08x}", rand::random::<u32>());
    for id in &picked {
        move_one(store.as_ref(), mapping, id, &moved, &me)
            .await
            .map_err(unavailable)?;
        tracing::info!(mapping, shard = %id, next_read = %moved.next_read(), "checkpoint moved");
    }
    let after = store.load(mapping).await.map_err(unavailable)?;
    let rows: Vec<_> = after.iter().filter(|(id, _)| picked.contains(id)).collect();
    Ok(table(&place, mapping, &rows))
}

/// Takes `shard`'s lease as `me`, writes `moved`, releases the lease. A take that
/// loses a race (the lease changed between the read and the take) reads again,
/// a few times.
async fn move_one(
    store: &dyn CheckpointStore,
    mapping: &str,
    shard: &str,
    moved: &ShardCheckpoint,
    me: &str,
) -> Result<(), StoreError> {
    let mut attempts = 0;
    let lease = loop {
        let row = store.load(mapping).await?.remove(shard).ok_or_else(|| {
            StoreError::Backend(format!("{mapping}/{shard} is no longer in the store"))
        })?;
        match store.take(mapping, shard, me, &row.lease).await {
            Ok((lease, _)) => {
                if let Some(holder) = &row.lease.owner {
                    tracing::info!(mapping, shard, %holder, "took the shard's lease from its holder; its runner there stops");
                }
                break lease;
            }
            Err(StoreError::LeaseLost { .. }) if attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    store.save(mapping, shard, moved, &lease).await?;
    store.release(mapping, shard, &lease).await
}

/// The shards as a table: shard, checkpoint, where the next run reads, finished,
/// lease owner.
fn table(place: &str, mapping: &str, rows: &[(&String, &StoredShard)]) -> String {
    let header = [
        "SHARD",
        "CHECKPOINT",
        "NEXT READ",
        "FINISHED",
        "LEASE OWNER",
    ]
    .map(str::to_owned);
    let mut lines = vec![header];
    for (id, row) in rows {
        let c = &row.checkpoint;
        lines.push([
            (*id).clone(),
            c.checkpoint
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            c.next_read(),
            if c.finished { "yes" } else { "no" }.to_owned(),
            row.lease.owner.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    format!(
        "mapping {mapping}, {place}\n{}",
        crate::table::render(&lines)
    )
}
