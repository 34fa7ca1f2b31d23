//! Reading the `[[mapping]]` tables: event source mappings with Lambda's
//! `CreateEventSourceMapping` parameter names (in snake_case), ranges and
//! defaults, and the combinations Lambda rejects.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use toml::Value;

use super::arn::{DestinationArn, EventSourceArn};
use super::problems::quote;
use super::walk::{child_anchor, describe, Reader, Sink};
use super::{FunctionConfig, MappingConfig, StartingPosition};

/// The keys a `[[mapping]]` table may have.
const MAPPING_KEYS: &[&str] = &[
    "name",
    "event_source_arn",
    "function",
    "enabled",
    "starting_position",
    "starting_position_timestamp",
    "batch_size",
    "maximum_batching_window_in_seconds",
    "parallelization_factor",
    "maximum_retry_attempts",
    "maximum_record_age_in_seconds",
    "bisect_batch_on_function_error",
    "function_response_types",
    "tumbling_window_in_seconds",
    "deaggregate",
    "filter_criteria",
    "destination_config",
    "get_records_calls_per_second",
    "shard_discovery_interval_seconds",
];

/// The keys a `[mapping.function]` table may have.
const FUNCTION_KEYS: &[&str] = &[
    "name",
    "command",
    "concurrency",
    "timeout_seconds",
    "memory_size",
    "handler",
    "environment",
];

/// The `[mapping.function]` keys that only a `command` function may have.
const COMMAND_ONLY_KEYS: &[&str] = &["concurrency", "memory_size", "handler", "environment"];

/// Lambda's default `MemorySize`, in MB.
const DEFAULT_MEMORY_SIZE: u32 = 128;

/// The environment variables esm sets for every worker, as Lambda does; like
/// Lambda, `environment` may not override them. (`TZ` is set too, but Lambda
/// lets a function override it, and so does esm.)
const RESERVED_ENVIRONMENT: &[&str] = &[
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "LAMBDA_TASK_ROOT",
    "_HANDLER",
];

/// Lambda's limit on the total size of a function's environment variables.
const MAX_ENVIRONMENT_BYTES: usize = 4096;

/// Lambda's starting positions for Kinesis.
const STARTING_POSITIONS: &[&str] = &["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"];

/// Lambda's function response types for Kinesis.
const RESPONSE_TYPES: &[&str] = &["ReportBatchItemFailures"];

/// Lambda's limit on filter patterns per mapping.
const MAX_FILTERS: usize = 5;

/// Lambda's default invocation timeout.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(3);

/// The default GetRecords call budget per shard: all of Kinesis' 5 calls/s.
const DEFAULT_GET_RECORDS_CALLS_PER_SECOND: f64 = 5.0;

/// Whether `name` is a valid mapping name: 1 to 64 of `[A-Za-z0-9_.-]`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// How each mapping is shown in problems: `mapping[NAME]` when its name is
/// valid and not used by an earlier mapping, else `mapping[INDEX]` (from 0).
pub(crate) fn mapping_paths(names: &[Option<&str>]) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| match name {
            Some(name) if is_valid_name(name) && !seen.contains_key(name) => {
                seen.insert(name, i);
                format!("mapping[{name}]")
            }
            _ => format!("mapping[{i}]"),
        })
        .collect()
}

