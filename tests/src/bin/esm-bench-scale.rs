//! Scale: what esm costs on many shards, beside a bare AWS-SDK GetRecords reader of
//! the same local emulator, each measured in the same run.
//!
//! `cargo run --release -p esm-e2e --bin esm-bench-scale` (the emulator must be up:
//! `scripts/bench` does it all). Two measurements:
//!
//! 1. **Drain**: `--records` records of `--size` bytes, spread over a fresh
//!    `--drain-shards`-shard stream, read from TRIM_HORIZON by a bare reader (one task
//!    per shard, GetRecords with `Limit` 10,000 chained without a pause while records
//!    come back) and by esm with a no-op in-process handler at `batch_size` 100 and
//!    1,000. Figures: records/s and CPU microseconds per record, esm's CPU per
//!    record over the bare reader's, and the GetRecords calls each made (esm's from
//!    its `/metrics`). Both go on polling a caught-up shard once a second until the
//!    last record of the stream is seen, as a live consumer does (esm like Lambda,
//!    the bare reader like the KCL's default); esm also paces a shard with records
//!    at `get_records_calls_per_second`. The bare reader is the floor: what reading alone
//!    costs with the same SDK against the same emulator; esm's extra is its batching,
//!    event building, invocation and checkpointing.
//! 2. **Idle**: an empty `--idle-shards`-shard stream polled from LATEST, once a
//!    second per shard, by the bare reader and by esm (which polls a caught-up shard
//!    once a second, as Lambda does). After `--warmup-seconds`, a window of
//!    `--idle-seconds` is measured: RSS at its end, CPU over it, the GetRecords calls
//!    in it (esm's own `esm_get_records_total` from its `/metrics`), and CPU
//!    microseconds per call. This is what a mapping of many quiet shards costs to
//!    keep watching.
//!
//! Each measured consumer runs in a child process of its own (this binary again, with
//! the hidden `child` subcommand) so that CPU and RSS are its alone; the child prints
//! one JSON line of [`Figures`] and the parent prints the summary. With `--repeat N`
//! every measurement runs N times and the median is printed. The emulator shares the
//! machine's cores with the child being measured, so rates are the emulator's and the
//! reader's together; CPU figures are the reader's own. The streams are deleted at the
//! end (the emulator's shard limit counts every open shard).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use clap::{Parser, Subcommand, ValueEnum};
use esm_e2e::observe::{metric, scrape};
use esm_e2e::{kinesis, list_shards, put_entries, record_payload, stream_arn, TestStream};
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The command line: the parent's options, or a hidden child measurement.
#[derive(Parser)]
#[command(about = "esm on many shards beside a bare GetRecords reader")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// A child measurement (used by the parent only).
    #[command(subcommand)]
    command: Option<Command>,
    /// The parent's options.
    #[command(flatten)]
    args: Args,
}

/// The parent's options.
#[derive(clap::Args)]
struct Args {
    /// Shards of the drain stream.
    #[arg(long, default_value_t = 100)]
    drain_shards: i32,
    /// Records to put on the drain stream and read.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Payload size of each record, in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Shards of the idle stream.
    #[arg(long, default_value_t = 1000)]
    idle_shards: i32,
    /// Length of the measured idle window, in seconds.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Polling before the idle window starts, in seconds.
    #[arg(long, default_value_t = 20)]
    warmup_seconds: u64,
    /// Run only one of the two measurements.
    #[arg(long)]
    only: Option<Part>,
    /// Run each measurement this many times and print the medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// esm's `[store] commit_interval_ms` (default: esm's default).
    #[arg(long)]
    commit_interval_ms: Option<u64>,
    /// Drain this existing stream (left by `--keep-drain-stream`, holding `--records`
    /// records) instead of creating and filling one; it is not deleted. For
    /// profiling, where the put would dominate the time.
    #[arg(long)]
    drain_stream: Option<String>,
    /// Leave the drain stream behind and print its name, for `--drain-stream`.
    #[arg(long)]
    keep_drain_stream: bool,
}

/// One of the two measurements.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The drain of a stream with records.
    Drain,
    /// Polling an empty stream.
    Idle,
}

