//! The handler registered in esm's in-process registry, as `esm-tumbling-window`
//! registers it: a windowed event goes in as Lambda's bytes, the state comes back.

use std::time::{Duration, SystemTime};

use esm::invoke::{Invocation, Invoker as _, Outcome, Payload};
use handler_sdk::service_fn;

async fn invoke(event: &'static str) -> Outcome {
    let registry = esm::Registry::new().window_handler(
        "tumbling-window",
        service_fn(tumbling_window_handler::handle),
    );
    let invoker = registry
        .invoker("tumbling-window")
        .expect("the handler is registered");
    let timeout = Duration::from_secs(5);
    invoker
        .invoke(Invocation {
            payload: Payload::Json(bytes::Bytes::from_static(event.as_bytes())),
            request_id: "req-1".into(),
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:tumbling-window".into(),
            timeout,
            deadline: SystemTime::now() + timeout,
        })
        .await
}

fn response(outcome: Outcome) -> String {
    match outcome {
        Outcome::Returned { response } => {
            String::from_utf8(response.body().expect("a JSON body").to_vec()).expect("UTF-8")
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn esm_gets_the_state_back() {
    let event = r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"key-1","sequenceNumber":"1","data":"","approximateArrivalTimestamp":1607497475.0},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:1","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo"}],"window":{"start":"2020-12-09T07:04:00Z","end":"2020-12-09T07:06:00Z"},"state":{"key-1":4},"shardId":"shardId-000000000000","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/demo","isFinalInvokeForWindow":false,"isWindowTerminatedEarly":false}"#;
    assert_eq!(
        response(invoke(event).await),
        r#"{"state":{"key-1":5},"batchItemFailures":[]}"#
    );
}

#[tokio::test]
async fn a_state_of_the_wrong_shape_fails_the_invocation() {
    let event = r#"{"Records":[],"state":{"key-1":"four"}}"#;
    match invoke(event).await {
        Outcome::FunctionError {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "Runtime.DeserializeError");
            assert!(message.starts_with("state: invalid type"), "{message}");
        }
        other => panic!("expected a function error, got {other:?}"),
    }
}
