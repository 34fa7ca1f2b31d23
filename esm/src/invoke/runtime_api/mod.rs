//! Functions as worker processes speaking the Lambda Runtime API.
//!
//! A mapping with `[mapping.function] command = [...]` runs its function the way
//! Lambda runs a custom runtime: esm starts `concurrency` copies of the command, each
//! with Lambda's environment and `AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API
//! server of its own on 127.0.0.1, and each worker pulls invocations with
//! `GET /next` and answers with `POST …/response` or `…/error`. So any program built
//! for Lambda (a `lambda_runtime` binary, Python's `awslambdaric`, …) runs unmodified.
//!
//! How the pieces fit:
//! - [`RuntimeApiInvoker`] is the [`Invoker`] the shard runners call. An invocation
//!   goes into a queue shared by the workers (`queue.rs`); whichever is idle takes
//!   it. If none does within the acceptance bound (max(timeout, 10 s)), the caller
//!   withdraws it and the outcome is [`Outcome::NotInvoked`]: the batch is retried
//!   later and no retry is consumed, as when Lambda throttles.
//! - `session.rs`: one worker process's state, the invocation it holds and its
//!   deadline, with every change under one lock, so each invocation ends exactly
//!   once.
//! - `server.rs`: the HTTP endpoints (hyper, HTTP/1.1), one listener per process.
//! - `worker.rs`: one supervisor task per worker, starting, watching, killing and
//!   restarting processes, with backoff when they keep failing.
//! - `output.rs`: worker stdout/stderr into esm's log.
//!
//! A worker never holds two invocations: it gets the next one only by asking for it,
//! after it answered the last. Shutdown is the caller's [`CancellationToken`]: once
//! it fires, no invocation is accepted, each worker gets SIGTERM (then SIGKILL after
//! a grace period), and [`RuntimeApiInvoker::stopped`] returns when every process
//! has been reaped and every server closed.

mod output;
mod queue;
mod server;
mod session;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{Invocation, Invoker, Outcome};
use queue::Queue;

/// The shortest time an invocation waits for an idle worker.
pub const MIN_ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pool of worker processes runs, and how.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// The mapping's name, for logs.
    pub mapping: String,
    /// `AWS_LAMBDA_FUNCTION_NAME` (and the log group's name).
    pub function_name: String,
    /// `AWS_REGION` and `AWS_DEFAULT_REGION`: the stream's region.
    pub region: String,
    /// The program and its arguments; not empty.
    pub command: Vec<String>,
    /// How many worker processes run.
    pub concurrency: u32,
    /// The function's timeout (each invocation carries its own; this one is for
    /// logs and the acceptance bound).
    pub timeout: Duration,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB (reported only).
    pub memory_size: u32,
    /// `_HANDLER`.
    pub handler: String,
    /// Added to each worker's environment (after esm's own and Lambda's).
    pub environment: BTreeMap<String, String>,
    /// The workers' working directory, also `LAMBDA_TASK_ROOT`.
    pub task_root: PathBuf,
    /// How long an invocation waits for an idle worker before it is reported as not
    /// invoked; esm uses [`WorkerSettings::accept_timeout_for`].
    pub accept_timeout: Duration,
}

impl WorkerSettings {
    /// The acceptance bound for a function with `timeout`: max(timeout, 10 s), so
    /// that a busy worker can finish its invocation and take the next.
    pub fn accept_timeout_for(timeout: Duration) -> Duration {
        timeout.max(MIN_ACCEPT_TIMEOUT)
    }
}

/// Invokes a function run by a pool of worker processes over the Runtime API.
///
/// Cheap to clone; every clone talks to the same pool.
#[derive(Clone)]
pub struct RuntimeApiInvoker {
    pool: Arc<Pool>,
}

impl RuntimeApiInvoker {
    /// Starts the pool's workers; they run until `shutdown` is cancelled. Needs a
    /// tokio runtime. Workers that cannot start are retried with backoff and logged;
    /// until one is ready, invocations end as [`Outcome::NotInvoked`].
    pub fn start(settings: WorkerSettings, shutdown: CancellationToken) -> Self {
        let concurrency = settings.concurrency.max(1) as usize;
        let pool = Arc::new(Pool {
            queue: Queue::default(),
            shutdown,
            tasks: TaskTracker::new(),
            last_problem: Mutex::new(None),
            addresses: Mutex::new(vec![None; concurrency]),
            settings,
        });
        tracing::info!(
            mapping = %pool.settings.mapping,
            command = ?pool.settings.command,
            concurrency,
            "starting Runtime API workers"
        );
        for worker in 0..concurrency {
            let span = tracing::info_span!("worker", mapping = %pool.settings.mapping, worker);
            pool.tasks
                .spawn(worker::supervise(pool.clone(), worker).instrument(span));
        }
        pool.tasks.close();
        Self { pool }
    }

