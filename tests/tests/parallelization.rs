//! `parallelization_factor`: each shard's records go to N lanes by partition key, up to
//! N invocations per shard run at once, records of one partition key arrive in order,
//! and after a kill the checkpoint (the low-water mark across lanes) loses nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use esm_e2e::*;

const FACTOR: usize = 4;
const SHARDS: i32 = 2;
const KEYS: usize = 50;
const RECORDS: usize = 4_000;
const BATCH_SIZE: usize = 10;

fn mapping_extra() -> String {
    format!("batch_size = {BATCH_SIZE}\nparallelization_factor = {FACTOR}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn lanes_run_concurrently_and_keep_each_partition_key_in_order() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "lanes", SHARDS).await;
    let put = put_records(&client, &stream, 0, RECORDS, 100, KEYS).await;
    assert_eq!(put.len(), RECORDS);

    let dir = tempfile::tempdir().unwrap();
    let mut esm = Esm::start_mapping(
        dir.path(),
        "lanes",
        &stream,
        &mapping_extra(),
        &[("RECORDER_DELAY_MS", "50")],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(180),
        "all 4,000 records",
        |b| count_records(b) >= RECORDS,
    );
    let batches = esm.stop(Duration::from_secs(30));

    assert_lanes(&batches, &put, SHARDS as usize, FACTOR, BATCH_SIZE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_a_random_point_loses_nothing_and_redelivers_only_after_the_checkpoint() {
    let client = kinesis().await;
    for round in 1..=3 {
        let kill_at = random_in(500, 3_000);
        eprintln!("round {round}: kill after {kill_at} records");
        kill_and_restart(&client, round, kill_at).await;
    }
}

/// One round: a fresh stream, esm killed with SIGKILL once `kill_at` records were
/// seen, the durable checkpoints read, then esm restarted on the same state.
async fn kill_and_restart(client: &aws_sdk_kinesis::Client, round: usize, kill_at: usize) {
    let stream = TestStream::create(client, "lanes-kill", SHARDS).await;
    let put = put_records(client, &stream, 0, RECORDS, 100, KEYS).await;
    assert_eq!(put.len(), RECORDS);
    let expected = expected_by_shard(&put);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "lanes-kill", &stream, &mapping_extra());

    // Run 1: a slow handler (half of its time after the line was written, so a kill
    // often lands between "handled" and "checkpointed"), killed at the chosen point.
    let out1 = dir.path().join("run1.jsonl");
    let mut esm = Esm::start_with_out(
        dir.path(),
        &config,
        &out1,
        &[
            ("RECORDER_DELAY_MS", "20"),
            ("RECORDER_DELAY_AFTER_MS", "20"),
        ],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        &format!("{kill_at} records"),
        |b| count_records(b) >= kill_at,
    );
    esm.kill();
    let run1 = read_batches(&out1);
    let run1_seen: HashSet<String> = seqs(&run1).map(str::to_string).collect();
    assert!(
        run1_seen.len() < RECORDS,
        "round {round}: the first run delivered everything before the kill"
    );

    // The durable checkpoints at the kill (esm is dead, so its store is free).
    let stored = stored_checkpoints(&dir.path().join("state"), "lanes-kill").await;
    let checkpoint: BTreeMap<String, Option<String>> = expected
        .keys()
        .map(|shard| (shard.clone(), stored.get(shard).and_then(checkpoint_seq)))
        .collect();
    // Is `seq` after `shard`'s checkpoint (everything is, without one)?
    let after_checkpoint = |shard: &str, seq: &str| match &checkpoint[shard] {
        Some(c) => seq_cmp(seq, c) == std::cmp::Ordering::Greater,
        None => true,
    };

    // The checkpoint is a low-water mark: every record at or before it was handled
    // by run 1.
    for (shard, want) in &expected {
        for seq in want.iter().filter(|s| !after_checkpoint(shard, s)) {
            assert!(
                run1_seen.contains(seq),
                "round {round}, shard {shard}: the checkpoint {:?} passed record {seq}, \
                 which run 1 never handled",
                checkpoint[shard]
            );
        }
    }

    // Run 2: same config and state, no delay, until every record was seen.
    let out2 = dir.path().join("run2.jsonl");
    let run2 = rerun_until_all_seen(
        dir.path(),
        &config,
        &out2,
        &run1_seen,
        RECORDS,
        Duration::from_secs(120),
    );

    // Nothing lost, nothing foreign, each record from its shard.
    assert_shards_as_put(&run1, &put);
    assert_shards_as_put(&run2, &put);
    let mut all = run1_seen.clone();
    all.extend(seqs(&run2).map(str::to_string));
    let put_seqs: HashSet<String> = put.iter().map(|r| r.seq.clone()).collect();
    assert_eq!(
        all, put_seqs,
        "round {round}: the records seen are not the records put"
    );

    // Order per partition key within each run (and no repeats within a run).
    assert_order_per_key(&format!("round {round}, run 1"), &run1);
    assert_order_per_key(&format!("round {round}, run 2"), &run2);

    // Run 2 resumed right after each shard's checkpoint: it delivered exactly the
    // records after it. So the records delivered twice are all after the checkpoint.
    let seen2 = seen_by_shard(&run2);
    let mut twice = 0;
    for (shard, want) in &expected {
        let got: HashSet<&String> = seen2.get(shard).into_iter().flatten().collect();
        let after: HashSet<&String> = want.iter().filter(|s| after_checkpoint(shard, s)).collect();
        let mut twice_here = 0;
        for seq in got.iter().filter(|s| run1_seen.contains(s.as_str())) {
            assert!(
                after_checkpoint(shard, seq),
                "round {round}, shard {shard}: record {seq} was delivered twice but is at or \
                 before the durable checkpoint {:?}",
                checkpoint[shard]
            );
            twice_here += 1;
        }
        // Lanes start an invocation only within two batches per lane of the oldest
        // record not done, and each lane's batch in flight may reach past that: at
        // most 3 batches per lane past the checkpoint an invocation started under.
        // That checkpoint is durable or is the write in flight (group commit lets the
        // next batches start meanwhile), and the write in flight itself covers at most
        // that much past the durable one: so at most twice that past the durable one.
        let bound = 2 * (2 * BATCH_SIZE * FACTOR + FACTOR * BATCH_SIZE);
        assert!(
            twice_here <= bound,
            "round {round}, shard {shard}: {twice_here} records delivered twice, more than \
             the {bound} lanes may run ahead of the checkpoint"
        );
        twice += twice_here;
        assert_eq!(
            got, after,
            "round {round}, shard {shard}: run 2 did not deliver exactly the records after \
             the checkpoint {:?}",
            checkpoint[shard]
        );
    }
    eprintln!(
        "round {round}: run 1 saw {} records, checkpoints {checkpoint:?}, {twice} records \
         delivered again by run 2",
        run1_seen.len()
    );
}
