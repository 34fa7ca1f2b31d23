//! The enhanced fan-out consumer a mapping names with `consumer_name` (an esm
//! extension): registered if it does not exist, reused if it does, and waited for
//! until it is ACTIVE.
//!
//! Why: Lambda reads with enhanced fan-out only through a consumer ARN, which its
//! users make by hand first (`aws kinesis register-stream-consumer`, then
//! `describe-stream-consumer` until it says ACTIVE) and paste into the mapping, with
//! its creation timestamp. With a stream ARN and `consumer_name`, esm does this itself
//! before reading: it looks the consumer up by name, registers it when there is none,
//! and waits until it is ACTIVE (a consumer cannot be subscribed to while CREATING).
//! A restart, or a second instance reading the same stream, finds the consumer by its
//! name and reuses it, so one name stays one consumer (and one share of the stream's
//! consumer limit) however often esm starts. esm never deregisters it.
//!
//! IAM: `kinesis:RegisterStreamConsumer` on the stream
//! (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`), `kinesis:DescribeStreamConsumer`
//! on its consumers (`…:stream/NAME/consumer/*`), and, to read, `kinesis:SubscribeToShard`
//! on the consumer. Neither operation models `AccessDeniedException`, so a denial is
//! recognised by its error code, the one place here that reads a code instead of the
//! SDK's error type.

use std::time::Duration;

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::describe_stream_consumer::DescribeStreamConsumerError;
use aws_sdk_kinesis::operation::register_stream_consumer::RegisterStreamConsumerError;
use aws_sdk_kinesis::types::ConsumerStatus;
use aws_sdk_kinesis::Client;
use tokio::time::Instant;

use super::kinesis::describe;

/// The first pause between two looks at a consumer that is not ACTIVE yet.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The longest pause between two looks (DescribeStreamConsumer allows 20 calls per
/// second per stream, shared by every instance).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why [`ensure_consumer`] could not give a consumer to read with.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The stream does not exist (a wrong ARN or region, or it was deleted).
    #[error("cannot register stream consumer {name:?}: stream {stream_arn} not found ({detail})")]
    StreamNotFound {
        /// The stream.
        stream_arn: String,
        /// The consumer's name.
        name: String,
        /// Kinesis's answer.
        detail: String,
    },
    /// The credentials may not describe or register the consumer.
    #[error(
        "access denied to stream consumer {name:?} of {stream_arn} ({detail}); esm needs \
         kinesis:DescribeStreamConsumer and kinesis:RegisterStreamConsumer on the stream \
         and its consumers"
    )]
    AccessDenied {
        /// The stream.
        stream_arn: String,
        /// The consumer's name.
        name: String,
        /// Kinesis's answer.
        detail: String,
    },
    /// A consumer of this name exists but is being deregistered.
    #[error(
        "stream consumer {name:?} of {stream_arn} is being deleted (status DELETING, \
         {consumer_arn}); start again once it is gone, or choose another consumer_name"
    )]
    Deleting {
        /// The stream.
        stream_arn: String,
        /// The consumer's name.
        name: String,
        /// The ARN of the consumer being deleted.
        consumer_arn: String,
    },
    /// The consumer did not become ACTIVE in time.
    #[error("stream consumer {name:?} of {stream_arn} was not ACTIVE after {waited:?} ({seen})")]
    TimedOut {
        /// The stream.
        stream_arn: String,
        /// The consumer's name.
        name: String,
        /// How long esm waited.
        waited: Duration,
        /// What was seen last: `status CREATING`, or the last error.
        seen: String,
    },
    /// Any other failure: an invalid argument, a credentials problem, ….
    #[error("{operation} for stream consumer {name:?} of {stream_arn} failed: {detail}")]
    Other {
        /// The Kinesis operation that failed.
        operation: &'static str,
        /// The stream.
        stream_arn: String,
        /// The consumer's name.
        name: String,
        /// Kinesis's answer, or the transport error.
        detail: String,
    },
}

