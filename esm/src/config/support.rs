//! Settings that are valid but not built yet. Each is rejected, rather than
//! silently ignored, so a config never means something esm does not do.
//! Delete a check here when its feature lands.

use super::mapping::mapping_paths;
use super::problems::{quote, Problem};
use super::{Config, DestinationKind, StoreConfig};

/// Problems for every setting in `config` that esm does not support yet,
/// as `PATH: not supported yet: KEY = VALUE (why)`.
pub fn check_supported(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut unsupported = |path: String, key: &str, value: String, why: &str| {
        problems.push(Problem::new(
            path,
            format!("not supported yet: {key} = {value} ({why})"),
        ));
    };

    if let StoreConfig::DynamoDb { .. } = config.store {
        unsupported(
            "store.kind".to_string(),
            "kind",
            quote("dynamodb"),
            "the DynamoDB lease store is not built yet; use kind = \"local\"",
        );
    }
    if let Some(server) = &config.server {
        unsupported(
            "server".to_string(),
            "[server] listen",
            quote(&server.listen.to_string()),
            "the metrics and health server is not built yet; remove [server]",
        );
    }

    let names: Vec<Option<&str>> = config
        .mappings
        .iter()
        .map(|m| Some(m.name.as_str()))
        .collect();
    for (m, path) in config.mappings.iter().zip(mapping_paths(&names)) {
        let at = |key: &str| format!("{path}.{key}");
        if m.event_source.consumer.is_some() {
            unsupported(
                at("event_source_arn"),
                "event_source_arn",
                quote(&m.event_source.arn),
                "enhanced fan-out is not built yet; use the stream ARN",
            );
        }
        if !m.filter_criteria.is_empty() {
            let shown: Vec<String> = m.filter_criteria.iter().map(|p| format!("'{p}'")).collect();
            unsupported(
                at("filter_criteria"),
                "filter_criteria",
                format!("[{}]", shown.join(", ")),
                "event filtering is not built yet",
            );
        }
        if let Some(destination) = &m.on_failure_destination {
            if destination.kind == DestinationKind::S3 {
                unsupported(
                    at("destination_config.on_failure.destination"),
                    "destination",
                    quote(&destination.arn),
                    "S3 on-failure destinations are not built yet; use an SQS queue or an SNS topic",
                );
            }
        }
    }
    problems
}
