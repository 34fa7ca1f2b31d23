//! The `[[mapping]]` keys, each declared once.
//!
//! Why: a key used to be written in six places (the allowed keys, the reader,
//! the stand-in defaults, the `MappingConfig` field, the "not supported yet"
//! check, the runner), which drifted apart. Now it is one entry in the table
//! below, from which [`mapping_keys!`] writes [`MappingConfig`] (each field's doc
//! gains its key, how it is read and its default), the allowed keys, the reader,
//! the defaults and the "not supported yet" list. An entry (`[optional]`):
//!
//! ```text
//! /// What it means, and Lambda's rule.
//! field: Type { key: "toml_key", [required: true,] [also: OTHER_KEY,]
//!     read: int_in(1..=10),   // a Reader method (bool, int_in, seconds_in, ...), or
//!                             // custom(f): f(r, sink, key) -> Option<Type> in mapping.rs
//!     default: 1,             // when absent or wrong (for a required key, a stand-in)
//!     [check: f,]             // f(r, sink, key, &MappingConfig), after every key is read
//!     [unsupported: g,] }     // g(key, &value) -> Option<NotYet>, in support.rs
//! ```
//!
//! `also` names a further key that the custom reader reads with this one. Keys
//! are read in table order, which orders problems that share a position (the
//! `required` ones).

use std::time::Duration;

use super::arn::{DestinationArn, EventSourceArn};
use super::mapping::{
    no_function, read_consumer_name, read_destination, read_event_source, read_filter_criteria,
    read_function, read_name, read_response_types, read_starting_position,
    STARTING_POSITION_TIMESTAMP,
};
use super::support::NotYet;
use super::walk::{Reader, Sink};
use super::FunctionConfig;
use crate::core::checkpoint::StartAt;

/// Reads a key as its field's type, `None` when absent or wrong: `custom(f)` calls
/// `f(r, sink, key)`, any other kind is the `Reader` method of that name.
macro_rules! read_key {
    ($r:ident, $sink:ident, $key:literal, custom($read:ident)) => {
        $read($r, $sink, $key)
    };
    ($r:ident, $sink:ident, $key:literal, $method:ident $(($($arg:tt)*))?) => {
        $r.$method($sink, $key $(, $($arg)*)?)
    };
}

/// The doc line the table adds to each field: its key, how it is read, its default.
macro_rules! key_doc {
    (true; $key:literal, $read:ident $(($($arg:tt)*))?, $default:expr) => {
        concat!("`", $key, "`: required, read by `", stringify!($read),
            $("(", stringify!($($arg)*), ")",)? "`.")
    };
    (; $key:literal, $read:ident $(($($arg:tt)*))?, $default:expr) => {
        concat!("`", $key, "`: read by `", stringify!($read),
            $("(", stringify!($($arg)*), ")",)? "`, default `", stringify!($default), "`.")
    };
}

/// Declares the `[[mapping]]` keys: see the module documentation.
macro_rules! mapping_keys {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty {
            key: $key:literal,
            $(required: $required:tt,)?
            $(also: $also:expr,)?
            read: $read:ident $(($($arg:tt)*))?,
            default: $default:expr
            $(, check: $check:ident)?
            $(, unsupported: $unsupported:ident)?
            $(,)?
        }
    )*) => {
        /// One `[[mapping]]`: a Kinesis stream read into one function.
        #[derive(Debug, Clone)]
        pub struct MappingConfig {$(
            $(#[doc = $doc])+
            #[doc = ""]
            #[doc = key_doc!($($required)?; $key, $read $(($($arg)*))?, $default)]
            pub $field: $ty,
        )*}

        /// The keys a `[[mapping]]` table may have.
        pub(crate) const MAPPING_KEYS: &[&str] = &[$($key, $($also,)?)*];

        impl MappingConfig {
            /// Every key at its default (a stand-in for required keys), standing
            /// in for a mapping that is not a table.
            pub(crate) fn defaults() -> Self {
                MappingConfig { $($field: $default,)* }
            }

            /// Reads every key of one `[[mapping]]` table, in table order; the
            /// default stands in for anything missing or wrong.
            pub(crate) fn read(r: &Reader<'_>, sink: &mut Sink) -> Self {
                let m = MappingConfig {$(
                    $field: {
                        $(if $required {
                            r.require(sink, $key);
                        })?
                        read_key!(r, sink, $key, $read $(($($arg)*))?).unwrap_or_else(|| $default)
                    },
                )*};
                $($($check(r, sink, $key, &m);)?)*
                m
            }

            /// The settings of this mapping that esm does not support yet.
            pub(crate) fn not_supported_yet(&self) -> Vec<NotYet> {
                // `mut` is unused while no key is marked `unsupported:`.
                #[allow(unused_mut)]
                let mut found = Vec::new();
                $($(found.extend($unsupported($key, &self.$field));)?)*
                found
            }
        }
    };
}

