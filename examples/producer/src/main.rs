//! `kinesis-producer`: puts JSON records into an Amazon Kinesis stream.
//!
//! This is the producer used by the demo (`scripts/demo`), by benchmarks and by
//! tests that need a populated stream. It optionally creates the stream
//! (`--create --shards N`, waiting until it is `ACTIVE`), then puts `--records`
//! records with `PutRecords` in batches of at most 500 entries (and at most
//! 5 MiB), re-sending only the entries a batch reports as failed, with a short
//! backoff.
//!
//! Each record is a JSON object `{"id":N,"type":"order","pad":"xxx…"}` padded to
//! roughly `--size` bytes, with partition key `key-{N % keys}`. With
//! `--poison-every K`, every K-th record (ids K-1, 2K-1, …) has `"type":"poison"`
//! instead, for the partial-failures example (`examples/partial-failures`).
//!
//! Endpoint, region and credentials come only from the standard AWS provider
//! chain, so the same binary talks to AWS or to a local emulator, e.g.
//! `eval "$(scripts/emulators.sh env)"` first:
//!
//! ```sh
//! kinesis-producer --stream demo --create --shards 3 --records 1000
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_config::BehaviorVersion;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;
use clap::Parser;

/// Most entries one PutRecords call accepts.
const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes (data plus partition keys) one PutRecords call accepts.
const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Largest data blob of one record.
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// How many times one batch's failed entries are re-sent before giving up.
const MAX_PUT_ATTEMPTS: u32 = 20;
/// How long `--create` waits for the stream to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Puts JSON records into a Kinesis stream (demo, benchmark and test producer).
#[derive(Debug, Parser)]
#[command(name = "kinesis-producer", version, about)]
struct Args {
    /// Name of the stream to put records into.
    #[arg(long)]
    stream: String,

    /// Create the stream first if it does not exist, and wait until it is ACTIVE.
    #[arg(long)]
    create: bool,

    /// Shard count of a stream created with --create.
    #[arg(long, default_value_t = 1, requires = "create", value_parser = clap::value_parser!(i32).range(1..))]
    shards: i32,

    /// Number of records to put.
    #[arg(long, default_value_t = 1000)]
    records: u64,

    /// Approximate size of each record's data, in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,

    /// Number of distinct partition keys (`key-0` … `key-{K-1}`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,

    /// Make every K-th record `"type":"poison"` (0: none).
    #[arg(long, value_name = "K", default_value_t = 0)]
    poison_every: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.size > MAX_RECORD_BYTES {
        bail!(
            "--size {} exceeds Kinesis's record limit of {MAX_RECORD_BYTES} bytes",
            args.size
        );
    }

    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let client = Client::new(&config);

    if args.create {
        create_stream(&client, &args.stream, args.shards).await?;
    }
    let shards = open_shard_count(&client, &args.stream).await?;

    let started = Instant::now();
    let mut batch: Vec<PutRecordsRequestEntry> = Vec::with_capacity(MAX_BATCH_RECORDS);
    let mut batch_bytes = 0usize;
    for id in 0..args.records {
        let poison = args.poison_every > 0 && (id + 1) % args.poison_every == 0;
        let data = record_data(id, if poison { "poison" } else { "order" }, args.size);
        let key = format!("key-{}", id % args.keys);
        let entry_bytes = data.len() + key.len();
        if batch.len() == MAX_BATCH_RECORDS || batch_bytes + entry_bytes > MAX_BATCH_BYTES {
            put_batch(&client, &args.stream, std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        batch.push(
            PutRecordsRequestEntry::builder()
                .data(Blob::new(data))
                .partition_key(key)
                .build()
                .context("building a PutRecords entry")?,
        );
        batch_bytes += entry_bytes;
    }
    if !batch.is_empty() {
        put_batch(&client, &args.stream, batch).await?;
    }

    println!(
        "put {} records to {} ({} shards) in {:.2}s",
        args.records,
        args.stream,
        shards,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The JSON data of record `id` of type `kind`, padded to roughly `size` bytes.
fn record_data(id: u64, kind: &str, size: usize) -> Vec<u8> {
    let unpadded = serde_json::json!({ "id": id, "type": kind, "pad": "" }).to_string();
    let pad = "x".repeat(size.saturating_sub(unpadded.len()));
    serde_json::json!({ "id": id, "type": kind, "pad": pad })
        .to_string()
        .into_bytes()
}

/// Creates `stream` with `shards` shards unless it exists, then waits until it is ACTIVE.
async fn create_stream(client: &Client, stream: &str, shards: i32) -> Result<()> {
    match client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
    {
        Ok(_) => {}
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(err) => return Err(err).with_context(|| format!("creating stream {stream}")),
    }

    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .with_context(|| format!("describing stream {stream}"))?;
        let status = summary
            .stream_description_summary()
            .map(|s| s.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "stream {stream} is not ACTIVE after {}s (status {status:?})",
                ACTIVE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of open shards of `stream`.
async fn open_shard_count(client: &Client, stream: &str) -> Result<i32> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .with_context(|| format!("describing stream {stream}"))?;
    summary
        .stream_description_summary()
        .map(|s| s.open_shard_count())
        .with_context(|| format!("stream {stream}: DescribeStreamSummary returned no summary"))
}

/// Puts `entries` with PutRecords, re-sending the entries that failed until all are in.
async fn put_batch(
    client: &Client,
    stream: &str,
    mut entries: Vec<PutRecordsRequestEntry>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=MAX_PUT_ATTEMPTS {
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries.clone()))
            .send()
            .await
            .with_context(|| format!("putting records to {stream}"))?;
        if output.failed_record_count().unwrap_or(0) == 0 {
            return Ok(());
        }
        let results = output.records();
        if results.len() != entries.len() {
            bail!(
                "PutRecords to {stream} answered {} results for {} entries",
                results.len(),
                entries.len()
            );
        }
        let mut last_error = String::new();
        entries = entries
            .into_iter()
            .zip(results)
            .filter_map(|(entry, result)| {
                let code = result.error_code()?;
                last_error = format!("{code}: {}", result.error_message().unwrap_or_default());
                Some(entry)
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        if attempt == MAX_PUT_ATTEMPTS {
            bail!(
                "{} records still failed after {MAX_PUT_ATTEMPTS} attempts to put them to {stream} (last error {last_error})",
                entries.len()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::record_data;

    #[test]
    fn record_data_is_json_padded_to_size() -> anyhow::Result<()> {
        let data = record_data(7, "order", 100);
        assert_eq!(data.len(), 100);
        let value: serde_json::Value = serde_json::from_slice(&data)?;
        assert_eq!(value["id"], 7);
        assert_eq!(value["type"], "order");
        Ok(())
    }

    #[test]
    fn record_data_smaller_than_its_fields_is_unpadded() -> anyhow::Result<()> {
        let value: serde_json::Value = serde_json::from_slice(&record_data(12345, "order", 1))?;
        assert_eq!(value["id"], 12345);
        assert_eq!(value["pad"], "");
        Ok(())
    }

    #[test]
    fn poison_records_say_so() -> anyhow::Result<()> {
        let data = record_data(9, "poison", 100);
        assert_eq!(data.len(), 100);
        let value: serde_json::Value = serde_json::from_slice(&data)?;
        assert_eq!(value["type"], "poison");
        Ok(())
    }
}
