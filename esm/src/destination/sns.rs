//! An SNS topic as on-failure destination: each record is published as the
//! `Message` of one Publish to the topic ARN.

use aws_sdk_sns::operation::publish::PublishError;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{classify, ArnFields, DestinationError, FailureDestination, GivenUp};

/// Publishes on-failure records to an SNS topic, the JSON record as `Message`.
pub(super) struct SnsDestination {
    client: aws_sdk_sns::Client,
    arn: String,
    fifo: bool,
}

impl SnsDestination {
    /// A destination for the topic `arn`; no network I/O.
    pub(super) fn new(client: aws_sdk_sns::Client, arn: &str, fields: ArnFields<'_>) -> Self {
        SnsDestination {
            client,
            arn: arn.to_string(),
            fifo: fields.name.ends_with(".fifo"),
        }
    }

    async fn publish(&self, record: &serde_json::Value) -> Result<(), DestinationError> {
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.arn)
            .message(record.to_string());
        if self.fifo {
            request = request
                .message_group_id("esm")
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        request.send().await.map(|_| ()).map_err(|err| {
            let detail = crate::source::kinesis::describe(&err);
            match err.as_service_error() {
                Some(PublishError::NotFoundException(_)) => DestinationError::NotFound {
                    arn: self.arn.clone(),
                    detail: format!("no such topic ({detail})"),
                },
                Some(PublishError::AuthorizationErrorException(_))
                | Some(PublishError::KmsAccessDeniedException(_)) => DestinationError::Denied {
                    arn: self.arn.clone(),
                    detail,
                },
                Some(PublishError::InvalidParameterException(_))
                | Some(PublishError::InvalidParameterValueException(_)) => {
                    DestinationError::Rejected {
                        arn: self.arn.clone(),
                        detail,
                    }
                }
                _ => classify(&self.arn, &err),
            }
        })
    }
}

impl FailureDestination for SnsDestination {
    fn send<'a>(&'a self, given_up: GivenUp<'a>) -> BoxFuture<'a, Result<(), DestinationError>> {
        self.publish(given_up.record).boxed()
    }

    fn arn(&self) -> &str {
        &self.arn
    }
}
