//! The Lambda Runtime API (version 2018-06-01), served to one worker process.
//!
//! Four endpoints, with Lambda's paths, headers, status codes and error bodies, so
//! that Lambda's runtime interface clients (`lambda_runtime`, `awslambdaric`, …)
//! run unmodified:
//!
//! | request | answer |
//! |---|---|
//! | `GET /2018-06-01/runtime/invocation/next` | long-polls; 200 with the event and the `Lambda-Runtime-*` headers |
//! | `POST /2018-06-01/runtime/invocation/{id}/response` | 202; 400 `InvalidRequestID` for an id the worker does not hold; 413 above 6 MB |
//! | `POST /2018-06-01/runtime/invocation/{id}/error` | 202; 400 `InvalidRequestID` as above |
//! | `POST /2018-06-01/runtime/init/error` | 202; 403 once the worker has asked for an invocation |
//!
//! A second `GET /next` while the worker holds or awaits an invocation gets 403, and
//! any request after the session ended gets 500 (Lambda's "container error: exit").
//! Other paths get 404 (the Extensions and Telemetry APIs are not served).
//!
//! It is plain HTTP/1.1 (awslambdaric requires it) on 127.0.0.1, with hyper's
//! connection handling and no framework on top. Connections stay open between
//! requests, and no header-read timeout applies: a worker may spend up to 900 s on
//! an invocation before it posts the response on the connection it polled with.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use super::session::{Assigned, ErrorReport, Refused, Session};
use super::Pool;
use crate::invoke::Outcome;

/// Lambda's limit on a synchronous invocation's response (and esm's on any body).
pub(super) const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// The longest error message kept from a worker's error body (in characters).
const MAX_MESSAGE_CHARS: usize = 4096;

/// Where every path starts.
const PREFIX: &str = "/2018-06-01/runtime/";

/// The header a runtime may set on `/error` and `/init/error`.
const FUNCTION_ERROR_TYPE: &str = "lambda-runtime-function-error-type";

/// A response body.
type Body = Full<Bytes>;

/// Serves the Runtime API on `listener` for `session`'s worker until the session
/// ends; then the listener and every connection are closed.
pub(super) async fn serve(listener: TcpListener, session: Arc<Session>, pool: Arc<Pool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a Runtime API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = session.ended().cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let (pool, session) = (pool.clone(), session.clone());
            service_fn(move |request| handle(pool.clone(), session.clone(), request))
        };
        let ended = session.ended().clone();
        let connection = async move {
            let mut builder = http1::Builder::new();
            builder.header_read_timeout(None);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "Runtime API connection ended with an error");
                },
                () = ended.cancelled() => {}
            }
        };
        pool.tasks.spawn(connection.in_current_span());
    }
}

/// Answers one request.
async fn handle(
    pool: Arc<Pool>,
    session: Arc<Session>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let Some(route) = path.strip_prefix(PREFIX) else {
        return Ok(not_found(&path));
    };
    let parts: Vec<&str> = route.split('/').collect();
    let method = request.method().clone();
    let (get, post) = (method == Method::GET, method == Method::POST);
    Ok(match parts.as_slice() {
        ["invocation", "next"] if get => next(&pool, &session).await,
        ["invocation", id, "response"] if post => response(&session, id, request.into_body()).await,
        ["invocation", id, "error"] if post => {
            let header = error_type_header(&request);
            error(&session, id, header, request.into_body()).await
        }
        ["init", "error"] if post => {
            let header = error_type_header(&request);
            init_error(&pool, &session, header, request.into_body()).await
        }
        ["invocation", "next"] | ["invocation", _, "response" | "error"] | ["init", "error"] => {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} is not allowed on {path}"),
            )
        }
        _ => not_found(&path),
    })
}

