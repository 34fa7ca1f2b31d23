//! `consumer_name`: `ensure_consumer` registers a stream consumer once, reuses it on
//! a restart or when several instances start together, and says plainly why it
//! cannot (a missing stream, access denied, a consumer being deleted, one that stays
//! CREATING).
//!
//! The first tests run against the Kinesis emulator. It makes a consumer ACTIVE at
//! once (`REGISTER_STREAM_CONSUMER_DURATION=0ms` in `scripts/emulators.sh`) and has
//! no IAM, so the waiting and the errors are checked against a scripted stand-in for
//! Kinesis that answers DescribeStreamConsumer and RegisterStreamConsumer in a
//! given order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esm::config::EventSourceArn;
use esm::source::consumer::{ensure_consumer, ConsumerError};
use esm_e2e::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// How long the emulator tests let a consumer take to become ACTIVE.
const WAIT: Duration = Duration::from_secs(30);

/// The consumers of `stream` named `name`, from ListStreamConsumers, every page.
async fn consumers_named(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    name: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_stream_consumers()
            .stream_arn(stream_arn(stream))
            .set_next_token(token.take())
            .send()
            .await
            .expect("ListStreamConsumers");
        let page = out.consumers();
        found.extend(
            page.iter()
                .filter(|c| c.consumer_name() == name)
                .map(|c| c.consumer_arn().to_string()),
        );
        // The emulator answers a complete list with a NextToken (the last name) and
        // the page after it is empty; AWS gives no NextToken on the last page.
        match out.next_token() {
            Some(next) if !page.is_empty() => token = Some(next.to_string()),
            _ => return found,
        }
    }
}

