//! Tests of reading and checking config files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;

/// One valid mapping, `orders`; tests append keys to it.
const BASE: &str = r#"
[[mapping]]
name = "orders"
event_source_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
function = "echo"
starting_position = "TRIM_HORIZON"
"#;

/// `BASE` with `extra` appended inside the mapping.
fn with(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

/// `BASE` with `root` (top-level keys or tables) before it.
fn with_root(root: &str) -> String {
    format!("{root}\n{BASE}")
}

/// The validation pass alone: the config read and its problem lines.
fn validation(text: &str) -> (Config, Vec<String>) {
    match validate(text, Path::new("")) {
        Ok((config, problems)) => (config, lines(&problems)),
        Err(problem) => panic!("syntax error: {problem}"),
    }
}

/// Just the validation problem lines.
fn validation_problems(text: &str) -> Vec<String> {
    validation(text).1
}

/// Every problem line `parse` reports (none when it succeeds).
fn all_problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(problems) => lines(&problems.0),
    }
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

/// A parsed config that must be valid.
fn valid(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(problems) => panic!("unexpected problems:\n{problems}"),
    }
}

/// Checks that each of `good` is accepted for `key` in the mapping, and each
/// of `bad` gives exactly the message paired with it.
fn check_mapping_range(key: &str, good: &[&str], bad: &[(&str, &str)]) {
    for value in good {
        let problems = validation_problems(&with(&format!("{key} = {value}")));
        assert!(problems.is_empty(), "{key} = {value}: {problems:?}");
    }
    for (value, message) in bad {
        let problems = validation_problems(&with(&format!("{key} = {value}")));
        assert_eq!(
            problems,
            vec![format!("mapping[orders].{key}: {message}")],
            "{key} = {value}"
        );
    }
}

// ---------------------------------------------------------------- valid files

/// SPEC §2's example.
const SPEC_EXAMPLE: &str = r#"
shutdown_timeout_seconds = 30

[store]                    # checkpoints and leases
kind = "local"             # default: an embedded, crash-safe file store
path = "./esm-state"
# kind = "dynamodb"; table = "esm-leases"   # several instances share a stream

[server]                   # /metrics (Prometheus), /healthz, /readyz, /status (JSON)
listen = "127.0.0.1:9090"

[[mapping]]
name = "orders"                                   # unique; used in metrics, logs, status
event_source_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
function = "orders-handler"                       # a handler registered in-process by this name, or:
enabled = true
starting_position = "TRIM_HORIZON"                # TRIM_HORIZON | LATEST | AT_TIMESTAMP
batch_size = 100                                  # 1..=10000, default 100
maximum_batching_window_in_seconds = 0            # 0..=300, default 0
parallelization_factor = 1                        # 1..=10, default 1
maximum_retry_attempts = -1                       # -1 (until the record expires) or 0..=10000
maximum_record_age_in_seconds = -1                # -1 or 60..=604800
bisect_batch_on_function_error = false
function_response_types = []                      # ["ReportBatchItemFailures"]
tumbling_window_in_seconds = 0                    # 0..=900; not with parallelization_factor > 1
deaggregate = true                                # KPL aggregated records arrive as their user records
"#;

