//! The ARNs a config names: the Kinesis stream (or enhanced fan-out consumer)
//! a mapping reads, and the SQS queue, SNS topic or S3 bucket its failed
//! batches go to. Parsing them up front turns a typo into a config problem
//! instead of an AWS error minutes after start.

use std::fmt;

use super::problems::quote;

/// The shapes an event source ARN may take, quoted in error messages.
const EVENT_SOURCE_SHAPES: &str =
    "arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME or ...:stream/NAME/consumer/CONSUMER:TIMESTAMP";

/// The shapes a destination ARN may take, quoted in error messages.
const DESTINATION_SHAPES: &str = "arn:PARTITION:sqs:REGION:ACCOUNT:QUEUE, \
     arn:PARTITION:sns:REGION:ACCOUNT:TOPIC or arn:PARTITION:s3:::BUCKET";

/// The longest Kinesis stream or consumer name.
pub(crate) const MAX_NAME: usize = 128;

/// A mapping's `event_source_arn`: a Kinesis stream ARN, read with shared
/// throughput (GetRecords), or a stream consumer ARN, read with enhanced
/// fan-out (SubscribeToShard). The default, all empty, only stands in for a
/// missing or wrong one in a config with problems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSourceArn {
    /// The ARN as written in the config.
    pub arn: String,
    /// The AWS partition, e.g. `aws`.
    pub partition: String,
    /// The stream's region, e.g. `us-east-1`.
    pub region: String,
    /// The stream's 12-digit account id.
    pub account: String,
    /// The stream's name.
    pub stream_name: String,
    /// The consumer ARN (the whole of `arn`) when `arn` names a consumer
    /// (`…:stream/NAME/consumer/CONSUMER:TIMESTAMP`), else `None`.
    pub consumer: Option<String>,
}

impl EventSourceArn {
    /// Parses a stream or consumer ARN; the error says what is wrong and
    /// which shapes are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let fail = |why: String| format!("{why} (expected {EVENT_SOURCE_SHAPES})");
        let parts = ArnParts::split(s).map_err(fail)?;
        if parts.service != "kinesis" {
            return Err(fail(format!(
                "service is {}, not kinesis",
                quote(parts.service)
            )));
        }
        parts.check_region_and_account().map_err(fail)?;
        let Some(rest) = parts.resource.strip_prefix("stream/") else {
            return Err(fail(format!(
                "resource {} does not start with stream/",
                quote(parts.resource)
            )));
        };
        let (stream_name, consumer) = match rest.split_once('/') {
            None => (rest, None),
            Some((stream, consumer)) => (stream, Some(consumer)),
        };
        if !is_resource_name(stream_name, MAX_NAME) {
            return Err(fail(format!(
                "stream name {} is not 1 to 128 characters of A-Z a-z 0-9 _ . -",
                quote(stream_name)
            )));
        }
        if let Some(consumer) = consumer {
            let well_formed = consumer
                .strip_prefix("consumer/")
                .and_then(|c| c.split_once(':'))
                .is_some_and(|(name, timestamp)| {
                    is_resource_name(name, MAX_NAME)
                        && !timestamp.is_empty()
                        && timestamp.bytes().all(|b| b.is_ascii_digit())
                });
            if !well_formed {
                return Err(fail(format!(
                    "{} after the stream name is not consumer/CONSUMER:TIMESTAMP",
                    quote(consumer)
                )));
            }
        }
        Ok(EventSourceArn {
            arn: s.to_string(),
            partition: parts.partition.to_string(),
            region: parts.region.to_string(),
            account: parts.account.to_string(),
            stream_name: stream_name.to_string(),
            consumer: consumer.map(|_| s.to_string()),
        })
    }

    /// The ARN of the stream itself (`arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`),
    /// also when this is a consumer ARN.
    pub fn stream_arn(&self) -> String {
        format!(
            "arn:{}:kinesis:{}:{}:stream/{}",
            self.partition, self.region, self.account, self.stream_name
        )
    }
}

impl fmt::Display for EventSourceArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// Where a mapping's on-failure records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationArn {
    /// The ARN as written in the config.
    pub arn: String,
    /// What kind of resource the ARN names.
    pub kind: DestinationKind,
}

/// The kinds of on-failure destination Lambda accepts for Kinesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// An SQS queue (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
    Sqs,
    /// An SNS topic (`arn:aws:sns:REGION:ACCOUNT:NAME`).
    Sns,
    /// An S3 bucket (`arn:aws:s3:::BUCKET`).
    S3,
}

impl DestinationArn {
    /// Parses an SQS queue, SNS topic or S3 bucket ARN; the error says what is
    /// wrong and which shapes are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let fail = |why: String| format!("{why} (expected {DESTINATION_SHAPES})");
        let parts = ArnParts::split(s).map_err(fail)?;
        let kind = match parts.service {
            "sqs" => DestinationKind::Sqs,
            "sns" => DestinationKind::Sns,
            "s3" => DestinationKind::S3,
            other => {
                return Err(fail(format!(
                    "service is {}, not sqs, sns or s3",
                    quote(other)
                )))
            }
        };
        match kind {
            DestinationKind::Sqs | DestinationKind::Sns => {
                parts.check_region_and_account().map_err(fail)?;
                let (what, max) = match kind {
                    DestinationKind::Sqs => ("queue", 80),
                    _ => ("topic", 256),
                };
                let name = parts.resource;
                let base = name.strip_suffix(".fifo").unwrap_or(name);
                let ok = !base.is_empty()
                    && name.len() <= max
                    && base
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(fail(format!(
                        "{what} name {} is not 1 to {max} characters of A-Z a-z 0-9 _ -",
                        quote(name)
                    )));
                }
            }
            DestinationKind::S3 => {
                if !parts.region.is_empty() || !parts.account.is_empty() {
                    return Err(fail(
                        "an S3 bucket ARN has no region or account".to_string(),
                    ));
                }
                if !is_bucket_name(parts.resource) {
                    return Err(fail(format!(
                        "bucket name {} is not 3 to 63 characters of a-z 0-9 . -",
                        quote(parts.resource)
                    )));
                }
            }
        }
        Ok(DestinationArn {
            arn: s.to_string(),
            kind,
        })
    }
}

impl fmt::Display for DestinationArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// The six colon-separated fields of an ARN; the resource may hold colons.
struct ArnParts<'a> {
    partition: &'a str,
    service: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

impl<'a> ArnParts<'a> {
    fn split(s: &'a str) -> Result<Self, String> {
        let fields: Vec<&str> = s.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = fields[..] else {
            return Err("not an ARN (too few :-separated fields)".to_string());
        };
        if arn != "arn" {
            return Err("not an ARN (does not start with arn:)".to_string());
        }
        let partition_ok = partition.starts_with("aws")
            && partition
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-');
        if !partition_ok {
            return Err(format!("partition {} is not valid", quote(partition)));
        }
        if resource.is_empty() {
            return Err("the resource after the account is empty".to_string());
        }
        Ok(ArnParts {
            partition,
            service,
            region,
            account,
            resource,
        })
    }

    fn check_region_and_account(&self) -> Result<(), String> {
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(format!("region {} is not valid", quote(self.region)));
        }
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("account {} is not 12 digits", quote(self.account)));
        }
        Ok(())
    }
}

/// A Kinesis stream or consumer name: 1 to `max` of `[A-Za-z0-9_.-]`.
pub(crate) fn is_resource_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An S3 bucket name: 3 to 63 of `[a-z0-9.-]`, starting and ending with a letter or digit.
fn is_bucket_name(name: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && edge(name.bytes().next())
        && edge(name.bytes().last())
}
