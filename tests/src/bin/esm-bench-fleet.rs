//! A fleet of esm instances on one 8-shard stream, sharing a DynamoDB lease table:
//! records/s for 1, 2 and 3 instances, and the failover time of a killed instance
//! against the configured lease duration.
//!
//! `cargo run --release -p esm-e2e --bin esm-bench-fleet` (the emulators must be up
//! and `esm-recorder` built in release: `scripts/bench` does it all).
//!
//! - **Throughput.** Each instance is an `esm-recorder` process whose handler sleeps
//!   `--sleep-ms` per invocation of `--batch-size` records, and runs at most
//!   `--workers` invocations at once (`RECORDER_MAX_CONCURRENT`): an instance with a
//!   fixed number of workers, the capacity a second and third instance add. For each
//!   fleet size a fresh stream and table are drained from the trim horizon; the rate
//!   is the records divided by the time from the first invocation's start to the last
//!   invocation's end, start-up balancing included.
//! - **Failover.** Two instances hold 4 shards each; one is SIGKILLed; the time until
//!   the table shows every shard held by the survivor is the failover time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use esm_e2e::fleet::{dynamodb, instance_name, lease_rows, split, wait_rows, write_fleet_config};
use esm_e2e::{count_records, kinesis, put_records, read_batches, unique_name, Esm, TestStream};

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
struct Args {
    /// Records per drain (spread over 8 shards).
    #[arg(long, default_value_t = 8_000)]
    records: usize,
    /// Milliseconds the handler sleeps per invocation.
    #[arg(long, default_value_t = 50)]
    sleep_ms: u64,
    /// Invocations each instance runs at once.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Records per invocation.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// The fleet sizes to drain with.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    instances: Vec<usize>,
    /// `lease_duration_seconds` for the failover measurement (KCL's default: 10).
    #[arg(long, default_value_t = 10)]
    lease_seconds: u64,
    /// `lease_duration_seconds` for the throughput runs.
    #[arg(long, default_value_t = 3)]
    throughput_lease_seconds: u64,
}

const SHARDS: i32 = 8;
const MAPPING: &str = "fleet";

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let client = kinesis().await;
    let ddb = dynamodb().await;
    println!(
        "fleet: {} records on {SHARDS} shards, batch_size {}, handler sleeps {} ms, {} workers per instance",
        args.records, args.batch_size, args.sleep_ms, args.workers
    );
    let mut first: Option<f64> = None;
    for &n in &args.instances {
        let stream = TestStream::create(&client, "bench-fleet", SHARDS).await;
        let put = put_records(&client, &stream, 0, args.records, 100, 1_000).await;
        if put.len() != args.records {
            return Err(format!("put {} of {} records", put.len(), args.records).into());
        }
        let table = unique_name("esm-bench-fleet");
        let env = [
            ("RECORDER_DELAY_MS", args.sleep_ms.to_string()),
            ("RECORDER_MAX_CONCURRENT", args.workers.to_string()),
            ("ESM_LOG", "warn".to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let dirs: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let mut fleet: Vec<Esm> = dirs
            .iter()
            .map(|dir| {
                let config = write_fleet_config(
                    dir.path(),
                    MAPPING,
                    &stream,
                    &table,
                    args.throughput_lease_seconds,
                    &format!("batch_size = {}\n", args.batch_size),
                );
                Esm::start(dir.path(), &config, &env)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        let batches = loop {
            let batches: Vec<_> = fleet.iter().flat_map(|e| read_batches(&e.out)).collect();
            if count_records(&batches) >= args.records {
                break batches;
            }
            for esm in &mut fleet {
                esm.assert_running();
            }
            if Instant::now() > deadline {
                return Err(format!("{n} instances did not drain the stream in 600 s").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let start = batches.iter().map(|b| b.started_ms).min().unwrap_or(0);
        let end = batches.iter().map(|b| b.ended_ms).max().unwrap_or(0);
        let took = Duration::from_millis(end.saturating_sub(start).max(1));
        let rate = args.records as f64 / took.as_secs_f64();
        let base = *first.get_or_insert(rate);
        let rows = lease_rows(&ddb, &table, MAPPING).await;
        let mut per_instance: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, esm) in fleet.iter().enumerate() {
            *per_instance.entry(i).or_default() += count_records(&read_batches(&esm.out));
        }
        println!(
            "fleet: {n} instance(s): {rate:.0} records/s ({:.2} s, x{:.2} the first), split at the end {:?}, records per instance {:?}",
            took.as_secs_f64(),
            rate / base,
            split(&rows),
            per_instance.values().collect::<Vec<_>>()
        );
        for esm in fleet {
            esm.stop(Duration::from_secs(30));
        }
    }

    // Failover: two instances, one killed.
    let stream = TestStream::create(&client, "bench-failover", SHARDS).await;
    let table = unique_name("esm-bench-failover");
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut fleet: Vec<Esm> = dirs
        .iter()
        .map(|dir| {
            let config =
                write_fleet_config(dir.path(), MAPPING, &stream, &table, args.lease_seconds, "");
            Esm::start(dir.path(), &config, &[("ESM_LOG", "info")])
        })
        .collect();
    let names: Vec<String> = fleet.iter_mut().map(instance_name).collect();
    let balanced = |rows: &BTreeMap<String, esm_e2e::fleet::LeaseRow>| {
        split(rows) == [4, 4]
            && rows
                .values()
                .all(|r| r.owner.as_ref().is_some_and(|o| names.contains(o)))
    };
    let (_, balanced_at) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(120),
        "a 4/4 split",
        balanced,
    )
    .await;
    let _ = balanced_at;
    let victim = fleet.remove(1);
    victim.kill();
    let killed = Instant::now();
    let survivor = names[0].clone();
    let (_, taken) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(10 * args.lease_seconds),
        "the survivor holding every shard",
        |rows| {
            rows.values()
                .all(|r| r.owner.as_deref() == Some(survivor.as_str()))
        },
    )
    .await;
    let failover = taken - killed;
    println!(
        "fleet: failover of 4 shards after a SIGKILL: {:.2} s with lease_duration_seconds = {} ({:.2}x the lease; bound {:.2} s = lease + 2 renewal periods)",
        failover.as_secs_f64(),
        args.lease_seconds,
        failover.as_secs_f64() / args.lease_seconds as f64,
        args.lease_seconds as f64 * 5.0 / 3.0
    );
    for esm in fleet {
        esm.stop(Duration::from_secs(30));
    }
    Ok(())
}
