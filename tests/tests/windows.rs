//! Tumbling windows end to end: the `tumbling-window` example's per-key totals, as
//! its final invocation of each window sees them, equal what was put into that window
//! of that shard, with and without a kill -9 in the middle of a window.

use std::collections::BTreeSet;
use std::time::Duration;

use esm_e2e::*;

const SHARDS: i32 = 2;
const WINDOW_MS: i64 = 5_000;
const KEYS: usize = 8;

fn mapping_extra() -> String {
    "batch_size = 20\ntumbling_window_in_seconds = 5\n".to_string()
}

fn function() -> &'static str {
    "function = \"windows\"\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn final_invocations_carry_each_windows_exact_totals() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "windows", SHARDS).await;
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("windows.jsonl");
    let config = write_config_function(
        dir.path(),
        "windows",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        &mapping_extra(),
        function(),
    );
    let windows_env = windows.display().to_string();
    let esm = Esm::start(dir.path(), &config, &[("RECORDER_WINDOWS", &windows_env)]);
    // 60 s of 5 s windows on 2 shards: at least 20 windows with records.
    check_window_run(
        &client,
        &stream,
        esm,
        &windows,
        Duration::from_secs(60),
        KEYS,
        WINDOW_MS,
        2 * 10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_in_the_middle_of_a_window_keeps_the_totals_exact() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "windows-kill", SHARDS).await;
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("windows.jsonl");
    let config = write_config_function(
        dir.path(),
        "windows-kill",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        &mapping_extra(),
        function(),
    );
    let windows_env = windows.display().to_string();
    let env = [("RECORDER_WINDOWS", windows_env.as_str())];
    let mut esm = Some(Esm::start(dir.path(), &config, &env));

    // Kill esm in the middle of a window, part way through the traffic, and start it
    // again on the same state.
    let kill_after = random_in(40, 100);
    let put = window_traffic(&client, &stream, Duration::from_secs(30), KEYS, |n| {
        if n >= kill_after {
            if let Some(running) = esm.take() {
                running.kill();
            }
        }
    })
    .await;
    let killed = esm.is_none();
    assert!(killed, "the traffic ended before the kill");
    let before = read_window_lines(&windows);
    let mut esm = Esm::start(dir.path(), &config, &env);
    let lines = wait_for_final_invocations(&mut esm, &windows, &put, WINDOW_MS);
    esm.stop(Duration::from_secs(30));

    assert_window_totals(&put, &lines, WINDOW_MS);
    // The window open at the kill was read again from its start: some record was
    // seen by both runs.
    let first_run: BTreeSet<&str> = before
        .iter()
        .flat_map(|l| &l.records)
        .map(|r| r.seq.as_str())
        .collect();
    let again = lines[before.len()..]
        .iter()
        .flat_map(|l| &l.records)
        .filter(|r| first_run.contains(r.seq.as_str()))
        .count();
    eprintln!(
        "kill after {} records: {} invocations before, {} after, {again} records read again",
        kill_after,
        before.len(),
        lines.len() - before.len()
    );
    assert!(again > 0, "nothing was read again after the kill");
}