/// `GET /next`: waits for an invocation and sends it with Lambda's headers.
async fn next(pool: &Pool, session: &Session) -> Response<Body> {
    if session.mark_ready() {
        tracing::info!("worker is ready (asked for its first invocation)");
        pool.clear_problem();
    }
    match session.next(&pool.queue).await {
        Ok(assigned) => {
            let request_id = assigned.request_id.clone();
            match invocation_response(assigned) {
                Ok(response) => {
                    tracing::debug!(%request_id, "invocation handed to the worker");
                    response
                }
                Err(e) => {
                    let reason = format!("cannot build the invocation's headers: {e}");
                    session.complete(
                        &request_id,
                        Outcome::NotInvoked {
                            reason: reason.clone(),
                        },
                    );
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        &reason,
                    )
                }
            }
        }
        Err(refused) => refused_response(refused),
    }
}

/// The `GET /next` answer for `assigned`.
fn invocation_response(assigned: Assigned) -> Result<Response<Body>, hyper::http::Error> {
    let deadline_ms = assigned
        .deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Response::builder()
        .status(StatusCode::OK)
        .header("Lambda-Runtime-Aws-Request-Id", assigned.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", assigned.function_arn)
        .header("Lambda-Runtime-Trace-Id", trace_id())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(assigned.payload))
}

/// `POST /invocation/{id}/response`.
async fn response(session: &Session, request_id: &str, body: Incoming) -> Response<Body> {
    if !session.holds(request_id) {
        return invalid_request_id(request_id, "response");
    }
    match read_body(body).await {
        Ok(response) => {
            if session.complete(
                request_id,
                Outcome::Returned {
                    response: response.into(),
                },
            ) {
                accepted()
            } else {
                invalid_request_id(request_id, "response")
            }
        }
        Err(BodyError::TooLarge) => {
            session.complete(
                request_id,
                Outcome::FunctionError {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    message: format!(
                        "Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."
                    ),
                },
            );
            too_large()
        }
        Err(BodyError::Unreadable(e)) => unreadable(request_id, &e),
    }
}

/// `POST /invocation/{id}/error`.
async fn error(
    session: &Session,
    request_id: &str,
    header: Option<String>,
    body: Incoming,
) -> Response<Body> {
    if !session.holds(request_id) {
        return invalid_request_id(request_id, "error");
    }
    let (report, reply) = match read_body(body).await {
        Ok(body) => (error_report(&body, header), accepted()),
        Err(BodyError::TooLarge) => (
            ErrorReport {
                error_type: header.unwrap_or_else(|| "Unhandled".into()),
                message: format!("the error body exceeded {MAX_PAYLOAD} bytes"),
            },
            too_large(),
        ),
        Err(BodyError::Unreadable(e)) => return unreadable(request_id, &e),
    };
    let outcome = Outcome::FunctionError {
        error_type: report.error_type,
        message: report.message,
    };
    if session.complete(request_id, outcome) {
        reply
    } else {
        invalid_request_id(request_id, "error")
    }
}

/// `POST /init/error`.
async fn init_error(
    pool: &Pool,
    session: &Session,
    header: Option<String>,
    body: Incoming,
) -> Response<Body> {
    let report = match read_body(body).await {
        Ok(body) => error_report(&body, header),
        Err(BodyError::TooLarge) => ErrorReport {
            error_type: header.unwrap_or_else(|| "Runtime.Unknown".into()),
            message: format!("(the init error body exceeded {MAX_PAYLOAD} bytes)"),
        },
        Err(BodyError::Unreadable(e)) => return unreadable("init", &e),
    };
    match session.report_init_error(report.clone()) {
        Ok(()) => {
            tracing::error!(
                error_type = %report.error_type,
                message = %report.message,
                "worker failed to initialize (init error); it will be restarted"
            );
            pool.set_problem(format!(
                "worker {} init error {}: {}",
                session.worker, report.error_type, report.message
            ));
            accepted()
        }
        Err(refused) => refused_response(refused),
    }
}