/// Returns the ARN of the ACTIVE consumer `name` of the stream `stream_arn`,
/// registering it first when there is none.
///
/// DescribeStreamConsumer looks the consumer up by name; when Kinesis has none,
/// RegisterStreamConsumer makes it (should another instance register it first, its
/// `ResourceInUseException` sends this one back to describing it). Then the consumer
/// is described again, with a growing pause (200 ms doubling to 2 s, jittered), until
/// it is ACTIVE, for up to `wait`; the calls themselves are bounded by the client's
/// timeouts. Throttling (`LimitExceededException`), server errors and network failures
/// are retried within `wait` too. With `wait` zero there is one look.
///
/// Errors: the stream does not exist; access is denied; the consumer is DELETING;
/// it is not ACTIVE after `wait` (saying what was seen last); anything else.
pub async fn ensure_consumer(
    client: &Client,
    stream_arn: &str,
    name: &str,
    wait: Duration,
) -> Result<String, ConsumerError> {
    let target = Target { stream_arn, name };
    let started = Instant::now();
    let deadline = started + wait;
    let mut backoff = FIRST_BACKOFF;
    // Whether "registered" or "reusing" was logged.
    let mut announced = false;
    loop {
        let seen = match target.look(client, &mut announced).await? {
            Look::Active(arn) => {
                tracing::debug!(consumer = name, consumer_arn = %arn, waited = ?started.elapsed(), "stream consumer is ACTIVE");
                return Ok(arn);
            }
            Look::NotYet(seen) => seen,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ConsumerError::TimedOut {
                stream_arn: stream_arn.to_string(),
                name: name.to_string(),
                waited: wait,
                seen,
            });
        }
        tracing::debug!(consumer = name, seen = %seen, "waiting for the stream consumer to be ACTIVE");
        // Jittered, so instances started together do not describe in step.
        let pause = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::time::sleep(pause.min(remaining)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The consumer [`ensure_consumer`] is after.
struct Target<'a> {
    stream_arn: &'a str,
    name: &'a str,
}

/// What one look at the consumer found.
enum Look {
    /// It is ACTIVE, with this ARN.
    Active(String),
    /// It is not ACTIVE yet, or the look failed in passing: what was seen.
    NotYet(String),
}

impl Target<'_> {
    /// Describes the consumer, and registers it when there is none. `announced` is
    /// whether "registered" or "reusing" was logged already.
    async fn look(&self, client: &Client, announced: &mut bool) -> Result<Look, ConsumerError> {
        let (stream, name) = (self.stream_arn, self.name);
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream)
            .consumer_name(name)
            .send()
            .await;
        let consumer = match described {
            Ok(out) => match out.consumer_description {
                Some(consumer) => consumer,
                None => {
                    return Ok(Look::NotYet(
                        "DescribeStreamConsumer returned no description".to_string(),
                    ))
                }
            },
            Err(e) => {
                return match describe_failure(&e) {
                    Failure::NotFound(_) => self.register(client, announced).await,
                    Failure::Retry(detail) => {
                        Ok(Look::NotYet(format!("DescribeStreamConsumer: {detail}")))
                    }
                    failure => Err(self.error("DescribeStreamConsumer", failure)),
                };
            }
        };
        let arn = consumer.consumer_arn;
        if !std::mem::replace(announced, true) {
            tracing::info!(consumer = name, consumer_arn = %arn, stream, "reusing stream consumer");
        }
        match consumer.consumer_status {
            ConsumerStatus::Active => Ok(Look::Active(arn)),
            ConsumerStatus::Deleting => Err(ConsumerError::Deleting {
                stream_arn: stream.to_string(),
                name: name.to_string(),
                consumer_arn: arn,
            }),
            // CREATING, or a status newer than this SDK: wait for ACTIVE.
            other => Ok(Look::NotYet(format!("status {}", other.as_str()))),
        }
    }

    /// RegisterStreamConsumer, after DescribeStreamConsumer found no consumer.
    async fn register(&self, client: &Client, announced: &mut bool) -> Result<Look, ConsumerError> {
        let (stream, name) = (self.stream_arn, self.name);
        let result = client
            .register_stream_consumer()
            .stream_arn(stream)
            .consumer_name(name)
            .send()
            .await;
        match result {
            Ok(out) => {
                *announced = true;
                let arn = out.consumer.map(|c| c.consumer_arn).unwrap_or_default();
                tracing::info!(consumer = name, consumer_arn = %arn, stream, "registered stream consumer");
                Ok(Look::NotYet("status CREATING".to_string()))
            }
            Err(e) => match register_failure(&e) {
                // Another instance registered it first: describe it again.
                Failure::InUse(_) => Ok(Look::NotYet(
                    "registered meanwhile by someone else".to_string(),
                )),
                Failure::NotFound(detail) => Err(ConsumerError::StreamNotFound {
                    stream_arn: stream.to_string(),
                    name: name.to_string(),
                    detail,
                }),
                Failure::Retry(detail) => {
                    Ok(Look::NotYet(format!("RegisterStreamConsumer: {detail}")))
                }
                failure => Err(self.error("RegisterStreamConsumer", failure)),
            },
        }
    }

    /// The error for a failure of `operation` that ends the attempt.
    fn error(&self, operation: &'static str, failure: Failure) -> ConsumerError {
        let (stream_arn, name) = (self.stream_arn.to_string(), self.name.to_string());
        match failure {
            Failure::AccessDenied(detail) => ConsumerError::AccessDenied {
                stream_arn,
                name,
                detail,
            },
            Failure::NotFound(detail)
            | Failure::InUse(detail)
            | Failure::Retry(detail)
            | Failure::Fatal(detail) => ConsumerError::Other {
                operation,
                stream_arn,
                name,
                detail,
            },
        }
    }
}