mapping_keys! {
    /// Unique name used in metrics, logs and status: 1 to 64 of `[A-Za-z0-9_.-]`.
    name: String { key: "name", required: true, read: custom(read_name), default: String::new() }
    /// The stream to read, or an enhanced fan-out consumer of it.
    event_source: EventSourceArn { key: "event_source_arn", required: true,
        read: custom(read_event_source), default: EventSourceArn::default() }
    /// esm extension: with a stream ARN in `event_source_arn`, the enhanced fan-out
    /// consumer esm registers (or reuses, when one of this name exists) and waits
    /// for until it is ACTIVE, then reads with: 1 to 128 of `[A-Za-z0-9_.-]`. Not
    /// allowed when `event_source_arn` is already a consumer ARN.
    consumer_name: Option<String> { key: "consumer_name",
        read: custom(read_consumer_name), default: None }
    /// What to invoke: an in-process handler's name, or a `[mapping.function]` table.
    function: FunctionConfig { key: "function", required: true,
        read: custom(read_function), default: no_function() }
    /// Whether the mapping runs.
    enabled: bool { key: "enabled", read: bool, default: true }
    /// Where a shard with no checkpoint starts (required, as in Lambda): `TRIM_HORIZON`,
    /// `LATEST`, or `AT_TIMESTAMP` with `starting_position_timestamp`.
    starting_position: StartAt { key: "starting_position", required: true,
        also: STARTING_POSITION_TIMESTAMP, read: custom(read_starting_position),
        default: StartAt::TrimHorizon }
    /// Most records per invocation.
    batch_size: usize { key: "batch_size", read: int_in(1..=10_000), default: 100 }
    /// How long to gather records before invoking.
    maximum_batching_window: Duration { key: "maximum_batching_window_in_seconds",
        read: seconds_in(0..=300), default: Duration::ZERO }
    /// Concurrent batches per shard.
    parallelization_factor: u8 { key: "parallelization_factor", read: int_in(1..=10), default: 1 }
    /// Retries of a failed batch; `None` (-1) retries until the records expire.
    maximum_retry_attempts: Option<u32> { key: "maximum_retry_attempts",
        read: int_or_unlimited(0..=10_000), default: None }
    /// Oldest record age invoked; `None` (-1) means no limit.
    maximum_record_age: Option<Duration> { key: "maximum_record_age_in_seconds",
        read: seconds_or_unlimited(60..=604_800), default: None }
    /// Split a failed batch in two and retry each half.
    bisect_batch_on_function_error: bool { key: "bisect_batch_on_function_error",
        read: bool, default: false }
    /// Whether `function_response_types` is `["ReportBatchItemFailures"]`.
    report_batch_item_failures: bool { key: "function_response_types",
        read: custom(read_response_types), default: false }
    /// Tumbling window length (zero: none); Lambda allows none with a
    /// `parallelization_factor` above 1.
    tumbling_window: Duration { key: "tumbling_window_in_seconds",
        read: seconds_in(0..=900), default: Duration::ZERO, check: one_lane_for_windows }
    /// Whether KPL-aggregated records are split into their user records.
    deaggregate: bool { key: "deaggregate", read: bool, default: true }
    /// Filter patterns, OR'd: up to 5 (Lambda's limit) strings, each a JSON object.
    filter_criteria: Vec<serde_json::Value> { key: "filter_criteria",
        read: custom(read_filter_criteria), default: Vec::new() }
    /// Where batches that ran out of retries or age go
    /// (`[mapping.destination_config.on_failure] destination`).
    on_failure_destination: Option<DestinationArn> { key: "destination_config",
        read: custom(read_destination), default: None }
    /// esm extension: the GetRecords calls per second each shard's reader may
    /// make, above 0 and at most 5. Kinesis allows 5 calls/s per shard, shared by
    /// every consumer of the stream, so lower this when other applications read it.
    get_records_calls_per_second: f64 { key: "get_records_calls_per_second",
        read: positive_number_up_to(5.0), default: 5.0 }
    /// esm extension: how often the stream's shard list is re-read to find new
    /// shards after a reshard.
    shard_discovery_interval: Duration { key: "shard_discovery_interval_seconds",
        read: seconds_in(1..=3600), default: Duration::from_secs(10) }
    /// esm extension: with enhanced fan-out, how long a shard's subscription lasts
    /// before it is renewed at its continuation sequence number (Kinesis ends one
    /// after 5 minutes; a shorter renewal exercises the same path sooner).
    fan_out_resubscribe: Duration { key: "fan_out_resubscribe_seconds",
        read: seconds_in(1..=300), default: Duration::from_secs(300) }
}

/// Lambda's rule: a tumbling window is not allowed with `parallelization_factor` above 1.
fn one_lane_for_windows(r: &Reader<'_>, sink: &mut Sink, key: &str, m: &MappingConfig) {
    if !m.tumbling_window.is_zero() && m.parallelization_factor > 1 {
        r.problem(
            sink,
            key,
            format!(
                "a tumbling window ({}) is not allowed with parallelization_factor = {}",
                m.tumbling_window.as_secs(),
                m.parallelization_factor
            ),
        );
    }
}
