//! Handlers linked into the esm process, registered by name.
//!
//! A handler is the same `tower::Service<LambdaEvent<E>>` that `lambda_runtime` runs on
//! AWS Lambda. A handler of Lambda's Kinesis event type ([`KinesisEvent`], or a
//! [`KinesisWindowEvent`] registered with [`Registry::window_handler`]) gets its event
//! built straight from the records, and a response of a known type is read straight
//! from its value ([`typed`](super::typed)): the value equals what it would read from
//! Lambda's JSON, without the cost of writing and parsing it. A handler of any other
//! event type gets the JSON, serialized exactly as Lambda does and deserialized into
//! `E`, and its response goes back through JSON as it would on Lambda.
//!
//! Each invocation runs in its own task: a panic is reported as a crash, and an
//! invocation that passes its timeout is cancelled and reported as a timeout.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use handler_sdk::events::KinesisEvent;
use handler_sdk::window::KinesisWindowEvent;
use handler_sdk::{Context, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::{Service, ServiceExt as _};

use super::typed;
use super::{Invocation, Invoker, Outcome, Payload, Response};

/// A handler with its types erased: an event in, a response out.
type ErasedHandler =
    Arc<dyn Fn(Payload, Context) -> BoxFuture<'static, Result<Response, Diagnostic>> + Send + Sync>;

/// The in-process handlers of this binary, by the name a mapping's `function` uses.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, ErasedHandler>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `service` under `name` (replacing any handler of that name).
    ///
    /// `service` is cloned for each invocation, so shards run concurrently; handlers
    /// made with `service_fn` from a function or a closure over `Arc`s clone cheaply.
    /// When `E` is [`KinesisEvent`] the event is built without JSON; any other `E` is
    /// deserialized from the event's JSON.
    pub fn handler<S, E, R>(self, name: impl Into<String>, service: S) -> Self
    where
        S: Service<LambdaEvent<E>, Response = R> + Clone + Send + Sync + 'static,
        S::Future: Future<Output = Result<R, S::Error>> + Send + 'static,
        S::Error: Into<Diagnostic> + Send,
        E: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.register(name, service, |payload: &Payload| {
            let mut event: Option<E> = None;
            if let Payload::Batch(batch) = payload {
                typed::put_as::<E, KinesisEvent>(&mut event, || typed::kinesis_event(batch));
            }
            event.map(Ok)
        })
    }

    /// Registers a tumbling-window handler under `name`: one that takes a
    /// [`KinesisWindowEvent<St>`], with the window's state read into `St`. Its event is
    /// built without JSON (only the state is read from its JSON); registered with
    /// [`handler`](Self::handler) instead, it would get the same event through JSON.
    pub fn window_handler<S, St, R>(self, name: impl Into<String>, service: S) -> Self
    where
        S: Service<LambdaEvent<KinesisWindowEvent<St>>, Response = R>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Future<Output = Result<R, S::Error>> + Send + 'static,
        S::Error: Into<Diagnostic> + Send,
        St: DeserializeOwned + Default + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.register(name, service, |payload: &Payload| match payload {
            Payload::Batch(batch) => typed::window_event::<St>(batch),
            Payload::Json(_) => None,
        })
    }

    /// Registers `service`, whose events come from `typed_event` when it can build one
    /// (`None`: read the event's JSON instead).
    fn register<S, E, R>(
        mut self,
        name: impl Into<String>,
        service: S,
        typed_event: fn(&Payload) -> Option<Result<E, serde_json::Error>>,
    ) -> Self
    where
        S: Service<LambdaEvent<E>, Response = R> + Clone + Send + Sync + 'static,
        S::Future: Future<Output = Result<R, S::Error>> + Send + 'static,
        S::Error: Into<Diagnostic> + Send,
        E: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        let erased: ErasedHandler = Arc::new(move |payload: Payload, context: Context| {
            let service = service.clone();
            async move {
                let event = match typed_event(&payload) {
                    Some(event) => event,
                    None => serde_json::from_slice::<E>(&payload.to_json()),
                }
                .map_err(|e| Diagnostic {
                    error_type: "Runtime.DeserializeError".into(),
                    error_message: e.to_string(),
                })?;
                drop(payload);
                let response = service
                    .oneshot(LambdaEvent::new(event, context))
                    .await
                    .map_err(Into::into)?;
                let mut slot = Some(response);
                if let Some(response) = typed::response(&mut slot) {
                    return Ok(response);
                }
                // `Some(response)` serializes exactly as `response`.
                serde_json::to_vec(&slot)
                    .map(|body| Response::Body(body.into()))
                    .map_err(|e| Diagnostic {
                        error_type: "Runtime.SerializeError".into(),
                        error_message: e.to_string(),
                    })
            }
            .boxed()
        });
        self.handlers.insert(name.into(), erased);
        self
    }

    /// Whether a handler of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// An invoker for the handler registered under `name`.
    pub fn invoker(&self, name: &str) -> Option<InProcessInvoker> {
        self.handlers.get(name).map(|handler| InProcessInvoker {
            handler: handler.clone(),
        })
    }
}

