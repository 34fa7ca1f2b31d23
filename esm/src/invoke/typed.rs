//! Lambda's event types built straight from a batch, and responses read straight from
//! a handler's value: the in-process path without JSON.
//!
//! An in-process handler that takes [`KinesisEvent`] (or a [`KinesisWindowEvent`],
//! registered with [`Registry::window_handler`](super::Registry::window_handler))
//! would otherwise get its event written as JSON by esm and read back by serde on the
//! handler's side, base64 and all: most of esm's CPU per record. Here the same value
//! is built from the records directly, and a response of a known type
//! ([`KinesisEventResponse`], [`BatchItemFailures`], `()`) is read without writing
//! it. The value is exactly what the handler would have read from the JSON the
//! Runtime API path sends (a property test in `invoke/tests.rs` holds the two paths
//! together), down to one quirk: `aws_lambda_events` reads the fraction of
//! `approximateArrivalTimestamp` from the shortest decimal of the number, so
//! `…650.530` reads as 53 ms, not 530. A handler sees the same instant whichever way it
//! runs (on Lambda, under the Runtime API, or in-process).

use std::any::Any;

use chrono::{DateTime, TimeZone as _, Utc};
use handler_sdk::events::{
    KinesisEvent, KinesisEventRecord, KinesisEventResponse, KinesisRecord, Window,
};
use handler_sdk::window::KinesisWindowEvent;
use handler_sdk::BatchItemFailures;
use serde::de::DeserializeOwned;

use crate::core::event::{BatchEvent, EventSource};
use crate::core::record::Record;
use crate::core::response::Response;

/// Takes the value out of `slot` as a `U` when `T` is `U` (a handler's event or
/// response type, checked at run time: Rust has no specialization); otherwise leaves
/// it there.
pub(super) fn take_as<T: 'static, U: 'static>(slot: &mut Option<T>) -> Option<U> {
    (slot as &mut dyn Any).downcast_mut::<Option<U>>()?.take()
}

/// Fills `slot` with `value` when `T` is `U`.
pub(super) fn put_as<T: 'static, U: 'static>(
    slot: &mut Option<T>,
    value: impl FnOnce() -> Option<U>,
) {
    if let Some(slot) = (slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        *slot = value();
    }
}

/// The [`KinesisEvent`] of `event`, or `None` when a record's arrival time is outside
/// what is read here exactly as `aws_lambda_events` reads it from JSON (before 1970
/// or after the year 33658); the caller then takes the JSON path.
pub fn kinesis_event(event: &BatchEvent) -> Option<KinesisEvent> {
    let mut out = KinesisEvent::default();
    out.records = event_records(event.records(), event.source())?;
    Some(out)
}

/// The [`KinesisWindowEvent`] of `event`: its records, and the window's fields when
/// the mapping has a tumbling window (absent otherwise, as in the JSON). `None` as for
/// [`kinesis_event`]; `Err` when the state does not read as an `S`.
pub fn window_event<S: DeserializeOwned + Default>(
    event: &BatchEvent,
) -> Option<Result<KinesisWindowEvent<S>, serde_json::Error>> {
    let records = event_records(event.records(), event.source())?;
    let mut out = KinesisWindowEvent::<S> {
        records,
        ..KinesisWindowEvent::default()
    };
    if let Some(fields) = event.window() {
        let state = match handler_sdk::window::read_state::<S>(&fields.state) {
            Ok(state) => state,
            Err(e) => return Some(Err(e)),
        };
        let mut window = Window::default();
        window.start = fields.bounds.start;
        window.end = fields.bounds.end;
        out.shard_id = Some(event.source().shard_id.clone());
        out.event_source_arn = Some(event.source().stream_arn.clone());
        out.window = Some(window);
        out.state = state;
        out.is_final_invoke_for_window = fields.is_final;
        out.is_window_terminated_early = fields.terminated_early;
    }
    Some(Ok(out))
}

/// The records of an event, as `aws_lambda_events` reads them.
fn event_records(records: &[Record], source: &EventSource) -> Option<Vec<KinesisEventRecord>> {
    // Sized up front: collecting into `Option<Vec<_>>` knows no length, and growing a
    // vector of these large records moved them several times per batch.
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        out.push(event_record(record, source)?);
    }
    Some(out)
}

fn event_record(record: &Record, source: &EventSource) -> Option<KinesisEventRecord> {
    let sequence = record.sequence().as_str();
    let mut kinesis = KinesisRecord::default();
    // Both are tuple structs marked non-exhaustive: filled through their public field.
    kinesis.approximate_arrival_timestamp.0 =
        arrival_as_read(record.approximate_arrival.timestamp_millis())?;
    kinesis.data.0 = record.data.to_vec();
    kinesis.partition_key = record.partition_key.clone();
    kinesis.sequence_number = sequence.to_owned();
    kinesis.kinesis_schema_version = Some("1.0".to_owned());
    let mut out = KinesisEventRecord::default();
    out.aws_region = Some(source.region.clone());
    let mut event_id = String::with_capacity(source.shard_id.len() + 1 + sequence.len());
    event_id.push_str(&source.shard_id);
    event_id.push(':');
    event_id.push_str(sequence);
    out.event_id = Some(event_id);
    out.event_name = Some("aws:kinesis:record".to_owned());
    out.event_source = Some("aws:kinesis".to_owned());
    out.event_source_arn = Some(source.stream_arn.clone());
    out.event_version = Some("1.0".to_owned());
    out.invoke_identity_arn = Some(source.invoke_identity_arn.clone());
    out.kinesis = kinesis;
    Some(out)
}

/// The instant `aws_lambda_events` reads from the `approximateArrivalTimestamp` esm
/// writes for `millis` (`SECONDS.MMM`).
///
/// It parses the number as an `f64`, prints it in its shortest form and reads the
/// digits after the point as milliseconds: `.530` prints as `.53` and reads as 53 ms,
/// `.050` and `.500` as 5 ms. Below 10¹² seconds the number has at most 15 significant
/// digits, so its shortest form is the decimal written with trailing zeros dropped, and
/// this computes the same thing without formatting a float. `None` outside that range
/// (and before 1970, where the reading fails).
fn arrival_as_read(millis: i64) -> Option<DateTime<Utc>> {
    const MAX_SECONDS: i64 = 1_000_000_000_000;
    let (secs, mut ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    if !(0..MAX_SECONDS).contains(&secs) {
        return None;
    }
    while ms != 0 && ms % 10 == 0 {
        ms /= 10;
    }
    Utc.timestamp_opt(secs, u32::try_from(ms * 1_000_000).ok()?)
        .latest()
}

/// A handler's response (taken out of `slot`) read without JSON when its type is one
/// esm knows: [`KinesisEventResponse`], [`BatchItemFailures`] or `()`. `None` leaves
/// any other type in `slot`, for the JSON path.
pub fn response<R: 'static>(slot: &mut Option<R>) -> Option<Response> {
    if let Some(failures) = take_as::<R, KinesisEventResponse>(slot) {
        return Some(Response::Items(Some(
            failures
                .batch_item_failures
                .into_iter()
                .map(|failure| failure.item_identifier)
                .collect(),
        )));
    }
    if let Some(failures) = take_as::<R, BatchItemFailures>(slot) {
        return Some(Response::Items(Some(
            failures
                .sequence_numbers()
                .map(|s| Some(s.to_owned()))
                .collect(),
        )));
    }
    // `()` serializes as `null`: no list, the whole batch succeeded.
    take_as::<R, ()>(slot).map(|()| Response::Items(None))
}

#[cfg(test)]
mod tests;