/// The value of `Lambda-Runtime-Function-Error-Type`, when set and not empty.
fn error_type_header(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(FUNCTION_ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// What an error body says: Lambda's `{"errorType", "errorMessage"}`, else the
/// header's type (or `Unhandled`) and the body as text.
///
/// The body's `errorType` wins over the header: `lambda_runtime` sends the header
/// as a constant `unhandled` and the real type in the body.
pub(super) fn error_report(body: &[u8], header: Option<String>) -> ErrorReport {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(truncate)
    };
    let error_type = field("errorType")
        .or(header)
        .unwrap_or_else(|| "Unhandled".into());
    let message = match (field("errorMessage"), &json) {
        (Some(message), _) => message,
        (None, Some(serde_json::Value::Object(_))) => String::new(),
        (None, _) => truncate(&String::from_utf8_lossy(body)),
    };
    ErrorReport {
        error_type,
        message,
    }
}

/// `text`, cut to [`MAX_MESSAGE_CHARS`] characters.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}… (truncated)", &text[..end]),
        None => text.to_string(),
    }
}

/// Why a request body could not be read.
enum BodyError {
    /// Above [`MAX_PAYLOAD`].
    TooLarge,
    /// The connection failed while sending it.
    Unreadable(String),
}

/// Reads a whole request body, up to [`MAX_PAYLOAD`].
async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_PAYLOAD).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e.to_string())),
    }
}

/// An X-Ray trace header as Lambda sends it, not sampled:
/// `Root=1-{epoch seconds, 8 hex}-{24 hex};Parent={16 hex};Sampled=0`.
pub(super) fn trace_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let root: [u8; 12] = rand::random();
    let parent: [u8; 8] = rand::random();
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        seconds & 0xffff_ffff,
        hex(&root),
        hex(&parent)
    )
}

/// Lower-case hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 202 with Lambda's `{"status":"OK"}`.
fn accepted() -> Response<Body> {
    json_response(StatusCode::ACCEPTED, serde_json::json!({"status": "OK"}))
}

/// 400 `InvalidRequestID`, logged: an answer for an invocation the worker does not
/// hold (unknown, already answered, or timed out) is never applied.
fn invalid_request_id(request_id: &str, what: &str) -> Response<Body> {
    tracing::warn!(
        %request_id,
        "the worker posted an {what} for a request id it does not hold (unknown, already answered or timed out); ignored"
    );
    error_response(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "Invalid request ID",
    )
}

/// 413, as Lambda answers a response above 6 MB.
fn too_large() -> Response<Body> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!("Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."),
    )
}

/// 400 for a body the connection failed to deliver.
fn unreadable(what: &str, error: &str) -> Response<Body> {
    tracing::debug!(%what, %error, "cannot read a Runtime API request body");
    error_response(
        StatusCode::BAD_REQUEST,
        "TruncatedHTTPRequest",
        "HTTP request detected as truncated",
    )
}

/// 404 for a path the Runtime API does not have.
fn not_found(path: &str) -> Response<Body> {
    tracing::debug!(%path, "a worker asked for an unknown Runtime API path");
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{path} is not served here (esm serves the Runtime API 2018-06-01 only)"),
    )
}

/// The answer to a request the session refused.
fn refused_response(refused: Refused) -> Response<Body> {
    match refused {
        Refused::Ended => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.ExitError",
            "this worker is being stopped; exit",
        ),
        Refused::Busy => {
            tracing::warn!(
                "the worker asked for an invocation while it holds or awaits one; refused"
            );
            error_response(
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "an invocation is already outstanding or awaited by this runtime",
            )
        }
        Refused::InitDone => error_response(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "init already completed: this runtime has asked for an invocation",
        ),
    }
}

/// Lambda's error body, `{"errorMessage", "errorType"}`.
fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        serde_json::json!({"errorMessage": message, "errorType": error_type}),
    )
}

/// A JSON answer.
fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
