//! Put-to-handler latency through the local Kinesis emulator: esm, and bare clients of
//! the same emulator, measured in one run so that the figures can be compared.
//!
//! `cargo run --release -p esm-e2e --bin esm-bench-latency -- --records 300`
//! (the emulator must be up and `eval "$(scripts/emulators.sh env)"` done, and
//! `esm-recorder` built in the same profile: `scripts/bench` does it all).
//!
//! # Method
//!
//! Each consumer gets a fresh stream with one shard and reads it from the trim
//! horizon (the stream is empty when it starts, so this is "every record put from
//! now on" without the race of `LATEST`). Once the consumer is reading, a producer
//! puts `--records` single records (PutRecord), one every `--interval-ms` (default
//! 300 records, one per 100 ms: about 30 s), and notes the wall-clock time
//! (`SystemTime`) just before each call, keyed by the sequence number it returns.
//! A record's latency is the time its consumer got it minus that put time; both
//! clocks are the same machine's wall clock. Records put in the first `--warmup-ms`
//! (default 2 s) of the producer's run are left out of the percentiles (a
//! consumer's first calls pay connection set-up), but counted in "received". Before
//! the first consumer, a throwaway bare GetRecords run (`--emulator-warmup-records`,
//! not reported) warms the emulator up: a freshly started kinesis-local can answer
//! its first calls late (seconds, once, here).
//!
//! With puts exactly every 100 ms and a poller calling every 200 ms or every second,
//! the phase between the two stays the same for the whole run, so a poller's p50
//! moves by up to one put interval from run to run (its max does not).
//! `--jitter-ms 100` delays each put by a random 0-100 ms to average the phase out.
//!
//! The consumers, one after another:
//! 1. **bare GetRecords, 5 calls/s**: GetShardIterator then a GetRecords loop, each
//!    call after the previous one returned, at most 5 calls per second per shard
//!    (Kinesis's limit), again at once (within that budget) while behind
//!    (`MillisBehindLatest > 0` or a full page). The receive time is when the
//!    GetRecords answer arrived.
//! 2. **bare GetRecords, esm's pacing**: the same loop paced as esm paces a shard
//!    ([`esm::core::pacing`]): 5 calls per second while behind, once a second
//!    ([`esm::core::pacing::IDLE_POLL_INTERVAL`], as Lambda does) when caught up.
//! 3. **bare SubscribeToShard**: RegisterStreamConsumer, wait until ACTIVE, then
//!    SubscribeToShard with the SDK's event stream, subscribing again (after the
//!    last continuation sequence number) whenever a subscription ends. The receive
//!    time is when the event holding the record arrived.
//! 4. **esm polling**: `esm-recorder run` (esm with the recorder handler, a separate
//!    process) on the stream ARN, `TRIM_HORIZON`, `batch_size` `--batch-size`
//!    (default 10), `maximum_batching_window_in_seconds = 0`. The latency is the
//!    recorder's `started_ms` (the handler's start) minus the put time.
//! 5. **esm fan-out**: the same with `event_source_arn` set to the ARN of a consumer
//!    registered on the stream. A build of esm without enhanced fan-out refuses that
//!    config (exit code 2); the benchmark then prints "esm fan-out: not available in
//!    this build" and goes on.
//!
//! # Why the bare clients
//!
//! They show the floor the emulator imposes, so that a README can say how much of
//! esm's latency is esm and how much is kinesis-local. kinesis-local pushes
//! SubscribeToShard events about once a second, so fan-out through it cannot beat
//! roughly half a second on average whatever the consumer does; a bare GetRecords
//! loop shows what polling can reach; the same loop at esm's pacing separates the
//! cost of esm's (Lambda's) once-a-second idle poll from the cost of esm itself
//! (reading, batching, invoking).
//!
//! `--consumers` picks and orders them (default: all five).
//!
//! # Output
//!
//! A table of p50, p90, p99 and max per consumer with the records received out of
//! those put; notes on how the records came (records per GetRecords page, per pushed
//! event, per invocation; the time between pushed events; how long calls took); and
//! one line for the README. The producer's PutRecord times are noted too: puts that
//! start late mean a slow emulator (e.g. one shared with a test suite running at the
//! same time), and a warning says so, because that inflates every figure. A private
//! emulator: `ESM_EMULATORS_DIR=… ESM_KINESIS_PORT=… scripts/emulators.sh start`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use clap::{Parser, ValueEnum};
use esm_e2e::{kinesis, list_shards, now_ms, read_batches, record_payload, stream_arn, Esm};
use esm_e2e::{random_in, seq_cmp, TestStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Parser)]
#[command(about = "Put-to-handler latency: esm and bare clients of the Kinesis emulator")]
struct Args {
    /// Records to put for each consumer (one PutRecord each).
    #[arg(long, default_value_t = 300)]
    records: usize,
    /// Milliseconds between two puts.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Delays each put by a random 0..=this many milliseconds after its slot (0: puts
    /// exactly every `--interval-ms`). With 0, a poller's phase against the puts is
    /// fixed for the whole run, which moves its p50 by up to `--interval-ms` from one
    /// run to the next; jitter averages the phase out.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Records put in the first this many milliseconds are left out of the
    /// percentiles (warm-up).
    #[arg(long, default_value_t = 2_000)]
    warmup_ms: u64,
    /// `batch_size` of esm's mapping.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Payload size of each record, in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds to wait, after the last put, for records still on their way.
    #[arg(long, default_value_t = 20)]
    grace_seconds: u64,
    /// Records of a throwaway bare GetRecords run before the measured ones (0: none):
    /// the first calls to a freshly started emulator take seconds (Node warming up).
    #[arg(long, default_value_t = 30)]
    emulator_warmup_records: usize,
    /// esm's log filter (`ESM_LOG`): above `info`, logging adds its own cost.
    #[arg(long, default_value = "info")]
    esm_log: String,
    /// Keep each esm run's directory (config, recorder output, log) and print where.
    #[arg(long)]
    keep_esm_dirs: bool,
    /// The consumers to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "get-records,get-records-esm-pacing,subscribe,esm-polling,esm-fan-out"
    )]
    consumers: Vec<Consumer>,
}

