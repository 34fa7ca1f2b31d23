//! The handler registered in esm's in-process registry, as `esm-partial-failures`
//! registers it: the event goes in as Lambda's bytes, and esm reads the
//! `BatchItemFailures` the handler returns straight from its value.

use std::time::{Duration, SystemTime};

use esm::invoke::{Invocation, Invoker as _, Outcome, Payload, Response};
use handler_sdk::service_fn;

/// Two records in Lambda's format; the second's data is `{"id":2,"type":"poison"}`.
const EVENT: &str = r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"key-1","sequenceNumber":"49590338271490256608559692538361571095921575989136588801","data":"eyJpZCI6MSwidHlwZSI6Im9yZGVyIn0=","approximateArrivalTimestamp":1545084650.987},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:49590338271490256608559692538361571095921575989136588801","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo"},{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"key-2","sequenceNumber":"49590338271490256608559692538361571095921575989136588802","data":"eyJpZCI6MiwidHlwZSI6InBvaXNvbiJ9","approximateArrivalTimestamp":1545084651.012},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:49590338271490256608559692538361571095921575989136588802","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo"}]}"#;

#[tokio::test]
async fn esm_gets_the_batch_item_failures_back() {
    let registry = esm::Registry::new().handler(
        "partial-failures",
        service_fn(partial_failures_handler::handle),
    );
    let invoker = registry
        .invoker("partial-failures")
        .expect("the handler is registered");
    let timeout = Duration::from_secs(5);
    let outcome = invoker
        .invoke(Invocation {
            payload: Payload::Json(bytes::Bytes::from_static(EVENT.as_bytes())),
            request_id: "req-1".into(),
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:partial-failures".into(),
            timeout,
            deadline: SystemTime::now() + timeout,
        })
        .await;
    match outcome {
        Outcome::Returned { response } => assert_eq!(
            response,
            Response::Items(Some(vec![Some(
                "49590338271490256608559692538361571095921575989136588802".to_owned()
            )]))
        ),
        other => panic!("expected a response, got {other:?}"),
    }
}
