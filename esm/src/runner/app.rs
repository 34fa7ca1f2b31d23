//! The process: open the store, start every enabled mapping (and the worker
//! processes of those that run a command), stop on a signal: mappings first, so
//! that in-flight invocations finish, then the workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::MemoryBudget;
use super::{mapping, MappingContext, MappingSpec};
use crate::config::{Config, FunctionConfig, MappingConfig, Problem, StoreConfig};
use crate::core::lease::LeaseRules;
use crate::invoke::{Invoker, Registry, RuntimeApiInvoker, WorkerSettings};
use crate::metrics::Metrics;
use crate::server::{Observed, Server, ServerError};
use crate::source::consumer::ensure_consumer;
use crate::status::StatusBoard;
use crate::store::dynamodb::DynamoStore;
use crate::store::local::LocalStore;
use crate::store::{CheckpointStore, StoreError};

/// Why `esm run` could not start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config names something this binary cannot run (exit code 2).
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config {
        /// One line each.
        problems: Vec<Problem>,
    },
    /// The checkpoint store cannot be opened or written (exit code 1).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The observability server cannot listen (exit code 1).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A mapping failed for good (exit code 1).
    #[error("mapping {mapping}: {reason}")]
    Mapping {
        /// The mapping.
        mapping: String,
        /// Why.
        reason: String,
    },
}

/// How long `run` waits for a `consumer_name` consumer to become ACTIVE.
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The problems `run` would hit resolving each mapping's function in this binary:
/// an in-process handler that is not registered, a command whose program does not
/// exist. `esm validate` reports them too.
pub fn check_functions(config: &Config, registry: &Registry) -> Vec<Problem> {
    config
        .mappings
        .iter()
        .filter_map(|m| check_function(m, registry).err())
        .collect()
}

/// Checks that `m`'s function can be resolved, without starting anything.
fn check_function(m: &MappingConfig, registry: &Registry) -> Result<(), Problem> {
    match &m.function {
        FunctionConfig::InProcess { name, .. } if registry.contains(name) => Ok(()),
        FunctionConfig::InProcess { name, .. } => Err(Problem {
            path: format!("mapping[{}].function", m.name),
            message: if registry.names().is_empty() {
                format!(
                    "no in-process handler named {name:?}: this binary has none (link your handler with the esm library and register it, see the README)"
                )
            } else {
                format!(
                    "no in-process handler named {name:?} in this binary (it has: {})",
                    registry.names().join(", ")
                )
            },
        }),
        FunctionConfig::Command { command, .. } => match command.first() {
            Some(program) => find_program(program).map(|_| ()),
            None => Err("must not be empty".to_string()),
        }
        .map_err(|message| Problem {
            path: format!("mapping[{}].function.command", m.name),
            message,
        }),
    }
}

