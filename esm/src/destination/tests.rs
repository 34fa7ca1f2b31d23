//! Destinations against a real moto server (`scripts/test` starts one and sets
//! `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_SNS`).

use std::time::Duration;

use aws_config::BehaviorVersion;
use serde_json::json;

use super::{connect, DestinationError, GivenUp};
use crate::config::{DestinationArn, DestinationKind};

/// True (after saying why) when no emulator is configured, so the test is skipped.
fn no_emulator(test: &str) -> bool {
    if std::env::var_os("AWS_ENDPOINT_URL_SQS").is_none() {
        eprintln!(
            "skipping {test}: AWS_ENDPOINT_URL_SQS is not set; run it with scripts/test, \
             which starts the moto server"
        );
        return true;
    }
    false
}

async fn shared() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `record` as given up from shard `shardId-000000000001`, with `event` as payload.
fn given<'a>(record: &'a serde_json::Value, event: &'a [u8]) -> GivenUp<'a> {
    GivenUp {
        record,
        shard_id: "shardId-000000000001",
        request_id: record["requestContext"]["requestId"]
            .as_str()
            .unwrap_or("id"),
        at: chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:02.021Z")
            .expect("a time")
            .to_utc(),
        event,
    }
}

/// Connects to `arn` for mapping `orders` in us-east-1.
async fn connect_to(
    arn: &str,
) -> Result<std::sync::Arc<dyn super::FailureDestination>, DestinationError> {
    connect(
        &DestinationArn::parse(arn).expect("an ARN"),
        "orders",
        "us-east-1",
    )
    .await
}

fn record() -> serde_json::Value {
    json!({
        "requestContext": {
            "requestId": uuid::Uuid::new_v4().to_string(),
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-22T10:00:02.021Z",
        "KinesisBatchInfo": {
            "shardId": "shardId-000000000001",
            "startSequenceNumber": "1", "endSequenceNumber": "2",
            "batchSize": 2,
            "streamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
        }
    })
}

/// Creates a queue; returns its URL and ARN (from GetQueueAttributes).
async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("queue URL");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes");
    let arn = attrs
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("QueueArn");
    (url, arn)
}

/// The body of the next message on `url`, waiting up to ~10 s.
async fn receive_one(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    for _ in 0..10 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        if let Some(body) = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|m| m.body)
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message arrived on {url}");
}

#[tokio::test]
async fn sqs_destination_sends_the_record_as_the_body() {
    if no_emulator("sqs_destination_sends_the_record_as_the_body") {
        return;
    }
    let sqs = aws_sdk_sqs::Client::new(&shared().await);
    let (url, arn) = create_queue(&sqs, &unique("esm-failures")).await;
    let destination = connect_to(&arn).await.expect("connect");
    assert_eq!(destination.arn(), arn);

    let first = record();
    destination
        .send(given(&first, b""))
        .await
        .expect("first send");
    let second = record();
    destination
        .send(given(&second, b""))
        .await
        .expect("second send (cached URL)");

    let a: serde_json::Value = serde_json::from_str(&receive_one(&sqs, &url).await).expect("JSON");
    let b: serde_json::Value = serde_json::from_str(&receive_one(&sqs, &url).await).expect("JSON");
    let mut got = vec![a, b];
    got.sort_by_key(|v| v["requestContext"]["requestId"].to_string());
    let mut want = vec![first, second];
    want.sort_by_key(|v| v["requestContext"]["requestId"].to_string());
    assert_eq!(got, want);
}

#[tokio::test]
async fn sns_destination_publishes_the_record_as_the_message() {
    if no_emulator("sns_destination_publishes_the_record_as_the_message") {
        return;
    }
    let config = shared().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let sns = aws_sdk_sns::Client::new(&config);
    let (url, queue_arn) = create_queue(&sqs, &unique("esm-sns-sink")).await;
    let topic_arn = sns
        .create_topic()
        .name(unique("esm-failures"))
        .send()
        .await
        .expect("CreateTopic")
        .topic_arn
        .expect("topic ARN");
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("Subscribe");

    let destination = connect_to(&topic_arn).await.expect("connect");
    assert_eq!(destination.arn(), topic_arn);
    let sent = record();
    destination.send(given(&sent, b"")).await.expect("publish");

    let got: serde_json::Value =
        serde_json::from_str(&receive_one(&sqs, &url).await).expect("JSON");
    assert_eq!(got, sent);
}

