//! The board the runners write and the server reads; see the [module](super) docs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{MappingStatus, ShardStatus, StatusReport};
use crate::core::checkpoint::ShardCheckpoint;

/// How long `/status` waits for a busy shard runner to describe itself.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request for a running shard's state, as JSON.
pub type SnapshotRequest = oneshot::Sender<serde_json::Value>;

/// Where a shard is, as its mapping loop knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardPlace {
    /// Parents not finished yet.
    WaitingForParent,
    /// May be read now.
    Readable,
    /// Closed and done.
    Finished,
}

#[derive(Debug)]
struct ShardEntry {
    place: ShardPlace,
    parents: Vec<String>,
    /// The instance holding its lease, as last read.
    owner: Option<String>,
    /// This instance holds its lease.
    mine: bool,
    stored: Option<ShardCheckpoint>,
    read: Arc<AtomicBool>,
    live: Option<mpsc::Sender<SnapshotRequest>>,
}

#[derive(Debug, Default)]
struct MappingView {
    listed: bool,
    /// The lease keeper has completed a round: what this instance holds is known.
    leased: bool,
    shards: BTreeMap<String, ShardEntry>,
}

/// One mapping's part of the board.
#[derive(Clone, Debug)]
pub struct MappingBoard {
    name: String,
    view: Arc<Mutex<MappingView>>,
}

/// What a shard runner is given to report through: it marks `read` after its first
/// page, and answers `requests` with its state.
#[derive(Debug)]
pub struct ShardReporter {
    /// Set once the shard has been read.
    pub read: Arc<AtomicBool>,
    /// Requests for the shard's state.
    pub requests: mpsc::Receiver<SnapshotRequest>,
}

impl ShardReporter {
    /// Marks the shard read.
    pub fn mark_read(&self) {
        if !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
    }
}

impl MappingBoard {
    fn lock(&self) -> MutexGuard<'_, MappingView> {
        // A panic while holding the lock leaves plain data behind: go on with it.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A listing found `shard` at `place`, with `parents`, what the store holds,
    /// the lease's `owner`, and whether this instance holds it (`mine`).
    pub fn listed(
        &self,
        shard: &str,
        place: ShardPlace,
        parents: Vec<String>,
        stored: Option<&ShardCheckpoint>,
        owner: Option<String>,
        mine: bool,
    ) {
        let mut view = self.lock();
        let entry = view
            .shards
            .entry(shard.to_owned())
            .or_insert_with(|| ShardEntry {
                place,
                parents: Vec::new(),
                owner: None,
                mine: false,
                stored: None,
                read: Arc::new(AtomicBool::new(false)),
                live: None,
            });
        entry.place = place;
        entry.parents = parents;
        entry.stored = stored.cloned();
        entry.owner = owner;
        entry.mine = mine;
    }

    /// The mapping has listed its shards (all of them reported with [`Self::listed`]);
    /// shards no longer listed (trimmed from the stream) are forgotten. `leased`:
    /// the lease keeper has completed a round.
    pub fn listing_done(&self, listed: &[&str], leased: bool) {
        let listed: HashSet<&str> = listed.iter().copied().collect();
        let mut view = self.lock();
        view.listed = true;
        view.leased = leased;
        view.shards
            .retain(|id, entry| entry.live.is_some() || listed.contains(id.as_str()));
    }

    /// A runner starts on `shard`: it reports through the returned reporter.
    pub fn runner_started(&self, shard: &str) -> ShardReporter {
        let (sender, requests) = mpsc::channel(4);
        let mut view = self.lock();
        let entry = view
            .shards
            .entry(shard.to_owned())
            .or_insert_with(|| ShardEntry {
                place: ShardPlace::Readable,
                parents: Vec::new(),
                owner: None,
                mine: true,
                stored: None,
                read: Arc::new(AtomicBool::new(false)),
                live: None,
            });
        entry.live = Some(sender);
        ShardReporter {
            read: entry.read.clone(),
            requests,
        }
    }

    /// `shard`'s runner ended; `stored` is what the store now holds, when known.
    pub fn runner_ended(&self, shard: &str, stored: Option<&ShardCheckpoint>) {
        let mut view = self.lock();
        if let Some(entry) = view.shards.get_mut(shard) {
            entry.live = None;
            if let Some(stored) = stored {
                if stored.finished {
                    entry.place = ShardPlace::Finished;
                }
                entry.stored = Some(stored.clone());
            }
        }
    }

