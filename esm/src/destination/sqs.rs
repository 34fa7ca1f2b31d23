//! An SQS queue as on-failure destination.
//!
//! SendMessage needs the queue's URL, not its ARN. The URL is looked up with
//! GetQueueUrl (queue name and owner account from the ARN) on the first send and
//! cached, so esm starts even when the queue is briefly unreachable; the cache is
//! dropped when the queue turns out not to exist, so a queue recreated later is
//! found again.

use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::operation::send_message::SendMessageError;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Mutex;

use super::{classify, ArnFields, DestinationError, FailureDestination, GivenUp};

/// Sends on-failure records as SQS messages whose body is the JSON record.
pub(super) struct SqsDestination {
    client: aws_sdk_sqs::Client,
    arn: String,
    queue_name: String,
    account: String,
    /// The queue URL, once GetQueueUrl found it.
    url: Mutex<Option<String>>,
}

impl SqsDestination {
    /// A destination for the queue `arn`; no network I/O.
    pub(super) fn new(client: aws_sdk_sqs::Client, arn: &str, fields: ArnFields<'_>) -> Self {
        SqsDestination {
            client,
            arn: arn.to_string(),
            queue_name: fields.name.to_string(),
            account: fields.account.to_string(),
            url: Mutex::new(None),
        }
    }

    /// The cached queue URL, or GetQueueUrl's answer (then cached).
    async fn queue_url(&self) -> Result<String, DestinationError> {
        let mut cached = self.url.lock().await;
        if let Some(url) = cached.as_ref() {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(&self.queue_name)
            .queue_owner_aws_account_id(&self.account)
            .send()
            .await
            .map_err(|err| match err.as_service_error() {
                Some(GetQueueUrlError::QueueDoesNotExist(_)) => DestinationError::NotFound {
                    arn: self.arn.clone(),
                    detail: format!(
                        "no queue named {} in account {} ({})",
                        self.queue_name,
                        self.account,
                        crate::source::kinesis::describe(&err)
                    ),
                },
                _ => classify(&self.arn, &err),
            })?;
        let url = out.queue_url.ok_or_else(|| DestinationError::Transient {
            arn: self.arn.clone(),
            detail: "GetQueueUrl answered without a queue URL".to_string(),
        })?;
        *cached = Some(url.clone());
        Ok(url)
    }

    async fn send_record(&self, record: &serde_json::Value) -> Result<(), DestinationError> {
        let url = self.queue_url().await?;
        let mut request = self
            .client
            .send_message()
            .queue_url(&url)
            .message_body(record.to_string());
        if self.queue_name.ends_with(".fifo") {
            // FIFO queues need a group; a fresh deduplication id keeps distinct
            // failures with identical JSON from being dropped as duplicates.
            request = request
                .message_group_id("esm")
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let error = match err.as_service_error() {
                    Some(SendMessageError::QueueDoesNotExist(_)) => DestinationError::NotFound {
                        arn: self.arn.clone(),
                        detail: format!(
                            "queue {url} is gone ({})",
                            crate::source::kinesis::describe(&err)
                        ),
                    },
                    _ => classify(&self.arn, &err),
                };
                if matches!(error, DestinationError::NotFound { .. }) {
                    *self.url.lock().await = None;
                }
                Err(error)
            }
        }
    }
}

impl FailureDestination for SqsDestination {
    fn send<'a>(&'a self, given_up: GivenUp<'a>) -> BoxFuture<'a, Result<(), DestinationError>> {
        self.send_record(given_up.record).boxed()
    }

    fn arn(&self) -> &str {
        &self.arn
    }
}
