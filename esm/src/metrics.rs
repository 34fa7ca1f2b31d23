//! Counters named after the metrics Lambda publishes for stream event source mappings.
//!
//! They are plain atomics, incremented where each outcome is decided, so that the
//! Prometheus endpoint (roadmap) only has to read them. Names follow SPEC §6.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::failure::{Condition, Outcome};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `esm_get_records_total{outcome}`.
#[derive(Debug, Default)]
pub struct GetRecordsCounters {
    /// Calls that returned records (or none).
    pub ok: Counter,
    /// `ProvisionedThroughputExceededException` / `LimitExceededException`.
    pub throttled: Counter,
    /// `ExpiredIteratorException`.
    pub expired_iterator: Counter,
    /// Any other failure.
    pub error: Counter,
}

/// `esm_invocations_total{outcome}`.
#[derive(Debug, Default)]
pub struct InvocationCounters {
    /// The function returned.
    pub ok: Counter,
    /// The function returned an error.
    pub function_error: Counter,
    /// The function timed out.
    pub timeout: Counter,
    /// The function crashed.
    pub crash: Counter,
    /// The function could not be invoked.
    pub throttled: Counter,
}

impl InvocationCounters {
    /// Counts one invocation by its outcome.
    pub fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Returned { .. } => &self.ok,
            Outcome::FunctionError { .. } => &self.function_error,
            Outcome::Timeout => &self.timeout,
            Outcome::Crash { .. } => &self.crash,
            Outcome::NotInvoked { .. } => &self.throttled,
        }
        .inc();
    }
}

/// `esm_dropped_events_total{reason}`: records skipped without a destination.
#[derive(Debug, Default)]
pub struct DroppedCounters {
    /// `reason="record_age"`.
    pub record_age: Counter,
    /// `reason="retries_exhausted"`.
    pub retries_exhausted: Counter,
    /// `reason="oversized"` (esm's: a record above the payload cap by itself).
    pub oversized: Counter,
}

impl DroppedCounters {
    /// All records dropped, whatever the reason.
    pub fn total(&self) -> u64 {
        self.record_age.get() + self.retries_exhausted.get() + self.oversized.get()
    }

    /// The counter for records given up with `condition` (its `reason` label is
    /// [`Condition::drop_reason`]).
    pub fn by_condition(&self, condition: Condition) -> &Counter {
        match condition {
            Condition::RecordAgeExceeded => &self.record_age,
            Condition::RetryAttemptsExhausted => &self.retries_exhausted,
            Condition::PayloadTooLarge => &self.oversized,
        }
    }
}

/// `esm_fanout_resubscriptions_total{reason}`: why a shard subscribed again.
#[derive(Debug, Default)]
pub struct ResubscriptionCounters {
    /// `reason="expired"`: the subscription ended (Kinesis's 5 minutes, or
    /// `fan_out_resubscribe_seconds`) and was renewed.
    pub expired: Counter,
    /// `reason="connection"`: the connection dropped.
    pub connection: Counter,
    /// `reason="in_use"`: `ResourceInUseException`, the previous subscription was
    /// still open.
    pub in_use: Counter,
    /// `reason="throttled"`: `LimitExceededException`.
    pub throttled: Counter,
    /// `reason="error"`: any other failure.
    pub error: Counter,
}

impl ResubscriptionCounters {
    /// All resubscriptions, whatever the reason.
    pub fn total(&self) -> u64 {
        self.expired.get()
            + self.connection.get()
            + self.in_use.get()
            + self.throttled.get()
            + self.error.get()
    }
}

/// The counters of one mapping.
#[derive(Debug, Default)]
pub struct MappingMetrics {
    /// `esm_polled_events_total`.
    pub polled_events: Counter,
    /// `esm_filtered_out_events_total`: records that matched no filter pattern.
    pub filtered_out_events: Counter,
    /// `esm_invoked_events_total` (a record counts again on each retry).
    pub invoked_events: Counter,
    /// `esm_failed_invoke_events_total`.
    pub failed_invoke_events: Counter,
    /// `esm_dropped_events_total{reason}`.
    pub dropped_events: DroppedCounters,
    /// `esm_on_failure_destination_delivered_events_total`.
    pub destination_delivered_events: Counter,
    /// `esm_destination_delivery_failures_total`.
    pub destination_delivery_failures: Counter,
    /// `esm_get_records_total`.
    pub get_records: GetRecordsCounters,
    /// `esm_fanout_resubscriptions_total{reason}`: subscriptions renewed or recovered.
    pub fanout_resubscriptions: ResubscriptionCounters,
    /// `esm_invocations_total`.
    pub invocations: InvocationCounters,
}
