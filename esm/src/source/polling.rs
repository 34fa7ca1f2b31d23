//! The shared-throughput reader: GetShardIterator, then GetRecords in a paced loop.
//!
//! One reader per shard. It keeps its own place (the last sequence number it read), so
//! when an iterator expires (after five minutes, e.g. while a slow batch held the
//! shard paused reading) it gets a fresh one right after that record: nothing is skipped and
//! nothing read twice. Throttled calls back off with jitter and are counted; other
//! passing errors are retried the same way; a missing stream or denied access ends
//! the reader with a [`SourceError`]. A closed shard is read to its end, and the last
//! page names its children. The runner calls [`ShardSource::wait_turn`] (the call
//! budget and backoff) and then [`ShardSource::read`], one page at a time.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::Client;
use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::kinesis::describe;
use super::{Page, ReadFrom, ReadOutcome, ShardSource, SourceError};
use crate::core::pacing::{CallResult, PollPacer};
use crate::core::record::SequenceNumber;
use crate::metrics::MappingMetrics;

/// The most records one GetRecords call may return.
pub const MAX_GET_RECORDS_LIMIT: i32 = 10_000;

/// What a polling reader needs to know.
#[derive(Clone, Debug)]
pub struct PollingConfig {
    /// The stream's ARN.
    pub stream_arn: String,
    /// The shard to read.
    pub shard_id: String,
    /// Where to start.
    pub from: ReadFrom,
    /// The per-shard GetRecords call budget.
    pub calls_per_second: f64,
    /// `Limit` for each GetRecords call.
    pub limit: i32,
}

/// Reads one shard with GetRecords.
pub struct PollingReader {
    client: Client,
    config: PollingConfig,
    pacer: PollPacer,
    /// The last sequence number handed out; a fresh iterator starts after it.
    last_read: Option<SequenceNumber>,
    iterator: Option<String>,
    /// The shard's end was read: no more reads.
    ended: bool,
    metrics: Arc<MappingMetrics>,
}

impl PollingReader {
    /// A reader of `config.shard_id`, from `config.from`.
    pub fn new(client: Client, config: PollingConfig, metrics: Arc<MappingMetrics>) -> Self {
        Self {
            client,
            pacer: PollPacer::new(config.calls_per_second),
            last_read: None,
            iterator: None,
            ended: false,
            config,
            metrics,
        }
    }
}

impl ShardSource for PollingReader {
    fn wait_turn(&mut self) -> BoxFuture<'_, ()> {
        super::wait_until(self.pacer.next_call_at())
    }

    fn read(&mut self) -> BoxFuture<'_, ReadOutcome> {
        async move {
            if self.ended {
                return ReadOutcome::Stop(SourceError::Fatal(format!(
                    "{} was read to its end",
                    self.config.shard_id
                )));
            }
            let started = Instant::now();
            let iterator = match self.iterator.take() {
                Some(it) => it,
                None => match self.fresh_iterator().await {
                    Ok(it) => it,
                    Err(Retry(result)) => {
                        self.pacer.record(started, result, rand::random());
                        return ReadOutcome::Retry;
                    }
                    Err(Stop(e)) => return ReadOutcome::Stop(e),
                },
            };
            match self.get_records(iterator, started).await {
                Ok(page) => {
                    self.ended = page.end.is_some();
                    ReadOutcome::Page(page)
                }
                Err(Retry(result)) => {
                    self.pacer.record(started, result, rand::random());
                    ReadOutcome::Retry
                }
                Err(Stop(e)) => ReadOutcome::Stop(e),
            }
        }
        .boxed()
    }
}

impl PollingReader {
    async fn fresh_iterator(&mut self) -> Result<String, Failure> {
        let request = super::iterator_from(
            self.client
                .get_shard_iterator()
                .stream_arn(&self.config.stream_arn)
                .shard_id(&self.config.shard_id),
            self.last_read.as_ref(),
            &self.config.from,
        );
        match request.send().await {
            Ok(out) => match out.shard_iterator {
                Some(it) => Ok(it),
                None => Err(Stop(SourceError::Fatal(format!(
                    "GetShardIterator on {} returned no iterator",
                    self.config.shard_id
                )))),
            },
            Err(e) => {
                let text = describe(&e);
                Err(match e.as_service_error() {
                    Some(s) if s.is_resource_not_found_exception() => {
                        Stop(SourceError::NotFound(text))
                    }
                    Some(s)
                        if s.is_access_denied_exception() || s.is_invalid_argument_exception() =>
                    {
                        Stop(SourceError::Fatal(text))
                    }
                    Some(s) if s.is_provisioned_throughput_exceeded_exception() => {
                        tracing::debug!(error = %text, "GetShardIterator throttled");
                        Retry(CallResult::Throttled)
                    }
                    _ => {
                        tracing::warn!(error = %text, "GetShardIterator failed; retrying");
                        Retry(CallResult::Failed)
                    }
                })
            }
        }
    }

    async fn get_records(&mut self, iterator: String, started: Instant) -> Result<Page, Failure> {
        let issued_at = chrono::Utc::now();
        let result = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(self.config.limit)
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let text = describe(&e);
                let counters = &self.metrics.get_records;
                return Err(match e.as_service_error() {
                    Some(s) if s.is_expired_iterator_exception() => {
                        counters.expired_iterator.inc();
                        tracing::info!("shard iterator expired; getting a fresh one after the last record read");
                        // Not the shard's fault: ask again at the budget's pace.
                        Retry(CallResult::Read { behind: true })
                    }
                    Some(s)
                        if s.is_provisioned_throughput_exceeded_exception()
                            || s.is_kms_throttling_exception()
                            || s.code() == Some("LimitExceededException") =>
                    {
                        counters.throttled.inc();
                        tracing::debug!(error = %text, "GetRecords throttled; backing off");
                        Retry(CallResult::Throttled)
                    }
                    Some(s) if s.is_resource_not_found_exception() => {
                        counters.error.inc();
                        Stop(SourceError::NotFound(text))
                    }
                    Some(s)
                        if s.is_access_denied_exception() || s.is_kms_access_denied_exception() =>
                    {
                        counters.error.inc();
                        Stop(SourceError::Fatal(text))
                    }
                    _ => {
                        counters.error.inc();
                        tracing::warn!(error = %text, "GetRecords failed; retrying with backoff");
                        Retry(CallResult::Failed)
                    }
                });
            }
        };
        self.metrics.get_records.ok.inc();
        let records = super::convert_records(out.records, "GetRecords");
        if let Some(last) = records.last() {
            self.last_read = Some(last.sequence().clone());
        }
        let behind = out.millis_behind_latest.is_some_and(|m| m > 0)
            || records.len() >= usize::try_from(self.config.limit).unwrap_or(usize::MAX);
        tracing::trace!(records = records.len(), millis_behind_latest = ?out.millis_behind_latest, behind, "GetRecords");
        self.pacer
            .record(started, CallResult::Read { behind }, rand::random());
        let end = match out.next_shard_iterator {
            Some(next) => {
                self.iterator = Some(next);
                None
            }
            None => Some(
                out.child_shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.shard_id)
                    .collect(),
            ),
        };
        Ok(Page {
            records,
            millis_behind_latest: out.millis_behind_latest,
            end,
            issued_at: Some(issued_at),
        })
    }
}

/// What a failed call means for the loop.
enum Failure {
    /// Try again when the pacer says so.
    Retry(CallResult),
    /// The reader cannot go on.
    Stop(SourceError),
}
use Failure::{Retry, Stop};