/// The hidden subcommand.
#[derive(Subcommand)]
enum Command {
    /// Runs one measured consumer and prints its [`Figures`] as one JSON line.
    #[command(hide = true)]
    Child {
        /// Which consumer.
        #[command(subcommand)]
        child: Child,
    },
}

/// The consumers a child process measures.
#[derive(Subcommand)]
enum Child {
    /// The bare reader draining `stream` from TRIM_HORIZON until `expect` records.
    BareDrain {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// Records to read.
        #[arg(long)]
        expect: u64,
    },
    /// esm draining `stream` from TRIM_HORIZON into a counting handler.
    EsmDrain {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// Records to see.
        #[arg(long)]
        expect: u64,
        /// The mapping's `batch_size`.
        #[arg(long)]
        batch_size: usize,
        /// `[store] commit_interval_ms`, if not esm's default.
        #[arg(long)]
        commit_interval_ms: Option<u64>,
    },
    /// The bare reader polling every shard of the stream once a second from LATEST.
    BareIdle(IdleArgs),
    /// esm polling the stream from LATEST with a no-op handler.
    EsmIdle(IdleArgs),
}

/// What an idle measurement is told.
#[derive(clap::Args)]
struct IdleArgs {
    /// The stream.
    #[arg(long)]
    stream: String,
    /// Polling before the window.
    #[arg(long)]
    warmup_seconds: u64,
    /// The measured window.
    #[arg(long)]
    seconds: u64,
}

/// What a child measured over its span, as the JSON line it prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Figures {
    /// Records read (drain; 0 when idle).
    records: u64,
    /// Bytes of record data touched.
    bytes: u64,
    /// GetRecords calls in the span, failed ones included (0 where not counted).
    polls: u64,
    /// GetRecords calls that failed (throttled or otherwise) in the span.
    failed_polls: u64,
    /// The mean time a GetRecords call took, in ms (the bare reader only; else 0).
    mean_poll_ms: f64,
    /// Wall-clock seconds of the span.
    wall_s: f64,
    /// Process CPU seconds (user + system) over the span.
    cpu_s: f64,
    /// Resident set size at the end of the span, in KiB.
    rss_kib: u64,
}

impl Figures {
    /// Records per second.
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.wall_s
    }

    /// CPU microseconds per record.
    fn cpu_us_per_record(&self) -> f64 {
        self.cpu_s * 1e6 / self.records as f64
    }

    /// GetRecords calls per second.
    fn polls_per_s(&self) -> f64 {
        self.polls as f64 / self.wall_s
    }

    /// CPU microseconds per GetRecords call.
    fn cpu_us_per_poll(&self) -> f64 {
        self.cpu_s * 1e6 / self.polls as f64
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Child { child }) => {
            let figures = run_child(child).await?;
            println!("{}", serde_json::to_string(&figures)?);
            Ok(())
        }
        None => run_parent(cli.args).await,
    }
}

// --- The parent ---

/// Runs the measurements the options ask for and prints the summaries.
async fn run_parent(args: Args) -> Result<(), Error> {
    let client = kinesis().await;
    let repeat = args.repeat.max(1);
    if args.only != Some(Part::Idle) {
        drain_part(&client, &args, repeat).await?;
    }
    if args.only != Some(Part::Drain) {
        idle_part(&client, &args, repeat).await?;
    }
    Ok(())
}

