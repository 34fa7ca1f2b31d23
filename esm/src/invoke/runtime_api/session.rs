//! One worker process's session with the Runtime API: from its start to its end.
//!
//! Each worker process gets a listener of its own, so every request that reaches a
//! session comes from that process, and a new process (after a crash, a timeout or
//! an init error) gets a new session on a new port: a late request of a dead
//! process can never touch its successor's invocation.
//!
//! The session is shared by two sides. The HTTP server (`server.rs`) asks it for
//! the next invocation and hands it the worker's answers; the supervisor
//! (`worker.rs`) watches the deadline and the process, and ends the session. Every
//! change to the invocation a worker holds happens under one mutex, so each
//! invocation gets exactly one outcome: the worker's answer, a timeout, or a crash,
//! whichever comes first. A later answer for the same request id is refused.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::lock;
use super::queue::Queue;
use crate::invoke::Outcome;

/// What a worker's error body (`POST …/error`, `POST /init/error`) said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ErrorReport {
    /// `errorType`, e.g. `Runtime.ImportModuleError`.
    pub error_type: String,
    /// `errorMessage`, or the body as text when it is not Lambda's JSON.
    pub message: String,
}

/// An invocation handed to the worker by `GET /next`.
#[derive(Debug)]
pub(super) struct Assigned {
    /// The event.
    pub payload: Bytes,
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// `Lambda-Runtime-Deadline-Ms`: the timeout runs from now, as on Lambda,
    /// where the time an invocation waits for a free environment does not count.
    pub deadline: SystemTime,
}

/// Why the session refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The session has ended (the process exited or is being stopped).
    Ended,
    /// `GET /next` while the worker holds an invocation or already waits for one.
    Busy,
    /// `POST /init/error` after the worker asked for an invocation.
    InitDone,
}

/// The invocation a worker holds.
struct Current {
    request_id: String,
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct State {
    /// The worker has asked for an invocation at least once: its init is done.
    ready: bool,
    /// A `GET /next` of this worker is waiting.
    polling: bool,
    /// The invocation it holds.
    current: Option<Current>,
    /// What its `POST /init/error` said.
    init_error: Option<ErrorReport>,
}

/// One worker process's session.
pub(super) struct Session {
    /// The worker's number in its pool (0-based), for logs.
    pub worker: usize,
    state: Mutex<State>,
    /// Wakes the supervisor: an invocation was taken or answered, or an init error
    /// arrived.
    changed: Notify,
    /// Cancelled when the session ends: stops its server and a waiting `GET /next`.
    ended: CancellationToken,
}

impl Session {
    /// A session for worker number `worker`.
    pub fn new(worker: usize) -> Self {
        Self {
            worker,
            state: Mutex::default(),
            changed: Notify::new(),
            ended: CancellationToken::new(),
        }
    }

    /// Records that the worker asked for an invocation; true the first time (its
    /// init is done).
    pub fn mark_ready(&self) -> bool {
        let mut state = lock(&self.state);
        !std::mem::replace(&mut state.ready, true)
    }

    /// Waits for an invocation from `queue` and hands it to the worker (`GET /next`).
    pub async fn next(&self, queue: &Queue) -> Result<Assigned, Refused> {
        {
            let mut state = lock(&self.state);
            if self.ended.is_cancelled() {
                return Err(Refused::Ended);
            }
            if state.current.is_some() || state.polling {
                return Err(Refused::Busy);
            }
            state.polling = true;
        }
        let _polling = PollingGuard(self);
        loop {
            let ready = queue.ready();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if self.ended.is_cancelled() {
                    queue.pass_on();
                    return Err(Refused::Ended);
                }
                if let Some(job) = queue.pop() {
                    let now = SystemTime::now();
                    let timeout = job.invocation.timeout;
                    state.current = Some(Current {
                        request_id: job.invocation.request_id.clone(),
                        deadline: Instant::now() + timeout,
                        reply: job.reply,
                    });
                    self.changed.notify_one();
                    return Ok(Assigned {
                        payload: job.invocation.payload.to_json(),
                        request_id: job.invocation.request_id,
                        function_arn: job.invocation.function_arn,
                        deadline: now + timeout,
                    });
                }
            }
            tokio::select! {
                () = &mut ready => {}
                () = self.ended.cancelled() => return Err(Refused::Ended),
            }
        }
    }

    /// Ends the invocation `request_id` with `outcome` if the worker holds it;
    /// false for an unknown or stale request id (answered, timed out).
    pub fn complete(&self, request_id: &str, outcome: Outcome) -> bool {
        let current = {
            let mut state = lock(&self.state);
            match &state.current {
                Some(c) if c.request_id == request_id => state.current.take(),
                _ => None,
            }
        };
        match current {
            Some(current) => {
                let _ = current.reply.send(outcome);
                self.changed.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether the worker holds the invocation `request_id`.
    pub fn holds(&self, request_id: &str) -> bool {
        lock(&self.state)
            .current
            .as_ref()
            .is_some_and(|c| c.request_id == request_id)
    }

    /// Records the worker's init error; refused once its init is done.
    pub fn report_init_error(&self, error: ErrorReport) -> Result<(), Refused> {
        {
            let mut state = lock(&self.state);
            if state.ready {
                return Err(Refused::InitDone);
            }
            state.init_error = Some(error);
        }
        self.changed.notify_one();
        Ok(())
    }

    /// The init error the worker reported, if any.
    pub fn init_error(&self) -> Option<ErrorReport> {
        lock(&self.state).init_error.clone()
    }

    /// Whether the worker ever asked for an invocation.
    pub fn is_ready(&self) -> bool {
        lock(&self.state).ready
    }

    /// When the invocation the worker holds times out.
    pub fn deadline(&self) -> Option<Instant> {
        lock(&self.state).current.as_ref().map(|c| c.deadline)
    }

    /// Ends the invocation the worker holds with [`Outcome::Timeout`] if its
    /// deadline has passed; returns its request id.
    pub fn time_out(&self, now: Instant) -> Option<String> {
        let current = {
            let mut state = lock(&self.state);
            match &state.current {
                Some(c) if c.deadline <= now => state.current.take(),
                _ => None,
            }
        };
        current.map(|current| {
            let _ = current.reply.send(Outcome::Timeout);
            current.request_id
        })
    }

    /// Waits until the server changes something the supervisor watches (an
    /// invocation taken or answered, an init error); a change made while the
    /// supervisor was not waiting is not missed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Ends the session: its server stops, a waiting `GET /next` returns, later
    /// requests are refused, and the invocation the worker held (if any) ends as a
    /// crash for `reason`. Returns that invocation's request id.
    pub fn end(&self, reason: &str) -> Option<String> {
        let current = {
            let mut state = lock(&self.state);
            self.ended.cancel();
            state.current.take()
        };
        current.map(|current| {
            let _ = current.reply.send(Outcome::Crash {
                reason: reason.to_string(),
            });
            current.request_id
        })
    }

    /// Cancelled when the session ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }
}

/// Clears the "a `GET /next` waits" mark when that request ends, however it ends.
struct PollingGuard<'a>(&'a Session);

impl Drop for PollingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).polling = false;
    }
}
