//! The Kinesis client, configured only through the standard AWS provider chain.
//!
//! Endpoint, credentials and retries come from the environment and profile files
//! (`AWS_ENDPOINT_URL_KINESIS`, `AWS_ACCESS_KEY_ID`, …) exactly as for any AWS SDK
//! program, so the same binary talks to AWS or to a local emulator. The region is the
//! stream's, taken from its ARN. The SDK's own retries are turned off: the readers
//! pace, count and back off throttled calls themselves.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::core::record::{Position, Record, SequenceNumber};

/// The shared SDK configuration for AWS calls in `region`: the standard provider
/// chain, SDK retries off (callers pace and back off themselves), bounded timeouts.
/// Every AWS client esm makes (Kinesis, SQS, SNS) starts from it.
pub async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// A Kinesis client for the stream in `region`.
pub async fn client(region: &str) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&sdk_config(region).await)
}

/// A record as GetRecords returned it, as esm's [`Record`]; `None` when its sequence
/// number is malformed.
pub fn to_record(r: aws_sdk_kinesis::types::Record) -> Option<Record> {
    let sequence = SequenceNumber::parse(r.sequence_number)?;
    let arrival = r
        .approximate_arrival_timestamp
        .and_then(|t| t.to_millis().ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_default();
    Some(Record {
        position: Position::plain(sequence),
        partition_key: r.partition_key.unwrap_or_default(),
        explicit_hash_key: None,
        data: Bytes::from(r.data.into_inner()),
        approximate_arrival: arrival,
    })
}

/// A short description of an SDK error for a log line: the service's error code and
/// message when there is one, else the transport error.
pub fn describe<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_kinesis::error::SdkError;
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => e.to_string(),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The stream's retention period, from DescribeStreamSummary: records older than this
/// are gone from the stream (the effective maximum record age when
/// `maximum_record_age_in_seconds` is -1).
pub async fn stream_retention(
    client: &aws_sdk_kinesis::Client,
    stream_arn: &str,
) -> Result<Duration, String> {
    let out = client
        .describe_stream_summary()
        .stream_arn(stream_arn)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let hours = out
        .stream_description_summary()
        .map(|s| s.retention_period_hours())
        .ok_or_else(|| "DescribeStreamSummary returned no stream description".to_string())?;
    u64::try_from(hours)
        .ok()
        .filter(|h| *h > 0)
        .map(|h| Duration::from_secs(h * 3600))
        .ok_or_else(|| format!("DescribeStreamSummary returned a retention of {hours} hours"))
}