/// Reads the root table's `mapping` array; returns one entry per element,
/// with defaults standing in for anything missing or wrong.
pub(crate) fn read_mappings(root: &Reader<'_>, sink: &mut Sink) -> Vec<MappingConfig> {
    let key = "mapping";
    let items = match root.value(key) {
        None => {
            root.problem(sink, key, "at least one [[mapping]] is required");
            return Vec::new();
        }
        Some(Value::Array(items)) if items.is_empty() => {
            root.problem(sink, key, "at least one [[mapping]] is required");
            return Vec::new();
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            root.wrong_type(sink, key, "an array of tables ([[mapping]])", other);
            return Vec::new();
        }
    };
    let names: Vec<Option<&str>> = items
        .iter()
        .map(|item| item.get("name").and_then(Value::as_str))
        .collect();
    let paths = mapping_paths(&names);
    let mut first_with_name: HashMap<&str, usize> = HashMap::new();
    let mut mappings = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let anchor = child_anchor(&root.anchor_of(key), &i.to_string());
        let Value::Table(table) = item else {
            sink.push(
                &anchor,
                &paths[i],
                format!("expected a table, found {}", describe(item)),
            );
            mappings.push(placeholder());
            continue;
        };
        let reader = Reader::new(table, paths[i].clone(), anchor, MAPPING_KEYS);
        if let Some(name) = names[i].filter(|name| is_valid_name(name)) {
            match first_with_name.get(name) {
                Some(first) => reader.problem(
                    sink,
                    "name",
                    format!(
                        "{} is already the name of mapping[{first}]; names must be unique",
                        quote(name)
                    ),
                ),
                None => {
                    first_with_name.insert(name, i);
                }
            }
        }
        mappings.push(read_mapping(&reader, sink));
    }
    mappings
}

/// A mapping made of defaults, standing in for one that is not a table.
fn placeholder() -> MappingConfig {
    MappingConfig {
        name: String::new(),
        event_source: placeholder_arn(),
        function: FunctionConfig::InProcess {
            name: String::new(),
            timeout: DEFAULT_FUNCTION_TIMEOUT,
        },
        enabled: true,
        starting_position: StartingPosition::TrimHorizon,
        batch_size: 100,
        maximum_batching_window: Duration::ZERO,
        parallelization_factor: 1,
        maximum_retry_attempts: None,
        maximum_record_age: None,
        bisect_batch_on_function_error: false,
        report_batch_item_failures: false,
        tumbling_window: Duration::ZERO,
        deaggregate: true,
        filter_criteria: Vec::new(),
        on_failure_destination: None,
        get_records_calls_per_second: DEFAULT_GET_RECORDS_CALLS_PER_SECOND,
        shard_discovery_interval: Duration::from_secs(10),
    }
}

/// An empty ARN, standing in for a missing or wrong one.
fn placeholder_arn() -> EventSourceArn {
    EventSourceArn {
        arn: String::new(),
        partition: String::new(),
        region: String::new(),
        account: String::new(),
        stream_name: String::new(),
        consumer: None,
    }
}

/// Whole seconds from a value already checked to be in a non-negative range.
fn seconds(i: i64) -> Duration {
    Duration::from_secs(u64::try_from(i).unwrap_or(0))
}