/// What reads the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Consumer {
    /// A bare GetRecords loop, at most 5 calls per second.
    GetRecords,
    /// A bare GetRecords loop paced as esm: once a second when caught up.
    GetRecordsEsmPacing,
    /// A bare SubscribeToShard client.
    Subscribe,
    /// esm (`esm-recorder run`) on the stream ARN.
    EsmPolling,
    /// esm (`esm-recorder run`) on a consumer ARN.
    EsmFanOut,
}

impl Consumer {
    fn label(self) -> &'static str {
        match self {
            Self::GetRecords => "bare GetRecords, 5 calls/s",
            Self::GetRecordsEsmPacing => "bare GetRecords, esm's pacing",
            Self::Subscribe => "bare SubscribeToShard",
            Self::EsmPolling => "esm polling",
            Self::EsmFanOut => "esm fan-out",
        }
    }
}

/// Kinesis's GetRecords budget: 5 calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// GetRecords `Limit` (Kinesis's maximum); a full page means "behind".
const GET_RECORDS_LIMIT: i32 = 10_000;
/// How long a consumer may take to start reading.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The sign esm logs when a shard's reader starts.
const ESM_READY_LINE: &str = "reading shard";
/// How long esm may run without logging [`ESM_READY_LINE`] before the producer
/// starts anyway (a reader that logs otherwise; nothing is lost: it reads from the
/// trim horizon).
const ESM_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One record the producer put.
struct Put {
    seq: String,
    /// Wall-clock ms just before the PutRecord call.
    put_ms: u64,
    /// How long the PutRecord call took, in ms.
    call_ms: u64,
    /// How late the call started after its slot, in ms (a slow emulator delays the
    /// puts that follow a slow call).
    late_ms: u64,
}

/// When each record (by sequence number) first reached the consumer, in wall-clock ms.
type Seen = Arc<Mutex<HashMap<String, u64>>>;

/// A consumer's run.
enum Outcome {
    Measured(Measurement),
    /// The consumer could not run in this build (why).
    Unavailable(String),
}

struct Measurement {
    puts: Vec<Put>,
    received: HashMap<String, u64>,
    /// Wall-clock ms when the producer started.
    produce_started_ms: u64,
    /// What the consumer saw of the emulator's batching.
    notes: Vec<String>,
}

/// Latency figures of one consumer, in ms.
struct Figures {
    p50: i64,
    p90: i64,
    p99: i64,
    max: i64,
    /// Records in the percentiles (after the warm-up).
    measured: usize,
    /// Records received, warm-up included.
    received: usize,
    put: usize,
}

