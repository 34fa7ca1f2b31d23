//! Several esm instances on one stream, sharing a DynamoDB lease table on the moto
//! server (`scripts/test` starts it and sets `AWS_ENDPOINT_URL_DYNAMODB`). The tests
//! read the table directly to see who holds what and where each checkpoint is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::{stream_arn, wait_for_log, Esm};

/// A DynamoDB client for the emulator. Under `CI` a missing emulator is a failure.
pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some(),
        "AWS_ENDPOINT_URL_DYNAMODB is not set: run the tests with scripts/test, which starts moto"
    );
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// Writes `dir/esm.toml`: one mapping of `stream` on the DynamoDB store `table`
/// (created on first use) with a lease of `lease_seconds`; `extra` is appended to
/// the `[[mapping]]` table.
pub fn write_fleet_config(
    dir: &Path,
    mapping: &str,
    stream: &str,
    table: &str,
    lease_seconds: u64,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"shutdown_timeout_seconds = 20

[store]
kind = "dynamodb"
table = "{table}"
create_table = true
lease_duration_seconds = {lease_seconds}

[[mapping]]
name = "{mapping}"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
shard_discovery_interval_seconds = 1
{extra}
# Longer than Lambda's 3 s default: a test that pauses an instance (SIGSTOP) for
# longer than that must see its in-flight invocation finish on resume and its
# checkpoint write refused, not the invocation time out.
[mapping.function]
name = "recorder"
timeout_seconds = 30
"#,
        arn = stream_arn(stream),
    );
    let path = dir.join("esm.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// One item of the lease table, as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// Who holds the lease.
    pub owner: Option<String>,
    /// The lease counter.
    pub counter: u64,
    /// The checkpoint's sequence number.
    pub checkpoint: Option<String>,
    /// The shard is finished.
    pub finished: bool,
}

/// Every row of `mapping` in `table`, by shard.
pub async fn lease_rows(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    mapping: &str,
) -> BTreeMap<String, LeaseRow> {
    let out = client
        .query()
        .table_name(table)
        .consistent_read(true)
        .key_condition_expression("#m = :m")
        .expression_attribute_names("#m", "mapping")
        .expression_attribute_values(":m", AttributeValue::S(mapping.to_string()))
        .send()
        .await;
    let Ok(out) = out else {
        // The first instance has not created the table yet.
        return BTreeMap::new();
    };
    let text = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| {
        item.get(k).and_then(|v| v.as_s().ok()).cloned()
    };
    out.items()
        .iter()
        .map(|item| {
            let shard = text(item, "shard").expect("a shard attribute");
            let row = LeaseRow {
                owner: text(item, "owner"),
                counter: item
                    .get("lease_counter")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                checkpoint: text(item, "checkpoint"),
                finished: item
                    .get("finished")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
            };
            (shard, row)
        })
        .collect()
}

/// How many unfinished shards each owner holds (free shards under `""`).
pub fn loads(rows: &BTreeMap<String, LeaseRow>) -> BTreeMap<String, usize> {
    let mut loads = BTreeMap::new();
    for row in rows.values().filter(|r| !r.finished) {
        *loads
            .entry(row.owner.clone().unwrap_or_default())
            .or_default() += 1;
    }
    loads
}

/// The sorted shard counts of the owners in `rows` (a free shard counts as owner "").
pub fn split(rows: &BTreeMap<String, LeaseRow>) -> Vec<usize> {
    let mut split: Vec<usize> = loads(rows).into_values().collect();
    split.sort_unstable();
    split
}

/// Polls the table every 100 ms until `done` holds; returns the rows then and when.
/// Panics after `timeout`, showing the last rows.
pub async fn wait_rows(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    mapping: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&BTreeMap<String, LeaseRow>) -> bool,
) -> (BTreeMap<String, LeaseRow>, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = lease_rows(client, table, mapping).await;
        if done(&rows) {
            return (rows, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; the table: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instance name `esm` logged at start (its lease owner name).
pub fn instance_name(esm: &mut Esm) -> String {
    const LINE: &str = "this instance's name in the lease table";
    wait_for_log(esm, Duration::from_secs(30), LINE, |log| log.contains(LINE));
    let log = esm.log_text();
    let line = log.lines().find(|l| l.contains(LINE)).expect("the line");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("instance="))
        .expect("instance= in the line")
        .to_string()
}
