//! Reading the `[[mapping]]` array, and the custom readers of the keys with
//! special rules (declared in `keys.rs`): event source mappings with Lambda's
//! `CreateEventSourceMapping` parameter names (in snake_case), and the
//! combinations Lambda rejects.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use toml::Value;

use super::arn::{is_resource_name, DestinationArn, EventSourceArn, MAX_NAME};
use super::keys::MAPPING_KEYS;
use super::problems::quote;
use super::walk::{child_anchor, describe, Reader, Sink};
use super::{FunctionConfig, MappingConfig};
use crate::core::checkpoint::StartAt;
use crate::core::filter::FilterCriteria;

/// Read with `starting_position`: the time an `AT_TIMESTAMP` start is at.
pub(crate) const STARTING_POSITION_TIMESTAMP: &str = "starting_position_timestamp";

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
            mappings.push(MappingConfig::defaults());
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
        reader.check_unknown(sink);
        mappings.push(MappingConfig::read(&reader, sink));
    }
    mappings
}

/// An unnamed handler, standing in for a missing or wrong `function`.
pub(crate) fn no_function() -> FunctionConfig {
    FunctionConfig::InProcess {
        name: String::new(),
        timeout: DEFAULT_FUNCTION_TIMEOUT,
    }
}

/// Reads `name`; an invalid one is a problem but is kept, to show in others.
pub(crate) fn read_name(r: &Reader<'_>, sink: &mut Sink, key: &str) -> Option<String> {
    let name = r.string(sink, key)?;
    if !is_valid_name(name) {
        r.problem(
            sink,
            key,
            format!(
                "{} is not a valid name (1 to 64 characters of A-Z a-z 0-9 _ . -)",
                quote(name)
            ),
        );
    }
    Some(name.to_string())
}

/// Reads `event_source_arn`: a Kinesis stream or consumer ARN.
pub(crate) fn read_event_source(
    r: &Reader<'_>,
    sink: &mut Sink,
    key: &str,
) -> Option<EventSourceArn> {
    let arn = r.string(sink, key)?;
    EventSourceArn::parse(arn)
        .map_err(|why| {
            r.problem(
                sink,
                key,
                format!(
                    "{} is not a Kinesis stream or consumer ARN: {why}",
                    quote(arn)
                ),
            )
        })
        .ok()
}

/// Reads `consumer_name` (an esm extension): the enhanced fan-out consumer to
/// register or reuse, 1 to 128 of `[A-Za-z0-9_.-]` (Kinesis's rule), allowed only
/// when `event_source_arn` is a stream ARN.
///
/// The conflict with a consumer ARN is found here rather than by a `check`, so
/// that the default (`None`) stands in for the rejected name and it is not also
/// reported as not supported yet.
pub(crate) fn read_consumer_name(
    r: &Reader<'_>,
    sink: &mut Sink,
    key: &str,
) -> Option<Option<String>> {
    let name = r.string(sink, key)?;
    if !is_resource_name(name, MAX_NAME) {
        r.problem(
            sink,
            key,
            format!(
                "{} is not a valid consumer name (1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . -)",
                quote(name)
            ),
        );
        return None;
    }
    let consumer_arn = r
        .value("event_source_arn")
        .and_then(Value::as_str)
        .and_then(|arn| EventSourceArn::parse(arn).ok())
        .filter(|arn| arn.consumer.is_some());
    if let Some(arn) = consumer_arn {
        r.problem(
            sink,
            key,
            format!(
                "not allowed when event_source_arn is already a consumer ARN; \
                 set event_source_arn to the stream ARN ({}) to have esm register or reuse \
                 consumer {}, or remove consumer_name",
                arn.stream_arn(),
                quote(name)
            ),
        );
        return None;
    }
    Some(Some(name.to_string()))
}

/// Reads `function`: a handler name, or a `[mapping.function]` table.
pub(crate) fn read_function(r: &Reader<'_>, sink: &mut Sink, key: &str) -> Option<FunctionConfig> {
    match r.value(key)? {
        Value::String(_) => {
            let name = r.non_empty_string(sink, key)?;
            Some(FunctionConfig::InProcess {
                name: name.to_string(),
                timeout: DEFAULT_FUNCTION_TIMEOUT,
            })
        }
        Value::Table(_) => {
            let f = r.table(sink, key, FUNCTION_KEYS)?;
            f.check_unknown(sink);
            let name = f.non_empty_string(sink, "name");
            let command = read_command(&f, sink);
            let concurrency = f.int_in(sink, "concurrency", 1..=1000);
            let timeout = f
                .seconds_in(sink, "timeout_seconds", 1..=900)
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
                    concurrency: concurrency.unwrap_or(1),
                    timeout,
                    memory_size: memory_size.unwrap_or(DEFAULT_MEMORY_SIZE),
                    environment,
                }),
            }
        }
        other => {
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
pub(crate) fn read_starting_position(
    r: &Reader<'_>,
    sink: &mut Sink,
    key: &str,
) -> Option<StartAt> {
    let ts_key = STARTING_POSITION_TIMESTAMP;
    let timestamp = read_timestamp(r, sink);
    match r.one_of(sink, key, STARTING_POSITIONS)? {
        "AT_TIMESTAMP" => {
            if !r.has(ts_key) {
                r.problem(
                    sink,
                    ts_key,
                    "required with starting_position = \"AT_TIMESTAMP\"",
                );
            }
            timestamp.map(StartAt::AtTimestamp)
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
                StartAt::Latest
            } else {
                StartAt::TrimHorizon
            })
        }
    }
}

/// Reads `starting_position_timestamp`: an RFC 3339 string or a TOML
/// offset date-time.
fn read_timestamp(r: &Reader<'_>, sink: &mut Sink) -> Option<DateTime<Utc>> {
    let key = STARTING_POSITION_TIMESTAMP;
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
pub(crate) fn read_response_types(r: &Reader<'_>, sink: &mut Sink, key: &str) -> Option<bool> {
    let items = r.array(sink, key)?;
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
    Some(report)
}

/// Reads `filter_criteria`: up to five strings, each a JSON object (a filter pattern).
pub(crate) fn read_filter_criteria(
    r: &Reader<'_>,
    sink: &mut Sink,
    key: &str,
) -> Option<Vec<serde_json::Value>> {
    let items = r.array(sink, key)?;
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
            Ok(pattern @ serde_json::Value::Object(_)) => {
                // Compiled here so that a pattern esm cannot apply stops the config.
                match FilterCriteria::from_values(std::slice::from_ref(&pattern)) {
                    Ok(_) => patterns.push(pattern),
                    Err(why) => item_problem(r, sink, key, i, why.detail()),
                }
            }
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
    Some(patterns)
}

/// Reads `[mapping.destination_config.on_failure] destination`; `None` when
/// `destination_config` is absent or wrong.
pub(crate) fn read_destination(
    r: &Reader<'_>,
    sink: &mut Sink,
    key: &str,
) -> Option<Option<DestinationArn>> {
    let config = r.table(sink, key, &["on_failure"])?;
    config.check_unknown(sink);
    let on_failure = config.table(sink, "on_failure", &["destination"])?;
    on_failure.check_unknown(sink);
    if !on_failure.require(sink, "destination") {
        return None;
    }
    let arn = on_failure.string(sink, "destination")?;
    match DestinationArn::parse(arn) {
        Ok(destination) => Some(Some(destination)),
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
