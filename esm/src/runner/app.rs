//! The process: open the store, start every enabled mapping, stop on a signal.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{mapping, MappingContext, MappingSpec};
use crate::config::{Config, FunctionConfig, MappingConfig, Problem, StoreConfig};
use crate::invoke::{Invoker, Registry};
use crate::metrics::MappingMetrics;
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
    /// A mapping failed for good (exit code 1).
    #[error("mapping {mapping}: {reason}")]
    Mapping {
        /// The mapping.
        mapping: String,
        /// Why.
        reason: String,
    },
}

/// The problems `run` would hit resolving each enabled mapping's function in this
/// binary. `esm validate` reports them too.
pub fn check_functions(config: &Config, registry: &Registry) -> Vec<Problem> {
    config
        .mappings
        .iter()
        .filter_map(|m| resolve_invoker(m, registry).err())
        .collect()
}

fn resolve_invoker(m: &MappingConfig, registry: &Registry) -> Result<Arc<dyn Invoker>, Problem> {
    match &m.function {
        FunctionConfig::InProcess { name, .. } => match registry.invoker(name) {
            Some(invoker) => Ok(Arc::new(invoker)),
            None => Err(Problem {
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
        },
        FunctionConfig::Command { .. } => Err(Problem {
            path: format!("mapping[{}].function.command", m.name),
            message: "not supported yet: Runtime API worker processes".into(),
        }),
    }
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
    let store: Arc<dyn CheckpointStore> = match &config.store {
        StoreConfig::Local { path } => Arc::new(LocalStore::open(path)?),
        StoreConfig::DynamoDb { .. } => {
            return Err(RunError::Config {
                problems: vec![Problem {
                    path: "store.kind".into(),
                    message: "not supported yet: dynamodb".into(),
                }],
            })
        }
    };

    let mut mappings = JoinSet::new();
    let mapping_cancel = CancellationToken::new();
    for m in config.mappings.iter().filter(|m| m.enabled) {
        let invoker =
            resolve_invoker(m, &registry).map_err(|p| RunError::Config { problems: vec![p] })?;
        let spec = MappingSpec::from_config(m);
        let client = crate::source::kinesis::client(&spec.region).await;
        let ctx = Arc::new(MappingContext {
            spec,
            invoker,
            store: store.clone(),
            metrics: Arc::new(MappingMetrics::default()),
            client,
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
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