/// Invokes one registered handler.
#[derive(Clone)]
pub struct InProcessInvoker {
    handler: ErasedHandler,
}

impl Invoker for InProcessInvoker {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'static, Outcome> {
        let handler = self.handler.clone();
        async move {
            let mut context = Context::default();
            context.request_id = invocation.request_id;
            context.deadline = invocation
                .deadline
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            context.invoked_function_arn = invocation.function_arn;
            let mut task = tokio::spawn(handler(invocation.payload, context));
            match tokio::time::timeout(invocation.timeout, &mut task).await {
                Ok(Ok(Ok(response))) => Outcome::Returned { response },
                Ok(Ok(Err(diagnostic))) => Outcome::FunctionError {
                    error_type: diagnostic.error_type,
                    message: diagnostic.error_message,
                },
                Ok(Err(join_error)) => Outcome::Crash {
                    reason: if join_error.is_panic() {
                        "the handler panicked".into()
                    } else {
                        format!("the handler task ended: {join_error}")
                    },
                },
                Err(_elapsed) => {
                    task.abort();
                    Outcome::Timeout
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handler_sdk::events::KinesisEvent;
    use handler_sdk::{service_fn, Error};
    use std::time::{Duration, SystemTime};

    fn invocation(timeout: Duration) -> Invocation {
        Invocation {
            payload: Payload::Json(bytes::Bytes::from_static(br#"{"Records":[]}"#)),
            request_id: "req-1".into(),
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
            timeout,
            deadline: SystemTime::now() + timeout,
        }
    }

    #[tokio::test]
    async fn tells_every_ending_apart() {
        async fn ok(e: LambdaEvent<KinesisEvent>) -> Result<serde_json::Value, Error> {
            Ok(serde_json::json!({"n": e.payload.records.len(), "id": e.context.request_id}))
        }
        async fn fails(_: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
            Err("boom".into())
        }
        async fn panics(_: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
            panic!("handler bug")
        }
        async fn hangs(_: LambdaEvent<KinesisEvent>) -> Result<(), Error> {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        let registry = Registry::new()
            .handler("ok", service_fn(ok))
            .handler("fails", service_fn(fails))
            .handler("panics", service_fn(panics))
            .handler("hangs", service_fn(hangs));
        assert_eq!(registry.names(), ["fails", "hangs", "ok", "panics"]);
        let run = |name: &str, timeout| registry.invoker(name).unwrap().invoke(invocation(timeout));

        match run("ok", Duration::from_secs(5)).await {
            Outcome::Returned { response } => {
                assert_eq!(response, Response::from(r#"{"id":"req-1","n":0}"#))
            }
            other => panic!("{other:?}"),
        }
        match run("fails", Duration::from_secs(5)).await {
            Outcome::FunctionError { message, .. } => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run("panics", Duration::from_secs(5)).await,
            Outcome::Crash { .. }
        ));
        assert_eq!(
            run("hangs", Duration::from_millis(50)).await,
            Outcome::Timeout
        );
        assert!(registry.invoker("missing").is_none());
    }
}
