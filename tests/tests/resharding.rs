//! Resharding: a parent shard is delivered completely before any record of its
//! children, every record arrives exactly once, and children born while esm runs are
//! picked up without a restart.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use esm_e2e::*;

/// Merges the 2-shard stream into 1 and waits until ListShards shows the child of
/// both and the stream is active again; returns (parents, child).
async fn merge_into_one(client: &Client, stream: &str) -> (Vec<String>, String) {
    let mut parents: Vec<String> = list_shards(client, stream)
        .await
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect();
    parents.sort();
    assert_eq!(parents.len(), 2);
    update_shard_count(client, stream, 1).await;
    let never = format!("the merged child of {parents:?} never appeared");
    let child = wait_for_shards(client, stream, &never, |shards| {
        shards
            .iter()
            .find(|s| {
                let mut named: Vec<&str> = s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .collect();
                named.sort_unstable();
                named == parents
            })
            .map(|child| child.shard_id().to_string())
    })
    .await;
    (parents, child)
}

#[tokio::test(flavor = "multi_thread")]
async fn children_born_while_running_are_read_after_the_parent() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "reshard-live", 1).await;
    let mut put = put_300(&client, &stream, 0).await;

    let dir = tempfile::tempdir().unwrap();
    let mut esm = start(dir.path(), &stream);
    wait_for(&mut esm, Duration::from_secs(30), "the first 300", |b| {
        count_records(b) >= 300
    });

    let (parent, children) = split_in_two(&client, &stream).await;
    let more = put_300(&client, &stream, 300).await;
    let landed: HashSet<&str> = more.iter().map(|r| r.shard.as_str()).collect();
    assert!(
        landed.iter().all(|s| children.iter().any(|c| c == s)),
        "records put after the split landed on {landed:?}, not only on the children {children:?}"
    );
    put.extend(more);

    wait_for(
        &mut esm,
        Duration::from_secs(45),
        "all 600, children included, without a restart",
        |b| count_records(b) >= 600,
    );
    let batches = esm.stop(Duration::from_secs(30));
    assert_parent_first(&batches, &put, &parent, &children);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_split_before_the_start_is_read_before_its_children() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "reshard-before", 1).await;
    let mut put = put_300(&client, &stream, 0).await;
    let (parent, children) = split_in_two(&client, &stream).await;
    let more = put_300(&client, &stream, 300).await;
    let by_shard: BTreeMap<String, Vec<String>> = expected_by_shard(&more);
    assert_eq!(
        by_shard.keys().collect::<Vec<_>>(),
        children.iter().collect::<Vec<_>>(),
        "64 keys should land on both children"
    );
    put.extend(more);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = start(dir.path(), &stream);
    wait_for(&mut esm, Duration::from_secs(45), "all 600", |b| {
        count_records(b) >= 600
    });
    let batches = esm.stop(Duration::from_secs(30));
    assert_parent_first(&batches, &put, &parent, &children);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merged_child_waits_for_both_parents() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "reshard-merge", 2).await;
    let mut put = put_300(&client, &stream, 0).await;
    assert_eq!(expected_by_shard(&put).len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = start(dir.path(), &stream);
    wait_for(&mut esm, Duration::from_secs(30), "the first 300", |b| {
        count_records(b) >= 300
    });
    let (parents, child) = merge_into_one(&client, &stream).await;
    let more = put_300(&client, &stream, 300).await;
    assert!(more.iter().all(|r| r.shard == child));
    put.extend(more);

    wait_for(
        &mut esm,
        Duration::from_secs(45),
        "all 600, the merged child included",
        |b| count_records(b) >= 600,
    );
    let batches = esm.stop(Duration::from_secs(30));
    for parent in &parents {
        assert_parent_first(&batches, &put, parent, std::slice::from_ref(&child));
    }
}

/// Puts 300 records (numbered from `first`, 64 keys) and checks they all landed.
async fn put_300(client: &Client, stream: &str, first: usize) -> Vec<PutRecord> {
    let put = put_records(client, stream, first, 300, 100, 64).await;
    assert_eq!(put.len(), 300);
    put
}

/// Starts esm on the `reshard` mapping of `stream`, from the trim horizon.
fn start(dir: &Path, stream: &str) -> Esm {
    Esm::start_mapping(dir, "reshard", stream, "", &[])
}