    /// Returns once the pool was shut down and every worker process has been reaped.
    pub async fn stopped(&self) {
        self.pool.tasks.wait().await;
    }

    /// The Runtime API address of each worker whose process is running now.
    pub fn runtime_api_addresses(&self) -> Vec<SocketAddr> {
        lock(&self.pool.addresses)
            .iter()
            .flatten()
            .copied()
            .collect()
    }
}

impl Invoker for RuntimeApiInvoker {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'static, Outcome> {
        self.pool.clone().invoke(invocation).boxed()
    }
}

/// What the invoker, the supervisors and the servers of one pool share.
struct Pool {
    settings: WorkerSettings,
    /// Invocations waiting for an idle worker.
    queue: Queue,
    /// Cancelled when esm shuts down.
    shutdown: CancellationToken,
    /// Every task of the pool: supervisors, servers, connections, output readers.
    tasks: TaskTracker,
    /// The latest reason a worker failed, for [`Outcome::NotInvoked`]'s reason;
    /// cleared when a worker becomes ready.
    last_problem: Mutex<Option<String>>,
    /// Each worker's current Runtime API address.
    addresses: Mutex<Vec<Option<SocketAddr>>>,
}

impl Pool {
    /// Hands `invocation` to an idle worker and waits for its outcome.
    async fn invoke(self: Arc<Self>, invocation: Invocation) -> Outcome {
        if self.shutdown.is_cancelled() {
            return not_invoked("the worker pool is stopping");
        }
        let request_id = invocation.request_id.clone();
        let (reply, outcome) = oneshot::channel();
        let Some(job) = self.queue.push(invocation, reply) else {
            return not_invoked("too many invocations are waiting for a worker");
        };
        tokio::pin!(outcome);
        let accept = self.settings.accept_timeout;
        let stopping = tokio::select! {
            result = &mut outcome => return settle(result),
            () = tokio::time::sleep(accept) => false,
            () = self.shutdown.cancelled() => true,
        };
        if self.queue.withdraw(job) {
            let reason = if stopping {
                "the worker pool is stopping".to_string()
            } else {
                self.no_worker_reason()
            };
            tracing::debug!(%request_id, %reason, "invocation withdrawn");
            return not_invoked(&reason);
        }
        // A worker took it just now: its outcome follows.
        settle(outcome.await)
    }

    /// Why no worker took an invocation in time.
    fn no_worker_reason(&self) -> String {
        let mut reason = format!(
            "no idle worker within {:?} ({} worker{})",
            self.settings.accept_timeout,
            self.settings.concurrency,
            if self.settings.concurrency == 1 {
                ""
            } else {
                "s"
            }
        );
        if let Some(problem) = lock(&self.last_problem).as_ref() {
            reason.push_str("; last worker problem: ");
            reason.push_str(problem);
        }
        reason
    }

    /// Records the latest worker failure.
    fn set_problem(&self, problem: String) {
        *lock(&self.last_problem) = Some(problem);
    }

    /// Forgets the latest worker failure (a worker became ready).
    fn clear_problem(&self) {
        *lock(&self.last_problem) = None;
    }

    /// Records worker `worker`'s current Runtime API address.
    fn set_address(&self, worker: usize, address: Option<SocketAddr>) {
        if let Some(slot) = lock(&self.addresses).get_mut(worker) {
            *slot = address;
        }
    }
}

/// The outcome a worker's session sent, or a crash if the session vanished without
/// sending one (it always sends one; this is a safety net).
fn settle(result: Result<Outcome, oneshot::error::RecvError>) -> Outcome {
    result.unwrap_or_else(|_| Outcome::Crash {
        reason: "the worker pool stopped before the invocation ended".into(),
    })
}

/// [`Outcome::NotInvoked`] for `reason`.
fn not_invoked(reason: &str) -> Outcome {
    Outcome::NotInvoked {
        reason: reason.to_string(),
    }
}

/// Locks `mutex`, also after a panic elsewhere poisoned it: every critical section
/// here leaves the data consistent, so the data is still good.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
