//! Write a Kinesis handler once; run it on AWS Lambda or under esm.
//!
//! A handler is a [`tower::Service`] over [`LambdaEvent<KinesisEvent>`], exactly what
//! the `lambda_runtime` crate runs on AWS Lambda. The same value can be:
//!
//! - run as its own process with [`run`]: on AWS Lambda, or under esm's Lambda Runtime
//!   API host (`[mapping.function] command = [...]`);
//! - linked into a binary that embeds esm and registered by name
//!   (`esm::Registry::handler("orders", service)`), which esm invokes in-process.
//!
//! The event bytes are Lambda's own, so nothing in a handler can tell the difference.
//!
//! ```no_run
//! use handler_sdk::{events::KinesisEvent, service_fn, Error, LambdaEvent, RecordExt};
//!
//! async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
//!     for record in &event.payload.records {
//!         println!("{} {}", record.kinesis.sequence_number, record.data_utf8()?);
//!     }
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     handler_sdk::run(service_fn(handle)).await
//! }
//! ```

pub use lambda_runtime::{self, service_fn, Context, Diagnostic, Error, LambdaEvent};
pub use tower::Service;

/// The Lambda event and response types for Kinesis, re-exported so handlers and esm
/// agree on one version.
pub mod events {
    pub use aws_lambda_events::event::kinesis::{
        KinesisEncryptionType, KinesisEvent, KinesisEventRecord, KinesisRecord,
        KinesisTimeWindowEvent, KinesisTimeWindowEventResponse,
    };
    pub use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
}

use events::KinesisEventRecord;

/// Runs `handler` as a Lambda function: on AWS Lambda, or under any host of the Lambda
/// Runtime API (`AWS_LAMBDA_RUNTIME_API`), esm's included.
pub async fn run<S, R>(handler: S) -> Result<(), Error>
where
    S: Service<LambdaEvent<events::KinesisEvent>, Response = R>,
    S::Future: std::future::Future<Output = Result<R, S::Error>>,
    S::Error: Into<Diagnostic> + std::fmt::Debug,
    R: serde::Serialize,
{
    lambda_runtime::run(handler).await
}

/// Helpers to read a record's `data`.
pub trait RecordExt {
    /// The payload bytes (already base64-decoded).
    fn data_bytes(&self) -> &[u8];

    /// The payload as UTF-8 text.
    fn data_utf8(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.data_bytes())
    }

    /// The payload parsed as JSON into `T`.
    fn data_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.data_bytes())
    }
}

impl RecordExt for KinesisEventRecord {
    fn data_bytes(&self) -> &[u8] {
        &self.kinesis.data.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::KinesisEvent;

    const EVENT: &str = r#"{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k","sequenceNumber":"1","data":"eyJuIjoxfQ==","approximateArrivalTimestamp":1545084650.987},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":"shardId-000000000000:1","eventName":"aws:kinesis:record","invokeIdentityArn":"arn:aws:iam::000000000000:role/esm","awsRegion":"us-east-1","eventSourceARN":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}]}"#;

    #[test]
    fn decodes_data() {
        let event: KinesisEvent = serde_json::from_str(EVENT).unwrap();
        let record = &event.records[0];
        assert_eq!(record.data_utf8().unwrap(), r#"{"n":1}"#);
        let value: serde_json::Value = record.data_json().unwrap();
        assert_eq!(value["n"], 1);
    }
}
