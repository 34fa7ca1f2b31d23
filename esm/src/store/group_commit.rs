//! Group commit: one durable redb commit for every checkpoint that arrived within a
//! short interval.
//!
//! A redb commit is fsynced, and an fsync costs the same for one row as for a
//! thousand. With one commit per checkpoint, a process draining hundreds of shards
//! spends more on commits than on its records; here a single thread takes every row
//! written since its last commit (the latest per shard), waits up to
//! `[store] commit_interval_ms` for more to arrive, and commits them together. Each
//! caller still waits until the commit holding its row is durable, so
//! [`CheckpointStore::save`](super::CheckpointStore::save) keeps its promise: what it
//! acknowledged survives a crash. What the interval costs is latency per save, which
//! the shard machine hides by starting its next batch while a write is in flight.
//!
//! A shard's first row (`create`, written only where there is none) goes the same
//! way, so that a process taking up a thousand shards commits their rows together.
//!
//! Dropping the last handle commits what is queued and waits for the thread, so the
//! file is closed (and its lock released) when the store is gone.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable as _};
use tokio::sync::oneshot;

use super::local::CHECKPOINTS;
use super::StoreError;

/// The writer thread and its queue.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the callers and the writer thread share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Rung when a row arrives or the store closes.
    wake: Condvar,
    /// Commits made (for tests).
    commits: AtomicU64,
}

/// Rows waiting for the next commit.
#[derive(Default)]
struct Queue {
    /// The latest row per key (a later checkpoint of a shard replaces its earlier
    /// one: only the newest needs to be durable).
    rows: BTreeMap<String, Row>,
    /// Who waits for those rows to be durable.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// No more rows will come: commit what is queued and stop.
    closed: bool,
}

/// A row to commit.
struct Row {
    /// The value (a checkpoint's JSON).
    value: Vec<u8>,
    /// Written only if the table has no row under its key yet (a shard's first row,
    /// which must not overwrite what an earlier run left).
    if_absent: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GroupCommit {
    /// Starts the writer thread for `db`, committing at most once per `interval`
    /// (zero: as soon as the previous commit is done).
    pub(super) fn start(db: Arc<Database>, interval: Duration) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("esm-checkpoints".into())
            .spawn({
                let shared = shared.clone();
                move || run(&db, &shared, interval)
            })
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the checkpoint writer thread: {e}"))
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Commits made so far.
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Queues `value` under `key`; the future resolves once it is durable.
    pub(super) fn write(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.queue(key, value, false)
    }

    /// Queues `value` under `key` unless the table (or the queue) already has a row
    /// there; the future resolves once the row is durable.
    pub(super) fn create(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.queue(key, value, true)
    }

    /// Queues one row and returns the wait for its commit.
    fn queue(
        &self,
        key: String,
        value: Vec<u8>,
        if_absent: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (done, durable) = oneshot::channel();
        let was_empty = {
            let mut queue = self.shared.lock();
            let was_empty = queue.rows.is_empty();
            let row = Row { value, if_absent };
            match queue.rows.entry(key) {
                Entry::Occupied(_) if if_absent => {}
                Entry::Occupied(mut queued) => {
                    queued.insert(row);
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(row);
                }
            }
            queue.waiters.push(done);
            was_empty
        };
        // The writer sleeps on an empty queue until a row arrives; once it has one it
        // waits out its interval whatever else arrives, so only the first row wakes it.
        if was_empty {
            self.shared.wake.notify_one();
        }
        async move {
            match durable.await {
                Ok(result) => result.map_err(StoreError::Backend),
                Err(_) => Err(StoreError::Backend(
                    "the checkpoint writer thread stopped".into(),
                )),
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // Commits what is queued; a panic in it was already reported to waiters.
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for rows, gathers them for `interval`, commits them in
/// one transaction, tells every waiter, until closed and empty.
fn run(db: &Database, shared: &Shared, interval: Duration) {
    loop {
        let (rows, waiters) = {
            let mut queue = shared.lock();
            while queue.rows.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.rows.is_empty() {
                return;
            }
            let deadline = Instant::now() + interval;
            while !queue.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = shared
                    .wake
                    .wait_timeout(queue, left)
                    .map(|(queue, _)| queue)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            (
                std::mem::take(&mut queue.rows),
                std::mem::take(&mut queue.waiters),
            )
        };
        let result = commit(db, &rows);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = &result {
            tracing::warn!(rows = rows.len(), %error, "checkpoint commit failed");
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Writes `rows` in one durable transaction.
fn commit(db: &Database, rows: &BTreeMap<String, Row>) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(CHECKPOINTS).map_err(|e| e.to_string())?;
        for (key, row) in rows {
            if row.if_absent
                && table
                    .get(key.as_str())
                    .map_err(|e| e.to_string())?
                    .is_some()
            {
                continue;
            }
            table
                .insert(key.as_str(), row.value.as_slice())
                .map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}
