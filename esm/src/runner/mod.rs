//! The wiring: mappings, their shards, and the process around them.
//!
//! [`app::run`] opens the checkpoint store, resolves each enabled mapping's function,
//! and runs a [`mapping`] loop per mapping until a shutdown signal; each mapping loop
//! discovers shards and runs a [`shard`] runner per readable shard whose lease its
//! [`leases`] keeper holds.

pub mod app;
pub mod budget;
pub mod leases;
pub mod mapping;
mod notes;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{FunctionConfig, MappingConfig};
use crate::core::batch::BatchLimits;
use crate::core::failure::FailureRules;
use crate::core::filter::{FilterCriteria, FilterError};
use crate::core::window::Tumbling;
use crate::invoke::Invoker;
use crate::metrics::MappingMetrics;
use crate::store::{CheckpointStore, StartAt};

/// A mapping's settings in the form the runners use.
#[derive(Clone, Debug)]
pub struct MappingSpec {
    /// The mapping's name (logs, metrics, store keys).
    pub name: String,
    /// The stream ARN.
    pub stream_arn: String,
    /// The stream's region.
    pub region: String,
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
    pub function_arn: String,
    /// The event's `invokeIdentityArn`.
    pub invoke_identity_arn: String,
    /// The invocation timeout.
    pub timeout: Duration,
    /// Batch size, window, payload cap.
    pub limits: BatchLimits,
    /// The failure rules.
    pub policy: FailureRules,
    /// Where shards present at the first start begin.
    pub start: StartAt,
    /// The per-shard GetRecords call budget.
    pub calls_per_second: f64,
    /// How often ListShards runs to find new shards.
    pub discovery_interval: Duration,
    /// `deaggregate`: KPL aggregated records should arrive as their user records.
    pub deaggregate: bool,
    /// `parallelization_factor`: lanes per shard.
    pub parallelization: usize,
    /// `tumbling_window_in_seconds`, when set.
    pub tumbling: Option<Tumbling>,
    /// `filter_criteria`, compiled (empty: every record is kept).
    pub filter: FilterCriteria,
    /// The stream consumer to read with enhanced fan-out (SubscribeToShard);
    /// `None`: shared throughput (GetRecords).
    pub consumer_arn: Option<String>,
    /// `fan_out_resubscribe_seconds`: when a subscription is renewed.
    pub resubscribe_after: Duration,
    /// The on-failure destination's ARN, for logs.
    pub destination_arn: Option<String>,
}

impl MappingSpec {
    /// Derives the runtime settings from a validated mapping config.
    /// Fails only when a filter pattern does not compile, which the config reader
    /// has already ruled out.
    pub fn from_config(m: &MappingConfig) -> Result<Self, FilterError> {
        let filter = FilterCriteria::from_values(&m.filter_criteria)?;
        let arn = &m.event_source;
        let (function_name, timeout) = match &m.function {
            FunctionConfig::InProcess { name, timeout } => (name.clone(), *timeout),
            FunctionConfig::Command { timeout, .. } => (m.name.clone(), *timeout),
        };
        Ok(Self {
            name: m.name.clone(),
            stream_arn: arn.stream_arn(),
            region: arn.region.clone(),
            function_arn: format!(
                "arn:{}:lambda:{}:{}:function:{}",
                arn.partition, arn.region, arn.account, function_name
            ),
            invoke_identity_arn: format!("arn:{}:iam::{}:role/esm", arn.partition, arn.account),
            timeout,
            limits: BatchLimits::new(m.batch_size, m.maximum_batching_window),
            policy: FailureRules {
                max_retries: m.maximum_retry_attempts,
                max_age: m.maximum_record_age,
                bisect: m.bisect_batch_on_function_error,
                report_item_failures: m.report_batch_item_failures,
                ..FailureRules::default()
            },
            start: m.starting_position.clone(),
            calls_per_second: m.get_records_calls_per_second,
            discovery_interval: m.shard_discovery_interval,
            deaggregate: m.deaggregate,
            parallelization: usize::from(m.parallelization_factor),
            tumbling: Tumbling::new(m.tumbling_window),
            filter,
            consumer_arn: arn.consumer.clone(),
            resubscribe_after: m.fan_out_resubscribe,
            destination_arn: m.on_failure_destination.as_ref().map(|d| d.arn.clone()),
        })
    }
}

/// What every shard runner of one mapping shares.
pub struct MappingContext {
    /// The settings.
    pub spec: MappingSpec,
    /// Runs the function.
    pub invoker: Arc<dyn Invoker>,
    /// Keeps checkpoints.
    pub store: Arc<dyn CheckpointStore>,
    /// The mapping's counters.
    pub metrics: Arc<MappingMetrics>,
    /// Reads the stream.
    pub client: aws_sdk_kinesis::Client,
    /// Where records given up go; `None`: they are logged and skipped.
    pub destination: Option<Arc<dyn crate::destination::FailureDestination>>,
    /// The process-wide memory budget every shard reads within.
    pub budget: budget::MemoryBudget,
    /// Where the mapping tells `/status` and `/readyz` about its shards.
    pub board: crate::status::MappingBoard,
    /// This instance's name in the lease table.
    pub instance: String,
    /// Lease timing and balancing.
    pub lease_rules: crate::core::lease::LeaseRules,
}
