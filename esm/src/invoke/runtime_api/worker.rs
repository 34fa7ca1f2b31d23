//! Worker processes: start one, watch it, end it, start the next.
//!
//! Each of a pool's `concurrency` workers is a supervisor task that runs one process
//! at a time, each with a fresh [`Session`] on a fresh 127.0.0.1 port, in a loop:
//!
//! 1. bind `127.0.0.1:0`, serve the Runtime API there, start the command with
//!    Lambda's environment (`AWS_LAMBDA_RUNTIME_API` pointing at that port);
//! 2. watch it: the process exiting, the deadline of the invocation it holds, an
//!    init error, esm shutting down;
//! 3. end it: the session ends (the invocation it held, if any, ends as a crash,
//!    or already ended as a timeout), the process and its process group are
//!    killed if still there, and the output is drained;
//! 4. wait out a backoff if processes keep failing, then go back to 1.
//!
//! Why a process group: the worker may start processes of its own (a shell
//! wrapper, a language runtime's helpers). Each worker leads its own group, and
//! ending a worker signals the whole group, as Lambda tears down a whole execution
//! environment; it also keeps a terminal's Ctrl-C (sent to esm's group) from killing
//! workers in the middle of the invocations esm is letting finish.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tracing::Instrument as _;

use super::session::Session;
use super::{output, server, Pool};
use crate::core::backoff::Backoff;

/// The wait before restarting a worker that failed quickly, doubling per failure.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

/// A worker that served invocations for this long before it ended is restarted at
/// once and its failure count starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long a worker may take to exit after its init error before it is killed.
const INIT_ERROR_GRACE: Duration = Duration::from_secs(1);

/// How long a worker may take to exit after SIGTERM at shutdown before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How one worker process ended.
enum End {
    /// It could not be started (no port, no such program, …).
    CannotStart(String),
    /// It exited by itself.
    Exited(String),
    /// It reported an init error, then exited or was killed.
    InitFailed(String),
    /// It held the request with this id past its timeout and was killed.
    TimedOut(String),
    /// esm is shutting down.
    Stopped,
}

/// Runs worker number `worker` of `pool` until the pool shuts down.
pub(super) async fn supervise(pool: Arc<Pool>, worker: usize) {
    let mut failures: u32 = 0;
    while !pool.shutdown.is_cancelled() {
        let started = Instant::now();
        let session = Arc::new(Session::new(worker));
        let end = run(&pool, &session).await;
        let ready = session.is_ready();
        let stable = ready && started.elapsed() >= STABLE_AFTER;
        failures = if stable {
            0
        } else {
            failures.saturating_add(1)
        };
        let delay = match failures {
            0 => Duration::ZERO,
            n => RESTART_BACKOFF.delay(n - 1, rand::random()),
        };
        // What NotInvoked reasons will quote until a worker is ready again.
        let problem = match &end {
            End::Stopped => break,
            End::CannotStart(reason) => {
                tracing::error!(%reason, ?delay, "cannot start the worker; retrying after the delay");
                Some(reason.clone())
            }
            End::InitFailed(status) => {
                tracing::error!(%status, ?delay, "worker ended after its init error; restarting after the delay");
                // The init error itself is the problem (recorded in server.rs).
                None
            }
            End::Exited(status) if !ready => {
                tracing::error!(%status, ?delay, "worker exited before asking for an invocation (init failure); restarting after the delay");
                Some(format!(
                    "worker {worker} exited with {status} before asking for an invocation"
                ))
            }
            End::Exited(status) => {
                tracing::warn!(%status, ?delay, "worker exited; restarting");
                Some(format!("worker {worker} exited with {status}"))
            }
            End::TimedOut(request_id) => {
                tracing::warn!(%request_id, timeout = ?pool.settings.timeout, ?delay, "worker passed its timeout and was killed; restarting");
                None
            }
        };
        if let Some(problem) = problem {
            pool.set_problem(problem);
        }
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = pool.shutdown.cancelled() => break,
            }
        }
    }
    tracing::debug!("worker stopped");
}

