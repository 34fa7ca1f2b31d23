//! Tumbling windows end to end: the `tumbling-window` example's per-key totals, as
//! its final invocation of each window sees them, equal what was put into that window
//! of that shard, with and without a kill -9 in the middle of a window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use esm_e2e::*;

const SHARDS: i32 = 2;
const WINDOW_MS: i64 = 5_000;
const KEYS: usize = 8;

/// Per (shard, window start): records per partition key.
type Totals = BTreeMap<(String, String), BTreeMap<String, u64>>;

fn mapping_extra() -> String {
    "batch_size = 20\ntumbling_window_in_seconds = 5\n".to_string()
}

fn function() -> &'static str {
    "function = \"windows\"\n"
}

fn window_start(arrival_ms: i64) -> String {
    let start = arrival_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
    Utc.timestamp_millis_opt(start).unwrap().to_rfc3339()
}

/// Puts a few records every 250 ms for `duration`; returns them all.
async fn traffic(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    duration: Duration,
    mut during: impl FnMut(usize),
) -> Vec<PutRecord> {
    let mut put = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let n = put.len();
        put.extend(put_records(client, stream, n, 5, 50, KEYS).await);
        during(put.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    put
}

/// What the records put add up to per shard and window, by their arrival as the
/// invocations showed it (every record put must have been seen).
fn expected_totals(put: &[PutRecord], lines: &[WindowLine]) -> Totals {
    let arrival: HashMap<&str, i64> = lines
        .iter()
        .flat_map(|l| &l.records)
        .map(|r| (r.seq.as_str(), r.arrival_ms))
        .collect();
    let mut totals = Totals::new();
    for record in put {
        let Some(ms) = arrival.get(record.seq.as_str()) else {
            panic!(
                "record {} of {} never reached the handler",
                record.seq, record.shard
            );
        };
        *totals
            .entry((record.shard.clone(), window_start(*ms)))
            .or_default()
            .entry(record.key.clone())
            .or_default() += 1;
    }
    totals
}

/// The totals the last final invocation of each (shard, window) saw.
fn final_totals(lines: &[WindowLine]) -> Totals {
    let mut totals = Totals::new();
    for line in lines.iter().filter(|l| l.is_final) {
        totals.insert(
            (line.shard.clone(), line.start.clone()),
            line.state_out.clone(),
        );
    }
    totals
}

/// Waits until every (shard, window) that received records has had a final
/// invocation.
fn wait_for_finals(esm: &mut Esm, path: &Path, put: &[PutRecord]) -> Vec<WindowLine> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        esm.assert_running();
        let lines = read_window_lines(path);
        let seen: BTreeSet<&str> = lines
            .iter()
            .flat_map(|l| &l.records)
            .map(|r| r.seq.as_str())
            .collect();
        if put.iter().all(|r| seen.contains(r.seq.as_str())) {
            let expected = expected_totals(put, &lines);
            let finals = final_totals(&lines);
            if expected.keys().all(|k| finals.contains_key(k)) {
                return lines;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every window had its final invocation; log:\n{}",
            esm.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let mut esm = Esm::start(dir.path(), &config, &[("RECORDER_WINDOWS", &windows_env)]);

    let put = traffic(&client, &stream, Duration::from_secs(60), |_| {}).await;
    let lines = wait_for_finals(&mut esm, &windows, &put);
    esm.stop(Duration::from_secs(30));

    let expected = expected_totals(&put, &lines);
    let finals = final_totals(&lines);
    eprintln!(
        "{} records, {} invocations, {} windows with records, {} final invocations",
        put.len(),
        lines.len(),
        expected.len(),
        lines.iter().filter(|l| l.is_final).count()
    );
    assert!(
        expected.len() >= 2 * 10,
        "fewer windows than 60 s of traffic makes"
    );
    for (key, totals) in &expected {
        assert_eq!(finals.get(key), Some(totals), "window {key:?}");
    }
    // Every invocation of a window was passed the state the previous one returned.
    let mut last_state: HashMap<(String, String), BTreeMap<String, u64>> = HashMap::new();
    for line in &lines {
        let key = (line.shard.clone(), line.start.clone());
        let want = last_state.get(&key).cloned().unwrap_or_default();
        assert_eq!(line.state_in, want, "state passed into {key:?}");
        last_state.insert(key, line.state_out.clone());
    }
    // A batch never spans two windows.
    for line in &lines {
        assert!(
            line.records
                .iter()
                .all(|r| window_start(r.arrival_ms) == line.start),
            "a batch of {} spans windows",
            line.start
        );
    }
    // The last window of each shard ended without a new record: by a read issued
    // after its end that found the shard caught up, with a final invocation of no
    // records.
    for shard in expected.keys().map(|(s, _)| s).collect::<BTreeSet<_>>() {
        let last = expected.keys().filter(|(s, _)| s == shard).max().unwrap();
        assert!(
            lines.iter().any(|l| l.is_final
                && l.records.is_empty()
                && (&l.shard, &l.start) == (&last.0, &last.1)),
            "shard {shard}: the last window had no final invocation without records"
        );
    }
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
    let put = traffic(&client, &stream, Duration::from_secs(30), |n| {
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
    let lines = wait_for_finals(&mut esm, &windows, &put);
    esm.stop(Duration::from_secs(30));

    let expected = expected_totals(&put, &lines);
    let finals = final_totals(&lines);
    for (key, totals) in &expected {
        assert_eq!(finals.get(key), Some(totals), "window {key:?}");
    }
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
