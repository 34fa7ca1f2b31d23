//! Calling a handler in a unit test, the way Lambda and esm call it: an event from
//! Lambda's JSON in, the response as JSON out.
//!
//! ```
//! use handler_sdk::events::KinesisEvent;
//! use handler_sdk::{testing, BatchItemFailures, Error, LambdaEvent};
//!
//! async fn handle(event: LambdaEvent<KinesisEvent>) -> Result<BatchItemFailures, Error> {
//!     Ok(event.payload.records.iter().collect()) // fails every record
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let event = testing::lambda_event(r#"{"Records":[{
//!     "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "k", "sequenceNumber": "4959",
//!                 "data": "aGk=", "approximateArrivalTimestamp": 1545084650.987},
//!     "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "shardId-000000000000:4959",
//!     "eventName": "aws:kinesis:record", "invokeIdentityArn": "arn:aws:iam::000000000000:role/r",
//!     "awsRegion": "us-east-1", "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s"}]}"#)?;
//! let response = handle(event).await?;
//! assert_eq!(
//!     testing::response_json(&response)?,
//!     r#"{"batchItemFailures":[{"itemIdentifier":"4959"}]}"#
//! );
//! # Ok(())
//! # }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Context, LambdaEvent};

/// The request id of the [`Context`] that [`lambda_event`] makes.
pub const REQUEST_ID: &str = "test-request";

/// `json` (an event in Lambda's format) read into `E` and wrapped in a
/// [`LambdaEvent`] with a default [`Context`] whose request id is [`REQUEST_ID`].
pub fn lambda_event<E: DeserializeOwned>(json: &str) -> Result<LambdaEvent<E>, serde_json::Error> {
    let payload = serde_json::from_str(json)?;
    let mut context = Context::default();
    context.request_id = REQUEST_ID.to_owned();
    Ok(LambdaEvent::new(payload, context))
}

/// The response body a handler's `response` becomes, as Lambda and esm serialize it.
pub fn response_json<R: Serialize>(response: &R) -> Result<String, serde_json::Error> {
    serde_json::to_string(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KinesisEvent;

    #[test]
    fn makes_an_event_with_a_test_context() {
        let event: LambdaEvent<KinesisEvent> = lambda_event(r#"{"Records":[]}"#).unwrap();
        assert!(event.payload.records.is_empty());
        assert_eq!(event.context.request_id, REQUEST_ID);
        assert!(lambda_event::<KinesisEvent>("not json").is_err());
    }

    #[test]
    fn serializes_responses_like_the_runtime() {
        assert_eq!(response_json(&()).unwrap(), "null");
        assert_eq!(
            response_json(&crate::BatchItemFailures::new()).unwrap(),
            r#"{"batchItemFailures":[]}"#
        );
    }
}
