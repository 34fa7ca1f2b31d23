//! `esm replay`: take the on-failure records a mapping sent to its destination
//! (SPEC §5) and replay their batches.
//!
//! Why: an on-failure record in a queue names a batch only by shard and sequence
//! range, not by its records. Once the bug that failed the batch is fixed, someone
//! has to read those records back from the stream and hand them to the function
//! again — or save them somewhere — before the stream's retention drops them.
//! Lambda leaves that to everyone to script; `esm replay` does it with exactly the
//! event bytes the runner would have sent.
//!
//! For each on-failure record ([`inbox`]: an SQS queue, a body wrapped in an SNS
//! `Notification` envelope being unwrapped, a JSON-lines file, or the objects of an
//! S3 destination) it reads `KinesisBatchInfo`. An S3 object carries the records
//! themselves (`payload`, the event the function got), so they are replayed as
//! stored, even once the stream no longer holds them. Otherwise the batch is read
//! back from the stream with the runner's own polling reader ([`batch::fetch`]),
//! `AT_SEQUENCE_NUMBER` its first record until past its last; records the stream no
//! longer holds are reported on stderr by shard and sequence number and counted as
//! expired, never silently skipped. Then, by default, the mapping's function is
//! invoked once per batch (no retries: a batch that fails again, by the runner's
//! own judgement, is counted as failed and its message kept); with `--out` the
//! records are written as Kinesis event records, one per line. With `--delete` a
//! queue message is deleted only once its whole batch succeeded with nothing
//! expired.
//!
//! Replay shares the runner's adapters rather than copying them: the Kinesis
//! reader and client (`source`), the SQS and S3 clients (`destination`), the
//! invokers (`runner::app::resolve_invoker`), the outcome rules
//! (`core::failure::judge`) and the exit codes (`exit`).
//!
//! The summary counts batches (on-failure records), records replayed, batches
//! re-invoked (or written), batches failed, and records expired.

mod batch;
mod inbox;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{self, MappingConfig};
use crate::core::event::{EventEncoder, EventSource};
use crate::exit::{async_runtime, EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::invoke::Registry;
use crate::metrics::{MappingMetrics, Metrics};
use crate::runner::app::{self, Workers};
use crate::runner::MappingSpec;
use batch::{BatchInfo, Records, Sink};
use inbox::{Inbox, InboxError, Item};

/// Where the on-failure records come from.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    /// An SQS queue, by URL.
    Queue(String),
    /// A JSON-lines file, one on-failure record (or SNS envelope) per line.
    File(PathBuf),
    /// The objects under an S3 prefix (`s3://BUCKET/PREFIX`), as an S3 on-failure
    /// destination writes them.
    S3(String),
}

/// What `esm replay` was asked to do.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The config file.
    pub config: PathBuf,
    /// The mapping whose function (and stream) the records belong to.
    pub mapping: String,
    /// Where the on-failure records are.
    pub source: ReplaySource,
    /// Write the records here (JSON lines) instead of invoking the function.
    pub out: Option<PathBuf>,
    /// Delete a queue message once its batch succeeded with nothing expired.
    pub delete: bool,
    /// Read at most this many on-failure records.
    pub max_messages: Option<usize>,
}

/// The running totals for the summary.
#[derive(Default)]
struct Totals {
    batches: usize,
    records: usize,
    done: usize,
    failed: usize,
    expired: usize,
}

/// Runs `esm replay`; returns the exit code.
pub fn execute(options: ReplayOptions, registry: Registry) -> u8 {
    crate::logging::init();
    let cfg = match config::load(&options.config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            eprintln!("{problems}");
            return EXIT_BAD_CONFIG;
        }
    };
    let Some(mapping) = cfg.mappings.iter().find(|m| m.name == options.mapping) else {
        eprintln!(
            "no mapping named {:?} in {} (it has: {})",
            options.mapping,
            options.config.display(),
            cfg.mappings
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return EXIT_BAD_CONFIG;
    };
    if options.delete && !matches!(options.source, ReplaySource::Queue(_)) {
        eprintln!("--delete needs --queue-url");
        return EXIT_BAD_CONFIG;
    }
    let Some(runtime) = async_runtime() else {
        return EXIT_FAILURE;
    };
    runtime.block_on(replay(&options, mapping, &registry))
}