#[tokio::test]
async fn a_missing_queue_is_not_found() {
    if no_emulator("a_missing_queue_is_not_found") {
        return;
    }
    let arn = format!(
        "arn:aws:sqs:us-east-1:123456789012:{}",
        unique("esm-missing")
    );
    let destination = connect_to(&arn).await.expect("connect does no I/O");
    let err = destination
        .send(given(&record(), b""))
        .await
        .expect_err("no such queue");
    assert!(
        matches!(err, DestinationError::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
    let text = err.to_string();
    eprintln!("missing queue: {text}");
    // Matched by the SDK's error type (QueueDoesNotExist), not by a code.
    assert!(text.contains("no queue named"), "{text}");
    assert!(
        text.contains(&arn) && text.contains("does not exist"),
        "{text}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_missing_topic_is_not_found() {
    if no_emulator("a_missing_topic_is_not_found") {
        return;
    }
    let arn = format!(
        "arn:aws:sns:us-east-1:123456789012:{}",
        unique("esm-missing")
    );
    let destination = connect_to(&arn).await.expect("connect does no I/O");
    let err = destination
        .send(given(&record(), b""))
        .await
        .expect_err("no such topic");
    assert!(
        matches!(err, DestinationError::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
    eprintln!("missing topic: {err}");
    assert!(err.to_string().contains("no such topic"), "{err}");
}

#[tokio::test]
async fn connect_does_no_io() {
    // An endpoint nobody listens on: connect must still succeed.
    let arn = DestinationArn::parse("arn:aws:sqs:eu-west-1:123456789012:q").expect("ARN");
    assert_eq!(arn.kind, DestinationKind::Sqs);
    assert!(connect(&arn, "orders", "eu-west-1").await.is_ok());
    let s3 = DestinationArn::parse("arn:aws:s3:::my-bucket").expect("ARN");
    assert_eq!(s3.kind, DestinationKind::S3);
    let bucket = connect(&s3, "orders", "eu-west-1").await.expect("connect");
    assert!(bucket.keeps_payload());
    assert!(!connect(&arn, "orders", "eu-west-1")
        .await
        .expect("connect")
        .keeps_payload());
}

#[tokio::test]
async fn s3_destination_writes_the_record_with_its_payload_at_lambdas_key() {
    if no_emulator("s3_destination_writes_the_record_with_its_payload_at_lambdas_key") {
        return;
    }
    let s3 = super::s3_client("us-east-1", 1).await;
    let bucket = unique("esm-failures");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    let destination = connect_to(&format!("arn:aws:s3:::{bucket}"))
        .await
        .expect("connect");
    let sent = record();
    let event = br#"{"Records":[{"kinesis":{"sequenceNumber":"1"}}]}"#;
    destination.send(given(&sent, event)).await.expect("put");

    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListObjectsV2");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    let id = sent["requestContext"]["requestId"].as_str().unwrap();
    let uuid = crate::core::on_failure::mapping_uuid("orders");
    assert_eq!(
        keys,
        [format!(
            "aws/lambda/{uuid}/shardId-000000000001/2026/11/22/2026-11-22T10.00.02-{id}"
        )]
    );
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key(keys[0])
        .send()
        .await
        .expect("GetObject")
        .body
        .collect()
        .await
        .expect("the body")
        .into_bytes();
    let mut got: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let payload = got
        .as_object_mut()
        .and_then(|o| o.remove("payload"))
        .expect("a payload");
    assert_eq!(got, sent);
    assert_eq!(
        payload,
        serde_json::from_slice::<serde_json::Value>(event).unwrap()
    );
}

#[tokio::test]
async fn a_missing_bucket_is_not_found() {
    if no_emulator("a_missing_bucket_is_not_found") {
        return;
    }
    let destination = connect_to(&format!("arn:aws:s3:::{}", unique("esm-missing")))
        .await
        .expect("connect does no I/O");
    let err = destination
        .send(given(&record(), b"{}"))
        .await
        .expect_err("no such bucket");
    assert!(
        matches!(err, DestinationError::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
}