/// What a failed call means here.
#[derive(Debug)]
enum Failure {
    /// `ResourceNotFoundException`: no such consumer (DescribeStreamConsumer) or no
    /// such stream (RegisterStreamConsumer).
    NotFound(String),
    /// `ResourceInUseException`: the consumer exists already.
    InUse(String),
    /// The credentials may not make the call.
    AccessDenied(String),
    /// Throttled, a server error or a network failure: worth another try.
    Retry(String),
    /// Anything else: another try will not help.
    Fatal(String),
}

fn describe_failure(e: &SdkError<DescribeStreamConsumerError, HttpResponse>) -> Failure {
    match e.as_service_error() {
        Some(s) if s.is_resource_not_found_exception() => Failure::NotFound(describe(e)),
        Some(s) if s.is_limit_exceeded_exception() => Failure::Retry(describe(e)),
        _ => common_failure(e),
    }
}

fn register_failure(e: &SdkError<RegisterStreamConsumerError, HttpResponse>) -> Failure {
    match e.as_service_error() {
        Some(s) if s.is_resource_not_found_exception() => Failure::NotFound(describe(e)),
        Some(s) if s.is_resource_in_use_exception() => Failure::InUse(describe(e)),
        // Also the answer when the stream has its most consumers: retried until `wait`
        // ends, whose error then quotes it.
        Some(s) if s.is_limit_exceeded_exception() => Failure::Retry(describe(e)),
        _ => common_failure(e),
    }
}

/// The failures every operation shares: access denied (not modeled for these
/// operations, so known by its code), passing failures, and the rest.
fn common_failure<E>(e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = describe(e);
    match e {
        SdkError::ServiceError(s) if s.err().code() == Some("AccessDeniedException") => {
            Failure::AccessDenied(detail)
        }
        SdkError::ServiceError(s) if s.raw().status().is_server_error() => Failure::Retry(detail),
        SdkError::ServiceError(_) | SdkError::ConstructionFailure(_) => Failure::Fatal(detail),
        _ => Failure::Retry(detail),
    }
}