impl Measurement {
    /// Puts that started more than half an interval after their slot.
    fn late_puts(&self, interval_ms: u64) -> usize {
        self.puts
            .iter()
            .filter(|p| p.late_ms > interval_ms / 2)
            .count()
    }

    /// How the producer fared: PutRecord times and late puts.
    fn producer_note(&self, interval_ms: u64) -> String {
        let mut call_ms: Vec<u64> = self.puts.iter().map(|p| p.call_ms).collect();
        call_ms.sort_unstable();
        let late = self.late_puts(interval_ms);
        format!(
            "PutRecord took {} ms (median), {} ms at most; {late} puts started over {} ms \
             after their slot",
            call_ms.get(call_ms.len() / 2).copied().unwrap_or(0),
            call_ms.last().copied().unwrap_or(0),
            interval_ms / 2
        )
    }

    fn figures(&self, warmup_ms: u64) -> Option<Figures> {
        let cutoff = self.produce_started_ms + warmup_ms;
        let mut latencies: Vec<i64> = self
            .puts
            .iter()
            .filter(|p| p.put_ms >= cutoff)
            .filter_map(|p| {
                self.received
                    .get(&p.seq)
                    .map(|&t| t as i64 - p.put_ms as i64)
            })
            .collect();
        latencies.sort_unstable();
        let received = self
            .puts
            .iter()
            .filter(|p| self.received.contains_key(&p.seq))
            .count();
        let pct = |p: f64| -> Option<i64> {
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            latencies.get(rank.max(1) - 1).copied()
        };
        Some(Figures {
            p50: pct(50.0)?,
            p90: pct(90.0)?,
            p99: pct(99.0)?,
            max: *latencies.last()?,
            measured: latencies.len(),
            received,
            put: self.puts.len(),
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.records == 0 || args.interval_ms == 0 || args.batch_size == 0 {
        bail!("--records, --interval-ms and --batch-size must be above 0");
    }
    if args.consumers.is_empty() {
        bail!("--consumers is empty");
    }
    if std::env::var_os("AWS_ENDPOINT_URL_KINESIS").is_none()
        && std::env::var_os("AWS_ENDPOINT_URL").is_none()
    {
        bail!(
            "no Kinesis endpoint: start the emulator (bash scripts/emulators.sh start) and \
             eval \"$(bash scripts/emulators.sh env)\", or run scripts/bench"
        );
    }
    let client = kinesis().await;
    let warmup_records = args.warmup_ms.div_ceil(args.interval_ms) as usize;
    println!(
        "latency: {} records of {} B, one PutRecord every {} ms{}, 1 shard, a fresh stream per \
         consumer; put -> handler (esm) or put -> receive (bare clients), wall clock; the \
         first {} ms of records (about {}) are warm-up, left out of the percentiles",
        args.records,
        args.size,
        args.interval_ms,
        if args.jitter_ms > 0 {
            format!(" (+ 0..={} ms at random)", args.jitter_ms)
        } else {
            String::new()
        },
        args.warmup_ms,
        warmup_records.min(args.records)
    );

    if args.emulator_warmup_records > 0 {
        eprintln!(
            "latency: warming the emulator up ({} records through a bare GetRecords client, \
             not reported) ...",
            args.emulator_warmup_records
        );
        let warmup = Args {
            records: args.emulator_warmup_records,
            jitter_ms: 0,
            ..args.clone()
        };
        measure(&client, &warmup, Consumer::GetRecords)
            .await
            .context("warming the emulator up")?;
    }

    let mut rows = Vec::new();
    for &consumer in &args.consumers {
        eprintln!("latency: measuring {} ...", consumer.label());
        let outcome = measure(&client, &args, consumer)
            .await
            .with_context(|| format!("measuring {}", consumer.label()))?;
        if let Outcome::Unavailable(why) = &outcome {
            println!("{}: not available in this build", consumer.label());
            eprintln!("latency: {}: {why}", consumer.label());
        }
        rows.push((consumer, outcome));
    }
    report(&args, &rows);
    Ok(())
}

/// Measures one consumer on a fresh stream.
async fn measure(client: &Client, args: &Args, consumer: Consumer) -> Result<Outcome> {
    let stream = TestStream::create(client, "bench-latency", 1).await;
    let shards = list_shards(client, &stream).await;
    let [shard] = shards.as_slice() else {
        bail!("stream {} has {} shards, not 1", stream.name, shards.len());
    };
    let shard = shard.shard_id().to_string();
    match consumer {
        Consumer::GetRecords => bare_get_records(client, args, &stream, &shard, None).await,
        Consumer::GetRecordsEsmPacing => {
            let idle = esm::core::pacing::IDLE_POLL_INTERVAL;
            bare_get_records(client, args, &stream, &shard, Some(idle)).await
        }
        Consumer::Subscribe => bare_subscribe(client, args, &stream, &shard).await,
        Consumer::EsmPolling => esm_run(client, args, &stream, &stream_arn(&stream), false).await,
        Consumer::EsmFanOut => {
            let consumer_arn = register_consumer(client, &stream, "esm-bench-latency").await?;
            esm_run(client, args, &stream, &consumer_arn, true).await
        }
    }
}

/// Puts the records, one every `--interval-ms`; returns when it started (wall-clock
/// ms) and what it put.
async fn produce(client: &Client, stream: &str, args: &Args) -> Result<(u64, Vec<Put>)> {
    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    let started_ms = now_ms();
    let mut puts = Vec::with_capacity(args.records);
    for i in 0..args.records {
        let jitter = Duration::from_millis(random_in(0, args.jitter_ms as usize + 1) as u64);
        let slot = start + interval * i as u32 + jitter;
        tokio::time::sleep_until(slot).await;
        let called = Instant::now();
        let put_ms = now_ms();
        let out = client
            .put_record()
            .stream_name(stream)
            .partition_key(format!("key-{i}"))
            .data(Blob::new(record_payload(i, args.size)))
            .send()
            .await
            .with_context(|| format!("PutRecord {i} to stream {stream}"))?;
        puts.push(Put {
            seq: out.sequence_number().to_string(),
            put_ms,
            call_ms: called.elapsed().as_millis() as u64,
            late_ms: called.saturating_duration_since(slot).as_millis() as u64,
        });
    }
    Ok((started_ms, puts))
}

/// Polls `received` every 100 ms until it holds every put record or `grace` has
/// passed; returns the last answer.
async fn wait_for_all(
    puts: &[Put],
    grace: Duration,
    mut received: impl FnMut() -> Result<HashMap<String, u64>>,
) -> Result<HashMap<String, u64>> {
    let deadline = Instant::now() + grace;
    loop {
        let got = received()?;
        if puts.iter().all(|p| got.contains_key(&p.seq)) || Instant::now() >= deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the producer against a bare client running in `reader` (already started and
/// ready), then stops the reader and returns what it saw.
async fn produce_and_collect(
    client: &Client,
    args: &Args,
    stream: &str,
    seen: &Seen,
    stop: CancellationToken,
    reader: tokio::task::JoinHandle<Result<()>>,
) -> Result<(u64, Vec<Put>, HashMap<String, u64>)> {
    let produced = produce(client, stream, args).await;
    let received = match produced {
        Ok((_, ref puts)) => {
            wait_for_all(puts, Duration::from_secs(args.grace_seconds), || {
                if reader.is_finished() {
                    bail!("the reader stopped early");
                }
                Ok(seen.lock().map_err(|_| anyhow!("poisoned"))?.clone())
            })
            .await
        }
        Err(_) => Ok(HashMap::new()),
    };
    stop.cancel();
    let ended = reader.await.context("the reader task panicked")?;
    let (started_ms, puts) = produced?;
    ended.context("the reader failed")?;
    Ok((started_ms, puts, received?))
}

/// GetRecords counts of a bare polling client.
#[derive(Default)]
struct PollStats {
    calls: usize,
    non_empty: usize,
    records: usize,
    most: usize,
    throttled: usize,
    /// How long each call took, in ms.
    call_ms: Vec<u64>,
}

/// A bare GetRecords client: 5 calls/s at most; with `idle`, waits that long after a
/// call that found it caught up (esm's pacing).
async fn bare_get_records(
    client: &Client,
    args: &Args,
    stream: &TestStream,
    shard: &str,
    idle: Option<Duration>,
) -> Result<Outcome> {
    let seen: Seen = Arc::default();
    let stats = Arc::new(Mutex::new(PollStats::default()));
    let ready = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let reader = {
        let (client, stream, shard) = (client.clone(), stream.name.clone(), shard.to_string());
        let (seen, stats, ready, stop) = (seen.clone(), stats.clone(), ready.clone(), stop.clone());
        let idle = idle.unwrap_or(MIN_CALL_INTERVAL);
        tokio::spawn(async move {
            tokio::select! {
                ended = poll_loop(&client, &stream, &shard, idle, &seen, &stats, &ready) => ended,
                () = stop.cancelled() => Ok(()),
            }
        })
    };
    tokio::time::timeout(READY_TIMEOUT, ready.notified())
        .await
        .context("the first GetRecords call did not return within 30 s")?;
    let (produce_started_ms, puts, received) =
        produce_and_collect(client, args, stream, &seen, stop, reader).await?;
    let s = stats.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut call_ms = s.call_ms.clone();
    call_ms.sort_unstable();
    let mut notes = vec![format!(
        "{} GetRecords calls, {} with records ({:.1} records per such call, at most {}); \
         a call took {} ms (median), {} ms at most",
        s.calls,
        s.non_empty,
        s.records as f64 / s.non_empty.max(1) as f64,
        s.most,
        call_ms.get(call_ms.len() / 2).copied().unwrap_or(0),
        call_ms.last().copied().unwrap_or(0)
    )];
    if s.throttled > 0 {
        notes.push(format!("{} calls throttled", s.throttled));
    }
    Ok(Outcome::Measured(Measurement {
        puts,
        received,
        produce_started_ms,
        notes,
    }))
}

/// GetShardIterator (trim horizon, or after `after`) for the shard.
async fn iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    after: Option<&str>,
) -> Result<String> {
    let request = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard);
    let request = match after {
        Some(seq) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    let out = request
        .send()
        .await
        .with_context(|| format!("GetShardIterator {stream}/{shard}"))?;
    out.shard_iterator()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("GetShardIterator {stream}/{shard} returned no iterator"))
}

/// The GetRecords loop: each call after the previous one returned, at most one per
/// [`MIN_CALL_INTERVAL`], and `idle` after a call that found nothing more waiting.
async fn poll_loop(
    client: &Client,
    stream: &str,
    shard: &str,
    idle: Duration,
    seen: &Seen,
    stats: &Mutex<PollStats>,
    ready: &Notify,
) -> Result<()> {
    let mut it = iterator(client, stream, shard, None).await?;
    let mut last: Option<String> = None;
    let mut first = true;
    loop {
        let started = Instant::now();
        let result = client
            .get_records()
            .shard_iterator(&it)
            .limit(GET_RECORDS_LIMIT)
            .send()
            .await;
        let got_ms = now_ms();
        let wait = match result {
            Ok(out) => {
                let records = out.records();
                {
                    let mut map = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                    for r in records {
                        map.entry(r.sequence_number().to_string()).or_insert(got_ms);
                    }
                    let mut s = stats.lock().map_err(|_| anyhow!("poisoned"))?;
                    s.calls += 1;
                    s.call_ms.push(started.elapsed().as_millis() as u64);
                    if !records.is_empty() {
                        s.non_empty += 1;
                        s.records += records.len();
                        s.most = s.most.max(records.len());
                    }
                }
                if let Some(r) = records.last() {
                    last = Some(r.sequence_number().to_string());
                }
                if first {
                    first = false;
                    ready.notify_one();
                }
                let behind = out.millis_behind_latest().unwrap_or(0) > 0
                    || records.len() >= GET_RECORDS_LIMIT as usize;
                it = out
                    .next_shard_iterator()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("shard {shard} closed during the benchmark"))?;
                if behind {
                    MIN_CALL_INTERVAL
                } else {
                    idle.max(MIN_CALL_INTERVAL)
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_expired_iterator_exception()) =>
            {
                it = iterator(client, stream, shard, last.as_deref()).await?;
                Duration::ZERO
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) =>
            {
                stats.lock().map_err(|_| anyhow!("poisoned"))?.throttled += 1;
                Duration::from_secs(1)
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("GetRecords {stream}/{shard}")));
            }
        };
        tokio::time::sleep_until(started + wait).await;
    }
}

/// Registers a stream consumer and waits until it is ACTIVE; returns its ARN.
async fn register_consumer(client: &Client, stream: &str, name: &str) -> Result<String> {
    let arn = stream_arn(stream);
    let out = client
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name(name)
        .send()
        .await
        .with_context(|| format!("RegisterStreamConsumer {name} on {arn}"))?;
    let consumer_arn = out
        .consumer()
        .map(|c| c.consumer_arn().to_string())
        .ok_or_else(|| anyhow!("RegisterStreamConsumer returned no consumer"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let described = client
            .describe_stream_consumer()
            .consumer_arn(&consumer_arn)
            .send()
            .await
            .with_context(|| format!("DescribeStreamConsumer {consumer_arn}"))?;
        if described
            .consumer_description()
            .is_some_and(|d| d.consumer_status() == &ConsumerStatus::Active)
        {
            return Ok(consumer_arn);
        }
        if Instant::now() >= deadline {
            bail!("consumer {consumer_arn} was not ACTIVE within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a bare SubscribeToShard client saw.
#[derive(Default)]
struct PushStats {
    subscriptions: usize,
    /// Errors as first event (or from `send()`), each followed by a new subscription.
    errors: usize,
    /// Wall-clock ms of every event.
    event_ms: Vec<u64>,
    /// Records in each event.
    sizes: Vec<usize>,
}

/// A bare SubscribeToShard client on a consumer of the stream.
async fn bare_subscribe(
    client: &Client,
    args: &Args,
    stream: &TestStream,
    shard: &str,
) -> Result<Outcome> {
    let consumer_arn = register_consumer(client, stream, "bare-subscriber").await?;
    let seen: Seen = Arc::default();
    let stats = Arc::new(Mutex::new(PushStats::default()));
    let ready = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let reader = {
        let (client, shard) = (client.clone(), shard.to_string());
        let (seen, stats, ready, stop) = (seen.clone(), stats.clone(), ready.clone(), stop.clone());
        let arn = consumer_arn.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = subscribe_loop(&client, &arn, &shard, &seen, &stats, &ready) => ended,
                () = stop.cancelled() => Ok(()),
            }
        })
    };
    tokio::time::timeout(READY_TIMEOUT, ready.notified())
        .await
        .context("no SubscribeToShard event within 30 s")?;
    let (produce_started_ms, puts, received) =
        produce_and_collect(client, args, stream, &seen, stop, reader).await?;
    let s = stats.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut gaps: Vec<u64> = s.event_ms.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let non_empty: Vec<usize> = s.sizes.iter().copied().filter(|&n| n > 0).collect();
    let mut notes = vec![format!(
        "{} events in {} subscription(s); time between events: median {} ms, min {} ms, max {} ms",
        s.event_ms.len(),
        s.subscriptions,
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        gaps.first().copied().unwrap_or(0),
        gaps.last().copied().unwrap_or(0),
    )];
    notes.push(format!(
        "{} events with records ({:.1} records per such event, at most {})",
        non_empty.len(),
        non_empty.iter().sum::<usize>() as f64 / non_empty.len().max(1) as f64,
        non_empty.iter().max().copied().unwrap_or(0)
    ));
    if s.errors > 0 {
        notes.push(format!(
            "{} subscription errors (subscribed again)",
            s.errors
        ));
    }
    Ok(Outcome::Measured(Measurement {
        puts,
        received,
        produce_started_ms,
        notes,
    }))
}

/// Subscribes (from the trim horizon, then after the last continuation sequence
/// number) for as long as it runs, noting when each record's event arrived.
async fn subscribe_loop(
    client: &Client,
    consumer_arn: &str,
    shard: &str,
    seen: &Seen,
    stats: &Mutex<PushStats>,
    ready: &Notify,
) -> Result<()> {
    const MAX_ERRORS_IN_A_ROW: u32 = 5;
    let mut after: Option<String> = None;
    let mut errors_in_a_row = 0;
    let mut first = true;
    loop {
        let position = match &after {
            Some(seq) => StartingPosition::builder()
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            None => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon),
        }
        .build()
        .context("StartingPosition")?;
        let sent = client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard)
            .starting_position(position)
            .send()
            .await;
        let mut output = match sent {
            Ok(output) => output,
            Err(e) => {
                errors_in_a_row += 1;
                stats.lock().map_err(|_| anyhow!("poisoned"))?.errors += 1;
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                    return Err(anyhow::Error::new(e).context("SubscribeToShard kept failing"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        stats.lock().map_err(|_| anyhow!("poisoned"))?.subscriptions += 1;
        loop {
            match output.event_stream.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    let got_ms = now_ms();
                    errors_in_a_row = 0;
                    let records = event.records();
                    {
                        let mut map = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                        for r in records {
                            map.entry(r.sequence_number().to_string()).or_insert(got_ms);
                        }
                        let mut s = stats.lock().map_err(|_| anyhow!("poisoned"))?;
                        s.event_ms.push(got_ms);
                        s.sizes.push(records.len());
                    }
                    let continuation = event.continuation_sequence_number();
                    let newest = records.last().map(|r| r.sequence_number());
                    // The later of the two: where a new subscription picks up.
                    after = [Some(continuation), newest, after.as_deref()]
                        .into_iter()
                        .flatten()
                        .filter(|s| !s.is_empty())
                        .max_by(|a, b| seq_cmp(a, b))
                        .map(str::to_string);
                    if first {
                        first = false;
                        ready.notify_one();
                    }
                }
                Ok(Some(_)) => {} // an event type this SDK does not know
                Ok(None) => break,
                Err(e) => {
                    // An error arrives as the first event (e.g. ResourceInUse while the
                    // previous subscription is still held): subscribe again.
                    errors_in_a_row += 1;
                    stats.lock().map_err(|_| anyhow!("poisoned"))?.errors += 1;
                    if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                        return Err(anyhow::Error::new(e)
                            .context("the SubscribeToShard event stream kept failing"));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// `esm-recorder`, next to this binary (same profile).
fn recorder_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let path = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .join("esm-recorder");
    if !path.exists() {
        bail!(
            "{} is missing: build it in the same profile (cargo build --release -p esm-e2e \
             --bin esm-recorder), or run scripts/bench",
            path.display()
        );
    }
    Ok(path)
}

/// esm (`esm-recorder run`) on `source_arn`; `fan_out`: an exit with code 2 (the
/// config refused) means "not available in this build".
async fn esm_run(
    client: &Client,
    args: &Args,
    stream: &TestStream,
    source_arn: &str,
    fan_out: bool,
) -> Result<Outcome> {
    recorder_path()?;
    let dir = tempfile::tempdir().context("a temporary directory")?;
    // One mapping into the recorder, no batching window; with fan-out, through the
    // consumer `source_arn`.
    let extra = format!(
        "batch_size = {}\nmaximum_batching_window_in_seconds = 0\n",
        args.batch_size
    );
    let config = if fan_out {
        esm_e2e::write_fanout_config(
            dir.path(),
            "latency",
            &stream.name,
            source_arn,
            &extra,
            "function = \"recorder\"\n",
        )
    } else {
        esm_e2e::write_config(dir.path(), "latency", &stream.name, &extra)
    };
    // The recorder's second handler opens its file even when unused: keep it in `dir`.
    let windows = dir.path().join("windows.jsonl");
    let windows = windows.to_string_lossy();
    let env = [
        ("ESM_LOG", args.esm_log.as_str()),
        ("RECORDER_WINDOWS", windows.as_ref()),
    ];
    let mut esm = Esm::start(dir.path(), &config, &env);

    let deadline = Instant::now() + ESM_READY_TIMEOUT;
    loop {
        if let Some(status) = esm.exit_status().context("esm's exit status")? {
            let log = esm.log_text();
            if fan_out && status.code() == Some(i32::from(esm::cli::EXIT_BAD_CONFIG)) {
                let why = log
                    .lines()
                    .find(|l| l.contains("not supported"))
                    .or_else(|| log.lines().find(|l| !l.trim().is_empty()))
                    .unwrap_or("esm exited with code 2 (config refused)");
                return Ok(Outcome::Unavailable(why.trim().to_string()));
            }
            bail!("esm exited with {status} before reading; log:\n{log}");
        }
        if esm.log_text().contains(ESM_READY_LINE) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "latency: esm runs but did not log {ESM_READY_LINE:?} within {} s; \
                 putting anyway",
                ESM_READY_TIMEOUT.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let produced = produce(client, stream, args).await;
    let received = match &produced {
        Ok((_, puts)) => {
            wait_for_all(puts, Duration::from_secs(args.grace_seconds), || {
                if let Some(status) = esm.exit_status().context("esm's exit status")? {
                    bail!("esm exited with {status}; log:\n{}", esm.log_text());
                }
                Ok(first_starts(&esm.out))
            })
            .await
        }
        Err(_) => Ok(HashMap::new()),
    };
    let out = esm.out.clone();
    let log = esm.log.clone();
    let status = esm.terminate(Duration::from_secs(30));
    let (produce_started_ms, puts) = produced?;
    let received = received?;
    if !status.success() {
        bail!(
            "esm exited with {status} on SIGTERM; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    if args.keep_esm_dirs {
        eprintln!("latency: esm's files kept in {}", dir.keep().display());
    }
    let batches = read_batches(&out);
    let sizes: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
    let notes = vec![format!(
        "{} invocations ({:.1} records each, at most {})",
        sizes.len(),
        sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64,
        sizes.iter().max().copied().unwrap_or(0)
    )];
    Ok(Outcome::Measured(Measurement {
        puts,
        received,
        produce_started_ms,
        notes,
    }))
}

/// The `started_ms` of the first invocation that carried each record.
fn first_starts(out: &Path) -> HashMap<String, u64> {
    let mut map = HashMap::new();
    for batch in read_batches(out) {
        for r in batch.records {
            map.entry(r.seq).or_insert(batch.started_ms);
        }
    }
    map
}

/// Prints the table, the notes and the README line.
fn report(args: &Args, rows: &[(Consumer, Outcome)]) {
    let width = rows
        .iter()
        .map(|(c, _)| c.label().len())
        .max()
        .unwrap_or(0)
        .max("consumer".len());
    println!();
    println!(
        "{:<width$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  (latency in ms)",
        "consumer", "p50", "p90", "p99", "max", "received"
    );
    let mut readme = Vec::new();
    for (consumer, outcome) in rows {
        let label = consumer.label();
        match outcome {
            Outcome::Unavailable(_) => {
                println!("{label:<width$}  not available in this build");
                readme.push(format!("{label} n/a"));
            }
            Outcome::Measured(m) => match m.figures(args.warmup_ms) {
                Some(f) => {
                    println!(
                        "{label:<width$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}",
                        f.p50,
                        f.p90,
                        f.p99,
                        f.max,
                        format!("{}/{}", f.received, f.put)
                    );
                    readme.push(format!(
                        "{label} {}/{}/{}/{}{}",
                        f.p50,
                        f.p90,
                        f.p99,
                        f.max,
                        if f.received < f.put {
                            format!(" ({} of {} received)", f.received, f.put)
                        } else {
                            String::new()
                        }
                    ));
                }
                None => {
                    let received = m
                        .puts
                        .iter()
                        .filter(|p| m.received.contains_key(&p.seq))
                        .count();
                    println!(
                        "{label:<width$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}",
                        "-",
                        "-",
                        "-",
                        "-",
                        format!("{received}/{}", m.puts.len())
                    );
                    readme.push(format!("{label}: nothing after the warm-up"));
                }
            },
        }
    }
    println!();
    for (consumer, outcome) in rows {
        if let Outcome::Measured(m) = outcome {
            let measured = m.figures(args.warmup_ms).map_or(0, |f| f.measured);
            println!(
                "note: {}: {} records in the percentiles; {}; {}",
                consumer.label(),
                measured,
                m.notes.join("; "),
                m.producer_note(args.interval_ms)
            );
        }
    }
    let measured = rows.iter().filter_map(|(_, o)| match o {
        Outcome::Measured(m) => Some(m),
        Outcome::Unavailable(_) => None,
    });
    let (late, total) = measured.fold((0, 0), |(late, total), m| {
        (late + m.late_puts(args.interval_ms), total + m.puts.len())
    });
    // A few late puts are the machine's hiccups; more than 1% is a slow emulator.
    if late * 100 > total {
        println!(
            "warning: {late} of {total} puts started over {} ms after their slot: the \
             emulator (or the machine) was slow, which inflates the figures; is something \
             else using this emulator? (a private one: ESM_EMULATORS_DIR, ESM_KINESIS_PORT, \
             see scripts/emulators.sh)",
            args.interval_ms / 2
        );
    }
    println!();
    println!(
        "README: put-to-handler latency through kinesis-local, 1 shard, one record every {} ms, \
         esm batch_size {} and no batching window, p50/p90/p99/max in ms (first {} s excluded): {}.",
        args.interval_ms,
        args.batch_size,
        args.warmup_ms as f64 / 1000.0,
        readme.join("; ")
    );
}
