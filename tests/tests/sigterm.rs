//! SIGTERM: esm lets the batch in flight finish, checkpoints it, exits 0; a restart
//! resumes right after the checkpoint and delivers nothing twice.

use std::collections::HashSet;
use std::time::Duration;

use esm_e2e::*;

const RECORDS: usize = 400;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_checkpoints_the_last_batch_and_a_restart_resumes_after_it() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "sigterm", 2).await;
    let put = put_records(&client, &stream, 0, RECORDS, 100, 16).await;
    assert_eq!(put.len(), RECORDS);
    let expected = expected_by_shard(&put);
    assert_eq!(expected.len(), 2, "16 keys should land on both shards");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "sigterm", &stream, "batch_size = 20\n");

    // First run: 200 ms per invocation; SIGTERM once both shards had a few batches.
    let out1 = dir.path().join("run1.jsonl");
    let mut esm = Esm::start_with_out(dir.path(), &config, &out1, &[("RECORDER_DELAY_MS", "200")]);
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "two batches on each shard",
        |b| {
            let per_shard = seen_by_shard(b);
            per_shard.len() == 2 && per_shard.values().all(|s| s.len() >= 40)
        },
    );
    let log = esm.log.clone();
    let status = esm.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "esm exited with {status} after SIGTERM; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let run1 = read_batches(&out1);
    let seen1 = seen_by_shard(&run1);
    assert!(
        count_records(&run1) < RECORDS,
        "the first run delivered everything before SIGTERM; nothing left to test"
    );

    // The stored checkpoint of each shard is the last record of the last batch the
    // handler finished on it.
    let state_dir = dir.path().join("state");
    let stored = stored_checkpoints(&state_dir, "sigterm").await;
    for (shard, want) in &expected {
        let s1 = seen1.get(shard).cloned().unwrap_or_default();
        assert_eq!(
            s1[..],
            want[..s1.len()],
            "shard {shard}: run 1 is not the start of the shard, in order, once each"
        );
        let state = stored
            .get(shard)
            .unwrap_or_else(|| panic!("no stored state for {shard}: {stored:?}"));
        assert_eq!(
            checkpoint_seq(state),
            s1.last().cloned(),
            "shard {shard}: the checkpoint is not the last record the handler finished"
        );
    }

    // Second run: resumes right after each checkpoint, delivers the rest once.
    let out2 = dir.path().join("run2.jsonl");
    let mut esm = Esm::start_with_out(dir.path(), &config, &out2, &[]);
    let left = RECORDS - count_records(&run1);
    wait_for(&mut esm, Duration::from_secs(60), "the rest", |b| {
        count_records(b) >= left
    });
    let run2 = esm.stop(Duration::from_secs(30));
    let seen2 = seen_by_shard(&run2);
    for (shard, want) in &expected {
        let done = seen1.get(shard).map_or(0, Vec::len);
        let s2 = seen2.get(shard).cloned().unwrap_or_default();
        assert_eq!(
            s2.first(),
            want.get(done),
            "shard {shard}: run 2 did not start right after the checkpoint"
        );
        assert_eq!(
            s2[..],
            want[done..],
            "shard {shard}: run 2 did not deliver exactly the rest, in order"
        );
    }
    let all: HashSet<&str> = seqs(run1.iter().chain(&run2)).collect();
    assert_eq!(all.len(), RECORDS);
    assert_eq!(count_records(&run1) + count_records(&run2), RECORDS);

    // And after the second SIGTERM, each checkpoint is the shard's last record.
    let stored = stored_checkpoints(&state_dir, "sigterm").await;
    for (shard, want) in &expected {
        assert_eq!(
            stored.get(shard).and_then(checkpoint_seq).as_ref(),
            want.last(),
            "shard {shard}: final checkpoint"
        );
    }
}
