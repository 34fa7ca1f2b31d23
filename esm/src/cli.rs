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

pub use crate::exit::{EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};

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
    /// Replay the batches of on-failure records: re-invoke the mapping's function
    /// with them, or (with --out) write their records as JSON lines.
    Replay(ReplayArgs),
    /// Show each mapping's shards: state, lease owner, checkpoint, iterator age. It
    /// asks the running esm's /status when [server] is set, else reads the store
    /// (which a running esm holds); exit 1 when neither can be read.
    Status {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show or move a mapping's checkpoints while esm is stopped: rewind or skip
    /// without recreating the mapping.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Check a config file: exit 0 with a summary, or 2 with one line per problem.
    Validate {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `esm checkpoint show|set`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// List the mapping's shards with their checkpoints and where the next run reads.
    Show {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The mapping.
        #[arg(long)]
        mapping: String,
        /// Only this shard.
        #[arg(long)]
        shard: Option<String>,
    },
    /// Move one shard (--shard) or all of them; the next `esm run` reads from there.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["sequence", "at_timestamp", "trim_horizon", "latest"])))]
    Set {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The mapping.
        #[arg(long)]
        mapping: String,
        /// Only this shard (default: every shard of the mapping).
        #[arg(long)]
        shard: Option<String>,
        /// SEQ itself is the next record read (as AT_SEQUENCE_NUMBER): the records
        /// before it are skipped, SEQ and those after it are handled.
        #[arg(long, value_name = "SEQ")]
        sequence: Option<String>,
        /// The first record read is the first that arrived at or after this time
        /// (RFC 3339, e.g. 2026-11-22T10:00:00Z).
        #[arg(long, value_name = "RFC3339")]
        at_timestamp: Option<String>,
        /// Read from the oldest record in the shard.
        #[arg(long)]
        trim_horizon: bool,
        /// Skip every record already in the shard: read only those put after now.
        #[arg(long)]
        latest: bool,
    },
}

/// The arguments of `esm replay`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["queue_url", "file", "s3_uri"])))]
pub struct ReplayArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The mapping whose batches these are.
    #[arg(long)]
    pub mapping: String,
    /// Read the on-failure records from this SQS queue.
    #[arg(long)]
    pub queue_url: Option<String>,
    /// Read the on-failure records from this JSON-lines file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Read the on-failure objects under this S3 prefix (s3://BUCKET/PREFIX); they
    /// carry their records, so the stream is not read.
    #[arg(long)]
    pub s3_uri: Option<String>,
    /// Write the records as Kinesis event records (JSON lines) instead of invoking.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Delete a queue message once its whole batch succeeded.
    #[arg(long)]
    pub delete: bool,
    /// Read at most this many on-failure records.
    #[arg(long)]
    pub max_messages: Option<usize>,
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
        Command::Replay(args) => replay(args, registry),
        Command::Status { config } => status(&config),
        Command::Checkpoint(command) => checkpoint(command),
    }
}

fn replay(args: ReplayArgs, registry: Registry) -> u8 {
    let source = match (args.queue_url, args.file, args.s3_uri) {
        (Some(url), None, None) => crate::replay::ReplaySource::Queue(url),
        (None, Some(file), None) => crate::replay::ReplaySource::File(file),
        (None, None, Some(uri)) => crate::replay::ReplaySource::S3(uri),
        _ => {
            eprintln!("give exactly one of --queue-url, --file, --s3-uri");
            return EXIT_BAD_CONFIG;
        }
    };
    crate::replay::execute(
        crate::replay::ReplayOptions {
            config: args.config,
            mapping: args.mapping,
            source,
            out: args.out,
            delete: args.delete,
            max_messages: args.max_messages,
        },
        registry,
    )
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

fn status(path: &std::path::Path) -> u8 {
    let (cfg, runtime) = match config_and_runtime(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match runtime.block_on(crate::status::query::query(&cfg)) {
        Ok((report, source)) => {
            match source {
                crate::status::query::Source::Server(url) => {
                    println!("from the running esm at {url}")
                }
                crate::status::query::Source::Store(path) => {
                    println!("from the checkpoint store at {path} (no esm is running with it)")
                }
                crate::status::query::Source::Table(table) => {
                    println!("from the lease table: {table}")
                }
            }
            print!("{}", crate::status::query::table(&report));
            EXIT_OK
        }
        Err(e) => {
            eprintln!("esm status: {e}");
            EXIT_FAILURE
        }
    }
}

fn checkpoint(command: CheckpointCommand) -> u8 {
    use crate::checkpoint_tool;
    use crate::core::checkpoint::MoveTo;
    let (config_path, mapping, shard) = match &command {
        CheckpointCommand::Show {
            config,
            mapping,
            shard,
        }
        | CheckpointCommand::Set {
            config,
            mapping,
            shard,
            ..
        } => (config, mapping, shard.as_deref()),
    };
    let to = match &command {
        CheckpointCommand::Show { .. } => None,
        CheckpointCommand::Set {
            sequence,
            at_timestamp,
            trim_horizon,
            latest,
            ..
        } => Some(match (sequence, at_timestamp, trim_horizon, latest) {
            (Some(seq), ..) => match crate::core::record::SequenceNumber::parse(seq.as_str()) {
                Some(seq) => MoveTo::Sequence(seq),
                None => {
                    eprintln!("--sequence: {seq:?} is not a sequence number (digits only)");
                    return EXIT_BAD_CONFIG;
                }
            },
            (None, Some(at), ..) => match chrono::DateTime::parse_from_rfc3339(at) {
                Ok(at) => MoveTo::Timestamp(at.with_timezone(&chrono::Utc)),
                Err(e) => {
                    eprintln!("--at-timestamp: {at:?} is not an RFC 3339 time ({e})");
                    return EXIT_BAD_CONFIG;
                }
            },
            (None, None, true, _) => MoveTo::TrimHorizon,
            _ => MoveTo::Latest,
        }),
    };
    let (cfg, runtime) = match config_and_runtime(config_path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let done = runtime.block_on(async {
        match &to {
            None => checkpoint_tool::show(&cfg, mapping, shard).await,
            Some(to) => checkpoint_tool::set(&cfg, mapping, shard, to).await,
        }
    });
    match done {
        Ok(table) => {
            print!("{table}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("esm checkpoint: {e}");
            e.exit_code()
        }
    }
}

/// Loads the config at `path` and starts the async runtime; when either fails, says
/// why on stderr and returns the exit code.
fn config_and_runtime(
    path: &std::path::Path,
) -> Result<(config::Config, tokio::runtime::Runtime), u8> {
    let cfg = config::load(path).map_err(|problems| {
        eprintln!("{problems}");
        EXIT_BAD_CONFIG
    })?;
    let runtime = crate::exit::async_runtime().ok_or(EXIT_FAILURE)?;
    Ok((cfg, runtime))
}

fn run(path: &std::path::Path, registry: Registry) -> u8 {
    crate::logging::init();
    let (cfg, runtime) = match config_and_runtime(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
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
