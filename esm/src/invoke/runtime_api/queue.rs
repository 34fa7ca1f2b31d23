//! The hand-over of invocations to idle workers.
//!
//! An invocation waits here until a worker's `GET /next` takes it or its caller
//! withdraws it (no worker within the acceptance bound). Both happen under the one
//! mutex of the queue, so an invocation is taken by exactly one worker or withdrawn,
//! never both: that is what makes "accepted, or reported as not invoked" race-free.
//!
//! Idle workers wait on a [`Notify`]: a push wakes one of them; a worker that wakes
//! and cannot take the job (its process ended meanwhile) passes the wake-up on, and
//! tokio forwards the wake-up of a waiter that is dropped before it runs. The queue
//! holds at most one invocation per lane of each shard runner (each lane has one
//! batch in flight), and [`MAX_WAITING`] bounds it regardless.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::futures::Notified;
use tokio::sync::{oneshot, Notify};

use super::lock;
use crate::invoke::{Invocation, Outcome};

/// The most invocations that may wait for a worker at once.
pub(super) const MAX_WAITING: usize = 10_000;

/// An invocation waiting for a worker, with the way back to its caller.
pub(super) struct Job {
    /// Identifies the job for [`Queue::withdraw`].
    id: u64,
    /// What to send the worker.
    pub invocation: Invocation,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Outcome>,
}

/// Invocations waiting for an idle worker, oldest first.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Notify,
    next_id: AtomicU64,
}

impl Queue {
    /// Adds an invocation and wakes an idle worker; returns the job's id, or `None`
    /// when [`MAX_WAITING`] invocations already wait.
    pub fn push(&self, invocation: Invocation, reply: oneshot::Sender<Outcome>) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut jobs = lock(&self.jobs);
            if jobs.len() >= MAX_WAITING {
                return None;
            }
            jobs.push_back(Job {
                id,
                invocation,
                reply,
            });
        }
        self.ready.notify_one();
        Some(id)
    }

    /// Takes job `id` back if no worker has taken it yet; returns whether it did.
    pub fn withdraw(&self, id: u64) -> bool {
        let mut jobs = lock(&self.jobs);
        match jobs.iter().position(|job| job.id == id) {
            Some(at) => jobs.remove(at).is_some(),
            None => false,
        }
    }

    /// Takes the oldest job, waking another idle worker if more remain.
    pub fn pop(&self) -> Option<Job> {
        let (job, more) = {
            let mut jobs = lock(&self.jobs);
            (jobs.pop_front(), !jobs.is_empty())
        };
        if more {
            self.ready.notify_one();
        }
        job
    }

    /// Wakes another idle worker if jobs wait: for a worker that was woken but
    /// leaves without taking one.
    pub fn pass_on(&self) {
        if !lock(&self.jobs).is_empty() {
            self.ready.notify_one();
        }
    }

    /// A future that completes when a job may be waiting. Enable it (or poll it)
    /// before looking at the queue, so that no push is missed in between.
    pub fn ready(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// How many jobs wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }
}
