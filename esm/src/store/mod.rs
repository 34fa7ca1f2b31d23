//! Where a mapping remembers how far it got: per shard, a checkpoint and a finished flag.
//!
//! The [`CheckpointStore`] trait is small on purpose. The embedded [`local`] store is
//! the default (one process owns a stream); a DynamoDB lease store comes later for
//! fleets, which is why every write carries a [`Lease`] and may answer
//! [`StoreError::LeaseLost`]: when another instance has taken the shard, the writer must
//! stop rather than move a checkpoint it no longer owns.

pub mod local;

use std::collections::BTreeMap;

use futures::future::BoxFuture;

pub use crate::core::checkpoint::{ShardCheckpoint, StartAt};

/// The right to write one shard's checkpoint. The local store hands out one per
/// process (its file lock keeps other processes out); a lease store will fence writes
/// with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (an instance id).
    pub owner: String,
    /// Increases each time the lease changes hands.
    pub counter: u64,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another instance owns the shard now; stop working on it.
    #[error("lease lost on {mapping}/{shard}: now held by {holder}")]
    LeaseLost {
        /// The mapping.
        mapping: String,
        /// The shard.
        shard: String,
        /// The new holder.
        holder: String,
    },
    /// Another process already has the store open.
    #[error("the checkpoint store at {path} is in use by another esm process")]
    InUse {
        /// The store's file.
        path: String,
    },
    /// The store could not be read or written.
    #[error("checkpoint store: {0}")]
    Backend(String),
}

/// Checkpoints per mapping and shard.
pub trait CheckpointStore: Send + Sync + 'static {
    /// Every shard the store knows for `mapping`, by shard id.
    fn load(
        &self,
        mapping: &str,
    ) -> BoxFuture<'_, Result<BTreeMap<String, ShardCheckpoint>, StoreError>>;

    /// Takes the right to write `shard`'s checkpoint (roadmap: contested in a fleet).
    fn acquire<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Writes `shard`'s state durably; returns once it would survive a crash.
    fn save<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
