//! On-failure destinations: where a mapping's records go when their retries or
//! their age ran out (SPEC §5).
//!
//! A destination gets one JSON record per failed batch, Lambda's own shape, in a
//! [`GivenUp`]; a queue or a topic sends just that, while an S3 bucket also keeps
//! the invocation event of the records (so they can be replayed after the stream
//! dropped them), which the runner builds only for a destination that says it
//! [keeps the payload](FailureDestination::keeps_payload). The runner owns retrying: the checkpoint never passes a
//! batch until its send succeeded, so [`FailureDestination::send`] makes exactly
//! one attempt and says, through [`DestinationError`], whether trying again can
//! help ([`DestinationError::Transient`]) or needs a person (a missing queue or
//! topic, a denied permission).
//!
//! Clients are built like the Kinesis client (`source::kinesis`): endpoint and
//! credentials only through the standard AWS provider chain (so
//! `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL_S3` point esm
//! at an emulator and the same binary talks to AWS unchanged), the region taken
//! from the destination's ARN (a bucket ARN has none: the stream's region), and the
//! SDK's own retries off, since the runner backs off and counts.
//! [`connect`] does no network I/O, so a destination that is briefly unreachable
//! at startup does not stop esm; the first send finds out.
//!
//! Errors are classified by the SDK's error types first, and by error codes only
//! as a fallback, because emulators (and older AWS APIs) may send no code or a
//! legacy one (`AWS.SimpleQueueService.NonExistentQueue`).

mod s3;
mod sns;
mod sqs;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::config::{DestinationArn, DestinationKind};

pub use s3::client as s3_client;

/// Records given up, as a destination receives them.
#[derive(Clone, Copy, Debug)]
pub struct GivenUp<'a> {
    /// The on-failure record (SPEC §5).
    pub record: &'a serde_json::Value,
    /// The shard the records come from.
    pub shard_id: &'a str,
    /// The record's `requestContext.requestId`.
    pub request_id: &'a str,
    /// The record's `timestamp`.
    pub at: DateTime<Utc>,
    /// The invocation event of the records (`{"Records": […]}`) when the destination
    /// [keeps it](FailureDestination::keeps_payload); empty otherwise.
    pub event: &'a [u8],
}

/// A place on-failure records are sent to: an SQS queue, an SNS topic or an S3 bucket.
pub trait FailureDestination: Send + Sync + 'static {
    /// Sends one on-failure record (SPEC §5): the message body (SQS), the Message
    /// (SNS), or an object with the payload added (S3).
    fn send<'a>(&'a self, given_up: GivenUp<'a>) -> BoxFuture<'a, Result<(), DestinationError>>;
    /// The destination ARN, for logs.
    fn arn(&self) -> &str;
    /// Whether [`GivenUp::event`] is wanted (S3); the event is built only then.
    fn keeps_payload(&self) -> bool {
        false
    }
}

/// Why an on-failure record could not be sent (or a destination not set up).
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The queue or topic does not exist (or is not visible to these
    /// credentials in that account and region). Retrying helps only once
    /// someone creates it.
    #[error("on-failure destination {arn} does not exist: {detail}")]
    NotFound {
        /// The destination ARN.
        arn: String,
        /// What the service said.
        detail: String,
    },
    /// The credentials esm runs with may not send to the destination.
    #[error("esm is not allowed to send to on-failure destination {arn}: {detail} (check the IAM policy of the credentials esm runs with)")]
    Denied {
        /// The destination ARN.
        arn: String,
        /// What the service said.
        detail: String,
    },
    /// The service refused the message itself (too large, malformed), so the same
    /// message will be refused again.
    #[error("on-failure destination {arn} rejected the record: {detail}")]
    Rejected {
        /// The destination ARN.
        arn: String,
        /// What the service said.
        detail: String,
    },
    /// A failure that may pass: network, timeout, throttling, a service error.
    #[error("could not send to on-failure destination {arn} (will retry): {detail}")]
    Transient {
        /// The destination ARN.
        arn: String,
        /// What went wrong.
        detail: String,
    },
    /// A destination kind or ARN esm cannot send to yet.
    #[error("on-failure destination {arn}: {detail}")]
    Unsupported {
        /// The destination ARN.
        arn: String,
        /// Why it is not supported.
        detail: String,
    },
}

