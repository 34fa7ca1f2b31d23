//! A fault-injecting HTTP proxy in front of the Kinesis emulator.
//!
//! The emulator never throttles and its iterators expire only after five minutes, so
//! to see esm handle `ProvisionedThroughputExceededException` and
//! `ExpiredIteratorException` end to end, tests put this proxy between esm and the
//! real emulator: it forwards every request, except that it answers some GetRecords
//! calls with the error Kinesis would send. esm reaches it through
//! `AWS_ENDPOINT_URL_KINESIS`, like any endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Which GetRecords calls fail, and how.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Every Nth GetRecords call is throttled.
    pub throttle_every: Option<u64>,
    /// Every Nth GetRecords call says the iterator expired.
    pub expire_every: Option<u64>,
    /// Rewrites GetRecords' `Limit` down to this, so a shard is read in many pages
    /// and faults land in the middle of it.
    pub max_limit: Option<u64>,
}

/// A running proxy; it stops when the test's runtime ends.
pub struct FaultProxy {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    get_records: AtomicU64,
    throttled: AtomicU64,
    expired: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (e.g. `http://127.0.0.1:4567`).
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let stats = Arc::new(Stats::default());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let shared = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, upstream, stats) = (client.clone(), upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, upstream, stats) =
                            (client.clone(), upstream.clone(), stats.clone());
                        async move {
                            Ok::<_, Infallible>(
                                handle(req, &client, &upstream, &stats, faults).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, stats }
    }

    /// The endpoint URL to give esm.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GetRecords calls seen, throttled, expired.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.stats.get_records.load(Ordering::SeqCst),
            self.stats.throttled.load(Ordering::SeqCst),
            self.stats.expired.load(Ordering::SeqCst),
        )
    }
}

type Upstream = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    client: &Upstream,
    upstream: &str,
    stats: &Stats,
    faults: Faults,
) -> Response<Full<Bytes>> {
    let is_get_records = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.ends_with(".GetRecords"));
    if is_get_records {
        let n = stats.get_records.fetch_add(1, Ordering::SeqCst) + 1;
        if faults.throttle_every.is_some_and(|k| n.is_multiple_of(k)) {
            stats.throttled.fetch_add(1, Ordering::SeqCst);
            return error(
                "ProvisionedThroughputExceededException",
                "Rate exceeded for shard (injected by the test proxy)",
            );
        }
        if faults.expire_every.is_some_and(|k| n.is_multiple_of(k)) {
            stats.expired.fetch_add(1, Ordering::SeqCst);
            return error(
                "ExpiredIteratorException",
                "Iterator expired (injected by the test proxy)",
            );
        }
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                "InternalFailure",
                &format!("proxy could not read the request: {e}"),
            )
        }
    };
    let uri = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let body = match faults.max_limit {
        Some(max) if is_get_records => cap_limit(body, max),
        _ => body,
    };
    let mut forward = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if name != hyper::header::CONTENT_LENGTH {
            forward = forward.header(name, value);
        }
    }
    forward = forward.header(hyper::header::CONTENT_LENGTH, body.len());
    let Ok(forward) = forward.body(Full::new(body)) else {
        return error("InternalFailure", "proxy could not build the request");
    };
    match client.request(forward).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => error(
            "InternalFailure",
            &format!("proxy could not reach the emulator: {e}"),
        ),
    }
}

/// Lowers the `Limit` of a GetRecords request body to at most `max`.
fn cap_limit(body: Bytes, max: u64) -> Bytes {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let limit = json
        .get("Limit")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(10_000);
    json["Limit"] = serde_json::Value::from(limit.min(max));
    serde_json::to_vec(&json).map(Bytes::from).unwrap_or(body)
}

fn error(code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    Response::builder()
        .status(400)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", code)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
