//! End-to-end drain rate: N records on S shards of a fresh stream in the local
//! emulator, read by esm (in this process) into a no-op handler that counts them.
//!
//! `cargo run -p esm-e2e --bin esm-bench-drain -- --records 10000 --shards 3`
//! (the emulator must be up: `scripts/bench` does it all). Prints the time to put the
//! records, the time from start until the handler has seen every one, and the rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use esm_e2e::{kinesis, put_records, stream_arn, TestStream};
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Records to put and drain.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Shards of the stream.
    #[arg(long, default_value_t = 3)]
    shards: i32,
    /// `batch_size` of the mapping.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Payload size of each record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// esm's `[store] commit_interval_ms` (default: esm's default).
    #[arg(long)]
    commit_interval_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let client = kinesis().await;
    let stream = TestStream::create(&client, "bench", args.shards).await;
    let put_started = Instant::now();
    put_records(&client, &stream, 0, args.records, args.size, 64).await;
    let put_time = put_started.elapsed();

    let state = tempfile::tempdir()?;
    let config = esm::config::parse(&format!(
        r#"
        [store]
        path = "{}"
        {}
        [[mapping]]
        name = "bench"
        event_source_arn = "{}"
        function = "count"
        starting_position = "TRIM_HORIZON"
        batch_size = {}
        "#,
        state.path().display(),
        args.commit_interval_ms
            .map(|ms| format!("commit_interval_ms = {ms}"))
            .unwrap_or_default(),
        stream_arn(&stream),
        args.batch_size
    ))?;

    let seen = Arc::new(AtomicUsize::new(0));
    let done = CancellationToken::new();
    let (counter, target, stop) = (seen.clone(), args.records, done.clone());
    let count = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (counter, stop) = (counter.clone(), stop.clone());
        async move {
            if counter.fetch_add(event.payload.records.len(), Ordering::SeqCst)
                + event.payload.records.len()
                >= target
            {
                stop.cancel();
            }
            Ok::<(), Error>(())
        }
    });
    let started = Instant::now();
    let run = tokio::spawn(esm::runner::app::run(
        config,
        esm::Registry::new().handler("count", count),
        done.clone(),
    ));
    tokio::select! {
        _ = done.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(600)) => return Err("timed out after 600 s".into()),
    }
    let drain_time = started.elapsed();
    run.await??;
    println!(
        "drain: {} records x {} B on {} shards, batch_size {}: put in {:.2} s; drained in {:.2} s = {:.0} records/s",
        args.records,
        args.size,
        args.shards,
        args.batch_size,
        put_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        args.records as f64 / drain_time.as_secs_f64()
    );
    Ok(())
}
