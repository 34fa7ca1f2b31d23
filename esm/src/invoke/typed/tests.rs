//! The typed path gives a handler the event it would read from Lambda's JSON, and
//! esm reads the same verdict from a handler's value as from its JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{TimeZone as _, Utc};
use handler_sdk::events::{KinesisEvent, KinesisEventResponse};
use handler_sdk::window::{KinesisWindowEvent, KinesisWindowResponse};
use handler_sdk::{service_fn, BatchItemFailures, Error, LambdaEvent};
use proptest::prelude::*;

use super::*;
use crate::core::event::testing::{arb_record, record, source};
use crate::core::event::{EventEncoder, WindowFields};
use crate::core::failure::judge;
use crate::core::response::{batch_item_failures, verdict};
use crate::core::window::Tumbling;
use crate::invoke::{Invocation, Invoker as _, Outcome, Payload, Registry};

type Counts = BTreeMap<String, u64>;

/// A window's fields: its start, flags, and a state (`None` for one that does not
/// read as [`Counts`]).
fn arb_window() -> impl Strategy<Value = Option<WindowFields>> {
    let state = prop_oneof![
        Just(r#"{}"#.to_owned()),
        proptest::collection::btree_map("[a-z\"\\\\é]{0,6}", any::<u64>(), 0..4)
            .prop_map(|m| serde_json::to_string(&m).unwrap()),
        Just(r#"{"k":"not a number"}"#.to_owned()),
    ];
    proptest::option::of((0i64..4_000_000_000, any::<bool>(), any::<bool>(), state)).prop_map(
        |window| {
            window.map(|(start, is_final, terminated_early, state)| WindowFields {
                bounds: Tumbling::new(Duration::from_secs(60))
                    .unwrap()
                    .window_of(Utc.timestamp_opt(start, 0).unwrap()),
                state: Bytes::from(state),
                is_final,
                terminated_early,
            })
        },
    )
}

fn event(records: Vec<Record>, window: Option<WindowFields>) -> BatchEvent {
    let range = 0..records.len();
    BatchEvent::new(
        EventEncoder::new(&source()),
        records.into(),
        range,
        window,
        None,
    )
}

/// An item identifier: a record's sequence number, another number, empty, or none.
fn arb_response(records: usize) -> impl Strategy<Value = Vec<Option<String>>> {
    let item = prop_oneof![
        (0..records.max(1)).prop_map(|i| Some(format!("#{i}"))),
        "[0-9]{1,5}".prop_map(Some),
        Just(Some(String::new())),
        Just(None),
    ];
    proptest::collection::vec(item, 0..5)
}

/// Resolves `#i` to the sequence number of record `i`.
fn resolve(items: &[Option<String>], records: &[Record]) -> Vec<Option<String>> {
    items
        .iter()
        .map(
            |item| match item.as_deref().and_then(|i| i.strip_prefix('#')) {
                Some(i) => records
                    .get(i.parse::<usize>().unwrap())
                    .map(|r| r.sequence().as_str().to_owned()),
                None => item.clone(),
            },
        )
        .collect()
}

proptest! {
    /// A `KinesisEvent` and a `KinesisWindowEvent` built from the records equal the
    /// ones read from the event's JSON (arrival times with trailing zeros included).
    #[test]
    fn typed_events_equal_the_json_ones(
        records in proptest::collection::vec(arb_record(), 0..6),
        window in arb_window(),
    ) {
        let plain = event(records.clone(), None);
        let from_json: KinesisEvent = serde_json::from_slice(&plain.to_json()).unwrap();
        prop_assert_eq!(kinesis_event(&plain).unwrap(), from_json);

        let windowed = event(records, window);
        let json = windowed.to_json();
        let typed = window_event::<Counts>(&windowed).unwrap();
        match (typed, serde_json::from_slice::<KinesisWindowEvent<Counts>>(&json)) {
            (Ok(typed), Ok(from_json)) => prop_assert_eq!(typed, from_json),
            (Err(_), Err(_)) => {}
            (typed, from_json) => prop_assert!(false, "typed {typed:?}, JSON {from_json:?}"),
        }
        let untyped = window_event::<serde_json::Map<String, serde_json::Value>>(&windowed)
            .unwrap()
            .unwrap();
        prop_assert_eq!(untyped, serde_json::from_slice(&json).unwrap());
    }

    /// esm reads the same verdict from a `KinesisEventResponse` or `BatchItemFailures`
    /// value as from its JSON.
    #[test]
    fn typed_responses_read_as_their_json(
        (records, items) in proptest::collection::vec(arb_record(), 1..6)
            .prop_flat_map(|records| { let n = records.len(); (Just(records), arb_response(n)) }),
    ) {
        let items = resolve(&items, &records);
        let mut response = KinesisEventResponse::default();
        for item in &items {
            let mut failure = handler_sdk::events::KinesisBatchItemFailure::default();
            failure.item_identifier = item.clone();
            response.batch_item_failures.push(failure);
        }
        let json = serde_json::to_vec(&response).unwrap();
        let typed = super::response(&mut Some(response)).unwrap();
        prop_assert_eq!(verdict(&typed, &records), batch_item_failures(&json, &records));

        let mut failures = BatchItemFailures::new();
        for item in items.iter().flatten() {
            failures.fail_sequence_number(item.clone());
        }
        let json = serde_json::to_vec(&failures).unwrap();
        let typed = super::response(&mut Some(failures)).unwrap();
        prop_assert_eq!(verdict(&typed, &records), batch_item_failures(&json, &records));
    }
}

fn invocation(payload: Payload) -> Invocation {
    Invocation {
        payload,
        request_id: "req-1".into(),
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
        timeout: Duration::from_secs(5),
        deadline: SystemTime::now() + Duration::from_secs(5),
    }
}

/// A registered handler that keeps the events it gets and fails the records whose
/// data starts with `x` (by their sequence numbers).
fn keeping_handler(seen: Arc<Mutex<Vec<KinesisEvent>>>) -> Registry {
    Registry::new().handler(
        "keep",
        service_fn(move |event: LambdaEvent<KinesisEvent>| {
            let seen = seen.clone();
            async move {
                let mut failures = BatchItemFailures::new();
                for record in &event.payload.records {
                    if record.kinesis.data.0.first() == Some(&b'x') {
                        failures.fail(record);
                    }
                }
                seen.lock().unwrap().push(event.payload);
                Ok::<_, Error>(failures)
            }
        }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Through the registry: the handler gets equal events from a batch and from its
    /// JSON (the Runtime API's bytes), and esm judges its responses the same.
    #[test]
    fn both_paths_give_the_handler_equal_events_and_read_equal_responses(
        records in proptest::collection::vec(arb_record(), 0..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let invoker = keeping_handler(seen.clone()).invoker("keep").unwrap();
        let batch = event(records.clone(), None);
        let typed = runtime.block_on(invoker.invoke(invocation(Payload::Batch(batch.clone()))));
        let json = runtime.block_on(invoker.invoke(invocation(Payload::Json(batch.to_json()))));
        let seen = seen.lock().unwrap();
        prop_assert_eq!(seen.len(), 2);
        prop_assert_eq!(&seen[0], &seen[1]);
        let typed_items = matches!(&typed, Outcome::Returned { response: Response::Items(_) });
        prop_assert!(typed_items, "{:?}", typed);
        let json_items = matches!(&json, Outcome::Returned { response: Response::Items(_) });
        prop_assert!(json_items, "{:?}", json);
        prop_assert_eq!(judge(&typed, true, &records), judge(&json, true, &records));
    }
}

#[tokio::test]
async fn a_window_handler_gets_its_state_and_flags() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let registry = Registry::new().window_handler(
        "w",
        service_fn(move |event: LambdaEvent<KinesisWindowEvent<Counts>>| {
            let kept = kept.clone();
            async move {
                let mut state = event.payload.state.clone();
                *state.entry("n".into()).or_default() += event.payload.records.len() as u64;
                kept.lock().unwrap().push(event.payload);
                Ok::<_, Error>(KinesisWindowResponse::new(state))
            }
        }),
    );
    let fields = WindowFields {
        bounds: Tumbling::new(Duration::from_secs(60))
            .unwrap()
            .window_of(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
        state: Bytes::from_static(br#"{"n":2}"#),
        is_final: true,
        terminated_early: false,
    };
    let records = vec![record("1", "k", b"a", 1_700_000_000_530)];
    let outcome = registry
        .invoker("w")
        .unwrap()
        .invoke(invocation(Payload::Batch(event(records, Some(fields)))))
        .await;
    assert_eq!(
        outcome,
        Outcome::Returned {
            response: r#"{"state":{"n":3},"batchItemFailures":[]}"#.into()
        }
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].state.get("n"), Some(&2));
    assert!(seen[0].is_final_invoke_for_window);
    assert_eq!(seen[0].shard_id.as_deref(), Some("shardId-000000000001"));
    // aws_lambda_events reads .530 as 53 ms; so does the typed path.
    assert_eq!(
        seen[0].records[0]
            .kinesis
            .approximate_arrival_timestamp
            .timestamp_subsec_millis(),
        53
    );
}

#[test]
fn arrival_times_outside_the_exact_range_take_the_json_path() {
    let before_1970 = event(vec![record("1", "k", b"", -1)], None);
    assert!(kinesis_event(&before_1970).is_none());
    assert!(window_event::<Counts>(&before_1970).is_none());
    assert_eq!(
        arrival_as_read(1_545_084_650_987),
        Utc.timestamp_millis_opt(1_545_084_650_987).single()
    );
    assert_eq!(
        arrival_as_read(1_545_084_650_500),
        Utc.timestamp_millis_opt(1_545_084_650_005).single()
    );
    assert_eq!(
        arrival_as_read(1_545_084_650_000),
        Utc.timestamp_millis_opt(1_545_084_650_000).single()
    );
}