/// Where `program` is, as the worker processes will run it: a path with a `/`
/// as given (relative to esm's working directory), else the first match on `PATH`.
fn find_program(program: &str) -> Result<PathBuf, String> {
    let is_executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|meta| {
            #[cfg(unix)]
            let runnable =
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
            #[cfg(not(unix))]
            let runnable = true;
            meta.is_file() && runnable
        })
    };
    if program.contains('/') {
        let path = Path::new(program);
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else if path.exists() {
            Err(format!("{program:?} is not an executable file"))
        } else {
            Err(format!("{program:?} not found"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
        .ok_or_else(|| format!("{program:?} not found on PATH"))
}

/// The worker pools `run` started, and the token that stops them.
#[derive(Default)]
pub(crate) struct Workers {
    shutdown: CancellationToken,
    pools: Vec<RuntimeApiInvoker>,
}

impl Workers {
    /// Terminates every worker process and waits until all are gone.
    pub(crate) async fn stop(self) {
        if self.pools.is_empty() {
            return;
        }
        tracing::info!("stopping Runtime API workers");
        self.shutdown.cancel();
        for pool in &self.pools {
            pool.stopped().await;
        }
    }
}

/// The invoker for `m`'s function: its registered in-process handler, or a pool of
/// worker processes, started here and recorded in `workers` to be stopped with them.
pub(crate) fn resolve_invoker(
    m: &MappingConfig,
    spec: &MappingSpec,
    registry: &Registry,
    workers: &mut Workers,
) -> Result<Arc<dyn Invoker>, Problem> {
    check_function(m, registry)?;
    match &m.function {
        FunctionConfig::InProcess { name, .. } => match registry.invoker(name) {
            Some(invoker) => Ok(Arc::new(invoker)),
            None => Err(Problem {
                path: format!("mapping[{}].function", m.name),
                message: format!("no in-process handler named {name:?}"),
            }),
        },
        FunctionConfig::Command {
            command,
            concurrency,
            timeout,
            memory_size,
            handler,
            environment,
        } => {
            let settings = WorkerSettings {
                mapping: m.name.clone(),
                // The last part of `arn:…:function:NAME`.
                function_name: spec
                    .function_arn
                    .rsplit(':')
                    .next()
                    .unwrap_or(&m.name)
                    .to_string(),
                region: spec.region.clone(),
                command: command.clone(),
                concurrency: *concurrency,
                timeout: *timeout,
                memory_size: *memory_size,
                handler: handler.clone(),
                environment: environment.clone(),
                task_root: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
                accept_timeout: WorkerSettings::accept_timeout_for(*timeout),
            };
            let pool = RuntimeApiInvoker::start(settings, workers.shutdown.child_token());
            workers.pools.push(pool.clone());
            Ok(Arc::new(pool))
        }
    }
}

/// Opens the configured store, with the lease rules its keepers follow.
pub async fn open_store(
    config: &Config,
) -> Result<(Arc<dyn CheckpointStore>, LeaseRules), StoreError> {
    Ok(match &config.store {
        StoreConfig::Local {
            path,
            commit_interval,
        } => (
            Arc::new(LocalStore::open_with(path, *commit_interval)?),
            LeaseRules::DEFAULT,
        ),
        StoreConfig::DynamoDb {
            table,
            create_table,
            region,
            lease,
        } => {
            let region = crate::store::dynamodb::table_region(config, region.as_deref());
            let store = DynamoStore::open(table, &region, *create_table).await?;
            tracing::info!(table = %table, region = %region, lease_duration = ?lease.duration, "lease store: DynamoDB");
            (Arc::new(store), *lease)
        }
    })
}

/// Runs every enabled mapping until `shutdown` fires, then stops them within
/// `shutdown_timeout_seconds`.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let problems = check_functions(&config, &registry);
    if !problems.is_empty() {
        return Err(RunError::Config { problems });
    }
    let (store, lease_rules) = open_store(&config).await?;
    let instance = super::leases::instance_id();
    tracing::info!(instance = %instance, "this instance's name in the lease table");

    let metrics = Metrics::new();
    let board = StatusBoard::new();
    // The server comes first: liveness answers during start-up, and /readyz says why
    // the instance is not ready yet.
    let server = match &config.server {
        Some(server) => Some(
            Server::start(
                server.listen,
                Observed {
                    metrics: metrics.clone(),
                    board: board.clone(),
                },
            )
            .await?,
        ),
        None => None,
    };
    let mut mappings = JoinSet::new();
    let mapping_cancel = CancellationToken::new();
    let budget = MemoryBudget::new(config.max_buffered_bytes);
    let mut workers = Workers::default();
    for m in config.mappings.iter().filter(|m| m.enabled) {
        let spec = match MappingSpec::from_config(m) {
            Ok(spec) => spec,
            Err(e) => {
                mapping_cancel.cancel();
                mappings.abort_all();
                workers.stop().await;
                return Err(RunError::Config {
                    problems: vec![Problem::new(
                        format!("mapping[{}].filter_criteria", m.name),
                        e.to_string(),
                    )],
                });
            }
        };
        let invoker = match resolve_invoker(m, &spec, &registry, &mut workers) {
            Ok(invoker) => invoker,
            Err(problem) => {
                mapping_cancel.cancel();
                mappings.abort_all();
                workers.stop().await;
                return Err(RunError::Config {
                    problems: vec![problem],
                });
            }
        };
        let client = crate::source::kinesis::client(&spec.region).await;
        let mut spec = spec;
        if let Some(name) = &m.consumer_name {
            // esm's extension: register (or reuse) the consumer, then read through it.
            match ensure_consumer(&client, &spec.stream_arn, name, CONSUMER_WAIT).await {
                Ok(arn) => spec.consumer_arn = Some(arn),
                Err(e) => {
                    mapping_cancel.cancel();
                    mappings.abort_all();
                    workers.stop().await;
                    return Err(RunError::Mapping {
                        mapping: m.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let destination = match &m.on_failure_destination {
            Some(arn) => Some(
                crate::destination::connect(arn, &m.name, &spec.region)
                    .await
                    .map_err(|e| RunError::Config {
                        problems: vec![Problem {
                            path: format!(
                                "mapping[{}].destination_config.on_failure.destination",
                                m.name
                            ),
                            message: e.to_string(),
                        }],
                    })?,
            ),
            None => None,
        };
        let ctx = Arc::new(MappingContext {
            spec,
            invoker,
            store: store.clone(),
            metrics: Arc::new(metrics.mapping(&m.name)),
            board: board.mapping(&m.name),
            client,
            destination,
            budget: budget.clone(),
            instance: instance.clone(),
            lease_rules,
        });
        let token = mapping_cancel.child_token();
        let name = m.name.clone();
        mappings.spawn(async move { (name, mapping::run(ctx, token).await) });
    }
    if mappings.is_empty() {
        tracing::warn!("no enabled mapping; nothing to do");
    }

    let mut failure = None;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(joined) = mappings.join_next() => {
            // A mapping only returns early on a store failure.
            failure = Some(match joined {
                Ok((mapping, result)) => RunError::Mapping { mapping, reason: result.err().map(|e| e.to_string()).unwrap_or_else(|| "stopped".into()) },
                Err(e) => RunError::Mapping { mapping: "?".into(), reason: e.to_string() },
            });
        }
    }
    tracing::info!(timeout = ?config.shutdown_timeout, "stopping: finishing in-flight invocations");
    mapping_cancel.cancel();
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while mappings.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown timeout passed; abandoning in-flight invocations (their records will be read again)");
        mappings.abort_all();
        while mappings.join_next().await.is_some() {}
    }
    // Only now, with no invocation left in flight, do the worker processes go.
    workers.stop().await;
    if let Some(server) = server {
        server.stop().await;
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(function: &str) -> Config {
        let text = format!(
            "[[mapping]]\nname = \"orders\"\n\
             event_source_arn = \"arn:aws:kinesis:us-east-1:000000000000:stream/orders\"\n\
             starting_position = \"TRIM_HORIZON\"\n{function}\n"
        );
        match crate::config::parse(&text) {
            Ok(config) => config,
            Err(problems) => panic!("{problems}"),
        }
    }

    fn problems(function: &str) -> Vec<String> {
        check_functions(&config(function), &Registry::new())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_commands_program_must_exist() {
        assert_eq!(
            problems("[mapping.function]\ncommand = [\"./nope\"]"),
            ["mapping[orders].function.command: \"./nope\" not found"]
        );
        assert_eq!(
            problems("[mapping.function]\ncommand = [\"no-such-program-esm-test\"]"),
            ["mapping[orders].function.command: \"no-such-program-esm-test\" not found on PATH"]
        );
        assert!(problems("[mapping.function]\ncommand = [\"sh\", \"-c\", \"exit 0\"]").is_empty());
        let dir = tempfile::tempdir().expect("a temp dir");
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "").expect("a file");
        let command = format!(
            "[mapping.function]\ncommand = [{:?}]",
            plain.display().to_string()
        );
        assert_eq!(
            problems(&command),
            [format!(
                "mapping[orders].function.command: {:?} is not an executable file",
                plain.display().to_string()
            )]
        );
    }

    #[test]
    fn an_in_process_handler_must_be_registered() {
        assert_eq!(
            problems("function = \"echo\""),
            ["mapping[orders].function: no in-process handler named \"echo\": this binary has none (link your handler with the esm library and register it, see the README)"]
        );
    }
}
