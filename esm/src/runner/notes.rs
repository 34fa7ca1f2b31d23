//! What the shard state machine tells the outside world: a log line a person
//! understands, and the counters users alarm on. No decision is made here.

use crate::core::failure::Outcome;
use crate::core::record::Position;
use crate::core::shard::{GaveUp, Note};
use crate::metrics::MappingMetrics;

use super::MappingSpec;

/// Logs `note` and counts it.
pub(crate) fn report(note: &Note, spec: &MappingSpec, metrics: &MappingMetrics) {
    match note {
        Note::Invoked {
            lane,
            first,
            last,
            records,
            attempt,
            outcome,
            judged,
        } => {
            metrics.invocations.count(judged.outcome);
            metrics
                .failed_invoke_events
                .add(judged.failed_records as u64);
            let (first, last) = (display(first.as_ref()), display(last.as_ref()));
            match outcome {
                Outcome::Returned { .. } => {
                    match (&judged.unreadable_response, judged.failed_records) {
                        (Some(why), _) => {
                            tracing::warn!(lane, %first, %last, records, attempt, %why, "the function's response is not a valid batchItemFailures answer; the whole batch failed and will be retried");
                        }
                        (None, 0) => {}
                        (None, failed) => {
                            tracing::debug!(lane, %first, %last, records, attempt, failed, "the function reported item failures; the records from the lowest one on will be retried");
                        }
                    }
                }
                Outcome::FunctionError {
                    error_type,
                    message,
                } => {
                    tracing::warn!(lane, %first, %last, records, attempt, %error_type, %message, "the function returned an error; the batch will be retried");
                }
                Outcome::Timeout => {
                    tracing::warn!(lane, %first, %last, records, attempt, timeout = ?spec.timeout, "the function timed out; the batch will be retried");
                }
                Outcome::Crash { reason } => {
                    tracing::warn!(lane, %first, %last, records, attempt, %reason, "the function crashed; the batch will be retried");
                }
                Outcome::NotInvoked { reason } => {
                    tracing::warn!(lane, %first, %last, records, attempt, %reason, "the function could not be invoked; the batch will be retried");
                }
            }
        }
        Note::Dropped(gave_up) => {
            metrics
                .dropped_events
                .by_condition(gave_up.condition)
                .add(gave_up.records as u64);
            log_gave_up(gave_up, None);
        }
        Note::Delivered(gave_up) => {
            metrics
                .destination_delivered_events
                .add(gave_up.records as u64);
            log_gave_up(gave_up, Some(spec));
        }
        Note::DeliveryFailed {
            lane,
            error,
            retry_in,
        } => {
            metrics.destination_delivery_failures.inc();
            tracing::error!(lane, %error, ?retry_in, "cannot send to the on-failure destination; retrying (the checkpoint waits)");
        }
        Note::SaveFailed { error, retry_in } => {
            tracing::warn!(%error, ?retry_in, "checkpoint write failed; retrying");
        }
        Note::EndOfShard { children } => {
            tracing::info!(?children, "reached the end of the closed shard");
        }
        Note::ReaderFailed { reason } => {
            tracing::error!(%reason, "the shard reader stopped; the shard stops once its invocations in flight have ended");
        }
        Note::WindowInvocationGaveUp {
            lane,
            window,
            condition,
            invocations,
        } => {
            let (start, end) = window.map_or((String::new(), String::new()), |w| {
                (w.start.to_rfc3339(), w.end.to_rfc3339())
            });
            tracing::error!(lane, %start, %end, condition = condition.as_str(), approximate_invoke_count = invocations, "a tumbling window's last invocation (no records) was given up: the window's aggregate is lost; its records were handled by earlier invocations and are not read again");
        }
        Note::FilteredOut { records } => {
            metrics.filtered_out_events.add(*records as u64);
        }
        Note::AggregatedNotFiltered => {
            tracing::warn!("KPL-aggregated records found with filter_criteria set and not de-aggregated (deaggregate = false, or they failed to decode): they are passed to the function unfiltered, because their data is not the user's JSON");
        }
        Note::Polled { records } => {
            metrics.polled_events.add(*records as u64);
        }
        Note::DeaggregationFailed { sequence, reason } => {
            metrics.deaggregation_failures.inc();
            tracing::warn!(%sequence, %reason, "a record starts with the KPL magic but is not a valid aggregate; it is passed to the function whole, as a plain record");
        }
    }
}

/// One line per range given up: sent to the destination, or dropped without one.
fn log_gave_up(g: &GaveUp, sent: Option<&MappingSpec>) {
    let (first, last) = (display(g.first.as_ref()), display(g.last.as_ref()));
    let (lane, records, condition) = (g.lane, g.records, g.condition.as_str());
    let approximate_invoke_count = g.invocations;
    match sent {
        Some(spec) => {
            let destination = spec.destination_arn.as_deref().unwrap_or_default();
            tracing::warn!(lane, %first, %last, records, condition, approximate_invoke_count, destination, "records sent to the on-failure destination");
        }
        None => {
            tracing::warn!(lane, %first, %last, records, condition, approximate_invoke_count, "dropping records: no on-failure destination");
        }
    }
}

/// A position for a log line (empty when there is none).
pub(crate) fn display(p: Option<&Position>) -> String {
    p.map(ToString::to_string).unwrap_or_default()
}
