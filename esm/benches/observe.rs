//! What watching esm costs: the metric updates made per invocation, one `/metrics`
//! scrape of a process with 1, 100 and 1,000 shards, and one shard's `/status`
//! snapshot (its state machine serialized to JSON, with 4 lanes holding batches).
//! Run with `cargo bench -p esm --bench observe`; prints one line per scenario, best
//! of 3 runs; figures go in the README.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use esm::core::batch::BatchLimits;
use esm::core::checkpoint::{ShardCheckpoint, StartAt};
use esm::core::event::{EventEncoder, EventSource};
use esm::core::failure::{FailureRules, InvocationOutcome};
use esm::core::partition::LaneRouter;
use esm::core::record::{Position, Record, SequenceNumber};
use esm::core::shard::{Env, Input, Page, ShardMachine, ShardSettings};
use esm::metrics::Metrics;

fn best_of_3(mut f: impl FnMut() -> Duration) -> Duration {
    (0..3).map(|_| f()).min().unwrap_or_default()
}

/// The updates `esm run` makes per invocation: records invoked, batch size,
/// concurrency in and out, duration, the outcome, failed records, and the shard's two
/// gauges.
fn per_invocation(n: u32) -> Duration {
    let metrics = Metrics::new();
    let m = metrics.mapping("orders");
    let shard = m.shard("shardId-000000000000");
    let started = Instant::now();
    for i in 0..n {
        m.invoked_events.add(100);
        m.batch_records.observe(100.0);
        m.concurrent_invocations.inc();
        m.concurrent_invocations.dec();
        m.invocation_duration.observe(0.05);
        m.invocations.count(InvocationOutcome::Ok);
        m.failed_invoke_events.add(0);
        shard.iterator_age_ms.set(i64::from(i % 1000));
        shard.millis_behind_latest.set(0);
    }
    started.elapsed()
}

/// One scrape of a process with one mapping of `shards` shards.
fn scrape(shards: usize) -> (Duration, usize) {
    let metrics = Metrics::new();
    let m = metrics.mapping("orders");
    let gauges: Vec<_> = (0..shards)
        .map(|i| m.shard(&format!("shardId-{i:012}")))
        .collect();
    for (i, g) in gauges.iter().enumerate() {
        g.iterator_age_ms.set(i as i64);
    }
    let mut bytes = 0;
    let took = best_of_3(|| {
        let started = Instant::now();
        bytes = black_box(metrics.encode()).len();
        started.elapsed()
    });
    (took, bytes)
}

/// One shard's `/status` snapshot, with 4 lanes each holding a batch of 100 records.
fn snapshot() -> (Duration, usize) {
    let settings = ShardSettings {
        shard_id: "shardId-000000000000".into(),
        limits: BatchLimits::new(100, Duration::ZERO),
        rules: FailureRules::default(),
        router: LaneRouter::new(0, u128::MAX, 4),
        tumbling: None,
        filter: Default::default(),
        encoder: EventEncoder::new(&EventSource {
            stream_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/bench".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/esm".into(),
            shard_id: "shardId-000000000000".into(),
        }),
        has_destination: false,
        deaggregate: false,
        destination_backoff: ShardSettings::DESTINATION_BACKOFF,
        store_backoff: ShardSettings::STORE_BACKOFF,
    };
    let mut machine = ShardMachine::new(settings, ShardCheckpoint::new(StartAt::TrimHorizon));
    let records = (0..800)
        .map(|i| Record {
            position: Position::plain(
                SequenceNumber::parse(format!(
                    "4959033827149025660855969253836157109592157598{i:010}"
                ))
                .unwrap_or_else(|| unreachable!()),
            ),
            partition_key: format!("key-{i}"),
            explicit_hash_key: None,
            data: Bytes::from_static(b"{\"n\":1}"),
            approximate_arrival: Utc
                .timestamp_millis_opt(1_700_000_000_000)
                .single()
                .unwrap_or_default(),
        })
        .collect();
    let mut env = Env::new(Instant::now(), Utc::now(), 1);
    machine.on(
        Input::Page(Page {
            records,
            millis_behind_latest: Some(0),
            ..Page::default()
        }),
        &mut env,
    );
    let mut bytes = 0;
    let took = best_of_3(|| {
        let started = Instant::now();
        for _ in 0..1000 {
            let value = black_box(serde_json::to_value(machine.state()).unwrap_or_default());
            bytes = value.to_string().len();
        }
        started.elapsed() / 1000
    });
    (took, bytes)
}

fn main() {
    println!("esm observability benchmark (in-process); best of 3 runs each");
    let n = 1_000_000;
    let took = best_of_3(|| per_invocation(n));
    println!(
        "metric updates per invocation (9 updates): {:.0} ns",
        took.as_nanos() as f64 / f64::from(n)
    );
    for shards in [1, 100, 1000] {
        let (took, bytes) = scrape(shards);
        println!(
            "/metrics scrape, 1 mapping × {shards} shards: {:.2} ms, {} KiB",
            took.as_secs_f64() * 1e3,
            bytes / 1024
        );
    }
    let (took, bytes) = snapshot();
    println!(
        "/status snapshot of one shard (4 lanes with batches): {:.1} µs, {bytes} bytes of JSON",
        took.as_secs_f64() * 1e6
    );
}