    /// The mapping's status, asking each running shard for its state.
    pub async fn report(&self) -> MappingStatus {
        let (listed, ready, entries) = {
            let view = self.lock();
            let entries: Vec<_> = view
                .shards
                .iter()
                .map(|(id, e)| {
                    (
                        Known {
                            shard_id: id.clone(),
                            place: e.place,
                            parents: e.parents.clone(),
                            owner: e.owner.clone(),
                            mine: e.mine,
                            stored: e.stored.clone(),
                            read: e.read.load(Ordering::Relaxed),
                        },
                        e.live.clone(),
                    )
                })
                .collect();
            (
                view.listed,
                not_ready(&self.name, &view).is_empty(),
                entries,
            )
        };
        let shards =
            futures::future::join_all(entries.into_iter().map(|(known, live)| async move {
                let machine = match live {
                    Some(live) => snapshot(&live).await,
                    None => None,
                };
                shard_status(known, machine)
            }))
            .await;
        MappingStatus {
            name: self.name.clone(),
            listed,
            ready,
            shards,
        }
    }

    /// Why the mapping is not ready (empty when it is), without asking the runners.
    pub fn not_ready(&self) -> Vec<String> {
        not_ready(&self.name, &self.lock())
    }
}

/// Why mapping `name` is not ready: not listed yet, its leases not known yet, or a
/// shard this instance holds and may read not read yet (shards waiting for a
/// parent, or held by a peer, do not count).
fn not_ready(name: &str, view: &MappingView) -> Vec<String> {
    if !view.listed {
        return vec![format!(
            "mapping {name}: its shards have not been listed yet"
        )];
    }
    if !view.leased {
        return vec![format!(
            "mapping {name}: its shard leases have not been read yet"
        )];
    }
    view.shards
        .iter()
        .filter(|(_, e)| {
            e.place == ShardPlace::Readable && e.mine && !e.read.load(Ordering::Relaxed)
        })
        .map(|(id, _)| format!("mapping {name}: shard {id} has not been read yet"))
        .collect()
}

/// What the mapping knows of one shard, without asking its runner.
struct Known {
    shard_id: String,
    place: ShardPlace,
    parents: Vec<String>,
    owner: Option<String>,
    mine: bool,
    stored: Option<ShardCheckpoint>,
    read: bool,
}

/// Asks a running shard for its state.
async fn snapshot(live: &mpsc::Sender<SnapshotRequest>) -> Option<serde_json::Value> {
    let (reply, answer) = oneshot::channel();
    live.try_send(reply).ok()?;
    tokio::time::timeout(SNAPSHOT_TIMEOUT, answer)
        .await
        .ok()?
        .ok()
}

/// One shard's row, from what the mapping knows and (while it runs) its machine.
fn shard_status(known: Known, machine: Option<serde_json::Value>) -> ShardStatus {
    let Known {
        shard_id,
        place,
        parents,
        owner,
        mine,
        stored,
        read,
    } = known;
    let from_machine = |key: &str| machine.as_ref().and_then(|m| m.get(key));
    let state = match (place, from_machine("phase").and_then(|p| p.as_str())) {
        (ShardPlace::Finished, _) | (_, Some("finished")) => "finished",
        (ShardPlace::WaitingForParent, _) => "waiting_for_parent",
        (ShardPlace::Readable, Some("reading")) => "reading",
        (ShardPlace::Readable, Some("draining")) => "closed_parent",
        (ShardPlace::Readable, Some("stopping" | "stopped")) => "stopping",
        (ShardPlace::Readable, Some("failing" | "failed")) => "failing",
        (ShardPlace::Readable, None) if !mine && owner.is_some() => "held_by_peer",
        (ShardPlace::Readable, _) => "starting",
    };
    // The durable checkpoint: the machine's saved one while it runs, else the store's.
    let checkpoint = from_machine("saved")
        .and_then(|saved| serde_json::from_value::<ShardCheckpoint>(saved.clone()).ok())
        .or(stored)
        .and_then(|c| c.checkpoint)
        .map(|p| p.to_string());
    ShardStatus {
        shard_id,
        state: state.to_owned(),
        parents,
        lease_owner: owner,
        checkpoint,
        read,
        iterator_age_ms: from_machine("iterator_age_ms").and_then(|v| v.as_u64()),
        millis_behind_latest: from_machine("millis_behind_latest").and_then(|v| v.as_i64()),
        retries_pending: from_machine("retries_pending")
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok()),
        machine,
    }
}