/// Reads one `[[mapping]]` table.
fn read_mapping(r: &Reader<'_>, sink: &mut Sink) -> MappingConfig {
    let defaults = placeholder();
    r.check_unknown(sink);

    let mut name = String::new();
    if r.require(sink, "name") {
        if let Some(n) = r.string(sink, "name") {
            if !is_valid_name(n) {
                r.problem(
                    sink,
                    "name",
                    format!(
                        "{} is not a valid name (1 to 64 characters of A-Z a-z 0-9 _ . -)",
                        quote(n)
                    ),
                );
            }
            name = n.to_string();
        }
    }

    let mut event_source = None;
    if r.require(sink, "event_source_arn") {
        if let Some(s) = r.string(sink, "event_source_arn") {
            match EventSourceArn::parse(s) {
                Ok(arn) => event_source = Some(arn),
                Err(why) => r.problem(
                    sink,
                    "event_source_arn",
                    format!(
                        "{} is not a Kinesis stream or consumer ARN: {why}",
                        quote(s)
                    ),
                ),
            }
        }
    }

    let function = read_function(r, sink);
    let starting_position = read_starting_position(r, sink);

    let batch_size = r.int_in(sink, "batch_size", 1..=10_000);
    let window = r.int_in(sink, "maximum_batching_window_in_seconds", 0..=300);
    let parallelization = r.int_in(sink, "parallelization_factor", 1..=10);
    let retries = r.int_or_unlimited(sink, "maximum_retry_attempts", 0..=10_000);
    let record_age = r.int_or_unlimited(sink, "maximum_record_age_in_seconds", 60..=604_800);
    let tumbling = r.int_in(sink, "tumbling_window_in_seconds", 0..=900);
    let shard_discovery = r.int_in(sink, "shard_discovery_interval_seconds", 1..=3600);
    let get_records = r.positive_number_up_to(sink, "get_records_calls_per_second", 5.0);

    let mut tumbling_window = tumbling.map(seconds).unwrap_or(defaults.tumbling_window);
    if let (Some(t), Some(p)) = (tumbling, parallelization) {
        if t > 0 && p > 1 {
            r.problem(
                sink,
                "tumbling_window_in_seconds",
                format!("a tumbling window ({t}) is not allowed with parallelization_factor = {p}"),
            );
            tumbling_window = defaults.tumbling_window;
        }
    }

    MappingConfig {
        name,
        event_source: event_source.unwrap_or(defaults.event_source),
        function: function.unwrap_or(defaults.function),
        enabled: r.bool(sink, "enabled").unwrap_or(defaults.enabled),
        starting_position: starting_position.unwrap_or(defaults.starting_position),
        batch_size: batch_size
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(defaults.batch_size),
        maximum_batching_window: window
            .map(seconds)
            .unwrap_or(defaults.maximum_batching_window),
        parallelization_factor: parallelization
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(defaults.parallelization_factor),
        maximum_retry_attempts: retries.unwrap_or(None).and_then(|n| u32::try_from(n).ok()),
        maximum_record_age: record_age.unwrap_or(None).map(seconds),
        bisect_batch_on_function_error: r
            .bool(sink, "bisect_batch_on_function_error")
            .unwrap_or(defaults.bisect_batch_on_function_error),
        report_batch_item_failures: read_response_types(r, sink),
        tumbling_window,
        deaggregate: r.bool(sink, "deaggregate").unwrap_or(defaults.deaggregate),
        filter_criteria: read_filter_criteria(r, sink),
        on_failure_destination: read_destination(r, sink),
        get_records_calls_per_second: get_records.unwrap_or(defaults.get_records_calls_per_second),
        shard_discovery_interval: shard_discovery
            .map(seconds)
            .unwrap_or(defaults.shard_discovery_interval),
    }
}

/// Reads `function`: a handler name, or a `[mapping.function]` table.
fn read_function(r: &Reader<'_>, sink: &mut Sink) -> Option<FunctionConfig> {
    let key = "function";
    match r.value(key) {
        None => {
            r.problem(sink, key, "required");
            None
        }
        Some(Value::String(_)) => {
            let name = r.non_empty_string(sink, key)?;
            Some(FunctionConfig::InProcess {
                name: name.to_string(),
                timeout: DEFAULT_FUNCTION_TIMEOUT,
            })
        }
        Some(Value::Table(_)) => {
            let f = r.table(sink, key, FUNCTION_KEYS)?;
            f.check_unknown(sink);
            let name = f.non_empty_string(sink, "name");
            let command = read_command(&f, sink);
            let concurrency = f.int_in(sink, "concurrency", 1..=1000);
            let timeout = f
                .int_in(sink, "timeout_seconds", 1..=900)
                .map(seconds)
                .unwrap_or(DEFAULT_FUNCTION_TIMEOUT);
            let memory_size = f.int_in(sink, "memory_size", 128..=10_240);
            let handler = f.non_empty_string(sink, "handler");
            let environment = read_environment(&f, sink);
            match (f.has("name"), f.has("command")) {
                (true, true) => {
                    f.table_problem(sink, "set either name or command, not both");
                    None
                }
                (false, false) => {
                    f.table_problem(
                        sink,
                        "needs name (an in-process handler) or command (a Runtime API process)",
                    );
                    None
                }
                (true, false) => {
                    for key in COMMAND_ONLY_KEYS {
                        if f.has(key) {
                            f.problem(sink, key, "only allowed with command");
                        }
                    }
                    name.map(|name| FunctionConfig::InProcess {
                        name: name.to_string(),
                        timeout,
                    })
                }
                (false, true) => command.map(|command| FunctionConfig::Command {
                    handler: handler.map_or_else(|| command[0].clone(), str::to_string),
                    command,
                    concurrency: concurrency.and_then(|c| u32::try_from(c).ok()).unwrap_or(1),
                    timeout,
                    memory_size: memory_size
                        .and_then(|m| u32::try_from(m).ok())
                        .unwrap_or(DEFAULT_MEMORY_SIZE),
                    environment,
                }),
            }
        }
        Some(other) => {
            r.wrong_type(
                sink,
                key,
                "a string (an in-process handler's name) or a table",
                other,
            );
            None
        }
    }
}

