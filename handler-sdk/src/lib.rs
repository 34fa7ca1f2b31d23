//! Write a Kinesis handler once; run it on AWS Lambda or under esm.
//!
//! A handler is a [`tower::Service`] over [`LambdaEvent<E>`], exactly what the
//! `lambda_runtime` crate runs on AWS Lambda; an `async fn` wrapped in [`service_fn`]
//! is one. `E` is Lambda's Kinesis event: [`events::KinesisEvent`], or
//! [`window::KinesisWindowEvent`] for a mapping with a tumbling window. The same value
//! runs two ways:
//!
//! - **as its own process**, with [`run`]: on AWS Lambda, or as a worker under esm's
//!   Lambda Runtime API host (`[mapping.function] command = ["path/to/binary"]`);
//! - **linked into esm**, registered by name in a binary that embeds esm
//!   (`esm::Registry::new().handler("orders", service)`, then
//!   `esm::cli::main(registry)`), which invokes it in-process
//!   (`function = "orders"` in the mapping).
//!
//! Either way the handler receives Lambda's exact event JSON, deserialized on its side,
//! and its response is serialized to JSON as Lambda would: nothing in a handler can
//! tell esm from Lambda.
//!
//! # Example
//!
//! A handler that reads each record's JSON and reports the first record it cannot
//! handle in `batchItemFailures`, so that the records before it are done and
//! delivery resumes from it:
//!
//! ```no_run
//! use handler_sdk::events::KinesisEvent;
//! use handler_sdk::{service_fn, BatchItemFailures, Error, LambdaEvent, RecordExt};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Order {
//!     id: u64,
//!     #[serde(rename = "type")]
//!     kind: String,
//! }
//!
//! /// Handles each order in sequence; stops at the first record that is not one.
//! pub async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<BatchItemFailures, Error> {
//!     let mut failures = BatchItemFailures::new();
//!     for record in &event.payload.records {
//!         match record.data_json::<Order>() {
//!             Ok(order) => println!("{} order {} from {}", order.kind, order.id, record.partition_key()),
//!             Err(error) => {
//!                 // "record 4959…: data is not JSON: expected value at line 1 column 1"
//!                 eprintln!("{error}");
//!                 failures.fail(record);
//!                 break; // the records after it are delivered again anyway
//!             }
//!         }
//!     }
//!     Ok(failures) // {"batchItemFailures":[{"itemIdentifier":"4959…"}]}
//! }
//!
//! // src/main.rs: the handler as a Lambda function.
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     handler_sdk::run(service_fn(handle)).await
//! }
//! ```
//!
//! And the same handler linked into esm (a second binary of the crate, depending on
//! `esm`; not compiled here because `esm` itself depends on this crate):
//!
//! ```ignore
//! // src/bin/esm-orders.rs: the full esm command line, with the handler registered as "orders".
//! fn main() -> std::process::ExitCode {
//!     esm::cli::main(esm::Registry::new().handler("orders", handler_sdk::service_fn(orders::handle)))
//! }
//! ```
//!
//! `esm-orders run --config esm.toml` then runs mappings with `function = "orders"`.
//!
//! # What is here
//!
//! - [`run`]: serve a handler over the Lambda Runtime API.
//! - [`RecordExt`]: a record's data as bytes, UTF-8 or JSON (errors name the record's
//!   sequence number: [`DataError`]), its sequence number, partition key and shard.
//! - [`BatchItemFailures`]: the `{"batchItemFailures": [...]}` response for partial
//!   batch failures.
//! - [`window`]: tumbling windows: [`KinesisWindowEvent<S>`](window::KinesisWindowEvent)
//!   with typed `state`, and the `{"state": ..., "batchItemFailures": [...]}` response.
//! - [`testing`]: call a handler from a unit test with an event in Lambda's JSON.
//! - [`events`]: the `aws_lambda_events` types, re-exported so handlers and esm agree
//!   on one version; and `lambda_runtime`'s [`service_fn`], [`LambdaEvent`],
//!   [`Context`], [`Error`], [`Diagnostic`].
//!
//! # Responses
//!
//! What a handler returns is serialized to JSON. Without
//! `function_response_types = ["ReportBatchItemFailures"]` on the mapping the response
//! is ignored: the batch succeeded unless the handler returned `Err`, panicked or
//! timed out, and then the whole batch is retried. With it, return
//! [`BatchItemFailures`] (or `Ok(BatchItemFailures::new())` when all went well).

