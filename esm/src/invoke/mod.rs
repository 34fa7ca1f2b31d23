//! Invoking the function: hand it an event, get an [`Outcome`] back.
//!
//! The [`Invoker`] trait is the seam between the shard runner and the ways a function
//! can run: linked into the process ([`in_process`]), or as worker processes
//! speaking the Lambda Runtime API ([`runtime_api`]). Every invoker receives the same
//! event bytes Lambda would send and reports the same four kinds of ending (a
//! response, a function error, a timeout, a crash) or says the batch could not be
//! invoked at all.

pub mod in_process;
pub mod runtime_api;
pub mod typed;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::core::event::BatchEvent;
pub use crate::core::failure::Outcome;
pub use crate::core::response::Response;
pub use in_process::Registry;
pub use runtime_api::{RuntimeApiInvoker, WorkerSettings};

/// An invocation's event.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A batch of records, written as Lambda's JSON only by an invoker that needs the
    /// bytes ([`Payload::to_json`]); an in-process handler of Lambda's event type gets
    /// a value built from the records instead.
    Batch(BatchEvent),
    /// An event already written (a payload kept by an S3 on-failure destination, and
    /// replayed exactly as stored).
    Json(Bytes),
}

impl Payload {
    /// The event's JSON, exactly as Lambda sends it (written now for a batch).
    pub fn to_json(&self) -> Bytes {
        match self {
            Self::Batch(event) => event.to_json(),
            Self::Json(bytes) => bytes.clone(),
        }
    }

    /// The exact size of the event's JSON.
    pub fn len(&self) -> usize {
        match self {
            Self::Batch(event) => event.len(),
            Self::Json(bytes) => bytes.len(),
        }
    }

    /// Whether the event's JSON is empty (never, for an event esm writes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::Json(bytes)
    }
}

/// One invocation request.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The event.
    pub payload: Payload,
    /// A fresh request id (a UUID), as `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
    pub function_arn: String,
    /// How long the function may take.
    pub timeout: Duration,
    /// When it must have answered (`Lambda-Runtime-Deadline-Ms`).
    pub deadline: SystemTime,
}

/// Something that runs the function.
pub trait Invoker: Send + Sync + 'static {
    /// Runs one invocation to its end. Never panics; every failure is an [`Outcome`].
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'static, Outcome>;
}