/// Reads `function.command`: a non-empty array of non-empty strings.
fn read_command(f: &Reader<'_>, sink: &mut Sink) -> Option<Vec<String>> {
    let key = "command";
    let items = f.array(sink, key)?;
    if items.is_empty() {
        f.problem(
            sink,
            key,
            "must not be empty (the program, then its arguments)",
        );
        return None;
    }
    let mut command = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if s.is_empty() => {
                item_problem(f, sink, key, i, "must not be empty".to_string());
            }
            Value::String(s) => command.push(s.clone()),
            other => item_problem(
                f,
                sink,
                key,
                i,
                format!("expected a string, found {}", describe(other)),
            ),
        }
    }
    (command.len() == items.len()).then_some(command)
}

/// Reads `function.environment`: a table of string values whose names are
/// valid for Lambda (`[a-zA-Z][a-zA-Z0-9_]+`), not set by esm itself, and
/// within Lambda's 4 KB total. Invalid entries are left out.
fn read_environment(f: &Reader<'_>, sink: &mut Sink) -> BTreeMap<String, String> {
    let key = "environment";
    let mut environment = BTreeMap::new();
    let table = match f.value(key) {
        None => return environment,
        Some(Value::Table(table)) => table,
        Some(other) => {
            f.wrong_type(sink, key, "a table of strings", other);
            return environment;
        }
    };
    let anchor = f.anchor_of(key);
    let path = f.path_of(key);
    let mut total = 0;
    for (name, value) in table {
        let at_anchor = child_anchor(&anchor, name);
        let at_path = format!("{path}.{name}");
        if !is_environment_name(name) {
            sink.push(
                &at_anchor,
                &at_path,
                "not a valid environment variable name (a letter, then one or more of A-Z a-z 0-9 _)",
            );
        } else if RESERVED_ENVIRONMENT.contains(&name.as_str()) {
            sink.push(
                &at_anchor,
                &at_path,
                "reserved: esm sets it for every worker, as Lambda does",
            );
        } else {
            match value {
                Value::String(v) => {
                    total += name.len() + v.len();
                    environment.insert(name.clone(), v.clone());
                }
                other => sink.push(
                    &at_anchor,
                    &at_path,
                    format!("expected a string, found {}", describe(other)),
                ),
            }
        }
    }
    if total > MAX_ENVIRONMENT_BYTES {
        f.problem(
            sink,
            key,
            format!("{total} bytes of names and values, at most {MAX_ENVIRONMENT_BYTES} are allowed (Lambda's limit)"),
        );
    }
    environment
}

/// Whether `name` is an environment variable name Lambda accepts.
fn is_environment_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Records a problem about element `i` of the array at `key`.
fn item_problem(r: &Reader<'_>, sink: &mut Sink, key: &str, i: usize, message: String) {
    sink.push(
        &child_anchor(&r.anchor_of(key), &i.to_string()),
        &format!("{}[{i}]", r.path_of(key)),
        message,
    );
}

/// Reads `starting_position` and `starting_position_timestamp` together.
fn read_starting_position(r: &Reader<'_>, sink: &mut Sink) -> Option<StartingPosition> {
    let ts_key = "starting_position_timestamp";
    let timestamp = read_timestamp(r, sink);
    if !r.require(sink, "starting_position") {
        return None;
    }
    let position = r.one_of(sink, "starting_position", STARTING_POSITIONS)?;
    match position {
        "AT_TIMESTAMP" => {
            if !r.has(ts_key) {
                r.problem(
                    sink,
                    ts_key,
                    "required with starting_position = \"AT_TIMESTAMP\"",
                );
            }
            timestamp.map(StartingPosition::AtTimestamp)
        }
        other => {
            if r.has(ts_key) {
                r.problem(
                    sink,
                    ts_key,
                    format!(
                        "only allowed with starting_position = \"AT_TIMESTAMP\", not {}",
                        quote(other)
                    ),
                );
            }
            Some(if other == "LATEST" {
                StartingPosition::Latest
            } else {
                StartingPosition::TrimHorizon
            })
        }
    }
}

