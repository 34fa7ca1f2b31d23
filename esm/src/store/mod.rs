//! Where a mapping remembers how far it got: per shard, a checkpoint and a finished flag.
//!
//! The [`CheckpointStore`] trait is small on purpose. The embedded [`local`] store is
//! the default (one process owns a stream); the [`dynamodb`] store is shared by a
//! fleet of instances, which is why every write carries a [`Lease`] and may answer
//! [`StoreError::LeaseLost`]: when another instance has taken the shard, the writer
//! must stop rather than move a checkpoint it no longer owns. Which leases to take is
//! decided in [`crate::core::lease`]; the runner's lease keeper carries it out.

pub mod dynamodb;
mod group_commit;
pub mod local;

#[cfg(test)]
pub(crate) mod conformance;

use std::collections::BTreeMap;

use futures::future::BoxFuture;

pub use crate::core::checkpoint::{ShardCheckpoint, StartAt};
pub use crate::core::lease::LeaseState;

/// The right to write one shard's checkpoint, as held by its owner. The local store
/// hands one out per shard (its file lock keeps other processes out); the DynamoDB
/// store fences every write with it.
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

/// One shard's row in the store: its checkpoint and its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredShard {
    /// Where reading starts, how far it got, whether it is finished.
    pub checkpoint: ShardCheckpoint,
    /// Who holds the shard (the local store: this process, once taken).
    pub lease: LeaseState,
}

/// Checkpoints and leases per mapping and shard.
///
/// Every write that moves a checkpoint or a lease is conditional: [`save`],
/// [`renew`] and [`release`] on the caller still holding `lease` (owner and
/// counter), [`take`] on the lease being as the caller last saw it. A failed
/// condition is [`StoreError::LeaseLost`].
///
/// [`save`]: CheckpointStore::save
/// [`renew`]: CheckpointStore::renew
/// [`release`]: CheckpointStore::release
/// [`take`]: CheckpointStore::take
pub trait CheckpointStore: Send + Sync + 'static {
    /// Every shard the store knows for `mapping`, by shard id.
    fn load(
        &self,
        mapping: &str,
    ) -> BoxFuture<'_, Result<BTreeMap<String, StoredShard>, StoreError>>;

    /// Records a shard seen for the first time, with no owner, unless it is
    /// recorded already (another instance may have been first): the existing row
    /// is kept. `parents` are kept for people reading the table.
    fn create<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        parents: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Takes `shard`'s lease for `owner`, if it is still `expected`; bumps its
    /// counter. Returns the lease and the row as it is now (its latest
    /// checkpoint: nobody else can move it any more).
    fn take<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        owner: &'a str,
        expected: &'a LeaseState,
    ) -> BoxFuture<'a, Result<(Lease, StoredShard), StoreError>>;

    /// Bumps the heartbeat of a lease the caller holds.
    fn renew<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Gives a lease up: the shard has no owner, and a peer may take it at once.
    fn release<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Writes `shard`'s checkpoint durably, if the caller still holds `lease`;
    /// returns once it would survive a crash.
    fn save<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