/// Every enabled mapping's board.
#[derive(Clone, Debug, Default)]
pub struct StatusBoard {
    mappings: Arc<Mutex<Vec<MappingBoard>>>,
}

impl StatusBoard {
    /// A board with no mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds mapping `name` (in config order) and returns its part.
    pub fn mapping(&self, name: &str) -> MappingBoard {
        let board = MappingBoard {
            name: name.to_owned(),
            view: Arc::default(),
        };
        self.lock().push(board.clone());
        board
    }

    fn lock(&self) -> MutexGuard<'_, Vec<MappingBoard>> {
        self.mappings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why this instance is not ready (empty when it is).
    pub fn not_ready(&self) -> Vec<String> {
        let mappings = self.lock().clone();
        mappings.iter().flat_map(MappingBoard::not_ready).collect()
    }

    /// The whole status document.
    pub async fn report(&self) -> StatusReport {
        let mappings = self.lock().clone();
        let mappings = futures::future::join_all(mappings.iter().map(MappingBoard::report)).await;
        StatusReport {
            ready: mappings.iter().all(|m| m.ready),
            mappings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::checkpoint::StartAt;
    use crate::core::record::{Position, SequenceNumber};

    fn checkpoint(seq: &str, finished: bool) -> ShardCheckpoint {
        ShardCheckpoint {
            start: StartAt::TrimHorizon,
            checkpoint: Some(Position::plain(SequenceNumber::parse(seq).unwrap())),
            finished,
        }
    }

    #[tokio::test]
    async fn ready_once_listed_and_every_readable_shard_was_read() {
        let board = StatusBoard::new();
        let orders = board.mapping("orders");
        assert_eq!(
            board.not_ready(),
            ["mapping orders: its shards have not been listed yet"]
        );
        orders.listed(
            "parent",
            ShardPlace::Finished,
            vec![],
            Some(&checkpoint("9", true)),
            None,
            false,
        );
        let me = Some("me".to_string());
        orders.listed(
            "a",
            ShardPlace::Readable,
            vec!["parent".into()],
            None,
            me,
            true,
        );
        orders.listed(
            "b",
            ShardPlace::WaitingForParent,
            vec!["a".into()],
            None,
            None,
            false,
        );
        // Held by a peer: not this instance's to read.
        let peer = Some("peer".to_string());
        orders.listed("c", ShardPlace::Readable, vec![], None, peer, false);
        orders.listing_done(&["parent", "a", "b", "c"], false);
        assert_eq!(
            board.not_ready(),
            ["mapping orders: its shard leases have not been read yet"]
        );
        orders.listing_done(&["parent", "a", "b", "c"], true);
        assert_eq!(
            board.not_ready(),
            ["mapping orders: shard a has not been read yet"]
        );
        let reporter = orders.runner_started("a");
        // The runner answers each request with its machine's state.
        let (read, mut requests) = (reporter.read.clone(), reporter.requests);
        let answering = tokio::spawn(async move {
            while let Some(reply) = requests.recv().await {
                let _ = reply.send(serde_json::json!({
                    "phase": "reading",
                    "saved": checkpoint("12", false),
                    "iterator_age_ms": 40,
                    "millis_behind_latest": 0,
                    "retries_pending": 1,
                }));
            }
        });
        assert!(!board.report().await.ready);
        ShardReporter {
            read,
            requests: mpsc::channel(1).1,
        }
        .mark_read();
        assert!(board.not_ready().is_empty());
        let report = board.report().await;
        orders.runner_ended("a", None);
        answering.await.unwrap();
        assert!(report.ready);
        let rows: Vec<_> = report.mappings[0]
            .shards
            .iter()
            .map(|s| {
                (
                    s.shard_id.as_str(),
                    s.state.as_str(),
                    s.checkpoint.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("a", "reading", Some("12")),
                ("b", "waiting_for_parent", None),
                ("c", "held_by_peer", None),
                ("parent", "finished", Some("9")),
            ]
        );
        assert_eq!(
            report.mappings[0].shards[0].lease_owner.as_deref(),
            Some("me")
        );
        assert_eq!(
            report.mappings[0].shards[2].lease_owner.as_deref(),
            Some("peer")
        );
        assert_eq!(report.mappings[0].shards[0].iterator_age_ms, Some(40));
        assert_eq!(report.mappings[0].shards[0].retries_pending, Some(1));

        // A report survives a round trip through JSON (what `esm status` reads).
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&text).unwrap(), report);
    }
}