/// Everything after the config was read.
async fn replay(options: &ReplayOptions, mapping: &MappingConfig, registry: &Registry) -> u8 {
    let spec = match MappingSpec::from_config(mapping) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("mapping {}: filter_criteria: {e}", mapping.name);
            return EXIT_BAD_CONFIG;
        }
    };
    let inbox = match Inbox::open(&options.source, &spec.region).await {
        Ok(inbox) => inbox,
        Err(e) => {
            eprintln!("{e}");
            return match e {
                InboxError::BadArgument(_) => EXIT_BAD_CONFIG,
                InboxError::Read(_) => EXIT_FAILURE,
            };
        }
    };
    let mut workers = Workers::default();
    let mut sink = match &options.out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Sink::Out(std::io::BufWriter::new(file)),
            Err(e) => {
                eprintln!("cannot create {}: {e}", path.display());
                inbox.close().await;
                return EXIT_BAD_CONFIG;
            }
        },
        None => match app::resolve_invoker(mapping, &spec, registry, &mut workers) {
            Ok(invoker) => Sink::Invoke(invoker),
            Err(problem) => {
                eprintln!("{problem}");
                inbox.close().await;
                return EXIT_BAD_CONFIG;
            }
        },
    };
    let code = replay_with(options, &spec, inbox, &mut sink).await;
    workers.stop().await;
    code
}

/// A progress display on stderr when it is a terminal (a bar when the number of
/// records is known, else a counter), hidden otherwise.
fn progress(len: Option<usize>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len as u64),
            "{bar:40} {pos}/{len} batches {msg} [{elapsed}]",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} batches {msg} [{elapsed}]",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

async fn replay_with(
    options: &ReplayOptions,
    spec: &MappingSpec,
    mut inbox: Inbox,
    sink: &mut Sink,
) -> u8 {
    let limit = options.max_messages.unwrap_or(usize::MAX);
    let progress = progress(inbox.len().map(|n| n.min(limit)));
    let say = |msg: String| progress.suspend(|| eprintln!("{msg}"));
    let kinesis = crate::source::kinesis::client(&spec.region).await;
    let metrics = Arc::new(Metrics::new().mapping(&spec.name));
    let mut totals = Totals::default();
    let mut unread = false;
    while totals.batches < limit {
        let item = match inbox.next(limit - totals.batches).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => {
                say(e.to_string());
                unread = true;
                break;
            }
        };
        totals.batches += 1;
        let ok = replay_one(&item, spec, &kinesis, &metrics, sink, &mut totals, &say).await;
        if let Err(e) = inbox.settle(&item, ok, options.delete).await {
            say(e.to_string());
            totals.failed += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    inbox.close().await;
    if let Sink::Out(out) = sink {
        if let Err(e) = out.flush() {
            eprintln!("cannot write the --out file: {e}");
            totals.failed += 1;
        }
    }
    let verb = match sink {
        Sink::Invoke(_) => "re-invoked",
        Sink::Out(_) => "written",
    };
    println!(
        "replay: {} batches, {} records, {} {verb}, {} failed, {} expired",
        totals.batches, totals.records, totals.done, totals.failed, totals.expired
    );
    if matches!(sink, Sink::Invoke(_)) && totals.failed > 0 {
        eprintln!(
            "replay: failed batches were invoked once, without retries; their messages are kept"
        );
    }
    if totals.failed == 0 && totals.expired == 0 && !unread {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Replays one on-failure record; true if its whole batch succeeded with nothing
/// expired (so its message may be deleted).
async fn replay_one(
    item: &Item,
    spec: &MappingSpec,
    kinesis: &aws_sdk_kinesis::Client,
    metrics: &Arc<MappingMetrics>,
    sink: &mut Sink,
    totals: &mut Totals,
    say: &impl Fn(String),
) -> bool {
    let info = match item
        .record
        .as_ref()
        .map_err(Clone::clone)
        .and_then(BatchInfo::of)
    {
        Ok(info) => info,
        Err(e) => {
            say(format!("{}: not an on-failure record: {e}", item.label));
            totals.failed += 1;
            return false;
        }
    };
    if info.stream_arn != spec.stream_arn {
        say(format!(
            "{}: the batch is from {}, but mapping {} reads {}",
            item.label, info.stream_arn, spec.name, spec.stream_arn
        ));
        totals.failed += 1;
        return false;
    }
    let (records, expired) = match &item.payload {
        // The object kept the records: the stream is not read.
        Some(saved) => (Records::Saved(saved.clone()), 0),
        None => match batch::fetch(kinesis, spec, metrics, &info, say).await {
            Ok(fetched) => (Records::Read(fetched.records), fetched.expired),
            Err(e) => {
                say(format!("{}: cannot read {}: {e}", item.label, info.range()));
                totals.failed += 1;
                return false;
            }
        },
    };
    totals.records += records.len();
    totals.expired += expired;
    if records.len() == 0 {
        return false;
    }
    let encoder = EventEncoder::new(&EventSource {
        stream_arn: spec.stream_arn.clone(),
        region: spec.region.clone(),
        invoke_identity_arn: spec.invoke_identity_arn.clone(),
        shard_id: info.shard_id.clone(),
    });
    match sink.take(spec, &encoder, &records).await {
        Ok(()) => {
            totals.done += 1;
            expired == 0
        }
        Err(why) => {
            let again = match sink {
                Sink::Invoke(_) => " failed again",
                Sink::Out(_) => "",
            };
            say(format!("{}: {}{again}: {why}", item.label, info.range()));
            totals.failed += 1;
            false
        }
    }
}