/// The status of consumer `name` of `stream`, from DescribeStreamConsumer. (By stream
/// and name: the emulator does not find a consumer by its ARN alone, which AWS does.)
async fn status_of(client: &aws_sdk_kinesis::Client, stream: &str, name: &str) -> String {
    let out = client
        .describe_stream_consumer()
        .stream_arn(stream_arn(stream))
        .consumer_name(name)
        .send()
        .await
        .expect("DescribeStreamConsumer");
    out.consumer_description()
        .expect("a consumer description")
        .consumer_status()
        .as_str()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_once_and_a_restart_reuses_it() {
    let setup = kinesis().await;
    let stream = TestStream::create(&setup, "consumer", 1).await;
    let arn = stream_arn(&stream);
    let name = "esm-orders";
    assert!(consumers_named(&setup, &stream, name).await.is_empty());

    // The client esm itself makes (standard provider chain, SDK retries off).
    let client = esm::source::kinesis::client(REGION).await;
    let first = ensure_consumer(&client, &arn, name, WAIT)
        .await
        .expect("the first start registers the consumer");
    let parsed = EventSourceArn::parse(&first).expect("a consumer ARN");
    assert_eq!(parsed.consumer.as_deref(), Some(first.as_str()));
    assert_eq!(parsed.stream_arn(), arn);
    assert!(
        first.contains(&format!("/consumer/{name}:")),
        "{first} is not a consumer named {name}"
    );
    assert_eq!(status_of(&setup, &stream, name).await, "ACTIVE");

    // A restart: a new client, the same name.
    let client = esm::source::kinesis::client(REGION).await;
    let second = ensure_consumer(&client, &arn, name, WAIT)
        .await
        .expect("a restart reuses the consumer");
    assert_eq!(
        second, first,
        "a restart must reuse the consumer, not make one"
    );
    assert_eq!(consumers_named(&setup, &stream, name).await, vec![first]);
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_starting_together_share_one_consumer() {
    let setup = kinesis().await;
    let stream = TestStream::create(&setup, "consumer-race", 1).await;
    let arn = stream_arn(&stream);
    let name = "esm-shared";
    let starts = (0..4).map(|_| {
        let arn = arn.clone();
        tokio::spawn(async move {
            let client = esm::source::kinesis::client(REGION).await;
            ensure_consumer(&client, &arn, name, WAIT).await
        })
    });
    let mut arns = Vec::new();
    for start in starts {
        arns.push(
            start
                .await
                .unwrap()
                .expect("every instance gets the consumer"),
        );
    }
    arns.dedup();
    assert_eq!(arns.len(), 1, "instances got different consumers: {arns:?}");
    assert_eq!(consumers_named(&setup, &stream, name).await, arns);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_stream_is_not_found() {
    let _ = kinesis().await;
    let client = esm::source::kinesis::client(REGION).await;
    let arn = stream_arn(&unique_name("no-such-stream"));
    let started = Instant::now();
    let err = ensure_consumer(&client, &arn, "esm-orders", WAIT)
        .await
        .expect_err("there is no stream");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a missing stream must not be waited for"
    );
    let message = err.to_string();
    assert!(
        matches!(&err, ConsumerError::StreamNotFound { stream_arn, name, .. }
            if *stream_arn == arn && name == "esm-orders"),
        "{err:?}"
    );
    assert!(
        message.starts_with(&format!(
            "cannot register stream consumer \"esm-orders\": stream {arn} not found (ResourceNotFoundException: "
        )),
        "{message}"
    );
}

// ------------------------------------------------- a scripted stand-in for Kinesis

const FAKE_STREAM: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/orders";
const FAKE_CONSUMER: &str =
    "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/esm:1700000000";

/// One answer: the operation it is for, the HTTP status and the JSON body.
#[derive(Clone)]
struct Answer {
    operation: &'static str,
    status: u16,
    body: String,
}

/// DescribeStreamConsumer finding the consumer in `status`.
fn described(status: &str) -> Answer {
    Answer {
        operation: "DescribeStreamConsumer",
        status: 200,
        body: serde_json::json!({"ConsumerDescription": {
            "ConsumerName": "esm", "ConsumerARN": FAKE_CONSUMER, "ConsumerStatus": status,
            "ConsumerCreationTimestamp": 1_700_000_000, "StreamARN": FAKE_STREAM,
        }})
        .to_string(),
    }
}

/// RegisterStreamConsumer registering it.
fn registered() -> Answer {
    Answer {
        operation: "RegisterStreamConsumer",
        status: 200,
        body: serde_json::json!({"Consumer": {
            "ConsumerName": "esm", "ConsumerARN": FAKE_CONSUMER, "ConsumerStatus": "CREATING",
            "ConsumerCreationTimestamp": 1_700_000_000,
        }})
        .to_string(),
    }
}

/// `operation` failing with the error `code`.
fn failed(operation: &'static str, code: &str) -> Answer {
    Answer {
        operation,
        status: 400,
        body: serde_json::json!({"__type": code, "message": format!("{code} (scripted)")})
            .to_string(),
    }
}

/// Answers each request with the next scripted answer; the last one repeats.
struct Scripted {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: Vec<Answer>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let shared = calls.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (calls, script) = (shared.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let answer = answer(&req, &calls, &script);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        Self { addr, calls }
    }

    /// A client like esm's, talking to this stand-in.
    async fn client(&self) -> aws_sdk_kinesis::Client {
        let sdk = esm::source::kinesis::sdk_config(REGION).await;
        let config = aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(format!("http://{}", self.addr))
            .build();
        aws_sdk_kinesis::Client::from_conf(config)
    }

    /// The operations called, in order.
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn answer(
    req: &Request<Incoming>,
    calls: &Mutex<Vec<String>>,
    script: &Mutex<VecDeque<Answer>>,
) -> Response<Full<Bytes>> {
    let operation = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    calls.lock().unwrap().push(operation.clone());
    let next = {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        }
    };
    let (status, body) = match next {
        Some(a) if a.operation == operation => (a.status, a.body),
        Some(a) => (
            500,
            format!(
                "{{\"message\": \"expected {}, got {operation}\"}}",
                a.operation
            ),
        ),
        None => (500, "{\"message\": \"no answer scripted\"}".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_while_the_consumer_is_creating() {
    let fake = Scripted::start(vec![
        failed("DescribeStreamConsumer", "ResourceNotFoundException"),
        registered(),
        described("CREATING"),
        failed("DescribeStreamConsumer", "LimitExceededException"),
        described("CREATING"),
        described("ACTIVE"),
    ])
    .await;
    let arn = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect("ACTIVE in the end");
    assert_eq!(arn, FAKE_CONSUMER);
    assert_eq!(
        fake.calls(),
        [
            "DescribeStreamConsumer",
            "RegisterStreamConsumer",
            "DescribeStreamConsumer",
            "DescribeStreamConsumer",
            "DescribeStreamConsumer",
            "DescribeStreamConsumer",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_race_to_register_reuses_the_winners_consumer() {
    let fake = Scripted::start(vec![
        failed("DescribeStreamConsumer", "ResourceNotFoundException"),
        failed("RegisterStreamConsumer", "ResourceInUseException"),
        described("ACTIVE"),
    ])
    .await;
    let arn = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect("the other instance's consumer");
    assert_eq!(arn, FAKE_CONSUMER);
    assert_eq!(
        fake.calls(),
        [
            "DescribeStreamConsumer",
            "RegisterStreamConsumer",
            "DescribeStreamConsumer"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_being_deleted_is_an_error() {
    let fake = Scripted::start(vec![described("DELETING")]).await;
    let err = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect_err("DELETING");
    assert!(matches!(err, ConsumerError::Deleting { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "stream consumer \"esm\" of {FAKE_STREAM} is being deleted (status DELETING, \
             {FAKE_CONSUMER}); start again once it is gone, or choose another consumer_name"
        )
    );
    assert_eq!(fake.calls(), ["DescribeStreamConsumer"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_stays_creating_times_out_saying_so() {
    let fake = Scripted::start(vec![described("CREATING")]).await;
    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let err = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", wait)
        .await
        .expect_err("never ACTIVE");
    let took = started.elapsed();
    assert!(
        (wait..wait + Duration::from_secs(2)).contains(&took),
        "gave up after {took:?}, not after about {wait:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "stream consumer \"esm\" of {FAKE_STREAM} was not ACTIVE after 1s (status CREATING)"
        )
    );
    // A short backoff: several looks in one second, but no busy loop.
    let looks = fake.calls().len();
    assert!((3..=10).contains(&looks), "{looks} looks in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_names_the_permissions() {
    let fake = Scripted::start(vec![failed(
        "DescribeStreamConsumer",
        "AccessDeniedException",
    )])
    .await;
    let err = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect_err("denied");
    assert!(matches!(err, ConsumerError::AccessDenied { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "access denied to stream consumer \"esm\" of {FAKE_STREAM} (AccessDeniedException: \
             AccessDeniedException (scripted)); esm needs kinesis:DescribeStreamConsumer and \
             kinesis:RegisterStreamConsumer on the stream and its consumers"
        )
    );
    // Registering is denied too.
    let fake = Scripted::start(vec![
        failed("DescribeStreamConsumer", "ResourceNotFoundException"),
        failed("RegisterStreamConsumer", "AccessDeniedException"),
    ])
    .await;
    let err = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect_err("denied");
    assert!(matches!(err, ConsumerError::AccessDenied { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_errors_name_the_operation() {
    let fake = Scripted::start(vec![failed(
        "DescribeStreamConsumer",
        "InvalidArgumentException",
    )])
    .await;
    let err = ensure_consumer(&fake.client().await, FAKE_STREAM, "esm", WAIT)
        .await
        .expect_err("invalid");
    assert_eq!(
        err.to_string(),
        format!(
            "DescribeStreamConsumer for stream consumer \"esm\" of {FAKE_STREAM} failed: \
             InvalidArgumentException: InvalidArgumentException (scripted)"
        )
    );
    assert_eq!(fake.calls().len(), 1, "not retried");
}