/// Reads `starting_position_timestamp`: an RFC 3339 string or a TOML
/// offset date-time.
fn read_timestamp(r: &Reader<'_>, sink: &mut Sink) -> Option<DateTime<Utc>> {
    let key = "starting_position_timestamp";
    let example = "e.g. 2026-11-22T00:00:00Z";
    let text = match r.value(key)? {
        Value::String(s) => s.clone(),
        Value::Datetime(d) if d.date.is_some() && d.time.is_some() && d.offset.is_some() => {
            d.to_string()
        }
        Value::Datetime(d) => {
            r.problem(
                sink,
                key,
                format!("{d} is not a date and time with a UTC offset ({example})"),
            );
            return None;
        }
        other => {
            r.wrong_type(sink, key, "an RFC 3339 timestamp", other);
            return None;
        }
    };
    match DateTime::parse_from_rfc3339(&text) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            r.problem(
                sink,
                key,
                format!("{} is not an RFC 3339 timestamp ({example})", quote(&text)),
            );
            None
        }
    }
}

/// Reads `function_response_types`; returns whether `ReportBatchItemFailures` is on.
fn read_response_types(r: &Reader<'_>, sink: &mut Sink) -> bool {
    let key = "function_response_types";
    let Some(items) = r.array(sink, key) else {
        return false;
    };
    let mut report = false;
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if RESPONSE_TYPES.contains(&s.as_str()) => report = true,
            Value::String(s) => {
                item_problem(r, sink, key, i, super::walk::not_one_of(s, RESPONSE_TYPES))
            }
            other => item_problem(
                r,
                sink,
                key,
                i,
                format!("expected a string, found {}", describe(other)),
            ),
        }
    }
    report
}

/// Reads `filter_criteria`: up to five strings, each a JSON object (a filter pattern).
fn read_filter_criteria(r: &Reader<'_>, sink: &mut Sink) -> Vec<serde_json::Value> {
    let key = "filter_criteria";
    let Some(items) = r.array(sink, key) else {
        return Vec::new();
    };
    if items.len() > MAX_FILTERS {
        r.problem(
            sink,
            key,
            format!(
                "{} patterns, at most {MAX_FILTERS} are allowed",
                items.len()
            ),
        );
    }
    let mut patterns = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::String(text) = item else {
            item_problem(
                r,
                sink,
                key,
                i,
                format!(
                    "expected a string (a JSON filter pattern), found {}",
                    describe(item)
                ),
            );
            continue;
        };
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(pattern @ serde_json::Value::Object(_)) => patterns.push(pattern),
            Ok(other) => item_problem(
                r,
                sink,
                key,
                i,
                format!("expected a JSON object (a filter pattern), found {other}"),
            ),
            Err(why) => item_problem(r, sink, key, i, format!("not valid JSON: {why}")),
        }
    }
    patterns
}

/// Reads `[mapping.destination_config.on_failure] destination`.
fn read_destination(r: &Reader<'_>, sink: &mut Sink) -> Option<DestinationArn> {
    let config = r.table(sink, "destination_config", &["on_failure"])?;
    config.check_unknown(sink);
    let on_failure = config.table(sink, "on_failure", &["destination"])?;
    on_failure.check_unknown(sink);
    if !on_failure.require(sink, "destination") {
        return None;
    }
    let arn = on_failure.string(sink, "destination")?;
    match DestinationArn::parse(arn) {
        Ok(destination) => Some(destination),
        Err(why) => {
            on_failure.problem(
                sink,
                "destination",
                format!(
                    "{} is not an SQS queue, SNS topic or S3 bucket ARN: {why}",
                    quote(arn)
                ),
            );
            None
        }
    }
}
