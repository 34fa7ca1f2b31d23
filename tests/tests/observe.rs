//! Watching a running esm as users do: `/metrics` scraped during a run, `/readyz`
//! before and after the first read, `/status` and `esm status` with every shard's
//! checkpoint, and the server bound to loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use esm_e2e::observe::{add_server, http_get, metric, scrape, server_addr, Sample};
use esm_e2e::proxy::{FaultProxy, Faults};
use esm_e2e::*;

const MAPPING: &str = "observed";

/// Every SPEC §6 metric, with the label names of its samples (a histogram by its `_count`).
const METRICS: &[(&str, &[&str])] = &[
    ("esm_iterator_age_milliseconds", &["mapping", "shard"]),
    ("esm_millis_behind_latest", &["mapping", "shard"]),
    ("esm_polled_events_total", &["mapping"]),
    ("esm_filtered_out_events_total", &["mapping"]),
    ("esm_invoked_events_total", &["mapping"]),
    ("esm_failed_invoke_events_total", &["mapping"]),
    ("esm_dropped_events_total", &["mapping", "reason"]),
    (
        "esm_on_failure_destination_delivered_events_total",
        &["mapping"],
    ),
    ("esm_destination_delivery_failures_total", &["mapping"]),
    ("esm_get_records_total", &["mapping", "outcome"]),
    ("esm_invocations_total", &["mapping", "outcome"]),
    ("esm_invocation_duration_seconds_count", &["mapping"]),
    ("esm_batch_records_count", &["mapping"]),
    ("esm_concurrent_invocations", &["mapping"]),
    ("esm_fanout_resubscriptions_total", &["mapping", "reason"]),
    ("esm_deaggregation_failures_total", &["mapping"]),
    ("esm_leases_held", &["mapping"]),
    ("esm_lease_events_total", &["mapping", "event"]),
];

