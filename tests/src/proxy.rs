//! A fault-injecting HTTP proxy in front of the Kinesis emulator.
//!
//! The emulator never throttles and its iterators expire only after five minutes, so
//! to see esm handle `ProvisionedThroughputExceededException` and
//! `ExpiredIteratorException` end to end, tests put this proxy between esm and the
//! real emulator: it forwards every request, except that it answers some GetRecords
//! calls with the error Kinesis would send. esm reaches it through
//! `AWS_ENDPOINT_URL_KINESIS`, like any endpoint.
//!
//! Besides the fixed [`Faults`], a test can deny the next GetRecords calls while esm
//! runs ([`FaultProxy::deny_get_records`]): they are answered with
//! `AccessDeniedException`, which ends esm's shard reader. While denials are held
//! ([`FaultProxy::hold_denials`]) a denied call waits for its answer until the test
//! releases it, so the test chooses the moment esm learns of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

struct Stats {
    get_records: AtomicU64,
    throttled: AtomicU64,
    expired: AtomicU64,
    /// Records in the GetRecords answers passed on.
    records_served: AtomicU64,
    /// How many of the next GetRecords calls are denied.
    deny_left: AtomicU64,
    /// When each denial was answered (wall-clock milliseconds since the Unix epoch).
    denied_at: Mutex<Vec<u64>>,
    /// Denied calls waiting for their answer.
    held: AtomicU64,
    /// Whether denials are answered (`true`) or held.
    gate: tokio::sync::watch::Sender<bool>,
    /// Whether GetRecords calls are forwarded (`true`) or held.
    reads: tokio::sync::watch::Sender<bool>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            get_records: AtomicU64::default(),
            throttled: AtomicU64::default(),
            expired: AtomicU64::default(),
            records_served: AtomicU64::default(),
            deny_left: AtomicU64::default(),
            denied_at: Mutex::default(),
            held: AtomicU64::default(),
            gate: tokio::sync::watch::Sender::new(true),
            reads: tokio::sync::watch::Sender::new(true),
        }
    }
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

    /// Answers the next `n` GetRecords calls with HTTP 400
    /// `AccessDeniedException` (from then on they pass again).
    pub fn deny_get_records(&self, n: u64) {
        self.stats.deny_left.store(n, Ordering::SeqCst);
    }

    /// From now on, denied calls wait for their answer until
    /// [`FaultProxy::release_denials`].
    pub fn hold_denials(&self) {
        self.stats.gate.send_replace(false);
    }

    /// Answers the denied calls held, and those to come at once.
    pub fn release_denials(&self) {
        self.stats.gate.send_replace(true);
    }

    /// From now on, GetRecords calls wait (unanswered) until
    /// [`FaultProxy::release_get_records`]; other calls pass.
    pub fn hold_get_records(&self) {
        self.stats.reads.send_replace(false);
    }

    /// Forwards the GetRecords calls held, and those to come.
    pub fn release_get_records(&self) {
        self.stats.reads.send_replace(true);
    }

    /// How many denied calls wait for their answer now.
    pub fn denials_held(&self) -> u64 {
        self.stats.held.load(Ordering::SeqCst)
    }

    /// When each GetRecords call denied so far was answered (wall-clock milliseconds
    /// since the Unix epoch), in order.
    pub fn denials(&self) -> Vec<u64> {
        self.stats
            .denied_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many records the GetRecords answers passed on to esm held, in all.
    pub fn records_served(&self) -> u64 {
        self.stats.records_served.load(Ordering::SeqCst)
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
        let _ = stats.reads.subscribe().wait_for(|open| *open).await;
        let n = stats.get_records.fetch_add(1, Ordering::SeqCst) + 1;
        if stats
            .deny_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
            .is_ok()
        {
            let mut gate = stats.gate.subscribe();
            if !*gate.borrow() {
                stats.held.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                stats.held.fetch_sub(1, Ordering::SeqCst);
            }
            stats
                .denied_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(crate::now_ms());
            return error(
                "AccessDeniedException",
                "denied (injected by the test proxy)",
            );
        }
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
            if is_get_records && parts.status.is_success() {
                stats
                    .records_served
                    .fetch_add(records_in(&body), Ordering::SeqCst);
            }
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => error(
            "InternalFailure",
            &format!("proxy could not reach the emulator: {e}"),
        ),
    }
}

/// How many records a GetRecords answer (JSON) holds; 0 if it cannot be read.
fn records_in(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Records", default)]
        records: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Answer>(body).map_or(0, |a| a.records.len() as u64)
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