impl DestinationError {
    /// True if sending again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, DestinationError::Transient { .. })
    }
}

/// Builds the destination named by `arn` for the mapping named `mapping`, reading a
/// stream in `region` (an S3 bucket's client uses it; its objects are keyed by the
/// mapping). Does no network I/O: the first [`FailureDestination::send`] talks to
/// the service.
pub async fn connect(
    arn: &DestinationArn,
    mapping: &str,
    region: &str,
) -> Result<Arc<dyn FailureDestination>, DestinationError> {
    match arn.kind {
        DestinationKind::Sqs => {
            let parts = ArnFields::parse(&arn.arn)?;
            let client = sqs_client(parts.region, 1).await;
            Ok(Arc::new(sqs::SqsDestination::new(client, &arn.arn, parts)))
        }
        DestinationKind::Sns => {
            let parts = ArnFields::parse(&arn.arn)?;
            let client = aws_sdk_sns::Client::new(&sdk_config(parts.region).await);
            Ok(Arc::new(sns::SnsDestination::new(client, &arn.arn, parts)))
        }
        DestinationKind::S3 => {
            let client = s3::client(region, 1).await;
            Ok(Arc::new(s3::S3Destination::new(client, &arn.arn, mapping)?))
        }
    }
}

/// An SQS client for queues in `region`, from the shared SDK configuration, making
/// up to `max_attempts` attempts per call (1 for the runner, which retries itself;
/// more for `esm replay`, which reads queues interactively).
pub async fn sqs_client(region: &str, max_attempts: u32) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(&sdk_config(region).await)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(max_attempts))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The shared SDK configuration for a destination in `region`.
async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    crate::source::kinesis::sdk_config(region).await
}

/// Region, account and resource name of an SQS or SNS ARN
/// (`arn:PARTITION:SERVICE:REGION:ACCOUNT:NAME`), already validated by
/// [`DestinationArn::parse`].
#[derive(Debug, Clone)]
struct ArnFields<'a> {
    region: &'a str,
    account: &'a str,
    name: &'a str,
}

impl<'a> ArnFields<'a> {
    fn parse(arn: &'a str) -> Result<Self, DestinationError> {
        let fields: Vec<&str> = arn.splitn(6, ':').collect();
        match fields.as_slice() {
            ["arn", _, _, region, account, name]
                if !region.is_empty() && !account.is_empty() && !name.is_empty() =>
            {
                Ok(ArnFields {
                    region,
                    account,
                    name,
                })
            }
            _ => Err(DestinationError::Unsupported {
                arn: arn.to_string(),
                detail: "expected arn:PARTITION:SERVICE:REGION:ACCOUNT:NAME".to_string(),
            }),
        }
    }
}

/// Classifies an SDK failure that is not one of the operation's modeled
/// not-found errors: by error code when the service sent one, else transient.
fn classify<E, R>(arn: &str, err: &aws_sdk_sqs::error::SdkError<E, R>) -> DestinationError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_sqs::error::SdkError;
    let detail = crate::source::kinesis::describe(err);
    let arn = arn.to_string();
    let code = match err {
        SdkError::ServiceError(service) => service.err().code().unwrap_or_default(),
        _ => return DestinationError::Transient { arn, detail },
    };
    match code {
        "AccessDenied"
        | "AccessDeniedException"
        | "AuthorizationError"
        | "AuthorizationErrorException"
        | "KMSAccessDeniedException"
        | "KmsAccessDenied"
        | "InvalidSecurity"
        | "InvalidSecurityException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException" => DestinationError::Denied { arn, detail },
        "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist"
        | "NonExistentQueue"
        | "NotFound"
        | "NotFoundException"
        | "NoSuchBucket" => DestinationError::NotFound { arn, detail },
        "InvalidMessageContents"
        | "InvalidParameterValue"
        | "InvalidParameterValueException"
        | "InvalidParameter"
        | "InvalidParameterException"
        | "EntityTooLarge"
        | "InvalidBucketName" => DestinationError::Rejected { arn, detail },
        _ => DestinationError::Transient { arn, detail },
    }
}
