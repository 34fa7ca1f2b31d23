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

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::core::failure::Outcome;
pub use in_process::Registry;
pub use runtime_api::{RuntimeApiInvoker, WorkerSettings};

/// One invocation request.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The event, serialized exactly as Lambda does.
    pub payload: Bytes,
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
