//! An S3 bucket as on-failure destination: one object per batch given up.
//!
//! The object is the on-failure record with `"payload"` added, the invocation
//! event of the records (SPEC §5), at Lambda's key layout
//! `aws/lambda/<mapping-uuid>/<shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<requestId>`;
//! key and body are built in [`crate::core::on_failure`]. The key ends with the
//! record's `requestId`, so an object can be told apart from every other one and
//! matched with its log line. Needs `s3:PutObject` on the bucket.
//!
//! A bucket ARN names no region: the client uses the stream's, so the bucket is
//! expected in the stream's region (as Lambda expects). With an endpoint override
//! (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, an emulator or an S3-compatible
//! store) requests use path-style addressing (`ENDPOINT/BUCKET/KEY`), which such
//! endpoints expect; on AWS the SDK's own virtual-hosted style stays.

use aws_sdk_s3::primitives::ByteStream;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{classify, DestinationError, FailureDestination, GivenUp};
use crate::core::on_failure::{mapping_uuid, s3_key, s3_object_body};

/// An S3 client for buckets used with a stream in `region`, from the shared SDK
/// configuration (the runner's and `esm replay`'s alike), making up to
/// `max_attempts` attempts per call.
pub async fn client(region: &str, max_attempts: u32) -> aws_sdk_s3::Client {
    let shared = super::sdk_config(region).await;
    let overridden = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(overridden)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(max_attempts))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Writes on-failure objects (record plus payload) to a bucket.
pub(super) struct S3Destination {
    client: aws_sdk_s3::Client,
    arn: String,
    bucket: String,
    /// The mapping's UUID, the second part of every key.
    mapping: uuid::Uuid,
}

impl S3Destination {
    /// A destination for the bucket `arn` (`arn:PARTITION:s3:::BUCKET`) of the
    /// mapping named `mapping`; no network I/O.
    pub(super) fn new(
        client: aws_sdk_s3::Client,
        arn: &str,
        mapping: &str,
    ) -> Result<Self, DestinationError> {
        let bucket = match arn.splitn(6, ':').collect::<Vec<_>>().as_slice() {
            ["arn", _, "s3", "", "", bucket] if !bucket.is_empty() => (*bucket).to_string(),
            _ => {
                return Err(DestinationError::Unsupported {
                    arn: arn.to_string(),
                    detail: "expected arn:PARTITION:s3:::BUCKET".to_string(),
                })
            }
        };
        Ok(S3Destination {
            client,
            arn: arn.to_string(),
            bucket,
            mapping: mapping_uuid(mapping),
        })
    }

    async fn put(&self, given_up: GivenUp<'_>) -> Result<(), DestinationError> {
        let key = s3_key(
            &self.mapping,
            given_up.shard_id,
            given_up.at,
            given_up.request_id,
        );
        let body = s3_object_body(given_up.record, given_up.event);
        let bytes = body.len();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| classify(&self.arn, &err))?;
        tracing::debug!(bucket = %self.bucket, key = %key, bytes, "on-failure object written");
        Ok(())
    }
}

impl FailureDestination for S3Destination {
    fn send<'a>(&'a self, given_up: GivenUp<'a>) -> BoxFuture<'a, Result<(), DestinationError>> {
        self.put(given_up).boxed()
    }

    fn arn(&self) -> &str {
        &self.arn
    }

    fn keeps_payload(&self) -> bool {
        true
    }
}
