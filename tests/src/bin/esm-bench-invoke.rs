//! Invocation overhead: a no-op handler invoked in-process vs as a worker process
//! over esm's Lambda Runtime API host, with no stream and no network beyond
//! loopback. Prints invocations per second and p50/p99 latency per invocation.
//!
//! `cargo run --release -p esm-e2e --bin esm-bench-invoke` (after building
//! `plain-lambda`, which without `PLAIN_OUT` is a no-op `lambda_runtime` handler;
//! `scripts/bench` does both).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use esm::invoke::runtime_api::{RuntimeApiInvoker, WorkerSettings};
use esm::invoke::{Invocation, Invoker, Outcome, Registry};
use esm_e2e::bin_path;
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Invocations per scenario.
    #[arg(long, default_value_t = 5_000)]
    invocations: usize,
    /// Records in each event (100 B each).
    #[arg(long, default_value_t = 10)]
    records: usize,
}

fn event(records: usize) -> Bytes {
    let record = r#"{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"key-1","sequenceNumber":"49590338271490256608559692538361571095921575989136588898","data":"eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4","approximateArrivalTimestamp":1545084650.987},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:49590338271490256608559692538361571095921575989136588898","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/bench"}"#;
    let body = vec![record; records].join(",");
    Bytes::from(format!(r#"{{"Records":[{body}]}}"#))
}

/// Runs `total` invocations from `callers` concurrent callers (each waits for its
/// answer before the next, as a shard does); returns the wall time and every latency.
async fn measure(
    invoker: Arc<dyn Invoker>,
    payload: Bytes,
    total: usize,
    callers: usize,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (invoker, payload) = (invoker.clone(), payload.clone());
        let count = total / callers + usize::from(c < total % callers);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                let outcome = invoker
                    .invoke(Invocation {
                        payload: esm::invoke::Payload::Json(payload.clone()),
                        request_id: format!("bench-{c}-{i}"),
                        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:noop".into(),
                        timeout: Duration::from_secs(30),
                        deadline: SystemTime::now() + Duration::from_secs(30),
                    })
                    .await;
                assert!(
                    matches!(outcome, Outcome::Returned { .. }),
                    "the no-op handler failed: {outcome:?}"
                );
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("caller task"));
    }
    (started.elapsed(), all)
}

fn report(name: &str, callers: usize, (wall, mut latencies): (Duration, Vec<Duration>)) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{name:<12} callers={callers}: {:>8.0} invocations/s, p50 {:>7.1} µs, p99 {:>7.1} µs",
        latencies.len() as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let payload = event(args.records);
    println!(
        "esm invocation benchmark: no-op handler, {} invocations per row, events of {} records ({} bytes)",
        args.invocations,
        args.records,
        payload.len()
    );

    async fn noop(_: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
        Ok(())
    }
    let in_process: Arc<dyn Invoker> = Arc::new(
        Registry::new()
            .handler("noop", service_fn(noop))
            .invoker("noop")
            .expect("registered"),
    );

    let shutdown = CancellationToken::new();
    let workers = 4;
    let runtime_api = RuntimeApiInvoker::start(
        WorkerSettings {
            mapping: "bench".into(),
            function_name: "noop".into(),
            region: "us-east-1".into(),
            command: vec![bin_path("plain-lambda").display().to_string()],
            concurrency: workers,
            timeout: Duration::from_secs(30),
            memory_size: 128,
            handler: "noop".into(),
            environment: BTreeMap::new(),
            task_root: std::env::temp_dir(),
            accept_timeout: Duration::from_secs(30),
        },
        shutdown.clone(),
    );
    let runtime_api_dyn: Arc<dyn Invoker> = Arc::new(runtime_api.clone());

    // Warm up both (workers start, caches fill).
    measure(in_process.clone(), payload.clone(), 200, 1).await;
    measure(
        runtime_api_dyn.clone(),
        payload.clone(),
        200,
        workers as usize,
    )
    .await;

    for callers in [1usize, 4] {
        report(
            "in-process",
            callers,
            measure(
                in_process.clone(),
                payload.clone(),
                args.invocations,
                callers,
            )
            .await,
        );
        report(
            "runtime API",
            callers,
            measure(
                runtime_api_dyn.clone(),
                payload.clone(),
                args.invocations,
                callers,
            )
            .await,
        );
    }
    shutdown.cancel();
    runtime_api.stopped().await;
}