#![warn(missing_docs)]

mod failures;
mod record;
pub mod testing;
pub mod window;

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use failures::BatchItemFailures;
pub use lambda_runtime::{self, service_fn, Context, Diagnostic, Error, LambdaEvent};
pub use record::{DataError, DataErrorKind, RecordExt};
pub use tower::Service;

/// The Lambda event and response types for Kinesis, re-exported from
/// `aws_lambda_events` so handlers and esm agree on one version.
pub mod events {
    pub use aws_lambda_events::encodings::{Base64Data, SecondTimestamp};
    pub use aws_lambda_events::event::kinesis::{
        KinesisEncryptionType, KinesisEvent, KinesisEventRecord, KinesisRecord,
        KinesisTimeWindowEvent, KinesisTimeWindowEventResponse,
    };
    pub use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
    pub use aws_lambda_events::time_window::Window;
}

/// The variables `lambda_runtime` needs, which AWS Lambda and esm's Runtime API host
/// set for the function process.
const RUNTIME_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// Runs `handler` as a Lambda function, until the process is stopped: it takes
/// invocations from the Lambda Runtime API at `AWS_LAMBDA_RUNTIME_API` (on AWS
/// Lambda, or under esm's Runtime API host, or any other host of that API) and answers
/// each with the handler's response or error.
///
/// `E` is the event type the handler takes ([`events::KinesisEvent`],
/// [`window::KinesisWindowEvent`], or anything else that deserializes from the event
/// JSON); the response `R` is serialized to JSON.
///
/// Before it starts, `run`:
/// - checks the Lambda environment and returns an error that says what to do when it
///   is missing (e.g. the binary was started by hand), where `lambda_runtime` would
///   panic;
/// - installs `lambda_runtime`'s default `tracing` subscriber (to stdout; level from
///   `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, default `INFO`; JSON with
///   `AWS_LAMBDA_LOG_FORMAT=JSON`), unless the program installed one already, so that
///   a handler's `tracing` events are logged in this mode as they are in esm's.
///
/// ```no_run
/// use handler_sdk::events::KinesisEvent;
/// use handler_sdk::{service_fn, Error, LambdaEvent};
///
/// async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
///     println!("{} records", event.payload.records.len());
///     Ok(())
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Error> {
///     handler_sdk::run(service_fn(handle)).await
/// }
/// ```
pub async fn run<S, E, R>(handler: S) -> Result<(), Error>
where
    S: Service<LambdaEvent<E>, Response = R>,
    S::Future: Future<Output = Result<R, S::Error>>,
    S::Error: Into<Diagnostic> + fmt::Debug,
    E: DeserializeOwned,
    R: Serialize,
{
    check_environment(|name| std::env::var(name).ok())?;
    if !lambda_runtime::tracing::dispatcher::has_been_set() {
        lambda_runtime::tracing::init_default_subscriber();
    }
    lambda_runtime::run(handler).await
}

/// Whether the variables `lambda_runtime` needs are set (`var` reads one), and if not,
/// an error that says what is missing and what to do.
fn check_environment(var: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
    if var(RUNTIME_VARIABLES[0]).is_none_or(|v| v.is_empty()) {
        return Err(EnvironmentError(format!(
            "{} is not set, so there is no Lambda Runtime API to take invocations from. \
             This program is a Lambda function: deploy it to AWS Lambda, or have esm run it \
             as a worker process ([mapping.function] command = [\"path/to/this/binary\"]). \
             To run the handler without a worker process, link it into an esm binary \
             instead (esm::Registry::new().handler(\"name\", service)).",
            RUNTIME_VARIABLES[0]
        ))
        .into());
    }
    let missing: Vec<&str> = RUNTIME_VARIABLES[1..]
        .iter()
        .copied()
        .filter(|name| var(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(EnvironmentError(format!(
            "the Lambda environment is incomplete: {} not set (AWS Lambda and esm's \
             Runtime API host set them for the function process)",
            missing.join(", ")
        ))
        .into());
    }
    let memory = var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.parse::<i32>().is_err() {
        return Err(EnvironmentError(format!(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE is not a whole number of MB: {memory:?}"
        ))
        .into());
    }
    Ok(())
}

/// The process is not running in a Lambda environment. Its `Debug` is its message, so
/// that `main` returning it prints the message as it is.
struct EnvironmentError(String);

impl fmt::Display for EnvironmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EnvironmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvironmentError {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use events::KinesisEvent;

    const EVENT: &str = r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k","sequenceNumber":"1","data":"eyJuIjoxfQ==","approximateArrivalTimestamp":1545084650.987},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:1","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}]}"#;

    fn environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const FULL: [(&str, &str); 4] = [
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ];

    #[test]
    fn a_full_environment_passes() {
        assert!(check_environment(environment(&FULL)).is_ok());
    }

    #[test]
    fn no_runtime_api_says_what_to_do() {
        let error = check_environment(environment(&FULL[1..])).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("AWS_LAMBDA_RUNTIME_API is not set"),
            "{text}"
        );
        assert!(text.contains("[mapping.function] command"), "{text}");
        let empty = [("AWS_LAMBDA_RUNTIME_API", ""), FULL[1], FULL[2], FULL[3]];
        assert!(check_environment(environment(&empty)).is_err());
    }

    #[test]
    fn names_every_missing_variable() {
        let error = check_environment(environment(&FULL[..2])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the Lambda environment is incomplete: AWS_LAMBDA_FUNCTION_MEMORY_SIZE, \
             AWS_LAMBDA_FUNCTION_VERSION not set (AWS Lambda and esm's Runtime API host \
             set them for the function process)"
        );
    }

    #[test]
    fn memory_must_be_a_number() {
        let bad = [
            FULL[0],
            FULL[1],
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
            FULL[3],
        ];
        let error = check_environment(environment(&bad)).unwrap_err();
        assert!(error.to_string().contains("\"lots\""), "{error}");
    }

    #[tokio::test]
    async fn run_accepts_plain_and_windowed_handlers() {
        async fn plain(_: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
            Ok(())
        }
        async fn partial(_: LambdaEvent<KinesisEvent>) -> Result<BatchItemFailures, Error> {
            Ok(BatchItemFailures::new())
        }
        async fn windowed(
            e: LambdaEvent<window::KinesisWindowEvent<HashMap<String, u64>>>,
        ) -> Result<window::KinesisWindowResponse<HashMap<String, u64>>, Error> {
            Ok(window::KinesisWindowResponse::new(e.payload.state))
        }
        // Type checks: `run` is generic over the event and the response.
        drop(run(service_fn(partial)));
        drop(run(service_fn(windowed)));
        // Outside a Lambda environment it returns an error instead of panicking.
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
            let error = run(service_fn(plain)).await.unwrap_err();
            assert!(error
                .to_string()
                .starts_with("AWS_LAMBDA_RUNTIME_API is not set"));
        }
    }

    #[test]
    fn decodes_data() {
        let event: KinesisEvent = serde_json::from_str(EVENT).unwrap();
        let record = &event.records[0];
        assert_eq!(record.data_utf8().unwrap(), r#"{"n":1}"#);
        let value: serde_json::Value = record.data_json().unwrap();
        assert_eq!(value["n"], 1);
    }
}