/// The drain measurement: puts the records, measures each reader `repeat` times
/// (interleaved), prints the medians, deletes the stream.
async fn drain_part(client: &Client, args: &Args, repeat: usize) -> Result<(), Error> {
    let part_started = Instant::now();
    let put_started = Instant::now();
    let (stream, landed) = match &args.drain_stream {
        Some(stream) => (stream.clone(), args.records as u64),
        None => {
            let stream = TestStream::create(client, "scale-drain", args.drain_shards).await;
            let landed = put_spread(client, &stream, args.records, args.size).await;
            let name = stream.name.clone();
            // Deleted below (and waited for), or kept on request: not on drop.
            std::mem::forget(stream);
            (name, landed)
        }
    };
    let put_time = put_started.elapsed();
    let expect = landed.to_string();
    let interval = args.commit_interval_ms.map(|ms| ms.to_string());

    let names = [
        "bare GetRecords reader",
        "esm, batch_size 100",
        "esm, batch_size 1000",
    ];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); names.len()];
    for _ in 0..repeat {
        runs[0].push(child("bare-drain", &["--stream", &stream, "--expect", &expect]).await);
        for (i, batch) in [(1, "100"), (2, "1000")] {
            let mut esm_args = vec![
                "--stream",
                &stream,
                "--expect",
                &expect,
                "--batch-size",
                batch,
            ];
            if let Some(interval) = &interval {
                esm_args.extend(["--commit-interval-ms", interval]);
            }
            runs[i].push(child("esm-drain", &esm_args).await);
        }
    }
    if args.keep_drain_stream {
        println!("scale: the drain stream {stream} was kept");
    } else if args.drain_stream.is_none() {
        delete_stream(client, &stream).await;
    }

    println!(
        "scale: drain {} x {} B on {} shards (put in {:.1} s){}{}",
        group(landed as f64),
        args.size,
        args.drain_shards,
        put_time.as_secs_f64(),
        args.commit_interval_ms
            .map(|ms| format!(", commit_interval_ms {ms}"))
            .unwrap_or_default(),
        median_note(repeat)
    );
    let cpus = against_bare(&runs, Figures::cpu_us_per_record);
    for ((name, figures), (cpu, ratio)) in names.iter().zip(&runs).zip(cpus) {
        println!(
            "  {name:<27}: {} records/s, {cpu:.1} us CPU/record{ratio}; {:.2} s, {} GetRecords calls, RSS {} MiB{}",
            group(median(figures, Figures::records_per_s)),
            median(figures, |f| f.wall_s),
            group(median(figures, |f| f.polls as f64)),
            median(figures, |f| f.rss_kib as f64 / 1024.0).round(),
            failed_note(figures)
        );
    }
    println!(
        "scale: the drain part took {:.0} s",
        part_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The idle measurement: creates the empty stream, measures the bare reader and esm
/// `repeat` times (interleaved), prints the medians, deletes the stream.
async fn idle_part(client: &Client, args: &Args, repeat: usize) -> Result<(), Error> {
    let part_started = Instant::now();
    let stream = TestStream::create(client, "scale-idle", args.idle_shards).await;
    let (warmup, seconds) = (
        args.warmup_seconds.to_string(),
        args.idle_seconds.to_string(),
    );
    let child_args = [
        "--stream",
        &stream,
        "--warmup-seconds",
        &warmup,
        "--seconds",
        &seconds,
    ];
    let names = ["bare GetRecords reader", "esm"];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); names.len()];
    for _ in 0..repeat {
        runs[0].push(child("bare-idle", &child_args).await);
        runs[1].push(child("esm-idle", &child_args).await);
    }
    delete_stream(client, &stream).await;

    println!(
        "scale: {} idle shards, {} s measured after {} s warm-up{}",
        args.idle_shards,
        args.idle_seconds,
        args.warmup_seconds,
        median_note(repeat)
    );
    let cpus = against_bare(&runs, Figures::cpu_us_per_poll);
    for ((name, figures), (cpu, ratio)) in names.iter().zip(&runs).zip(cpus) {
        println!(
            "  {name:<27}: RSS {} MiB, {} polls/s, {cpu:.0} us CPU/poll{ratio}; {} polls, CPU {:.2} s{}",
            median(figures, |f| f.rss_kib as f64 / 1024.0).round(),
            group(median(figures, Figures::polls_per_s)),
            group(median(figures, |f| f.polls as f64)),
            median(figures, |f| f.cpu_s),
            failed_note(figures)
        );
    }
    let asked = f64::from(args.idle_shards);
    let rates: Vec<f64> = runs
        .iter()
        .map(|f| median(f, Figures::polls_per_s))
        .collect();
    if rates.iter().any(|&rate| rate < 0.95 * asked) {
        println!(
            "  note: {} polls/s were asked for (one per shard per second); the emulator \
             answered {} and {} polls/s, the bare reader's calls taking {:.0} ms on average",
            group(asked),
            group(rates[0]),
            group(rates[1]),
            median(&runs[0], |f| f.mean_poll_ms)
        );
    }
    println!(
        "scale: the idle part took {:.0} s",
        part_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Puts `count` records of `size` bytes, each with its own partition key (so they
/// spread evenly over the shards), from 8 concurrent put tasks; returns how many
/// landed.
async fn put_spread(client: &Client, stream: &str, count: usize, size: usize) -> u64 {
    const PUTTERS: usize = 8;
    let per_task = count.div_ceil(PUTTERS).max(1);
    let mut tasks = JoinSet::new();
    for first in (0..count).step_by(per_task) {
        let (client, stream) = (client.clone(), stream.to_string());
        let entries: Vec<(String, Vec<u8>)> = (first..(first + per_task).min(count))
            .map(|i| (format!("key-{i}"), record_payload(i, size)))
            .collect();
        tasks.spawn(async move { put_entries(&client, &stream, entries).await.len() as u64 });
    }
    let mut landed = 0;
    while let Some(done) = tasks.join_next().await {
        landed += done.expect("a put task");
    }
    landed
}

/// Deletes `stream` and waits (up to 60 s) until the emulator no longer knows it, so
/// that its shards no longer count against the emulator's shard limit.
async fn delete_stream(client: &Client, stream: &str) {
    client
        .delete_stream()
        .stream_name(stream)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .expect("DeleteStream");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
        {
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return
            }
            _ if Instant::now() > deadline => panic!("stream {stream} still exists after 60 s"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs this binary as `child KIND ARGS`, and returns the figures it printed. esm's
/// log level is `$ESM_LOG`, else `warn`; whatever a child logs is summed up here.
async fn child(kind: &str, args: &[&str]) -> Figures {
    let exe = std::env::current_exe().expect("this binary's path");
    let output = tokio::process::Command::new(exe)
        .arg("child")
        .arg(kind)
        .args(args)
        .env(
            "ESM_LOG",
            std::env::var("ESM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run a child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child {kind} failed ({}); stderr:\n{stderr}",
        output.status
    );
    report_log(kind, &stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .expect("the child printed its figures");
    serde_json::from_str(line).expect("the child's figures as JSON")
}

/// Prints how many lines a child logged, with the first few of them.
fn report_log(kind: &str, stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return;
    }
    let count = |level: &str| lines.iter().filter(|l| l.contains(level)).count();
    eprintln!(
        "scale: child {kind} logged {} lines ({} ERROR, {} WARN); the first:",
        lines.len(),
        count(" ERROR "),
        count(" WARN ")
    );
    for line in lines.iter().take(5) {
        eprintln!("    {}", line.chars().take(300).collect::<String>());
    }
}

/// Each consumer's median of `value`, with its ratio to the first's (the bare
/// reader's) as " (N.NNx bare)", empty for the first.
fn against_bare(runs: &[Vec<Figures>], value: fn(&Figures) -> f64) -> Vec<(f64, String)> {
    let bare = median(&runs[0], value);
    runs.iter()
        .enumerate()
        .map(|(i, figures)| {
            let own = median(figures, value);
            let ratio = if i == 0 {
                String::new()
            } else {
                format!(" ({:.2}x bare)", own / bare)
            };
            (own, ratio)
        })
        .collect()
}

/// The median of `value` over `figures`.
fn median(figures: &[Figures], value: impl Fn(&Figures) -> f64) -> f64 {
    let mut values: Vec<f64> = figures.iter().map(value).collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// ", medians of N runs" when there was more than one run.
fn median_note(repeat: usize) -> String {
    if repeat > 1 {
        format!(", medians of {repeat} runs")
    } else {
        String::new()
    }
}

/// "; N failed calls" when any run had failed GetRecords calls.
fn failed_note(figures: &[Figures]) -> String {
    let failed: u64 = figures.iter().map(|f| f.failed_polls).sum();
    if failed > 0 {
        format!("; {failed} failed GetRecords calls")
    } else {
        String::new()
    }
}

/// `value` rounded, with thousands separators: 41,000.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// --- The children ---

/// Runs one child measurement.
async fn run_child(child: Child) -> Result<Figures, Error> {
    match child {
        Child::BareDrain { stream, expect } => Ok(bare_drain(&stream, expect).await),
        Child::EsmDrain {
            stream,
            expect,
            batch_size,
            commit_interval_ms,
        } => esm_drain(&stream, expect, batch_size, commit_interval_ms).await,
        Child::BareIdle(idle) => {
            Ok(bare_idle(&idle.stream, idle.warmup_seconds, idle.seconds).await)
        }
        Child::EsmIdle(idle) => esm_idle(&idle.stream, idle.warmup_seconds, idle.seconds).await,
    }
}

/// What the bare reader's tasks count together.
#[derive(Default)]
struct Tally {
    /// Records read.
    records: AtomicU64,
    /// Bytes of record data.
    bytes: AtomicU64,
    /// GetRecords calls (failed ones included).
    polls: AtomicU64,
    /// GetRecords calls that failed.
    failed: AtomicU64,
    /// The time the GetRecords calls took, summed, in microseconds.
    poll_micros: AtomicU64,
}

impl Tally {
    /// The mean time of a GetRecords call, in ms, over the calls after `polls` calls
    /// that had taken `micros` µs.
    fn mean_poll_ms_since(&self, polls: u64, micros: u64) -> f64 {
        let calls = self.polls.load(Ordering::SeqCst) - polls;
        let micros = self.poll_micros.load(Ordering::SeqCst) - micros;
        micros as f64 / 1000.0 / calls.max(1) as f64
    }
}

/// A point of a child's span: when, and the CPU used so far.
#[derive(Clone, Copy)]
struct Mark {
    /// The wall clock.
    at: Instant,
    /// Process CPU seconds so far.
    cpu_s: f64,
}

impl Mark {
    /// Now.
    fn now() -> Self {
        Self {
            at: Instant::now(),
            cpu_s: cpu_seconds(),
        }
    }

    /// The figures from this mark to `end`: wall, CPU, and RSS now.
    fn figures_to(&self, end: &Mark) -> Figures {
        Figures {
            wall_s: (end.at - self.at).as_secs_f64(),
            cpu_s: end.cpu_s - self.cpu_s,
            rss_kib: rss_kib(),
            ..Figures::default()
        }
    }
}

/// The bare drain: one task per shard reads from TRIM_HORIZON with GetRecords (`Limit`
/// 10,000), the next call as soon as one returns while records come back and once a
/// second when caught up, until `expect` records were read.
async fn bare_drain(stream: &str, expect: u64) -> Figures {
    let client = bare_client().await;
    let tally = Arc::new(Tally::default());
    let all_seen = CancellationToken::new();
    let seen_at: Arc<OnceLock<Mark>> = Arc::new(OnceLock::new());
    let start = Mark::now();
    let mut tasks = JoinSet::new();
    for shard in list_shards(&client, stream).await {
        let (client, stream) = (client.clone(), stream.to_string());
        let shard = shard.shard_id().to_string();
        let (tally, all_seen, seen_at) = (tally.clone(), all_seen.clone(), seen_at.clone());
        tasks.spawn(async move {
            let mut iterator =
                shard_iterator(&client, &stream, &shard, ShardIteratorType::TrimHorizon).await;
            while !all_seen.is_cancelled() {
                let out = match get_records(&client, &iterator, &tally).await {
                    Ok(out) => out,
                    Err(e) => {
                        assert!(
                            matches!(
                                e.code(),
                                Some(
                                    "ProvisionedThroughputExceededException"
                                        | "LimitExceededException"
                                )
                            ),
                            "GetRecords on {shard}: {e:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let records = out.records();
                let bytes: usize = records.iter().map(|r| r.data().as_ref().len()).sum();
                tally.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                let n = records.len() as u64;
                if tally.records.fetch_add(n, Ordering::SeqCst) + n >= expect && n > 0 {
                    let _ = seen_at.set(Mark::now());
                    all_seen.cancel();
                }
                let caught_up = records.is_empty() && out.millis_behind_latest() == Some(0);
                match out.next_shard_iterator() {
                    Some(next) => iterator = next.to_string(),
                    None => break,
                }
                if caught_up {
                    // A live consumer goes on watching a caught-up shard (the KCL's
                    // default is once a second, as Lambda's and esm's).
                    tokio::select! {
                        _ = all_seen.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = all_seen.cancelled() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
    let end = seen_at.get().copied().unwrap_or_else(Mark::now);
    tasks.abort_all();
    let mut figures = start.figures_to(&end);
    figures.records = tally.records.load(Ordering::SeqCst);
    figures.bytes = tally.bytes.load(Ordering::SeqCst);
    figures.polls = tally.polls.load(Ordering::SeqCst);
    figures.failed_polls = tally.failed.load(Ordering::SeqCst);
    figures.mean_poll_ms = tally.mean_poll_ms_since(0, 0);
    assert!(
        figures.records >= expect,
        "the bare reader read {} of {expect} records",
        figures.records
    );
    figures
}

/// The bare reader's Kinesis client: from the standard AWS environment, configured as
/// esm configures its own (SDK retries off, 5 s to connect, 30 s per attempt), so that
/// the two differ in what they do with the SDK and not in how it is set up.
async fn bare_client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(esm_e2e::REGION))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await;
    Client::new(&config)
}

/// One GetRecords call (`Limit` 10,000, as esm's), counted in `tally` with its time.
async fn get_records(
    client: &Client,
    iterator: &str,
    tally: &Tally,
) -> Result<GetRecordsOutput, SdkError<GetRecordsError>> {
    let sent = Instant::now();
    let result = client
        .get_records()
        .shard_iterator(iterator)
        .limit(10_000)
        .send()
        .await;
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    tally.poll_micros.fetch_add(micros, Ordering::SeqCst);
    tally.polls.fetch_add(1, Ordering::SeqCst);
    if result.is_err() {
        tally.failed.fetch_add(1, Ordering::SeqCst);
    }
    result
}

/// An iterator of `shard` of the given type.
/// Retries (every 200 ms, up to a minute) while the emulator is too busy to answer,
/// as it is when a thousand shards are polled at once.
async fn shard_iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    kind: ShardIteratorType,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard)
            .shard_iterator_type(kind.clone())
            .send()
            .await;
        match result {
            Ok(out) => return out.shard_iterator().expect("an iterator").to_string(),
            Err(e) if Instant::now() > deadline => panic!("GetShardIterator on {shard}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// esm's drain: a mapping from TRIM_HORIZON with `batch_size`, into a no-op handler
/// that counts records (and touches their data) and stops esm once `expect` are seen.
async fn esm_drain(
    stream: &str,
    expect: u64,
    batch_size: usize,
    commit_interval_ms: Option<u64>,
) -> Result<Figures, Error> {
    esm::logging::init();
    let state = tempfile::tempdir()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let interval = commit_interval_ms
        .map(|ms| format!("commit_interval_ms = {ms}"))
        .unwrap_or_default();
    let config = esm::config::parse(&format!(
        r#"
        [store]
        path = "{}"
        {interval}
        [server]
        listen = "{listen}"
        [[mapping]]
        name = "scale"
        event_source_arn = "{}"
        function = "count"
        starting_position = "TRIM_HORIZON"
        batch_size = {batch_size}
        "#,
        state.path().display(),
        stream_arn(stream),
    ))?;
    let tally = Arc::new(Tally::default());
    let all_seen = CancellationToken::new();
    let seen_at: Arc<OnceLock<Mark>> = Arc::new(OnceLock::new());
    let (counter, stop, at) = (tally.clone(), all_seen.clone(), seen_at.clone());
    let count = service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (counter, stop, at) = (counter.clone(), stop.clone(), at.clone());
        async move {
            let records = &event.payload.records;
            let bytes: usize = records.iter().map(|r| r.kinesis.data.len()).sum();
            counter.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            let n = records.len() as u64;
            if counter.records.fetch_add(n, Ordering::SeqCst) + n >= expect {
                let _ = at.set(Mark::now());
                stop.cancel();
            }
            Ok::<(), Error>(())
        }
    });
    let start = Mark::now();
    let run = tokio::spawn(esm::runner::app::run(
        config,
        esm::Registry::new().handler("count", count),
        all_seen.clone(),
    ));
    tokio::select! {
        _ = all_seen.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(600)) => return Err("timed out after 600 s".into()),
    }
    let end = seen_at.get().expect("the handler marked the end");
    let mut figures = start.figures_to(end);
    let (polls, ok) = get_records_calls(listen).await;
    figures.polls = polls as u64;
    figures.failed_polls = (polls - ok) as u64;
    run.await??;
    figures.records = tally.records.load(Ordering::SeqCst);
    figures.bytes = tally.bytes.load(Ordering::SeqCst);
    Ok(figures)
}

/// The bare idle poller: one task per shard, started spread over the first second,
/// takes a LATEST iterator and calls GetRecords once a second, chaining iterators;
/// the window after `warmup_seconds` is measured.
async fn bare_idle(stream: &str, warmup_seconds: u64, seconds: u64) -> Figures {
    let client = bare_client().await;
    let tally = Arc::new(Tally::default());
    let shards = list_shards(&client, stream).await;
    let count = shards.len().max(1) as u32;
    let first = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for (i, shard) in shards.iter().enumerate() {
        let (client, stream) = (client.clone(), stream.to_string());
        let shard = shard.shard_id().to_string();
        let tally = tally.clone();
        let offset = Duration::from_secs(1) * i as u32 / count;
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval_at(first + offset, Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut iterator =
                shard_iterator(&client, &stream, &shard, ShardIteratorType::Latest).await;
            loop {
                ticks.tick().await;
                match get_records(&client, &iterator, &tally).await {
                    Ok(out) => {
                        let bytes: usize =
                            out.records().iter().map(|r| r.data().as_ref().len()).sum();
                        tally.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        if let Some(next) = out.next_shard_iterator() {
                            iterator = next.to_string();
                        }
                    }
                    Err(e) => {
                        if e.code() == Some("ExpiredIteratorException") {
                            iterator =
                                shard_iterator(&client, &stream, &shard, ShardIteratorType::Latest)
                                    .await;
                        }
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(warmup_seconds)).await;
    let (start, polls, failed, micros) = (
        Mark::now(),
        tally.polls.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.poll_micros.load(Ordering::SeqCst),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut figures = start.figures_to(&Mark::now());
    figures.polls = tally.polls.load(Ordering::SeqCst) - polls;
    figures.failed_polls = tally.failed.load(Ordering::SeqCst) - failed;
    figures.mean_poll_ms = tally.mean_poll_ms_since(polls, micros);
    tasks.abort_all();
    figures
}

/// esm polling an empty stream from LATEST with a no-op handler, its `[server]` on a
/// free loopback port; its GetRecords calls in the window come from its own
/// `esm_get_records_total`, scraped at the window's start and end.
async fn esm_idle(stream: &str, warmup_seconds: u64, seconds: u64) -> Result<Figures, Error> {
    esm::logging::init();
    let state = tempfile::tempdir()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = esm::config::parse(&format!(
        r#"
        [store]
        path = "{}"
        [server]
        listen = "{listen}"
        [[mapping]]
        name = "scale"
        event_source_arn = "{}"
        function = "noop"
        starting_position = "LATEST"
        "#,
        state.path().display(),
        stream_arn(stream),
    ))?;
    let noop = service_fn(|_: LambdaEvent<KinesisEvent>| async { Ok::<(), Error>(()) });
    let stop = CancellationToken::new();
    let run = tokio::spawn(esm::runner::app::run(
        config,
        esm::Registry::new().handler("noop", noop),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(warmup_seconds)).await;
    let (start, before) = (Mark::now(), get_records_calls(listen).await);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (end, after) = (Mark::now(), get_records_calls(listen).await);
    let mut figures = start.figures_to(&end);
    figures.polls = (after.0 - before.0) as u64;
    figures.failed_polls = ((after.0 - after.1) - (before.0 - before.1)) as u64;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "esm did not stop within 60 s")???;
    Ok(figures)
}

/// esm's `esm_get_records_total` from its `/metrics` at `addr`: (all outcomes, `ok`).
async fn get_records_calls(addr: std::net::SocketAddr) -> (f64, f64) {
    let samples = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .expect("scrape /metrics");
    (
        metric(&samples, "esm_get_records_total", &[]),
        metric(&samples, "esm_get_records_total", &[("outcome", "ok")]),
    )
}

/// This process's CPU time so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills in the rusage it is pointed at, which lives until read.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: zeroed is a valid rusage, and getrusage succeeded.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// This process's resident set size now (`VmRSS`), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