/// Runs one worker process with `session`, start to end.
async fn run(pool: &Arc<Pool>, session: &Arc<Session>) -> End {
    let worker = session.worker;
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(listener) => listener,
        Err(e) => return End::CannotStart(format!("cannot listen on 127.0.0.1: {e}")),
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => return End::CannotStart(format!("cannot read the listener's address: {e}")),
    };
    pool.tasks
        .spawn(server::serve(listener, session.clone(), pool.clone()).in_current_span());
    let mut process = match Process::start(pool, address) {
        Ok(process) => process,
        Err(e) => {
            session.end("the worker could not be started");
            return End::CannotStart(format!("cannot start {:?}: {e}", pool.settings.command[0]));
        }
    };
    let mapping = &pool.settings.mapping;
    if let Some(stdout) = process.child.stdout.take() {
        pool.tasks
            .spawn(output::forward(stdout, mapping.clone(), worker, "stdout"));
    }
    if let Some(stderr) = process.child.stderr.take() {
        pool.tasks
            .spawn(output::forward(stderr, mapping.clone(), worker, "stderr"));
    }
    tracing::debug!(%address, pid = process.child.id(), "worker started");
    pool.set_address(worker, Some(address));

    let end = watch(pool, session, &mut process).await;

    pool.set_address(worker, None);
    if let End::Stopped = end {
        // SIGTERM first: a runtime waiting in `GET /next` then exits quietly
        // instead of reporting a dropped connection.
        process.terminate().await;
    }
    let reason = match &end {
        End::Exited(status) => format!("worker {worker} exited with {status}"),
        End::Stopped => format!("worker {worker} was stopped: esm is shutting down"),
        _ => format!("worker {worker} ended"),
    };
    if let Some(request_id) = session.end(&reason) {
        tracing::warn!(%request_id, %reason, "the worker ended while it held an invocation");
    }
    // Reaps it, and ends whatever it left running in its process group.
    process.kill().await;
    end
}

/// Watches a running worker until it ends; see [`End`].
async fn watch(pool: &Pool, session: &Session, process: &mut Process) -> End {
    loop {
        if session.init_error().is_some() {
            let status = match tokio::time::timeout(INIT_ERROR_GRACE, process.child.wait()).await {
                Ok(status) => describe(status),
                Err(_) => {
                    process.kill().await;
                    format!("no exit within {INIT_ERROR_GRACE:?}; killed")
                }
            };
            return End::InitFailed(status);
        }
        let deadline = session.deadline();
        let until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = process.child.wait() => return End::Exited(describe(status)),
            () = until_deadline => {
                if let Some(request_id) = session.time_out(Instant::now()) {
                    process.kill().await;
                    return End::TimedOut(request_id);
                }
            }
            () = session.changed() => {}
            () = pool.shutdown.cancelled() => return End::Stopped,
        }
    }
}

/// An exit status for logs: `exit status: 3`, `signal: 9 (SIGKILL)`.
fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("an unknown status (waiting for it failed: {e})"),
    }
}

/// A running worker process, leader of its own process group.
struct Process {
    child: Child,
    /// The process group (the leader's pid), to signal the worker's own children.
    #[cfg(unix)]
    group: Option<rustix::process::Pid>,
}

impl Process {
    /// Starts the pool's command for a Runtime API at `address`.
    fn start(pool: &Pool, address: SocketAddr) -> std::io::Result<Self> {
        let settings = &pool.settings;
        let mut command = Command::new(&settings.command[0]);
        command
            .args(&settings.command[1..])
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &settings.function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                settings.memory_size.to_string(),
            )
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", settings.function_name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name())
            .env("AWS_REGION", &settings.region)
            .env("AWS_DEFAULT_REGION", &settings.region)
            .env("_HANDLER", &settings.handler)
            .env("LAMBDA_TASK_ROOT", &settings.task_root)
            .env("TZ", ":UTC")
            .envs(&settings.environment)
            .current_dir(&settings.task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let child = command.spawn()?;
        Ok(Self {
            #[cfg(unix)]
            group: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
            child,
        })
    }

    /// Kills the worker and its process group at once, and reaps it.
    async fn kill(&mut self) {
        self.signal_group_kill();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Its children may outlive it in the group: end them too.
        self.signal_group_kill();
    }

    /// Asks the worker's process group to exit (SIGTERM) and waits up to
    /// [`SHUTDOWN_GRACE`] for the worker; [`Process::kill`] ends what is left.
    async fn terminate(&mut self) {
        #[cfg(unix)]
        if let Some(group) = self.group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            if tokio::time::timeout(SHUTDOWN_GRACE, self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "worker did not exit after SIGTERM; killing it");
            }
        }
    }

    /// SIGKILL to the worker's process group (best effort).
    fn signal_group_kill(&self) {
        #[cfg(unix)]
        if let Some(group) = self.group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Process {
    /// If esm drops a worker without ending it (its runtime shutting down), the
    /// whole group is killed; `kill_on_drop` covers the leader on other platforms.
    fn drop(&mut self) {
        if self.child.id().is_some() {
            self.signal_group_kill();
        }
    }
}

/// A Lambda-style log stream name: `YYYY/MM/DD/[$LATEST]` and 32 hex digits.
fn log_stream_name() -> String {
    format!(
        "{}/[$LATEST]{}",
        chrono::Utc::now().format("%Y/%m/%d"),
        uuid::Uuid::new_v4().simple()
    )
}