/// Each shard's iterator age, from a scrape.
fn ages(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == "esm_iterator_age_milliseconds")
        .map(|s| (s.labels["shard"].clone(), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_readiness_and_status_follow_a_run() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "observe", 2).await;
    let upstream = std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("scripts/test sets it");
    let proxy = FaultProxy::start(&upstream, Faults::default()).await;
    let shard_ids: Vec<String> = list_shards(&client, &stream)
        .await
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    proxy.hold_get_records();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), MAPPING, &stream, "batch_size = 10\n");
    add_server(&config, "127.0.0.1:0");
    let slow = dir.path().join("slow");
    std::fs::write(&slow, "").unwrap();
    let (url, slow_path) = (proxy.url(), slow.display().to_string());
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[
            ("AWS_ENDPOINT_URL_KINESIS", url.as_str()),
            ("RECORDER_DELAY_MS", "1000"),
            ("RECORDER_SLOW_WHILE", slow_path.as_str()),
        ],
    );
    let addr = server_addr(&mut esm);

    // The server listens on loopback only, as configured (port 0: a free port).
    let listening = listening_addresses(esm.pid());
    assert!(
        !listening.is_empty() && listening.iter().all(|a| a.starts_with("127.0.0.1:")),
        "esm listens on {listening:?}"
    );
    assert_eq!(listening, [addr.to_string()]);
    assert_eq!(http_get(addr, "/healthz").0, 200);

    // Listed, but no shard read yet: not ready, and /readyz says which shards.
    let deadline = Instant::now() + Duration::from_secs(30);
    let not_ready = loop {
        let (code, body) = http_get(addr, "/readyz");
        assert_eq!(code, 503, "ready before any read: {body}");
        if body.contains("has not been read yet") {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz says: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for shard in &shard_ids {
        assert!(not_ready.contains(shard.as_str()), "{not_ready}");
    }
    let (_, status) = http_get(addr, "/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["ready"], false);
    assert!(status["mappings"][0]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["read"] == false));

    // The first reads make it ready.
    proxy.release_get_records();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", esm.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A slow handler (1 s per batch of 10, so 20 records/s over two shards) while 50
    // records/s arrive for 6 s: the iterator age rises.
    let mut put = Vec::new();
    let mut rising: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..6 {
        put.extend(put_records(&client, &stream, round * 50, 50, 64, 20).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (shard, age) in ages(&scrape(addr)) {
            rising.entry(shard).or_default().push(age);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (shard, age) in ages(&scrape(addr)) {
            rising.entry(shard).or_default().push(age);
        }
    }
    assert_eq!(
        rising.keys().collect::<BTreeSet<_>>(),
        shard_ids.iter().collect::<BTreeSet<_>>()
    );
    for (shard, samples) in &rising {
        let peak = samples.iter().copied().fold(0.0, f64::max);
        let early = samples[..4].iter().copied().fold(0.0, f64::max);
        assert!(
            peak >= 2_000.0 && peak > early,
            "shard {shard}: the iterator age did not rise while the handler was slow: {samples:?}"
        );
    }

    // The handler catches up: every record arrives, and the age falls to 0.
    std::fs::remove_file(&slow).unwrap();
    wait_for(&mut esm, Duration::from_secs(120), "all 300 records", |b| {
        count_records(b) >= 300
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = ages(&scrape(addr));
        if now.len() == 2 && now.values().all(|age| *age == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the iterator age did not fall to 0 after catching up: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The counts match what was put and what the handler saw.
    let samples = scrape(addr);
    let of = |name: &str| metric(&samples, name, &[("mapping", MAPPING)]);
    let batches = read_batches(&esm.out);
    assert_eq!(of("esm_polled_events_total"), 300.0);
    assert_eq!(of("esm_invoked_events_total"), 300.0);
    assert_eq!(of("esm_failed_invoke_events_total"), 0.0);
    assert_eq!(of("esm_filtered_out_events_total"), 0.0);
    assert_eq!(
        metric(
            &samples,
            "esm_invocations_total",
            &[("mapping", MAPPING), ("outcome", "ok")]
        ),
        batches.len() as f64
    );
    assert_eq!(
        of("esm_invocation_duration_seconds_count"),
        batches.len() as f64
    );
    assert_eq!(of("esm_batch_records_sum"), 300.0);
    assert_eq!(of("esm_concurrent_invocations"), 0.0);
    assert!(
        metric(
            &samples,
            "esm_get_records_total",
            &[("mapping", MAPPING), ("outcome", "ok")]
        ) > 0.0
    );

    // Every SPEC §6 metric of a mapping like this one, with its label names.
    for (name, labels) in METRICS {
        let found: Vec<&Sample> = samples.iter().filter(|s| s.name == *name).collect();
        assert!(!found.is_empty(), "no {name} in the scrape");
        for s in found {
            let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            let mut expected = labels.to_vec();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{name}'s labels");
            assert_eq!(s.labels["mapping"], MAPPING);
        }
    }
    let outcomes: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "esm_invocations_total")
        .map(|s| s.labels["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        BTreeSet::from([
            "ok",
            "partial_failure",
            "function_error",
            "timeout",
            "crash",
            "throttled"
        ])
    );

    // /status and `esm status` show every shard with its checkpoint: the last record
    // put to it, once everything is handled.
    let last_put: BTreeMap<String, String> = expected_by_shard(&put)
        .into_iter()
        .map(|(shard, seqs)| (shard, seqs.last().cloned().unwrap()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shards = loop {
        let (code, body) = http_get(addr, "/status");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let shards: BTreeMap<String, (String, Option<String>)> = status["mappings"][0]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["shard_id"].as_str().unwrap().to_string(),
                    (
                        s["state"].as_str().unwrap().to_string(),
                        s["checkpoint"].as_str().map(str::to_string),
                    ),
                )
            })
            .collect();
        let done = shards
            .iter()
            .all(|(id, (_, checkpoint))| checkpoint.as_ref() == last_put.get(id));
        if done && status["ready"] == true {
            assert!(status["mappings"][0]["shards"][0]["machine"]["lanes"].is_array());
            break shards;
        }
        assert!(Instant::now() < deadline, "/status: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shards.len(), 2);
    assert!(shards.values().all(|(state, _)| state == "reading"));

    // `esm status` asks the server the config names: the port esm chose.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:0", &addr.to_string())).unwrap();
    let table = esm_status(&config);
    assert!(table.status.success(), "esm status: {table:?}");
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        text.starts_with(&format!("from the running esm at http://{addr}/status")),
        "{text}"
    );
    for (shard, seq) in &last_put {
        assert!(
            text.lines().any(|l| l.contains(shard.as_str())
                && l.contains("reading")
                && l.contains(seq.as_str())),
            "no row for {shard} at {seq} in:\n{text}"
        );
    }

    // Stopped: `esm status` reads the store instead, with the same checkpoints.
    esm.stop(Duration::from_secs(30));
    let table = esm_status(&config);
    assert!(table.status.success(), "esm status: {table:?}");
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(text.starts_with("from the checkpoint store at"), "{text}");
    for (shard, seq) in &last_put {
        assert!(
            text.lines().any(|l| l.contains(shard.as_str())
                && l.contains("stopped")
                && l.contains(seq.as_str())),
            "no row for {shard} at {seq} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn esm_status_says_why_it_has_nothing_to_show() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), MAPPING, "nowhere", "");

    // No store yet.
    let out = esm_status(&config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("there is no checkpoint store at"),
        "{stderr}"
    );

    // The store is held (as a running esm holds it) and there is no [server] to ask.
    let store = esm::store::local::LocalStore::open(&dir.path().join("state")).unwrap();
    let out = esm_status(&config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("is in use by a running esm")
            && stderr.contains("the config has no [server] to ask it"),
        "{stderr}"
    );

    // [server] names a port no one answers on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    add_server(&config, &format!("127.0.0.1:{port}"));
    let out = esm_status(&config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains(&format!(
            "the running esm at http://127.0.0.1:{port}/status did not answer"
        )) && stderr.contains("is in use by a running esm"),
        "{stderr}"
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_failures_count_the_records_named_not_the_remainder() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "observe-partial", 1).await;
    put_records(&client, &stream, 0, 20, 64, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        MAPPING,
        &stream,
        "batch_size = 20\nmaximum_retry_attempts = 1\n\
         function_response_types = [\"ReportBatchItemFailures\"]\n",
    );
    add_server(&config, "127.0.0.1:0");
    // Record 5 is poison: the handler handles 0–4 and names record 5 alone in
    // batchItemFailures; the retry of 5–19 names it again, and 5–19 are dropped.
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[("RECORDER_POISON", "\"n\":5,"), ("RECORDER_REPORT", "1")],
    );
    let addr = server_addr(&mut esm);
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape(addr);
        let dropped = metric(
            &samples,
            "esm_dropped_events_total",
            &[("mapping", MAPPING), ("reason", "retries_exhausted")],
        );
        if dropped >= 15.0 {
            break samples;
        }
        esm.assert_running();
        assert!(
            Instant::now() < deadline,
            "nothing dropped: {}",
            esm.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let of = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("mapping", MAPPING)];
        all.extend_from_slice(labels);
        metric(&samples, name, &all)
    };
    assert_eq!(of("esm_polled_events_total", &[]), 20.0);
    assert_eq!(
        of("esm_invoked_events_total", &[]),
        35.0,
        "20, then 15 again"
    );
    assert_eq!(
        of("esm_failed_invoke_events_total", &[]),
        2.0,
        "the record named, once per invocation"
    );
    assert_eq!(
        of("esm_invocations_total", &[("outcome", "partial_failure")]),
        2.0
    );
    assert_eq!(of("esm_invocations_total", &[("outcome", "ok")]), 0.0);
    assert_eq!(
        of(
            "esm_dropped_events_total",
            &[("reason", "retries_exhausted")]
        ),
        15.0
    );
    esm.stop(Duration::from_secs(30));
}
