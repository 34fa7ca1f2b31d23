//! The observability server on `[server] listen`: `/metrics` (Prometheus text),
//! `/healthz`, `/readyz` and `/status` (JSON).
//!
//! It binds before any mapping starts, so a liveness probe answers during start-up
//! and `/readyz` says why the instance is not ready yet. It only reads: the
//! [`Metrics`] registry and the [`StatusBoard`]. It binds 127.0.0.1 unless the
//! config says otherwise (in a container, `0.0.0.0:9090`), and port 0 picks a free
//! port, which the log line names.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{self, Metrics};
use crate::status::StatusBoard;

type Body = Full<Bytes>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ([server] listen): {source}")]
pub struct ServerError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// What the server reads.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The metrics registry.
    pub metrics: Metrics,
    /// The mappings' status.
    pub board: StatusBoard,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Server {
    /// Binds `addr` and serves until [`Server::stop`].
    pub async fn start(addr: SocketAddr, observed: Observed) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServerError { addr, source })?;
        tracing::info!(listen = %bound, "serving /metrics, /healthz, /readyz and /status");
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(accept(listener, observed, tasks.clone(), stop.clone()));
        Ok(Self {
            addr: bound,
            tasks,
            stop,
        })
    }

    /// The address it listens on (the chosen port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::stop`] (an early exit) stops accepting.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    observed: Observed,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection on the metrics server");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let observed = observed.clone();
        let service = service_fn(move |request| answer(observed.clone(), request));
        let stop = stop.clone();
        tasks.spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics server connection ended with an error");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Answers one request.
async fn answer(
    observed: Observed,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, observed.metrics.encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let not_ready = observed.board.not_ready();
            if not_ready.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready:\n{}\n", not_ready.join("\n")),
                )
            }
        }
        "/status" => {
            let report = observed.board.report().await;
            match serde_json::to_vec_pretty(&report) {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot write the status: {e}\n"),
                ),
            }
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no {other} here: try /metrics, /healthz, /readyz or /status\n"),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
