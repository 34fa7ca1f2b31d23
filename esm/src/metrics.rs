//! The metrics users alarm on, named after the ones Lambda publishes for stream
//! event source mappings (SPEC §6), so existing alarms translate one to one.
//!
//! [`Metrics`] is the process's registry, exported in the Prometheus text format on
//! `[server] listen` by the `prometheus-client` crate (the Prometheus project's own
//! Rust client). Each mapping takes its handles once, in a [`MappingMetrics`], and each
//! shard its gauges in a [`ShardGauges`]; after that, counting is one atomic add, and no
//! label is looked up on the hot path. Every family is registered at start, so a
//! scrape shows each metric's name and type before anything has happened; the label
//! sets of a mapping appear as soon as its handles are taken.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
/// A value that goes up and down (`prometheus-client`'s, shared by its clones).
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::failure::{Condition, InvocationOutcome};

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingLabel {
    mapping: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    mapping: String,
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    mapping: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    mapping: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    mapping: String,
    event: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of `esm_invocation_duration_seconds`: 5 ms to Lambda's 15-minute cap.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Buckets of `esm_batch_records`: 1 to the largest batch size, 10,000.
const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

/// Every metric family of SPEC §6.
#[derive(Clone, Debug)]
struct Families {
    iterator_age: Family<ShardLabels, Gauge>,
    millis_behind_latest: Family<ShardLabels, Gauge>,
    polled_events: Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    filtered_out_events: Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    invoked_events: Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    failed_invoke_events: Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    dropped_events: Family<ReasonLabels, prometheus_client::metrics::counter::Counter>,
    destination_delivered_events:
        Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    destination_delivery_failures:
        Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
    get_records: Family<OutcomeLabels, prometheus_client::metrics::counter::Counter>,
    invocations: Family<OutcomeLabels, prometheus_client::metrics::counter::Counter>,
    invocation_duration: HistogramFamily<MappingLabel>,
    batch_records: HistogramFamily<MappingLabel>,
    concurrent_invocations: Family<MappingLabel, Gauge>,
    leases_held: Family<MappingLabel, Gauge>,
    lease_events: Family<EventLabels, prometheus_client::metrics::counter::Counter>,
    fanout_resubscriptions: Family<ReasonLabels, prometheus_client::metrics::counter::Counter>,
    deaggregation_failures: Family<MappingLabel, prometheus_client::metrics::counter::Counter>,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            iterator_age: Family::default(),
            millis_behind_latest: Family::default(),
            polled_events: Family::default(),
            filtered_out_events: Family::default(),
            invoked_events: Family::default(),
            failed_invoke_events: Family::default(),
            dropped_events: Family::default(),
            destination_delivered_events: Family::default(),
            destination_delivery_failures: Family::default(),
            get_records: Family::default(),
            invocations: Family::default(),
            invocation_duration: Family::new_with_constructor(duration_histogram),
            batch_records: Family::new_with_constructor(batch_histogram),
            concurrent_invocations: Family::default(),
            leases_held: Family::default(),
            lease_events: Family::default(),
            fanout_resubscriptions: Family::default(),
            deaggregation_failures: Family::default(),
        }
    }
}

