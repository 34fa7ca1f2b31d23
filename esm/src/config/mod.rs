//! The config file (TOML, SPEC §2): its types, and reading and checking it.
//!
//! Why it works this way: a stream processor that starts on a half-right
//! config fails later, mid-stream, one mistake per restart, or worse, runs
//! with a setting the user did not mean. So [`load`] and [`parse`] read the
//! whole file before anything starts and report *every* problem at once, each
//! on its own line with its path, the value found and what is allowed
//! (`mapping[orders].batch_size: 20000 is out of range 1..=10000`); nothing
//! starts on a bad config.
//!
//! Checking is two passes:
//! 1. validation (`walk.rs`, `keys.rs`, `mapping.rs`): the TOML table is walked by hand,
//!    not deserialized, so one pass finds every unknown key (with a
//!    suggestion), wrong type, out-of-range value, bad ARN, missing key,
//!    duplicate name and combination Lambda rejects, and can say which key
//!    each is about. Problems come out in file order.
//! 2. support ([`check_supported`], `support.rs`): settings that are valid but
//!    not built yet are rejected rather than silently ignored.
//!
//! Names, ranges and defaults are Lambda's `CreateEventSourceMapping`
//! parameters in snake_case; the few esm extensions are marked as such.
//! A mapping is shown in problems as `mapping[NAME]`, or as `mapping[INDEX]`
//! (counting from 0) when it has no valid, unique name.

mod arn;
mod keys;
mod mapping;
mod problems;
mod support;
mod walk;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Table;

pub use arn::{DestinationArn, DestinationKind, EventSourceArn};
pub use keys::MappingConfig;
pub use problems::{Problem, Problems};
pub use support::check_supported;

use walk::{Positions, Reader, Sink};

/// The tests' name for a mapping's start position, from before `starting_position`
/// became a [`crate::core::checkpoint::StartAt`].
#[cfg(test)]
use crate::core::checkpoint::StartAt as StartingPosition;

/// The keys the root table may have.
const ROOT_KEYS: &[&str] = &[
    "shutdown_timeout_seconds",
    "max_buffered_mb",
    "store",
    "server",
    "mapping",
];

/// `max_buffered_mb` when the file gives none: 1 GiB.
const DEFAULT_MAX_BUFFERED_MB: usize = 1024;

/// Bytes in one MiB, the unit of `max_buffered_mb`.
const MIB: usize = 1024 * 1024;

/// The keys `[store]` may have.
const STORE_KEYS: &[&str] = &[
    "kind",
    "path",
    "commit_interval_ms",
    "table",
    "create_table",
    "region",
    "lease_duration_seconds",
    "max_leases_to_steal",
];

/// The `[store]` keys only `kind = "dynamodb"` takes.
const DYNAMODB_KEYS: &[&str] = &[
    "table",
    "create_table",
    "region",
    "lease_duration_seconds",
    "max_leases_to_steal",
];

/// The keys `[server]` may have.
const SERVER_KEYS: &[&str] = &["listen"];

/// `[store] commit_interval_ms` when the file gives none.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(10);

/// The store path when `[store]` gives none.
const DEFAULT_STORE_PATH: &str = "./esm-state";

/// The server address when `[server]` gives none.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9090,
));

/// A whole, valid config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a shutdown waits for in-flight invocations
    /// (`shutdown_timeout_seconds`, 0..=3600, default 30).
    pub shutdown_timeout: Duration,
    /// The process-wide memory budget, in bytes, for records held by all
    /// shards of all mappings (read and not yet done): `max_buffered_mb`
    /// (an esm extension, 16..=1048576 MiB, default 1024) × 1024 × 1024.
    pub max_buffered_bytes: usize,
    /// Where checkpoints and leases are kept (`[store]`).
    pub store: StoreConfig,
    /// The metrics and health server; `None` when there is no `[server]` table.
    pub server: Option<ServerConfig>,
    /// The event source mappings, in file order; at least one.
    pub mappings: Vec<MappingConfig>,
}

/// Where checkpoints and leases are kept (`[store] kind`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// `kind = "local"` (the default): an embedded, crash-safe file store at
    /// `path` (default `./esm-state`, relative to the config file's directory
    /// when the config was [`load`]ed).
    Local {
        /// The store's directory.
        path: PathBuf,
        /// `commit_interval_ms` (an esm extension, 0..=1000, default 10): one durable
        /// commit serves every checkpoint saved within this interval.
        commit_interval: Duration,
    },
    /// `kind = "dynamodb"`: a DynamoDB table shared by several instances
    /// (`table` required).
    DynamoDb {
        /// The table's name.
        table: String,
        /// `create_table` (default false): create the table when it is missing.
        create_table: bool,
        /// `region`: the table's region (default: the first mapping's stream's).
        region: Option<String>,
        /// `lease_duration_seconds` (3..=300, default 10) and `max_leases_to_steal`
        /// (1..=100, default 1).
        lease: crate::core::lease::LeaseRules,
    },
}

