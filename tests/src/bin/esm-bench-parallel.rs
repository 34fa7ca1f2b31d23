//! Throughput against `parallelization_factor`: N records with 1,000 distinct
//! partition keys on 2 shards of a fresh stream in the local emulator, read by esm (in
//! this process) in batches of 10 into a handler that sleeps 50 ms per invocation
//! (a slow function, where lanes pay off).
//!
//! `cargo run --release -p esm-e2e --bin esm-bench-parallel -- --records 2000`
//! (the emulator must be up: `scripts/bench` does it all). For factors 1, 4 and 10 it
//! drains the same stream from the trim horizon (a fresh checkpoint store each run)
//! `--runs` times, measures from the first invocation's start to the last invocation's
//! end, and prints the median rate per factor and its speed-up over factor 1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use esm_e2e::{kinesis, put_records, stream_arn, TestStream};
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Records to put and drain in each run.
    #[arg(long, default_value_t = 2_000)]
    records: usize,
    /// Runs per factor (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Milliseconds the handler sleeps in each invocation.
    #[arg(long, default_value_t = 50)]
    sleep_ms: u64,
    /// The factors to compare (the first is the baseline of the speed-up).
    #[arg(long, value_delimiter = ',', default_value = "1,4,10")]
    factors: Vec<u8>,
}

const SHARDS: i32 = 2;
const KEYS: usize = 1_000;
const BATCH_SIZE: usize = 10;

/// The first invocation's start and the last invocation's end seen so far.
#[derive(Default)]
struct Span {
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

/// Drains the stream once with `factor`; returns the time from the first
/// invocation's start to the last one's end.
async fn run_once(
    stream: &str,
    records: usize,
    factor: u8,
    sleep: Duration,
) -> Result<Duration, Error> {
    let state = tempfile::tempdir()?;
    let config = esm::config::parse(&format!(
        r#"
        [store]
        path = "{}"
        [[mapping]]
        name = "bench-parallel"
        event_source_arn = "{}"
        function = "sleep"
        starting_position = "TRIM_HORIZON"
        batch_size = {BATCH_SIZE}
        parallelization_factor = {factor}
        "#,
        state.path().display(),
        stream_arn(stream),
    ))?;

    let seen = Arc::new(AtomicUsize::new(0));
    let span = Arc::new(Mutex::new(Span::default()));
    let done = CancellationToken::new();
    let (counter, times, stop) = (seen.clone(), span.clone(), done.clone());
    let handler = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (counter, times, stop) = (counter.clone(), times.clone(), stop.clone());
        async move {
            let started = Instant::now();
            times
                .lock()
                .map_err(|_| "poisoned")?
                .first_start
                .get_or_insert(started);
            tokio::time::sleep(sleep).await;
            let n = event.payload.records.len();
            let ended = Instant::now();
            {
                let mut t = times.lock().map_err(|_| "poisoned")?;
                t.last_end = Some(t.last_end.map_or(ended, |e| e.max(ended)));
            }
            if counter.fetch_add(n, Ordering::SeqCst) + n >= records {
                stop.cancel();
            }
            Ok::<(), Error>(())
        }
    });
    let mut run = tokio::spawn(esm::runner::app::run(
        config,
        esm::Registry::new().handler("sleep", handler),
        done.clone(),
    ));
    tokio::select! {
        _ = done.cancelled() => {}
        ended = &mut run => {
            ended??;
            return Err("esm stopped before every record was handled".into());
        }
        _ = tokio::time::sleep(Duration::from_secs(300)) => {
            return Err(format!("factor {factor}: timed out after 300 s").into());
        }
    }
    run.await??;
    let handled = seen.load(Ordering::SeqCst);
    if handled != records {
        return Err(format!("factor {factor}: {handled} records handled, {records} put").into());
    }
    let t = span.lock().map_err(|_| "poisoned")?;
    match (t.first_start, t.last_end) {
        (Some(start), Some(end)) => Ok(end - start),
        _ => Err("no invocation".into()),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    if args.factors.is_empty() || args.runs == 0 {
        return Err("--factors and --runs must not be empty".into());
    }
    let client = kinesis().await;
    let stream = TestStream::create(&client, "bench-parallel", SHARDS).await;
    let put_started = Instant::now();
    let put = put_records(&client, &stream, 0, args.records, 100, KEYS).await;
    if put.len() != args.records {
        return Err(format!("put {} of {} records", put.len(), args.records).into());
    }
    println!(
        "parallel: {} records, {KEYS} partition keys, {SHARDS} shards, batch_size {BATCH_SIZE}, \
         handler sleeps {} ms; put in {:.2} s",
        args.records,
        args.sleep_ms,
        put_started.elapsed().as_secs_f64()
    );

    let sleep = Duration::from_millis(args.sleep_ms);
    let mut baseline: Option<f64> = None;
    for &factor in &args.factors {
        let mut rates = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let took = run_once(&stream, args.records, factor, sleep).await?;
            rates.push(args.records as f64 / took.as_secs_f64());
        }
        let rate = median(rates.clone());
        let base = *baseline.get_or_insert(rate);
        let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "parallel: factor {factor:>2}: median {rate:>6.0} records/s ({}), speed-up x{:.2} over factor {}",
            runs.join(", "),
            rate / base,
            args.factors[0]
        );
    }
    Ok(())
}