/// The process's metrics: every mapping's, ready to be scraped.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    families: Families,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every SPEC §6 family registered.
    pub fn new() -> Self {
        let f = Families::default();
        let mut r = Registry::default();
        r.register(
            "esm_iterator_age_milliseconds",
            "Lambda's IteratorAge, per shard: when an invocation ends, the age of its last record; 0 while the shard is caught up with nothing held",
            f.iterator_age.clone(),
        );
        r.register(
            "esm_millis_behind_latest",
            "MillisBehindLatest of the shard's last read",
            f.millis_behind_latest.clone(),
        );
        r.register(
            "esm_polled_events",
            "Records read from the stream (Lambda's PolledEventCount)",
            f.polled_events.clone(),
        );
        r.register(
            "esm_filtered_out_events",
            "Records that matched no filter pattern (Lambda's FilteredOutEventCount)",
            f.filtered_out_events.clone(),
        );
        r.register(
            "esm_invoked_events",
            "Records the function was invoked with, again on each retry (Lambda's InvokedEventCount)",
            f.invoked_events.clone(),
        );
        r.register(
            "esm_failed_invoke_events",
            "Records of invocations that failed or could not happen, and records named in batchItemFailures (Lambda's FailedInvokeEventCount)",
            f.failed_invoke_events.clone(),
        );
        r.register(
            "esm_dropped_events",
            "Records given up without an on-failure destination, by reason (Lambda's DroppedEventCount)",
            f.dropped_events.clone(),
        );
        r.register(
            "esm_on_failure_destination_delivered_events",
            "Records sent to the on-failure destination (Lambda's OnFailureDestinationDeliveredEventCount)",
            f.destination_delivered_events.clone(),
        );
        r.register(
            "esm_destination_delivery_failures",
            "Failed sends to the on-failure destination, each retried (Lambda's DestinationDeliveryFailures)",
            f.destination_delivery_failures.clone(),
        );
        r.register(
            "esm_get_records",
            "GetRecords calls by outcome: ok, throttled, expired_iterator, error",
            f.get_records.clone(),
        );
        r.register(
            "esm_invocations",
            "Invocations by outcome: ok, partial_failure, function_error, timeout, crash, throttled (Lambda's Invocations, Errors, Throttles)",
            f.invocations.clone(),
        );
        r.register(
            "esm_invocation_duration_seconds",
            "How long each invocation took (Lambda's Duration)",
            f.invocation_duration.clone(),
        );
        r.register(
            "esm_batch_records",
            "Records per invocation",
            f.batch_records.clone(),
        );
        r.register(
            "esm_concurrent_invocations",
            "Invocations in flight (Lambda's ConcurrentExecutions)",
            f.concurrent_invocations.clone(),
        );
        r.register(
            "esm_leases_held",
            "Shard leases this instance holds (with a lease store)",
            f.leases_held.clone(),
        );
        r.register(
            "esm_lease_events",
            "Shard leases taken, stolen, lost and released (with a lease store)",
            f.lease_events.clone(),
        );
        r.register(
            "esm_fanout_resubscriptions",
            "Enhanced fan-out subscriptions renewed or recovered, by reason: expired, connection, in_use, throttled, error",
            f.fanout_resubscriptions.clone(),
        );
        r.register(
            "esm_deaggregation_failures",
            "KPL aggregated records passed through whole (bad checksum or protobuf)",
            f.deaggregation_failures.clone(),
        );
        Self {
            registry: Arc::new(r),
            families: f,
        }
    }

    /// The handles of mapping `name`; its label sets appear in the export from now on.
    pub fn mapping(&self, name: &str) -> MappingMetrics {
        let f = &self.families;
        let mapping = MappingLabel {
            mapping: name.to_owned(),
        };
        let counter =
            |family: &Family<MappingLabel, _>| Counter(family.get_or_create_owned(&mapping));
        let outcome = |family: &Family<OutcomeLabels, _>, outcome: &'static str| {
            Counter(family.get_or_create_owned(&OutcomeLabels {
                mapping: name.to_owned(),
                outcome,
            }))
        };
        let reason = |family: &Family<ReasonLabels, _>, reason: &'static str| {
            Counter(family.get_or_create_owned(&ReasonLabels {
                mapping: name.to_owned(),
                reason,
            }))
        };
        let event = |family: &Family<EventLabels, _>, event: &'static str| {
            Counter(family.get_or_create_owned(&EventLabels {
                mapping: name.to_owned(),
                event,
            }))
        };
        MappingMetrics {
            name: name.to_owned(),
            polled_events: counter(&f.polled_events),
            filtered_out_events: counter(&f.filtered_out_events),
            invoked_events: counter(&f.invoked_events),
            failed_invoke_events: counter(&f.failed_invoke_events),
            dropped_events: DroppedCounters {
                record_age: reason(&f.dropped_events, "record_age"),
                retries_exhausted: reason(&f.dropped_events, "retries_exhausted"),
                oversized: reason(&f.dropped_events, "oversized"),
            },
            destination_delivered_events: counter(&f.destination_delivered_events),
            destination_delivery_failures: counter(&f.destination_delivery_failures),
            get_records: GetRecordsCounters {
                ok: outcome(&f.get_records, "ok"),
                throttled: outcome(&f.get_records, "throttled"),
                expired_iterator: outcome(&f.get_records, "expired_iterator"),
                error: outcome(&f.get_records, "error"),
            },
            fanout_resubscriptions: ResubscriptionCounters {
                expired: reason(&f.fanout_resubscriptions, "expired"),
                connection: reason(&f.fanout_resubscriptions, "connection"),
                in_use: reason(&f.fanout_resubscriptions, "in_use"),
                throttled: reason(&f.fanout_resubscriptions, "throttled"),
                error: reason(&f.fanout_resubscriptions, "error"),
            },
            invocations: InvocationCounters(
                InvocationOutcome::ALL.map(|o| outcome(&f.invocations, o.label())),
            ),
            invocation_duration: f.invocation_duration.get_or_create_owned(&mapping),
            batch_records: f.batch_records.get_or_create_owned(&mapping),
            concurrent_invocations: f.concurrent_invocations.get_or_create_owned(&mapping),
            deaggregation_failures: counter(&f.deaggregation_failures),
            leases_held: f.leases_held.get_or_create_owned(&mapping),
            lease_events: LeaseEventCounters {
                taken: event(&f.lease_events, "taken"),
                stolen: event(&f.lease_events, "stolen"),
                lost: event(&f.lease_events, "lost"),
                released: event(&f.lease_events, "released"),
            },
            shard_gauges: ShardFamilies {
                iterator_age: f.iterator_age.clone(),
                millis_behind_latest: f.millis_behind_latest.clone(),
            },
        }
    }

    /// The metrics in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would leave the text cut
        // short, which a scraper reports.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// `esm_get_records_total{outcome}`.
#[derive(Clone, Debug, Default)]
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

/// `esm_invocations_total{outcome}`, one counter per [`InvocationOutcome`].
#[derive(Clone, Debug, Default)]
pub struct InvocationCounters([Counter; 6]);

