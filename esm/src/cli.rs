//! The `esm` command line (SPEC §1), shared by the `esm` binary and by any binary
//! that embeds esm to register in-process handlers.
//!
//! ```no_run
//! use handler_sdk::{events::KinesisEvent, service_fn, Error, LambdaEvent};
//!
//! async fn handle(_event: LambdaEvent<KinesisEvent>) -> Result<(), Error> { Ok(()) }
//!
//! fn main() -> std::process::ExitCode {
//!     esm::cli::main(esm::Registry::new().handler("orders", service_fn(handle)))
//! }
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::invoke::Registry;
use crate::runner::app::{self, RunError};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad arguments or config.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// A self-hosted, Lambda-compatible event source mapping for Amazon Kinesis.
#[derive(Debug, Parser)]
#[command(name = "esm", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every enabled mapping in the config until SIGINT/SIGTERM.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file: exit 0 with a summary, or 2 with one line per problem.
    Validate {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Parses the process arguments and runs the command with `registry`'s handlers.
pub fn main(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_BAD_CONFIG
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(execute(cli, registry))
}

/// Runs a parsed command; returns the exit code.
pub fn execute(cli: Cli, registry: Registry) -> u8 {
    match cli.command {
        Command::Validate { config } => validate(&config, &registry),
        Command::Run { config } => run(&config, registry),
    }
}

fn validate(path: &std::path::Path, registry: &Registry) -> u8 {
    match config::load(path) {
        Ok(cfg) => {
            let problems = app::check_functions(&cfg, registry);
            if problems.is_empty() {
                println!("{}", cfg.summary());
                EXIT_OK
            } else {
                for p in problems {
                    println!("{p}");
                }
                EXIT_BAD_CONFIG
            }
        }
        Err(problems) => {
            println!("{problems}");
            EXIT_BAD_CONFIG
        }
    }
}

fn run(path: &std::path::Path, registry: Registry) -> u8 {
    crate::logging::init();
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(problems) => {
            eprintln!("{problems}");
            return EXIT_BAD_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match app::run(cfg, registry, shutdown).await {
            Ok(()) => EXIT_OK,
            Err(RunError::Config { problems }) => {
                for p in problems {
                    eprintln!("{p}");
                }
                EXIT_BAD_CONFIG
            }
            Err(e) => {
                tracing::error!(error = %e, "esm stopped");
                EXIT_FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops esm");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