/// The `/metrics`, `/healthz`, `/readyz` and `/status` server (`[server]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The address to listen on (`listen`, default `127.0.0.1:9090`).
    pub listen: SocketAddr,
}

/// The function a mapping invokes.
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionConfig {
    /// A handler registered in-process under `name` (`function = "NAME"`, or
    /// `[mapping.function] name = "NAME"`).
    InProcess {
        /// The handler's registered name.
        name: String,
        /// Invocation timeout (`timeout_seconds`, 1..=900, default 3).
        timeout: Duration,
    },
    /// Worker processes speaking the Lambda Runtime API
    /// (`[mapping.function] command = [...]`).
    Command {
        /// The program and its arguments.
        command: Vec<String>,
        /// How many worker processes (`concurrency`, 1..=1000, default 1).
        concurrency: u32,
        /// Invocation timeout (`timeout_seconds`, 1..=900, default 3).
        timeout: Duration,
        /// Lambda's `MemorySize` in MB (`memory_size`, 128..=10240, default
        /// 128). Only reported to the worker, in
        /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`; esm sets no memory limit.
        memory_size: u32,
        /// The handler, given to the worker as `_HANDLER` (`handler`,
        /// default the command's first element).
        handler: String,
        /// Variables added to the worker's environment (`environment`, a
        /// table of strings), like Lambda's `Environment.Variables`.
        environment: BTreeMap<String, String>,
    },
}

/// Reads and checks the config file at `path`; a relative `store.path` is
/// taken relative to the file's directory. An unreadable file is one problem
/// at path `config`.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem::new(
            "config",
            format!("cannot read {}: {e}", path.display()),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse_with_base(&text, base)
}

/// Checks config `text`, leaving a relative `store.path` as written.
pub fn parse(text: &str) -> Result<Config, Problems> {
    parse_with_base(text, Path::new(""))
}

/// Checks config `text`, taking a relative `store.path` relative to `base_dir`.
///
/// On error, returns every problem found: a TOML syntax error alone, else
/// the validation problems in file order followed by the not-supported ones.
pub fn parse_with_base(text: &str, base_dir: &Path) -> Result<Config, Problems> {
    let (config, mut problems) = validate(text, base_dir).map_err(|p| Problems(vec![p]))?;
    problems.extend(check_supported(&config));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(Problems(problems))
    }
}

/// The validation pass alone: the config as read (defaults standing in for
/// anything missing or wrong) and its problems in file order, or the TOML
/// syntax error.
fn validate(text: &str, base_dir: &Path) -> Result<(Config, Vec<Problem>), Problem> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_problem(text, &e))?;
    let mut sink = Sink::default();
    let config = read_config(&table, base_dir, &mut sink);
    Ok((config, sink.into_sorted(&Positions::of(text))))
}

/// A TOML syntax error as one problem at `config`, with its line and column.
fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let message = match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(
                "TOML syntax error at line {line}, column {column}: {}",
                error.message()
            )
        }
        None => format!("TOML syntax error: {}", error.message()),
    };
    Problem::new("config", message)
}

/// Reads the root table; defaults stand in for anything missing or wrong.
fn read_config(table: &Table, base_dir: &Path, sink: &mut Sink) -> Config {
    let root = Reader::new(table, "", "", ROOT_KEYS);
    root.check_unknown(sink);
    let shutdown_timeout = root
        .seconds_in(sink, "shutdown_timeout_seconds", 0..=3600)
        .unwrap_or(Duration::from_secs(30));
    let max_buffered_mb = root
        .int_in(sink, "max_buffered_mb", 16..=1_048_576)
        .unwrap_or(DEFAULT_MAX_BUFFERED_MB);
    let max_buffered_bytes = max_buffered_mb.saturating_mul(MIB);
    let store = read_store(&root, base_dir, sink);
    let server = root.table(sink, "server", SERVER_KEYS).map(|server| {
        server.check_unknown(sink);
        let listen = server.string(sink, "listen").and_then(|s| match s.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                server.problem(
                    sink,
                    "listen",
                    format!(
                        "{} is not an IP address and port (e.g. 127.0.0.1:9090)",
                        problems::quote(s)
                    ),
                );
                None
            }
        });
        ServerConfig {
            listen: listen.unwrap_or(DEFAULT_LISTEN),
        }
    });
    let mappings = mapping::read_mappings(&root, sink);
    Config {
        shutdown_timeout,
        max_buffered_bytes,
        store,
        server,
        mappings,
    }
}

/// Reads `[store]`.
fn read_store(root: &Reader<'_>, base_dir: &Path, sink: &mut Sink) -> StoreConfig {
    let default = || StoreConfig::Local {
        path: resolve(DEFAULT_STORE_PATH, base_dir),
        commit_interval: DEFAULT_COMMIT_INTERVAL,
    };
    let Some(store) = root.table(sink, "store", STORE_KEYS) else {
        return default();
    };
    store.check_unknown(sink);
    let kind = if store.has("kind") {
        store.one_of(sink, "kind", &["local", "dynamodb"])
    } else {
        Some("local")
    };
    let path = store.non_empty_string(sink, "path");
    let commit_interval = store
        .int_in(sink, "commit_interval_ms", 0..=1000)
        .map_or(DEFAULT_COMMIT_INTERVAL, Duration::from_millis);
    let table = store.string(sink, "table");
    let create_table = store.bool(sink, "create_table").unwrap_or(false);
    let region = store.non_empty_string(sink, "region");
    if let Some(r) = region {
        if !is_region(r) {
            store.problem(
                sink,
                "region",
                format!(
                    "{} is not an AWS region name (like us-east-1)",
                    problems::quote(r)
                ),
            );
        }
    }
    let defaults = crate::core::lease::LeaseRules::DEFAULT;
    let lease = crate::core::lease::LeaseRules {
        duration: store
            .seconds_in(sink, "lease_duration_seconds", 3..=300)
            .unwrap_or(defaults.duration),
        max_steal: store
            .int_in(sink, "max_leases_to_steal", 1..=100)
            .unwrap_or(defaults.max_steal),
    };
    match kind {
        Some("dynamodb") => {
            for key in ["path", "commit_interval_ms"] {
                if store.has(key) {
                    store.problem(sink, key, "only allowed with kind = \"local\"");
                }
            }
            if !store.require(sink, "table") {
                return default();
            }
            match table {
                Some(t) if is_table_name(t) => StoreConfig::DynamoDb {
                    table: t.to_string(),
                    create_table,
                    region: region.map(str::to_string),
                    lease,
                },
                Some(t) => {
                    store.problem(
                        sink,
                        "table",
                        format!(
                            "{} is not a DynamoDB table name (3 to 255 characters of A-Z a-z 0-9 _ . -)",
                            problems::quote(t)
                        ),
                    );
                    default()
                }
                None => default(),
            }
        }
        Some(_) => {
            for key in DYNAMODB_KEYS {
                if store.has(key) {
                    store.problem(sink, key, "only allowed with kind = \"dynamodb\"");
                }
            }
            StoreConfig::Local {
                path: resolve(path.unwrap_or(DEFAULT_STORE_PATH), base_dir),
                commit_interval,
            }
        }
        None => default(),
    }
}

/// Whether `name` looks like an AWS region name (`us-east-1`, `eu-central-2`).
fn is_region(name: &str) -> bool {
    name.len() <= 32
        && name.split('-').count() >= 3
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `name` is a valid DynamoDB table name.
fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `path` taken relative to `base_dir` unless it is absolute (or there is no base).
fn resolve(path: &str, base_dir: &Path) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() || base_dir.as_os_str().is_empty() {
        return path.to_path_buf();
    }
    let rest: PathBuf = path
        .components()
        .skip_while(|c| matches!(c, Component::CurDir))
        .collect();
    base_dir.join(rest)
}

impl Config {
    /// One line for `esm validate`, e.g.
    /// `valid: 2 mappings (orders, payments); store local at ./esm-state`.
    pub fn summary(&self) -> String {
        let count = self.mappings.len();
        let names: Vec<String> = self
            .mappings
            .iter()
            .map(|m| {
                if m.enabled {
                    m.name.clone()
                } else {
                    format!("{} disabled", m.name)
                }
            })
            .collect();
        let store = match &self.store {
            StoreConfig::Local { path, .. } => format!("store local at {}", path.display()),
            StoreConfig::DynamoDb { table, .. } => format!("store dynamodb table {table}"),
        };
        let mut line = format!(
            "valid: {count} mapping{} ({}); {store}",
            if count == 1 { "" } else { "s" },
            names.join(", ")
        );
        if let Some(server) = &self.server {
            line.push_str(&format!("; server on {}", server.listen));
        }
        line
    }
}