impl InvocationCounters {
    /// Counts one invocation.
    pub fn count(&self, outcome: InvocationOutcome) {
        self.get(outcome).inc();
    }

    /// The counter of `outcome`.
    pub fn get(&self, outcome: InvocationOutcome) -> &Counter {
        let index = InvocationOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        &self.0[index]
    }
}

/// `esm_dropped_events_total{reason}`: records skipped without a destination.
#[derive(Clone, Debug, Default)]
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
#[derive(Clone, Debug, Default)]
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

/// `esm_lease_events_total{event}`: how this instance's leases changed hands.
#[derive(Clone, Debug, Default)]
pub struct LeaseEventCounters {
    /// `event="taken"`: a free or expired lease taken.
    pub taken: Counter,
    /// `event="stolen"`: a lease taken from a live instance holding more than its share.
    pub stolen: Counter,
    /// `event="lost"`: a lease another instance took (or one not renewed in time).
    pub lost: Counter,
    /// `event="released"`: a lease given up (shutdown, or its shard finished).
    pub released: Counter,
}

/// The per-shard families, for a mapping to take its shards' gauges from.
#[derive(Clone, Debug, Default)]
struct ShardFamilies {
    iterator_age: Family<ShardLabels, Gauge>,
    millis_behind_latest: Family<ShardLabels, Gauge>,
}

/// One shard's gauges.
#[derive(Clone, Debug, Default)]
pub struct ShardGauges {
    /// `esm_iterator_age_milliseconds{mapping,shard}`.
    pub iterator_age_ms: Gauge,
    /// `esm_millis_behind_latest{mapping,shard}`.
    pub millis_behind_latest: Gauge,
}

/// The handles of one mapping.
#[derive(Clone, Debug)]
pub struct MappingMetrics {
    name: String,
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
    /// `esm_invocation_duration_seconds`.
    pub invocation_duration: Histogram,
    /// `esm_batch_records`.
    pub batch_records: Histogram,
    /// `esm_concurrent_invocations`.
    pub concurrent_invocations: Gauge,
    /// `esm_deaggregation_failures_total`: KPL aggregated records passed through whole.
    pub deaggregation_failures: Counter,
    /// `esm_leases_held`: shard leases this instance holds.
    pub leases_held: Gauge,
    /// `esm_lease_events_total{event}`.
    pub lease_events: LeaseEventCounters,
    shard_gauges: ShardFamilies,
}

impl Default for MappingMetrics {
    /// Handles in a registry of their own (for tests and tools that export nothing).
    fn default() -> Self {
        Metrics::new().mapping("")
    }
}

impl MappingMetrics {
    /// The gauges of `shard`; its label sets appear in the export from now on.
    pub fn shard(&self, shard: &str) -> ShardGauges {
        let labels = self.shard_labels(shard);
        ShardGauges {
            iterator_age_ms: self.shard_gauges.iterator_age.get_or_create_owned(&labels),
            millis_behind_latest: self
                .shard_gauges
                .millis_behind_latest
                .get_or_create_owned(&labels),
        }
    }

    /// Removes `shard`'s gauges from the export (a finished shard), so memory and the
    /// export stay flat as a stream reshards.
    pub fn forget_shard(&self, shard: &str) {
        let labels = self.shard_labels(shard);
        self.shard_gauges.iterator_age.remove(&labels);
        self.shard_gauges.millis_behind_latest.remove(&labels);
    }

    fn shard_labels(&self, shard: &str) -> ShardLabels {
        ShardLabels {
            mapping: self.name.clone(),
            shard: shard.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_its_labels() {
        let metrics = Metrics::new();
        let orders = metrics.mapping("orders");
        orders.polled_events.add(3);
        orders.invocations.count(InvocationOutcome::PartialFailure);
        orders.dropped_events.record_age.add(2);
        orders.deaggregation_failures.inc();
        orders.invocation_duration.observe(0.2);
        let shard = orders.shard("shardId-000000000001");
        shard.iterator_age_ms.set(1500);
        let text = metrics.encode();
        for line in [
            "# TYPE esm_polled_events_total counter",
            "esm_polled_events_total{mapping=\"orders\"} 3",
            "esm_invocations_total{mapping=\"orders\",outcome=\"partial_failure\"} 1",
            "esm_invocations_total{mapping=\"orders\",outcome=\"ok\"} 0",
            "esm_dropped_events_total{mapping=\"orders\",reason=\"record_age\"} 2",
            "esm_iterator_age_milliseconds{mapping=\"orders\",shard=\"shardId-000000000001\"} 1500",
            "esm_invocation_duration_seconds_bucket{mapping=\"orders\",le=\"0.25\"} 1",
            "esm_invocation_duration_seconds_count{mapping=\"orders\"} 1",
            "esm_fanout_resubscriptions_total{mapping=\"orders\",reason=\"in_use\"} 0",
            "esm_deaggregation_failures_total{mapping=\"orders\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        orders.forget_shard("shardId-000000000001");
        assert!(!metrics.encode().contains("shardId-000000000001"));
    }
}