#[test]
fn spec_example_parses_to_its_values() {
    let config = valid(SPEC_EXAMPLE);
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.max_buffered_bytes, 1024 * 1024 * 1024);
    assert_eq!(
        config.store,
        StoreConfig::Local {
            path: PathBuf::from("./esm-state"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    );
    assert_eq!(
        config.server,
        Some(ServerConfig {
            listen: "127.0.0.1:9090".parse().unwrap()
        })
    );
    assert_eq!(config.mappings.len(), 1);
    let m = &config.mappings[0];
    assert_eq!(m.name, "orders");
    assert_eq!(
        m.event_source.arn,
        "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    );
    assert_eq!(m.event_source.stream_name, "orders");
    assert_eq!(m.event_source.consumer, None);
    assert_eq!(
        m.function,
        FunctionConfig::InProcess {
            name: "orders-handler".to_string(),
            timeout: Duration::from_secs(3)
        }
    );
    assert!(m.enabled);
    assert_eq!(m.starting_position, StartingPosition::TrimHorizon);
    assert_eq!(m.batch_size, 100);
    assert_eq!(m.maximum_batching_window, Duration::ZERO);
    assert_eq!(m.parallelization_factor, 1);
    assert_eq!(m.maximum_retry_attempts, None);
    assert_eq!(m.maximum_record_age, None);
    assert!(!m.bisect_batch_on_function_error);
    assert!(!m.report_batch_item_failures);
    assert_eq!(m.tumbling_window, Duration::ZERO);
    assert!(m.deaggregate);
    assert!(m.filter_criteria.is_empty());
    assert_eq!(m.on_failure_destination, None);
    assert_eq!(m.get_records_calls_per_second, 5.0);
    assert_eq!(m.shard_discovery_interval, Duration::from_secs(10));
    assert_eq!(m.consumer_name, None);
    assert_eq!(
        config.summary(),
        "valid: 1 mapping (orders); store local at ./esm-state; server on 127.0.0.1:9090"
    );
}

#[test]
fn minimal_fixture_gets_every_default() {
    let config = valid(include_str!("../../tests/fixtures/valid.toml"));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(
        config.store,
        StoreConfig::Local {
            path: PathBuf::from("./esm-state"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    );
    assert_eq!(config.server, None);
    let m = &config.mappings[0];
    assert_eq!(m.name, "orders");
    assert_eq!(
        m.event_source.stream_arn(),
        "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    );
    assert_eq!(
        m.function,
        FunctionConfig::InProcess {
            name: "echo".to_string(),
            timeout: Duration::from_secs(3)
        }
    );
    assert!(m.enabled);
    assert_eq!(m.starting_position, StartingPosition::TrimHorizon);
    assert_eq!(m.batch_size, 100);
    assert_eq!(m.maximum_batching_window, Duration::ZERO);
    assert_eq!(m.parallelization_factor, 1);
    assert_eq!(m.maximum_retry_attempts, None);
    assert_eq!(m.maximum_record_age, None);
    assert!(!m.bisect_batch_on_function_error);
    assert!(!m.report_batch_item_failures);
    assert_eq!(m.tumbling_window, Duration::ZERO);
    assert!(m.deaggregate);
    assert!(m.filter_criteria.is_empty());
    assert_eq!(m.on_failure_destination, None);
    assert_eq!(m.get_records_calls_per_second, 5.0);
    assert_eq!(m.shard_discovery_interval, Duration::from_secs(10));
    assert_eq!(m.consumer_name, None);
}

/// Every setting, including those not supported yet.
const EVERYTHING: &str = r#"
shutdown_timeout_seconds = 5
max_buffered_mb = 4096

[store]
kind = "dynamodb"
table = "esm-leases"
create_table = true
region = "eu-west-1"
lease_duration_seconds = 20
max_leases_to_steal = 2

[server]
listen = "0.0.0.0:9100"

[[mapping]]
name = "orders"
event_source_arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/esm:1700000000"
enabled = false
starting_position = "AT_TIMESTAMP"
starting_position_timestamp = "2026-11-22T01:00:00+01:00"
batch_size = 500
maximum_batching_window_in_seconds = 2
parallelization_factor = 4
maximum_retry_attempts = 3
maximum_record_age_in_seconds = 3600
bisect_batch_on_function_error = true
function_response_types = ["ReportBatchItemFailures"]
deaggregate = false
filter_criteria = [ '{"data": {"type": ["order"]}}' ]
get_records_calls_per_second = 2.5
shard_discovery_interval_seconds = 60

[mapping.function]
command = ["./orders-handler", "--fast"]
concurrency = 4
timeout_seconds = 60
memory_size = 1024
handler = "orders.handle"
environment = { LOG_LEVEL = "debug", TZ = "Europe/Paris" }

[mapping.destination_config.on_failure]
destination = "arn:aws:sqs:eu-west-1:123456789012:orders-failures"

[[mapping]]
name = "payments"
event_source_arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/payments"
consumer_name = "esm-payments"
function = { name = "payments-handler", timeout_seconds = 900 }
starting_position = "LATEST"
tumbling_window_in_seconds = 900
"#;

#[test]
fn every_setting_is_read() {
    let (config, problems) = validation(EVERYTHING);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.max_buffered_bytes, 4096 * 1024 * 1024);
    assert_eq!(
        config.store,
        StoreConfig::DynamoDb {
            table: "esm-leases".to_string(),
            create_table: true,
            region: Some("eu-west-1".to_string()),
            lease: crate::core::lease::LeaseRules {
                duration: Duration::from_secs(20),
                max_steal: 2,
            },
        }
    );
    assert_eq!(
        config.server,
        Some(ServerConfig {
            listen: "0.0.0.0:9100".parse().unwrap()
        })
    );
    let m = &config.mappings[0];
    assert_eq!(m.event_source.stream_name, "orders");
    assert_eq!(
        m.event_source.consumer.as_deref(),
        Some("arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/esm:1700000000")
    );
    assert_eq!(
        m.event_source.stream_arn(),
        "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
    );
    assert_eq!(
        m.function,
        FunctionConfig::Command {
            command: vec!["./orders-handler".to_string(), "--fast".to_string()],
            concurrency: 4,
            timeout: Duration::from_secs(60),
            memory_size: 1024,
            handler: "orders.handle".to_string(),
            environment: [("LOG_LEVEL", "debug"), ("TZ", "Europe/Paris")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    );
    assert!(!m.enabled);
    assert_eq!(
        m.starting_position,
        StartingPosition::AtTimestamp(Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap())
    );
    assert_eq!(m.batch_size, 500);
    assert_eq!(m.maximum_batching_window, Duration::from_secs(2));
    assert_eq!(m.parallelization_factor, 4);
    assert_eq!(m.maximum_retry_attempts, Some(3));
    assert_eq!(m.maximum_record_age, Some(Duration::from_secs(3600)));
    assert!(m.bisect_batch_on_function_error);
    assert!(m.report_batch_item_failures);
    assert!(!m.deaggregate);
    assert_eq!(
        m.filter_criteria,
        vec![serde_json::json!({"data": {"type": ["order"]}})]
    );
    assert_eq!(
        m.on_failure_destination,
        Some(DestinationArn {
            arn: "arn:aws:sqs:eu-west-1:123456789012:orders-failures".to_string(),
            kind: DestinationKind::Sqs
        })
    );
    assert_eq!(m.get_records_calls_per_second, 2.5);
    assert_eq!(m.shard_discovery_interval, Duration::from_secs(60));
    let p = &config.mappings[1];
    assert_eq!(
        p.function,
        FunctionConfig::InProcess {
            name: "payments-handler".to_string(),
            timeout: Duration::from_secs(900)
        }
    );
    assert_eq!(p.starting_position, StartingPosition::Latest);
    assert_eq!(p.tumbling_window, Duration::from_secs(900));
    assert_eq!(p.consumer_name.as_deref(), Some("esm-payments"));
    assert_eq!(m.consumer_name, None);
    assert_eq!(
        config.summary(),
        "valid: 2 mappings (orders disabled, payments); store dynamodb table esm-leases; \
         server on 0.0.0.0:9100"
    );
}

#[test]
fn unsupported_settings_are_each_one_problem() {
    // The DynamoDB lease store has landed: every setting is supported.
    assert_eq!(all_problems(EVERYTHING), Vec::<String>::new());
    // Enhanced fan-out has landed: a consumer ARN is accepted, and read.
    let config = valid(&BASE.replace("stream/orders", "stream/orders/consumer/esm:1700000000"));
    assert_eq!(
        config.mappings[0].event_source.consumer.as_deref(),
        Some("arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/esm:1700000000")
    );
    // Tumbling windows and event filtering have landed: accepted, and read.
    let config = valid(&with(
        "tumbling_window_in_seconds = 900\nfilter_criteria = [ '{\"data\": {\"type\": [\"order\"]}}' ]",
    ));
    let m = &config.mappings[0];
    assert_eq!(m.tumbling_window, Duration::from_secs(900));
    assert_eq!(
        m.filter_criteria,
        vec![serde_json::json!({"data": {"type": ["order"]}})]
    );
}

#[test]
fn supported_non_default_settings_pass() {
    let config = valid(&with(
        "enabled = false\nbatch_size = 10000\nmaximum_batching_window_in_seconds = 300\n\
         deaggregate = false\nget_records_calls_per_second = 1\nshard_discovery_interval_seconds = 1\n\
         [mapping.function]\nname = \"echo\"\ntimeout_seconds = 30",
    )
    .replace("function = \"echo\"\n", ""));
    let m = &config.mappings[0];
    assert!(!m.enabled);
    assert_eq!(m.batch_size, 10000);
    assert_eq!(m.get_records_calls_per_second, 1.0);
    assert_eq!(
        m.function,
        FunctionConfig::InProcess {
            name: "echo".to_string(),
            timeout: Duration::from_secs(30)
        }
    );
}

#[test]
fn sqs_sns_and_s3_destinations_are_supported() {
    for arn in [
        "arn:aws:sqs:eu-west-1:123456789012:orders-failures",
        "arn:aws:sns:eu-west-1:123456789012:orders-failures",
        "arn:aws:s3:::orders-failures",
    ] {
        let config = valid(&with(&format!(
            "[mapping.destination_config.on_failure]\ndestination = \"{arn}\""
        )));
        assert_eq!(
            config.mappings[0]
                .on_failure_destination
                .as_ref()
                .map(|d| d.arn.as_str()),
            Some(arn)
        );
    }
}

#[test]
fn empty_destination_config_and_default_values_are_supported() {
    let config = valid(&with(
        "parallelization_factor = 1\nmaximum_retry_attempts = -1\nfilter_criteria = []\n\
         destination_config = {}",
    ));
    assert_eq!(config.mappings[0].on_failure_destination, None);
}

#[test]
fn load_resolves_store_path_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("esm-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("esm.toml");
    std::fs::write(&file, with_root("[store]\npath = \"./state/here\"")).unwrap();
    let config = load(&file).unwrap();
    assert_eq!(
        config.store,
        StoreConfig::Local {
            path: dir.join("state/here"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    );
    std::fs::write(&file, with_root("[store]\npath = \"/var/lib/esm\"")).unwrap();
    assert_eq!(
        load(&file).unwrap().store,
        StoreConfig::Local {
            path: PathBuf::from("/var/lib/esm"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    );
    std::fs::write(&file, BASE).unwrap();
    assert_eq!(
        load(&file).unwrap().store,
        StoreConfig::Local {
            path: dir.join("esm-state"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_file_is_one_problem_at_config() {
    let err = load(Path::new("/nonexistent/esm.toml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].path, "config");
    assert!(
        err.0[0]
            .message
            .starts_with("cannot read /nonexistent/esm.toml: "),
        "{}",
        err.0[0].message
    );
}

// ------------------------------------------------------------- range bounds

#[test]
fn shutdown_timeout_bounds() {
    for good in ["0", "3600"] {
        let (config, problems) =
            validation(&with_root(&format!("shutdown_timeout_seconds = {good}")));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.shutdown_timeout.as_secs().to_string(), good);
    }
    for bad in ["-1", "3601"] {
        assert_eq!(
            validation_problems(&with_root(&format!("shutdown_timeout_seconds = {bad}"))),
            vec![format!(
                "shutdown_timeout_seconds: {bad} is out of range 0..=3600"
            )]
        );
    }
}

#[test]
fn batch_size_bounds() {
    check_mapping_range(
        "batch_size",
        &["1", "10000"],
        &[
            ("0", "0 is out of range 1..=10000"),
            ("10001", "10001 is out of range 1..=10000"),
            ("20000", "20000 is out of range 1..=10000"),
        ],
    );
}

#[test]
fn batching_window_bounds() {
    check_mapping_range(
        "maximum_batching_window_in_seconds",
        &["0", "300"],
        &[
            ("-1", "-1 is out of range 0..=300"),
            ("301", "301 is out of range 0..=300"),
        ],
    );
}

#[test]
fn parallelization_factor_bounds() {
    check_mapping_range(
        "parallelization_factor",
        &["1", "10"],
        &[
            ("0", "0 is out of range 1..=10"),
            ("11", "11 is out of range 1..=10"),
        ],
    );
}

#[test]
fn parallelization_factor_above_one_is_supported() {
    for factor in [2, 10] {
        let config = valid(&with(&format!("parallelization_factor = {factor}")));
        assert_eq!(config.mappings[0].parallelization_factor, factor);
    }
}

#[test]
fn max_buffered_mb_defaults_to_one_gib() {
    assert_eq!(valid(BASE).max_buffered_bytes, 1024 * 1024 * 1024);
}

#[test]
fn max_buffered_mb_valid_values() {
    for mb in [16usize, 100, 1_048_576] {
        let config = valid(&with_root(&format!("max_buffered_mb = {mb}")));
        assert_eq!(config.max_buffered_bytes, mb * 1024 * 1024, "{mb}");
    }
}

#[test]
fn max_buffered_mb_bounds() {
    for bad in ["5", "15", "0", "-1", "1048577"] {
        assert_eq!(
            all_problems(&with_root(&format!("max_buffered_mb = {bad}"))),
            vec![format!(
                "max_buffered_mb: {bad} is out of range 16..=1048576"
            )]
        );
    }
}

#[test]
fn max_buffered_mb_wrong_type() {
    assert_eq!(
        all_problems(&with_root("max_buffered_mb = \"1024\"")),
        vec!["max_buffered_mb: expected an integer, found string \"1024\""]
    );
    assert_eq!(
        all_problems(&with_root("max_buffered_mb = 1024.0")),
        vec!["max_buffered_mb: expected an integer, found float 1024.0"]
    );
}

#[test]
fn max_buffered_mb_misspelled_gets_a_suggestion() {
    assert_eq!(
        all_problems(&with_root("max_buffered_mib = 1024")),
        vec!["max_buffered_mib: unknown key (did you mean max_buffered_mb?)"]
    );
}

#[test]
fn retry_attempts_bounds() {
    check_mapping_range(
        "maximum_retry_attempts",
        &["-1", "0", "10000"],
        &[
            ("-2", "-2 is out of range (-1 or 0..=10000)"),
            ("10001", "10001 is out of range (-1 or 0..=10000)"),
        ],
    );
    let (config, _) = validation(&with("maximum_retry_attempts = 0"));
    assert_eq!(config.mappings[0].maximum_retry_attempts, Some(0));
}

#[test]
fn record_age_bounds() {
    check_mapping_range(
        "maximum_record_age_in_seconds",
        &["-1", "60", "604800"],
        &[
            ("-2", "-2 is out of range (-1 or 60..=604800)"),
            ("0", "0 is out of range (-1 or 60..=604800)"),
            ("59", "59 is out of range (-1 or 60..=604800)"),
            ("604801", "604801 is out of range (-1 or 60..=604800)"),
        ],
    );
    let (config, _) = validation(&with("maximum_record_age_in_seconds = 60"));
    assert_eq!(
        config.mappings[0].maximum_record_age,
        Some(Duration::from_secs(60))
    );
}

#[test]
fn tumbling_window_bounds() {
    check_mapping_range(
        "tumbling_window_in_seconds",
        &["0", "900"],
        &[
            ("-1", "-1 is out of range 0..=900"),
            ("901", "901 is out of range 0..=900"),
        ],
    );
}

#[test]
fn get_records_rate_bounds() {
    check_mapping_range(
        "get_records_calls_per_second",
        &["0.001", "1", "5", "5.0"],
        &[
            ("0", "0 is out of range (above 0, at most 5)"),
            ("0.0", "0 is out of range (above 0, at most 5)"),
            ("-1.5", "-1.5 is out of range (above 0, at most 5)"),
            ("5.01", "5.01 is out of range (above 0, at most 5)"),
            ("6", "6 is out of range (above 0, at most 5)"),
            ("nan", "NaN is out of range (above 0, at most 5)"),
        ],
    );
}

#[test]
fn shard_discovery_interval_bounds() {
    check_mapping_range(
        "shard_discovery_interval_seconds",
        &["1", "3600"],
        &[
            ("0", "0 is out of range 1..=3600"),
            ("3601", "3601 is out of range 1..=3600"),
        ],
    );
}

#[test]
fn consumer_name_bounds() {
    let longest = format!("\"{}\"", "a".repeat(128));
    let too_long = "a".repeat(129);
    let rule = "(1 to 128 characters of A-Z a-z 0-9 _ . -)";
    let problems = |value: &str| validation_problems(&with(&format!("consumer_name = {value}")));
    for good in ["\"a\"", "\"esm-orders_v2.1\"", longest.as_str()] {
        assert!(problems(good).is_empty(), "consumer_name = {good}");
    }
    for (bad, shown) in [
        ("\"\"", "\"\""),
        ("\"my consumer\"", "\"my consumer\""),
        ("\"esm/orders\"", "\"esm/orders\""),
        ("\"esm:1\"", "\"esm:1\""),
        ("\"é\"", "\"é\""),
        (&format!("\"{too_long}\""), &format!("\"{too_long}\"")),
    ] {
        assert_eq!(
            problems(bad),
            vec![format!(
                "mapping[orders].consumer_name: {shown} is not a valid consumer name {rule}"
            )],
            "consumer_name = {bad}"
        );
    }
    assert_eq!(
        problems("5"),
        vec!["mapping[orders].consumer_name: expected a string, found integer 5"]
    );
}

#[test]
fn consumer_name_is_read() {
    let (config, problems) = validation(&with("consumer_name = \"esm-orders\""));
    assert!(problems.is_empty(), "{problems:?}");
    let m = &config.mappings[0];
    assert_eq!(m.consumer_name.as_deref(), Some("esm-orders"));
    assert_eq!(m.event_source.consumer, None);
    assert_eq!(
        m.event_source.stream_arn(),
        "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    );
    // It has landed: accepted as it is.
    assert!(all_problems(&with("consumer_name = \"esm-orders\"")).is_empty());
    // A misspelling gets a suggestion.
    assert_eq!(
        validation_problems(&with("consumer-name = \"esm-orders\"")),
        vec!["mapping[orders].consumer-name: unknown key (did you mean consumer_name?)"]
    );
}

#[test]
fn consumer_name_with_a_consumer_arn_is_a_conflict() {
    let text = with("consumer_name = \"esm-orders\"")
        .replace("stream/orders\"", "stream/orders/consumer/esm:1700000000\"");
    let conflict = "mapping[orders].consumer_name: not allowed when event_source_arn is already \
                    a consumer ARN; set event_source_arn to the stream ARN \
                    (arn:aws:kinesis:us-east-1:000000000000:stream/orders) to have esm register \
                    or reuse consumer \"esm-orders\", or remove consumer_name";
    let (config, problems) = validation(&text);
    assert_eq!(problems, vec![conflict]);
    // The rejected name is not kept, so nothing acts on it.
    assert_eq!(config.mappings[0].consumer_name, None);
    assert_eq!(all_problems(&text), vec![conflict.to_string()]);
    // The key comes before event_source_arn in the file: the same conflict.
    let before = BASE.replace(
        "event_source_arn = \"arn:aws:kinesis:us-east-1:000000000000:stream/orders\"",
        "consumer_name = \"esm-orders\"\n\
         event_source_arn = \"arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/esm:1700000000\"",
    );
    assert_eq!(validation_problems(&before), vec![conflict]);
    // An invalid event_source_arn is its own problem; consumer_name is not blamed.
    let bad_arn = with("consumer_name = \"esm-orders\"").replace("stream/orders\"", "orders\"");
    let problems = validation_problems(&bad_arn);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("mapping[orders].event_source_arn: "),
        "{problems:?}"
    );
}

/// `BASE` with its `function` replaced by a `[mapping.function]` table of `body`.
fn with_function_table(body: &str) -> String {
    format!(
        "{}[mapping.function]\n{body}\n",
        BASE.replace("function = \"echo\"\n", "")
    )
}

#[test]
fn function_timeout_bounds() {
    for good in ["1", "900"] {
        let (config, problems) = validation(&with_function_table(&format!(
            "name = \"echo\"\ntimeout_seconds = {good}"
        )));
        assert!(problems.is_empty(), "{problems:?}");
        let FunctionConfig::InProcess { timeout, .. } = &config.mappings[0].function else {
            panic!("not in-process");
        };
        assert_eq!(timeout.as_secs().to_string(), good);
    }
    for bad in ["0", "901"] {
        assert_eq!(
            validation_problems(&with_function_table(&format!(
                "name = \"echo\"\ntimeout_seconds = {bad}"
            ))),
            vec![format!(
                "mapping[orders].function.timeout_seconds: {bad} is out of range 1..=900"
            )]
        );
    }
}

#[test]
fn function_concurrency_bounds() {
    for good in ["1", "1000"] {
        let (config, problems) = validation(&with_function_table(&format!(
            "command = [\"./h\"]\nconcurrency = {good}"
        )));
        assert!(problems.is_empty(), "{problems:?}");
        let FunctionConfig::Command { concurrency, .. } = &config.mappings[0].function else {
            panic!("not a command");
        };
        assert_eq!(concurrency.to_string(), good);
    }
    for bad in ["0", "1001"] {
        assert_eq!(
            validation_problems(&with_function_table(&format!(
                "command = [\"./h\"]\nconcurrency = {bad}"
            ))),
            vec![format!(
                "mapping[orders].function.concurrency: {bad} is out of range 1..=1000"
            )]
        );
    }
}

#[test]
fn function_memory_size_bounds() {
    for good in ["128", "10240"] {
        let (config, problems) = validation(&with_function_table(&format!(
            "command = [\"./h\"]\nmemory_size = {good}"
        )));
        assert!(problems.is_empty(), "{problems:?}");
        let FunctionConfig::Command { memory_size, .. } = &config.mappings[0].function else {
            panic!("not a command");
        };
        assert_eq!(memory_size.to_string(), good);
    }
    for bad in ["127", "10241"] {
        assert_eq!(
            validation_problems(&with_function_table(&format!(
                "command = [\"./h\"]\nmemory_size = {bad}"
            ))),
            vec![format!(
                "mapping[orders].function.memory_size: {bad} is out of range 128..=10240"
            )]
        );
    }
}

#[test]
fn function_handler_defaults_to_the_program() {
    let handler = |body: &str| match validation(&with_function_table(body)) {
        (config, problems) if problems.is_empty() => match &config.mappings[0].function {
            FunctionConfig::Command { handler, .. } => handler.clone(),
            other => panic!("not a command: {other:?}"),
        },
        (_, problems) => panic!("{problems:?}"),
    };
    assert_eq!(
        handler("command = [\"python3\", \"-m\", \"awslambdaric\"]"),
        "python3"
    );
    assert_eq!(
        handler("command = [\"./h\"]\nhandler = \"app.handler\""),
        "app.handler"
    );
    assert_eq!(
        validation_problems(&with_function_table("command = [\"./h\"]\nhandler = \"\"")),
        vec!["mapping[orders].function.handler: must not be empty"]
    );
}

#[test]
fn function_environment_is_a_table_of_strings_with_lambdas_names() {
    let (config, problems) = validation(&with_function_table(
        "command = [\"./h\"]\n[mapping.function.environment]\nSTAGE = \"test\"\nx1 = \"\"",
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let FunctionConfig::Command { environment, .. } = &config.mappings[0].function else {
        panic!("not a command");
    };
    assert_eq!(
        environment.iter().collect::<Vec<_>>(),
        [
            (&"STAGE".to_string(), &"test".to_string()),
            (&"x1".to_string(), &String::new())
        ]
    );
    assert_eq!(
        validation_problems(&with_function_table(
            "command = [\"./h\"]\nenvironment = { A = \"x\", B1 = 3, 9X = \"y\", AWS_REGION = \"eu-west-1\", _HANDLER = \"h\" }"
        )),
        vec![
            "mapping[orders].function.environment.A: not a valid environment variable name (a letter, then one or more of A-Z a-z 0-9 _)",
            "mapping[orders].function.environment.B1: expected a string, found integer 3",
            "mapping[orders].function.environment.9X: not a valid environment variable name (a letter, then one or more of A-Z a-z 0-9 _)",
            "mapping[orders].function.environment.AWS_REGION: reserved: esm sets it for every worker, as Lambda does",
            "mapping[orders].function.environment._HANDLER: not a valid environment variable name (a letter, then one or more of A-Z a-z 0-9 _)",
        ]
    );
    assert_eq!(
        validation_problems(&with_function_table(
            "command = [\"./h\"]\nenvironment = [\"A=b\"]"
        )),
        vec![
            "mapping[orders].function.environment: expected a table of strings, found array [\"A=b\"]"
        ]
    );
    let big = "x".repeat(4095);
    assert_eq!(
        validation_problems(&with_function_table(&format!(
            "command = [\"./h\"]\nenvironment = {{ BIG = \"{big}\" }}"
        ))),
        vec![
            "mapping[orders].function.environment: 4098 bytes of names and values, at most 4096 are allowed (Lambda's limit)"
        ]
    );
}

#[test]
fn command_keys_are_not_allowed_with_an_in_process_handler() {
    assert_eq!(
        validation_problems(&with_function_table(
            "name = \"echo\"\nmemory_size = 256\nhandler = \"h\"\nenvironment = { A1 = \"b\" }"
        )),
        vec![
            "mapping[orders].function.memory_size: only allowed with command",
            "mapping[orders].function.handler: only allowed with command",
            "mapping[orders].function.environment: only allowed with command",
        ]
    );
}

#[test]
fn filter_criteria_count_bounds() {
    let pattern = "'{\"data\": {\"a\": [1]}}'";
    let five = [pattern; 5].join(", ");
    assert!(validation_problems(&with(&format!("filter_criteria = [{five}]"))).is_empty());
    let six = [pattern; 6].join(", ");
    assert_eq!(
        validation_problems(&with(&format!("filter_criteria = [{six}]"))),
        vec!["mapping[orders].filter_criteria: 6 patterns, at most 5 are allowed"]
    );
}

// ------------------------------------------------------------ problem kinds

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let text = format!(
        "shutdown_timeout = 3\n[store]\nkindd = \"local\"\n[serverr]\n{}\nbatchsize = 10\n\
         maximum_batching_window = 1\nwindow = 3\nzzz = 1\n\
         [mapping.destination_config.on-failure]\ndestination = \"x\"",
        BASE.replace(
            "function = \"echo\"",
            "function = { name = \"echo\", timeout = 3 }"
        )
    );
    assert_eq!(
        validation_problems(&text),
        vec![
            "shutdown_timeout: unknown key (did you mean shutdown_timeout_seconds?)",
            "store.kindd: unknown key (did you mean kind?)",
            "serverr: unknown key (did you mean server?)",
            "mapping[orders].function.timeout: unknown key (did you mean timeout_seconds?)",
            "mapping[orders].batchsize: unknown key (did you mean batch_size?)",
            "mapping[orders].maximum_batching_window: unknown key (did you mean maximum_batching_window_in_seconds?)",
            "mapping[orders].window: unknown key",
            "mapping[orders].zzz: unknown key",
            "mapping[orders].destination_config.on-failure: unknown key (did you mean on_failure?)",
        ]
    );
}

#[test]
fn suggestions() {
    let keys = &[
        "batch_size",
        "bisect_batch_on_function_error",
        "name",
        "enabled",
    ];
    assert_eq!(walk::suggest("batchsize", keys), Some("batch_size"));
    assert_eq!(walk::suggest("BatchSize", keys), Some("batch_size"));
    assert_eq!(walk::suggest("batch_szie", keys), Some("batch_size"));
    assert_eq!(walk::suggest("nmae", keys), Some("name"));
    assert_eq!(walk::suggest("enable", keys), Some("enabled"));
    assert_eq!(
        walk::suggest("bisect", keys),
        Some("bisect_batch_on_function_error")
    );
    assert_eq!(walk::suggest("batch", keys), None); // in two keys: not obvious
    assert_eq!(walk::suggest("colour", keys), None);
    assert_eq!(walk::suggest("", keys), None);
}

#[test]
fn wrong_types() {
    let text = format!(
        "shutdown_timeout_seconds = \"30\"\nstore = \"local\"\n[server]\nlisten = 9090\n{}\n\
         batch_size = \"ten\"\nenabled = \"yes\"\nparallelization_factor = 1.0\n\
         deaggregate = 1\nfunction_response_types = \"ReportBatchItemFailures\"\n\
         filter_criteria = [{{ data = 1 }}]\nget_records_calls_per_second = \"5\"\n\
         destination_config = [1, 2]",
        BASE.replace("\"TRIM_HORIZON\"", "[\"TRIM_HORIZON\"]")
            .replace("function = \"echo\"", "function = 3")
    );
    assert_eq!(
        validation_problems(&text),
        vec![
            "shutdown_timeout_seconds: expected an integer, found string \"30\"",
            "store: expected a table, found string \"local\"",
            "server.listen: expected a string, found integer 9090",
            "mapping[orders].function: expected a string (an in-process handler's name) or a table, found integer 3",
            "mapping[orders].starting_position: expected a string, found array [\"TRIM_HORIZON\"]",
            "mapping[orders].batch_size: expected an integer, found string \"ten\"",
            "mapping[orders].enabled: expected a boolean (true or false), found string \"yes\"",
            "mapping[orders].parallelization_factor: expected an integer, found float 1.0",
            "mapping[orders].deaggregate: expected a boolean (true or false), found integer 1",
            "mapping[orders].function_response_types: expected an array, found string \"ReportBatchItemFailures\"",
            "mapping[orders].filter_criteria[0]: expected a string (a JSON filter pattern), found table",
            "mapping[orders].get_records_calls_per_second: expected a number, found string \"5\"",
            "mapping[orders].destination_config: expected a table, found array [1, 2]",
        ]
    );
}

#[test]
fn bad_enum_strings_list_the_allowed_values() {
    assert_eq!(
        validation_problems(&with_root("[store]\nkind = \"redis\"")),
        vec!["store.kind: \"redis\" is not one of local, dynamodb"]
    );
    assert_eq!(
        validation_problems(&BASE.replace("TRIM_HORIZON", "EARLIEST")),
        vec![
            "mapping[orders].starting_position: \"EARLIEST\" is not one of TRIM_HORIZON, LATEST, AT_TIMESTAMP"
        ]
    );
    assert_eq!(
        validation_problems(&with(
            "function_response_types = [\"ReportBatchItemFailures\", \"Other\"]"
        )),
        vec![
            "mapping[orders].function_response_types[1]: \"Other\" is not one of ReportBatchItemFailures"
        ]
    );
}

#[test]
fn missing_required_keys() {
    assert_eq!(
        validation_problems("[[mapping]]\nname = \"orders\"\n"),
        vec![
            "mapping[orders].event_source_arn: required",
            "mapping[orders].function: required",
            "mapping[orders].starting_position: required",
        ]
    );
    assert_eq!(
        validation_problems(&BASE.replace("name = \"orders\"\n", "")),
        vec!["mapping[0].name: required"]
    );
    assert_eq!(
        validation_problems(&with_root("[store]\nkind = \"dynamodb\"")),
        vec!["store.table: required"]
    );
}

#[test]
fn store_settings_name_their_range() {
    let dynamodb = |extra: &str| {
        validation_problems(&with_root(&format!(
            "[store]\nkind = \"dynamodb\"\ntable = \"esm-leases\"\n{extra}"
        )))
    };
    assert_eq!(
        dynamodb("lease_duration_seconds = 2\nmax_leases_to_steal = 0\nregion = \"Mars\"\ncreate_table = \"yes\""),
        vec![
            "store.lease_duration_seconds: 2 is out of range 3..=300",
            "store.max_leases_to_steal: 0 is out of range 1..=100",
            "store.region: \"Mars\" is not an AWS region name (like us-east-1)",
            "store.create_table: expected a boolean (true or false), found string \"yes\"",
        ]
    );
    assert_eq!(
        validation_problems(&with_root(
            "[store]\ncreate_table = true\nlease_duration_seconds = 30"
        )),
        vec![
            "store.create_table: only allowed with kind = \"dynamodb\"",
            "store.lease_duration_seconds: only allowed with kind = \"dynamodb\"",
        ]
    );
}

#[test]
fn zero_mappings() {
    assert_eq!(
        validation_problems("shutdown_timeout_seconds = 10\n"),
        vec!["mapping: at least one [[mapping]] is required"]
    );
    assert_eq!(
        validation_problems("mapping = []\n"),
        vec!["mapping: at least one [[mapping]] is required"]
    );
    assert_eq!(
        validation_problems(""),
        vec!["mapping: at least one [[mapping]] is required"]
    );
    assert_eq!(
        validation_problems("[mapping]\nname = \"x\"\n"),
        vec!["mapping: expected an array of tables ([[mapping]]), found table"]
    );
    assert_eq!(
        validation_problems("mapping = [1]\n"),
        vec!["mapping[0]: expected a table, found integer 1"]
    );
}

#[test]
fn syntax_error_is_one_problem_with_line_and_column() {
    let err = parse("shutdown_timeout_seconds = 30\nbatch_size = = 3\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: TOML syntax error at line 2, column 14: extra `=`, expected nothing"
    );
    let err = parse("a = 1\na = 2\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: TOML syntax error at line 2, column 1: duplicate key"
    );
}

#[test]
fn bad_names_and_duplicates() {
    let text = format!(
        "{BASE}{}{}{}",
        BASE.replace("orders\"\nevent", "orders\"\nbatch_size = 0\nevent"),
        BASE.replace("\"orders\"\n", "\"my orders\"\n"),
        BASE.replace("\"orders\"\n", "\"\"\n"),
    );
    assert_eq!(
        validation_problems(&text),
        vec![
            "mapping[1].name: \"orders\" is already the name of mapping[0]; names must be unique",
            "mapping[1].batch_size: 0 is out of range 1..=10000",
            "mapping[2].name: \"my orders\" is not a valid name (1 to 64 characters of A-Z a-z 0-9 _ . -)",
            "mapping[3].name: \"\" is not a valid name (1 to 64 characters of A-Z a-z 0-9 _ . -)",
        ]
    );
    let long = "a".repeat(64);
    assert!(
        validation_problems(&BASE.replace("orders\"\nevent", &format!("{long}\"\nevent")))
            .is_empty()
    );
    let too_long = "a".repeat(65);
    assert_eq!(
        validation_problems(&BASE.replace("orders\"\nevent", &format!("{too_long}\"\nevent")))
            .len(),
        1
    );
    assert!(
        validation_problems(&BASE.replace("orders\"\nevent", "Orders_v2.1-x\"\nevent")).is_empty()
    );
}

#[test]
fn bad_arns_say_what_shape_was_expected() {
    let shapes = "(expected arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME or ...:stream/NAME/consumer/CONSUMER:TIMESTAMP)";
    let arn = |a: &str| {
        validation_problems(
            &BASE.replace("arn:aws:kinesis:us-east-1:000000000000:stream/orders", a),
        )
    };
    assert_eq!(
        arn("arn:aws:kinesis:us-east-1:000000000000:orders"),
        vec![format!(
            "mapping[orders].event_source_arn: \"arn:aws:kinesis:us-east-1:000000000000:orders\" \
             is not a Kinesis stream or consumer ARN: resource \"orders\" does not start with stream/ {shapes}"
        )]
    );
    assert_eq!(
        arn("orders"),
        vec![format!(
            "mapping[orders].event_source_arn: \"orders\" is not a Kinesis stream or consumer ARN: \
             not an ARN (too few :-separated fields) {shapes}"
        )]
    );
    assert_eq!(
        validation_problems(&with(
            "[mapping.destination_config.on_failure]\ndestination = \"arn:aws:lambda:us-east-1:000000000000:function:f\""
        )),
        vec![
            "mapping[orders].destination_config.on_failure.destination: \
             \"arn:aws:lambda:us-east-1:000000000000:function:f\" is not an SQS queue, SNS topic or S3 bucket ARN: \
             service is \"lambda\", not sqs, sns or s3 (expected arn:PARTITION:sqs:REGION:ACCOUNT:QUEUE, \
             arn:PARTITION:sns:REGION:ACCOUNT:TOPIC or arn:PARTITION:s3:::BUCKET)"
        ]
    );
    assert_eq!(
        validation_problems(&with("[mapping.destination_config.on_failure]")),
        vec!["mapping[orders].destination_config.on_failure.destination: required"]
    );
}

#[test]
fn combinations_lambda_rejects() {
    assert_eq!(
        validation_problems(&with(
            "tumbling_window_in_seconds = 60\nparallelization_factor = 2"
        )),
        vec![
            "mapping[orders].tumbling_window_in_seconds: a tumbling window (60) is not allowed with parallelization_factor = 2"
        ]
    );
    assert_eq!(
        validation_problems(&with("starting_position_timestamp = \"2026-11-22T00:00:00Z\"")),
        vec![
            "mapping[orders].starting_position_timestamp: only allowed with starting_position = \"AT_TIMESTAMP\", not \"TRIM_HORIZON\""
        ]
    );
    assert_eq!(
        validation_problems(&BASE.replace("TRIM_HORIZON", "AT_TIMESTAMP")),
        vec![
            "mapping[orders].starting_position_timestamp: required with starting_position = \"AT_TIMESTAMP\""
        ]
    );
    assert_eq!(
        validation_problems(&with_function_table("name = \"echo\"\ncommand = [\"./h\"]")),
        vec!["mapping[orders].function: set either name or command, not both"]
    );
    assert_eq!(
        validation_problems(&with_function_table("timeout_seconds = 5")),
        vec![
            "mapping[orders].function: needs name (an in-process handler) or command (a Runtime API process)"
        ]
    );
    assert_eq!(
        validation_problems(&with_function_table("name = \"echo\"\nconcurrency = 2")),
        vec!["mapping[orders].function.concurrency: only allowed with command"]
    );
    assert_eq!(
        validation_problems(&with_root("[store]\nkind = \"dynamodb\"\ntable = \"t1\"\npath = \"x\"")),
        vec![
            "store.table: \"t1\" is not a DynamoDB table name (3 to 255 characters of A-Z a-z 0-9 _ . -)",
            "store.path: only allowed with kind = \"local\"",
        ]
    );
    assert_eq!(
        validation_problems(&with_root("[store]\ntable = \"esm-leases\"")),
        vec!["store.table: only allowed with kind = \"dynamodb\""]
    );
    assert_eq!(
        validation_problems(&with_root(
            "[store]\nkind = \"dynamodb\"\ntable = \"esm-leases\"\ncommit_interval_ms = 5"
        )),
        vec!["store.commit_interval_ms: only allowed with kind = \"local\""]
    );
    assert_eq!(
        validation_problems(&with_root("[store]\ncommit_interval_ms = 1001")),
        vec!["store.commit_interval_ms: 1001 is out of range 0..=1000"]
    );
    assert_eq!(
        valid(&with_root("[store]\ncommit_interval_ms = 0")).store,
        StoreConfig::Local {
            path: PathBuf::from("./esm-state"),
            commit_interval: Duration::ZERO,
        }
    );
}

#[test]
fn timestamps() {
    let at = |ts: &str| {
        validation(&BASE.replace(
            "\"TRIM_HORIZON\"",
            &format!("\"AT_TIMESTAMP\"\nstarting_position_timestamp = {ts}"),
        ))
    };
    let expected =
        StartingPosition::AtTimestamp(Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap());
    let (config, problems) = at("\"2026-11-22T00:00:00Z\"");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(config.mappings[0].starting_position, expected);
    let (config, problems) = at("2026-11-22T00:00:00Z");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(config.mappings[0].starting_position, expected);
    assert_eq!(
        at("2026-11-22T00:00:00").1,
        vec![
            "mapping[orders].starting_position_timestamp: 2026-11-22T00:00:00 is not a date and time with a UTC offset (e.g. 2026-11-22T00:00:00Z)"
        ]
    );
    assert_eq!(
        at("\"yesterday\"").1,
        vec![
            "mapping[orders].starting_position_timestamp: \"yesterday\" is not an RFC 3339 timestamp (e.g. 2026-11-22T00:00:00Z)"
        ]
    );
    assert_eq!(
        at("1700000000").1,
        vec![
            "mapping[orders].starting_position_timestamp: expected an RFC 3339 timestamp, found integer 1700000000"
        ]
    );
}

#[test]
fn function_commands_and_names() {
    assert_eq!(
        validation_problems(&with_function_table("command = []")),
        vec![
            "mapping[orders].function.command: must not be empty (the program, then its arguments)"
        ]
    );
    assert_eq!(
        validation_problems(&with_function_table("command = [\"./h\", \"\", 3]")),
        vec![
            "mapping[orders].function.command[1]: must not be empty",
            "mapping[orders].function.command[2]: expected a string, found integer 3",
        ]
    );
    assert_eq!(
        validation_problems(&BASE.replace("\"echo\"", "\"\"")),
        vec!["mapping[orders].function: must not be empty"]
    );
    let (config, problems) = validation(&with_function_table("command = [\"./h\"]"));
    assert!(problems.is_empty());
    assert_eq!(
        config.mappings[0].function,
        FunctionConfig::Command {
            command: vec!["./h".to_string()],
            concurrency: 1,
            timeout: Duration::from_secs(3),
            memory_size: 128,
            handler: "./h".to_string(),
            environment: BTreeMap::new(),
        }
    );
}

#[test]
fn filter_patterns_are_checked_against_lambdas_rule_syntax() {
    let problems = validation_problems(&with(
        "filter_criteria = [\n  '{\"data\": {\"kind\": [\"order\"]}}',\n           '{\"data\": {\"kind\": \"order\"}}',\n           '{\"body\": {\"kind\": [\"order\"]}}',\n           '{\"data\": {\"n\": [{\"numeric\": [\">\"]}]}}',\n           '{\"partitionKey\": [{\"prefix\": \"eu-\"}]}'\n]",
    ));
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for (problem, (index, words)) in
        problems
            .iter()
            .zip([(1, "data.kind"), (2, "body"), (3, "numeric")])
    {
        assert!(
            problem.starts_with(&format!("mapping[orders].filter_criteria[{index}]: ")),
            "{problem}"
        );
        assert!(problem.contains(words), "{problem}");
    }
    let config = parse(&with(
        "filter_criteria = ['{\"data\": {\"kind\": [\"order\"]}}', '{\"partitionKey\": [\"a\"]}']",
    ))
    .unwrap();
    let spec = crate::runner::MappingSpec::from_config(&config.mappings[0]).unwrap();
    assert!(spec.filter.keeps("b", br#"{"kind":"order"}"#));
    assert!(spec.filter.keeps("a", b"not json"));
    assert!(!spec.filter.keeps("b", br#"{"kind":"click"}"#));
}

#[test]
fn filter_patterns_must_be_json_objects() {
    assert_eq!(
        validation_problems(&with("filter_criteria = ['{\"data\": 1', '[1]']")),
        vec![
            "mapping[orders].filter_criteria[0]: not valid JSON: EOF while parsing an object at line 1 column 10",
            "mapping[orders].filter_criteria[1]: expected a JSON object (a filter pattern), found [1]",
        ]
    );
}

#[test]
fn server_listen() {
    let (config, problems) = validation(&with_root("[server]"));
    assert!(problems.is_empty());
    assert_eq!(
        config.server,
        Some(ServerConfig {
            listen: "127.0.0.1:9090".parse().unwrap()
        })
    );
    let (config, problems) = validation(&with_root("[server]\nlisten = \"[::1]:80\""));
    assert!(problems.is_empty());
    assert_eq!(config.server.unwrap().listen.port(), 80);
    assert_eq!(
        validation_problems(&with_root("[server]\nlisten = \"localhost:9090\"")),
        vec![
            "server.listen: \"localhost:9090\" is not an IP address and port (e.g. 127.0.0.1:9090)"
        ]
    );
}

#[test]
fn problems_come_in_file_order_then_unsupported() {
    // The DynamoDB store, the tumbling window and fan-out have landed: no problem.
    let text = format!(
        "[store]\nkind = \"dynamodb\"\ntable = \"esm-leases\"\n{}\ntumbling_window_in_seconds = 60\nzzz = 1\nbatch_size = 0\n[mapping.function]\ncommand = [\"./h\"]\n",
        BASE.replace("function = \"echo\"\n", "")
            .replace("stream/orders", "stream/orders/consumer/esm:1700000000")
    );
    assert_eq!(
        all_problems(&format!("shutdown_timeout_seconds = -5\n{text}")),
        vec![
            "shutdown_timeout_seconds: -5 is out of range 0..=3600",
            "mapping[orders].zzz: unknown key",
            "mapping[orders].batch_size: 0 is out of range 1..=10000",
        ]
    );
    assert_eq!(
        validation(&text).0.mappings[0].tumbling_window,
        Duration::from_secs(60)
    );
}

#[test]
fn invalid_values_do_not_also_count_as_unsupported() {
    assert_eq!(
        all_problems(&with(
            "parallelization_factor = 11\nmaximum_record_age_in_seconds = 30\nmaximum_retry_attempts = -3"
        )),
        vec![
            "mapping[orders].parallelization_factor: 11 is out of range 1..=10",
            "mapping[orders].maximum_record_age_in_seconds: 30 is out of range (-1 or 60..=604800)",
            "mapping[orders].maximum_retry_attempts: -3 is out of range (-1 or 0..=10000)",
        ]
    );
}

#[test]
fn five_mistakes_fixture_gives_exactly_the_expected_lines() {
    let text = include_str!("../../tests/fixtures/five-mistakes.toml");
    let expected: Vec<&str> = include_str!("../../tests/fixtures/five-mistakes.expected")
        .lines()
        .collect();
    assert_eq!(expected.len(), 5);
    let err = parse(text).unwrap_err();
    assert_eq!(err.0.len(), 5);
    assert_eq!(err.to_string().lines().collect::<Vec<_>>(), expected);
}

// ---------------------------------------------------------------------- ARNs

#[test]
fn stream_arn() {
    let arn =
        EventSourceArn::parse("arn:aws:kinesis:us-east-1:000000000000:stream/orders").unwrap();
    assert_eq!(
        arn,
        EventSourceArn {
            arn: "arn:aws:kinesis:us-east-1:000000000000:stream/orders".to_string(),
            partition: "aws".to_string(),
            region: "us-east-1".to_string(),
            account: "000000000000".to_string(),
            stream_name: "orders".to_string(),
            consumer: None,
        }
    );
    assert_eq!(arn.stream_arn(), arn.arn);
    let cn =
        EventSourceArn::parse("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c-d").unwrap();
    assert_eq!(cn.partition, "aws-cn");
    assert_eq!(cn.stream_name, "a.b_c-d");
}

#[test]
fn consumer_arn() {
    let s = "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/esm-1:1700000000";
    let arn = EventSourceArn::parse(s).unwrap();
    assert_eq!(arn.stream_name, "orders");
    assert_eq!(arn.consumer.as_deref(), Some(s));
    assert_eq!(
        arn.stream_arn(),
        "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    );
    assert_eq!(arn.to_string(), s);
}

#[test]
fn bad_event_source_arns() {
    let why = |s: &str| {
        let err = EventSourceArn::parse(s).unwrap_err();
        assert!(err.ends_with(
            "(expected arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME or ...:stream/NAME/consumer/CONSUMER:TIMESTAMP)"
        ), "{err}");
        err.split(" (expected")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(why(""), "not an ARN (too few :-separated fields)");
    assert_eq!(
        why("urn:aws:kinesis:us-east-1:000000000000:stream/o"),
        "not an ARN (does not start with arn:)"
    );
    assert_eq!(
        why("arn:gcp:kinesis:us-east-1:000000000000:stream/o"),
        "partition \"gcp\" is not valid"
    );
    assert_eq!(
        why("arn:aws:sqs:us-east-1:000000000000:stream/o"),
        "service is \"sqs\", not kinesis"
    );
    assert_eq!(
        why("arn:aws:kinesis::000000000000:stream/o"),
        "region \"\" is not valid"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:123:stream/o"),
        "account \"123\" is not 12 digits"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:"),
        "the resource after the account is empty"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:table/o"),
        "resource \"table/o\" does not start with stream/"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:stream/"),
        "stream name \"\" is not 1 to 128 characters of A-Z a-z 0-9 _ . -"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:stream/a b"),
        "stream name \"a b\" is not 1 to 128 characters of A-Z a-z 0-9 _ . -"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:stream/o/consumer/c"),
        "\"consumer/c\" after the stream name is not consumer/CONSUMER:TIMESTAMP"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:stream/o/consumer/c:"),
        "\"consumer/c:\" after the stream name is not consumer/CONSUMER:TIMESTAMP"
    );
    assert_eq!(
        why("arn:aws:kinesis:us-east-1:000000000000:stream/o/shard/c:1"),
        "\"shard/c:1\" after the stream name is not consumer/CONSUMER:TIMESTAMP"
    );
}

#[test]
fn destination_arns() {
    let kind = |s: &str| DestinationArn::parse(s).map(|d| d.kind);
    assert_eq!(
        kind("arn:aws:sqs:us-east-1:000000000000:orders-failures"),
        Ok(DestinationKind::Sqs)
    );
    assert_eq!(
        kind("arn:aws:sns:us-east-1:000000000000:orders_failures"),
        Ok(DestinationKind::Sns)
    );
    assert_eq!(kind("arn:aws:s3:::my.bucket-1"), Ok(DestinationKind::S3));
    for bad in [
        "arn:aws:sqs:us-east-1:000000000000:bad name",
        "arn:aws:sqs:us-east-1:0:q",
        "arn:aws:sns::000000000000:t",
        "arn:aws:s3:us-east-1::bucket",
        "arn:aws:s3:::B",
        "arn:aws:s3:::-bucket",
        "arn:aws:dynamodb:us-east-1:000000000000:table/t",
        "sqs://queue",
    ] {
        let err = DestinationArn::parse(bad).unwrap_err();
        assert!(
            err.ends_with(
                "(expected arn:PARTITION:sqs:REGION:ACCOUNT:QUEUE, arn:PARTITION:sns:REGION:ACCOUNT:TOPIC or arn:PARTITION:s3:::BUCKET)"
            ),
            "{bad}: {err}"
        );
    }
}

// ------------------------------------------------------------------ display

#[test]
fn problems_display_one_per_line() {
    let problems = Problems(vec![
        Problem::new(
            "mapping[orders].batch_size",
            "20000 is out of range 1..=10000",
        ),
        Problem::new("config", "cannot read x"),
    ]);
    assert_eq!(
        problems.to_string(),
        "mapping[orders].batch_size: 20000 is out of range 1..=10000\nconfig: cannot read x"
    );
    assert_eq!(problems.0[1].to_string(), "config: cannot read x");
    let as_error: &dyn std::error::Error = &problems;
    assert!(as_error.source().is_none());
    assert_eq!(Problems(Vec::new()).to_string(), "");
}

#[test]
fn summary_counts_and_lists_mappings() {
    let two = format!("{BASE}{}", BASE.replace("\"orders\"", "\"payments\""));
    assert_eq!(
        valid(&two).summary(),
        "valid: 2 mappings (orders, payments); store local at ./esm-state"
    );
}
