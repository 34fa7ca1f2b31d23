//! The behaviour every [`CheckpointStore`] shares, as one test both stores run:
//! create keeps the first row, takes and writes are fenced by the lease, a release
//! frees the shard at once.

use super::{CheckpointStore, ShardCheckpoint, StartAt, StoreError};
use crate::core::record::{Position, SequenceNumber};

fn at(sequence: &str) -> ShardCheckpoint {
    let mut state = ShardCheckpoint::new(StartAt::TrimHorizon);
    state.checkpoint = Some(Position::plain(SequenceNumber::parse(sequence).unwrap()));
    state
}

fn is_lost<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::LeaseLost { .. }))
}

/// Runs the shared rules against `store` (a fresh one: mapping names are fixed).
pub(crate) async fn check(store: &dyn CheckpointStore) {
    let (m, s) = ("conformance", "shardId-000000000001");

    // create: the first row stays.
    store
        .create(m, s, &ShardCheckpoint::new(StartAt::TrimHorizon), &[])
        .await
        .unwrap();
    store
        .create(
            m,
            s,
            &ShardCheckpoint::new(StartAt::Latest),
            &["shardId-000000000000".to_string()],
        )
        .await
        .unwrap();
    let rows = store.load(m).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[s].checkpoint.start, StartAt::TrimHorizon);
    assert_eq!(rows[s].lease.owner, None);

    // take: conditional on the lease as seen; the counter moves.
    let free = rows[s].lease.clone();
    let (a, row) = store.take(m, s, "a", &free).await.unwrap();
    assert_eq!(a.owner, "a");
    assert_eq!(row.lease.owner.as_deref(), Some("a"));
    assert_eq!(row.lease.counter, a.counter);
    assert!(
        is_lost(store.take(m, s, "b", &free).await),
        "a take from a stale view must fail"
    );

    // save and renew while held.
    store.save(m, s, &at("10"), &a).await.unwrap();
    store.renew(m, s, &a).await.unwrap();
    let seen = store.load(m).await.unwrap()[s].clone();
    assert_eq!(seen.checkpoint, at("10"));
    assert_eq!(seen.lease.owner.as_deref(), Some("a"));
    assert!(
        seen.lease.heartbeat > row.lease.heartbeat,
        "renew bumps the heartbeat"
    );

    // steal: b takes it from a; a can move nothing any more, in either direction.
    let (b, row) = store.take(m, s, "b", &seen.lease).await.unwrap();
    assert_eq!(
        row.checkpoint,
        at("10"),
        "a take returns the latest checkpoint"
    );
    assert!(b.counter > a.counter);
    assert!(is_lost(store.save(m, s, &at("20"), &a).await));
    assert!(is_lost(store.save(m, s, &at("5"), &a).await));
    assert!(is_lost(store.renew(m, s, &a).await));
    assert!(is_lost(store.release(m, s, &a).await));
    assert_eq!(store.load(m).await.unwrap()[s].checkpoint, at("10"));

    // release: the shard is free, and b's lease writes nothing more.
    store.save(m, s, &at("30"), &b).await.unwrap();
    store.release(m, s, &b).await.unwrap();
    let released = store.load(m).await.unwrap()[s].clone();
    assert_eq!(released.lease.owner, None);
    assert_eq!(released.checkpoint, at("30"));
    assert!(is_lost(store.save(m, s, &at("40"), &b).await));
    let (c, _) = store.take(m, s, "c", &released.lease).await.unwrap();
    assert!(c.counter > b.counter);

    // A finished shard keeps its flag.
    let mut done = at("50");
    done.finished = true;
    store.save(m, s, &done, &c).await.unwrap();
    assert!(store.load(m).await.unwrap()[s].checkpoint.finished);
}
