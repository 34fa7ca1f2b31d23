//! `esm checkpoint`: rewind a stopped mapping to a time or a sequence number, and the
//! next run handles those records again; `show` prints the new position; `set` while
//! esm runs is refused.

use std::process::Output;
use std::time::Duration;

use esm_e2e::*;

const MAPPING: &str = "rewound";

fn checkpoint(args: &[&str], config: &std::path::Path) -> Output {
    esm_checkpoint(MAPPING, args, config)
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "esm checkpoint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs esm on `config` until it has handled `count` records (in `out`), then stops
/// it; returns the sequence numbers it handled.
fn run_until(
    dir: &std::path::Path,
    config: &std::path::Path,
    out: &str,
    count: usize,
) -> Vec<String> {
    let mut esm = Esm::start_with_out(dir, config, &dir.join(out), &[]);
    wait_for(&mut esm, Duration::from_secs(60), "the records", |b| {
        count_records(b) >= count
    });
    // Let a few more polls pass: nothing beyond `count` may come.
    std::thread::sleep(Duration::from_secs(2));
    seqs(&esm.stop(Duration::from_secs(30)))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn set_rewinds_a_stopped_mapping_and_is_refused_while_esm_runs() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "rewind", 1).await;
    let first = put_records(&client, &stream, 0, 10, 64, 3).await;
    // A time between the two batches.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = put_records(&client, &stream, 10, 10, 64, 3).await;
    let all: Vec<String> = first.iter().chain(&second).map(|p| p.seq.clone()).collect();
    let shard = first[0].shard.clone();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), MAPPING, &stream, "batch_size = 5\n");

    // No run yet: nothing to show.
    let out = checkpoint(&["show"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no checkpoint store"));

    assert_eq!(run_until(dir.path(), &config, "run1.jsonl", 20), all);
    let shown = stdout(&checkpoint(&["show"], &config));
    let last = all.last().unwrap();
    assert!(
        shown
            .lines()
            .any(|l| l.contains(&shard) && l.contains(&format!("after {last}"))),
        "{shown}"
    );

    // Rewind to the time between the batches: the second batch is handled again,
    // the first is not.
    let at = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let moved = stdout(&checkpoint(&["set", "--at-timestamp", &at], &config));
    assert!(moved.contains(&format!("at {at}")), "{moved}");
    let shown = stdout(&checkpoint(&["show", "--shard", &shard], &config));
    assert!(
        shown
            .lines()
            .any(|l| l.contains(&shard) && l.contains(&format!("at {at}"))),
        "{shown}"
    );
    let second_seqs: Vec<String> = second.iter().map(|p| p.seq.clone()).collect();
    assert_eq!(
        run_until(dir.path(), &config, "run2.jsonl", 10),
        second_seqs
    );

    // --sequence SEQ: SEQ itself is the next record read.
    let from = &all[13];
    stdout(&checkpoint(
        &["set", "--shard", &shard, "--sequence", from],
        &config,
    ));
    assert_eq!(
        run_until(dir.path(), &config, "run3.jsonl", 7),
        all[13..].to_vec()
    );

    // While esm runs, set is refused and nothing moves.
    let mut esm = Esm::start_with_out(dir.path(), &config, &dir.path().join("run4.jsonl"), &[]);
    wait_for_log(&mut esm, Duration::from_secs(30), "reading shard", |log| {
        log.contains("reading shard")
    });
    let out = checkpoint(&["set", "--trim-horizon"], &config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by a running esm: stop it first"),
        "{stderr}"
    );
    esm.stop(Duration::from_secs(30));
    let shown = stdout(&checkpoint(&["show"], &config));
    assert!(shown.contains(&format!("after {last}")), "{shown}");

    // Bad arguments name what is wrong.
    let out = checkpoint(&["set", "--shard", "shardId-999", "--latest"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no shard shardId-999"));
    let out = checkpoint(&["set", "--sequence", "12ab"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a sequence number"));
}
