//! The enhanced fan-out reader: SubscribeToShard, the records pushed to a consumer.
//!
//! When a mapping's `event_source_arn` names a stream consumer, each shard is read
//! through a subscription instead of GetRecords: Kinesis pushes the records (about
//! 70 ms after they are written, each consumer with its own 2 MB/s per shard). It
//! feeds the shard state machine the same [`Page`]s as the polling reader, so every
//! rule downstream (batching, lanes, windows, filtering, failures, checkpoints) is
//! unchanged. What is particular to a subscription, all here:
//!
//! - **Where it resumes.** Every event carries a `ContinuationSequenceNumber`. A
//!   subscription ends after 5 minutes (or sooner: an error, a dropped connection, a
//!   `resubscribe_after` shorter than that), and the next one starts
//!   `AFTER_SEQUENCE_NUMBER` the last continuation, so nothing is skipped and nothing
//!   read twice. Only one subscription to a shard is ever open: the old one is
//!   dropped before the next is made, and a `ResourceInUseException` (the service
//!   still holds the previous one) is waited out with backoff.
//! - **Backpressure.** Events are pulled one at a time, only when the shard state
//!   machine asks for a page; while it does not, the connection's flow control holds
//!   the service back.
//! - **Recoveries** (a dropped connection, `ResourceInUseException`, throttling, any
//!   passing error) back off with jitter and resubscribe. Each resubscription is
//!   counted in `esm_fanout_resubscriptions_total` by reason: `expired` (a renewal),
//!   `connection`, `in_use`, `throttled`, `error`.
//! - **The end of a closed shard.** Kinesis names the children in the last event
//!   (`ChildShards`). Not every implementation does, so when a subscription is idle
//!   (an event with no records and nothing behind) the reader also checks the way the
//!   polling reader reads an end, at most every [`END_CHECK_INTERVAL`]: a GetRecords
//!   after the last continuation that returns no next iterator means the shard is
//!   closed and fully read, and names its children. Records that check returns are
//!   handed out like any others. A shard is never taken as ended by a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
use aws_sdk_kinesis::Client;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::kinesis::describe;
use super::{Page, ReadFrom, ReadOutcome, ShardSource, SourceError};
use crate::core::backoff::Backoff;
use crate::core::record::{Record, SequenceNumber};
use crate::metrics::MappingMetrics;

/// How often an idle subscription checks, with one GetRecords, whether its shard is
/// closed and fully read.
pub const END_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Kinesis ends a subscription after this long.
pub const SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(300);

/// The backoff between failed subscription attempts: 200 ms doubling to 10 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// An event is taken as issued this long before it arrived: the service builds it
/// from what the shard held a little earlier (the emulator pushes once a second).
const EVENT_AGE: Duration = Duration::from_secs(1);

/// What a fan-out reader needs to know.
#[derive(Clone, Debug)]
pub struct FanOutConfig {
    /// The stream's ARN (for the end-of-shard check).
    pub stream_arn: String,
    /// The consumer's ARN.
    pub consumer_arn: String,
    /// The shard to read.
    pub shard_id: String,
    /// Where to start.
    pub from: ReadFrom,
    /// Renew the subscription after this long (at most Kinesis's 5 minutes).
    pub resubscribe_after: Duration,
}

type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
>;

/// An open subscription.
struct Subscription {
    events: Events,
    opened: Instant,
}

/// Reads one shard with SubscribeToShard.
pub struct FanOutReader {
    client: Client,
    config: FanOutConfig,
    subscription: Option<Subscription>,
    /// Where the next subscription starts after: the last continuation sequence
    /// number (or the last record handed out by an end check).
    continuation: Option<SequenceNumber>,
    /// Why the next subscription is made (`None` for the first).
    resubscribe: Option<Resubscribe>,
    /// Failed attempts in a row, and when the next may be made.
    failures: u32,
    retry_at: Option<Instant>,
    /// When the end of the shard was last checked.
    end_checked: Option<Instant>,
    ended: bool,
    metrics: Arc<MappingMetrics>,
}

/// Why a shard subscribes again (the `reason` of `esm_fanout_resubscriptions_total`).
#[derive(Clone, Copy, Debug)]
enum Resubscribe {
    Expired,
    Connection,
    InUse,
    Throttled,
    Error,
}

/// What one step of reading produced.
enum Step {
    Page(Page),
    Retry,
    Stop(SourceError),
}

impl FanOutReader {
    /// A reader of `config.shard_id` through `config.consumer_arn`, from `config.from`.
    pub fn new(client: Client, config: FanOutConfig, metrics: Arc<MappingMetrics>) -> Self {
        Self {
            client,
            config,
            subscription: None,
            continuation: None,
            resubscribe: None,
            failures: 0,
            retry_at: None,
            end_checked: None,
            ended: false,
            metrics,
        }
    }

    /// Ends the subscription; the next one is made for `why`.
    fn end_subscription(&mut self, why: Resubscribe) {
        self.subscription = None;
        self.resubscribe = Some(why);
    }

    /// Backs off after a failure: the next attempt waits, and it counts as a recovery.
    fn failed(&mut self, why: Resubscribe, what: &str, error: &str) -> Step {
        self.end_subscription(why);
        let delay = RETRY.delay(self.failures, rand::random());
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + delay);
        tracing::warn!(shard = %self.config.shard_id, %error, ?delay, "{what}; subscribing again after a backoff");
        Step::Retry
    }

    /// Where a new subscription starts.
    fn starting_position(&self) -> Result<StartingPosition, SourceError> {
        let builder = StartingPosition::builder();
        let builder = match (&self.continuation, &self.config.from) {
            (Some(seq), _) | (None, ReadFrom::AfterSequence(seq)) => builder
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq.as_str()),
            (None, ReadFrom::AtSequence(seq)) => builder
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq.as_str()),
            (None, ReadFrom::TrimHorizon) => builder.r#type(ShardIteratorType::TrimHorizon),
            (None, ReadFrom::Latest) => builder.r#type(ShardIteratorType::Latest),
            (None, ReadFrom::AtTimestamp(t)) => {
                builder.r#type(ShardIteratorType::AtTimestamp).timestamp(
                    aws_smithy_types::DateTime::from_millis(t.timestamp_millis()),
                )
            }
        };
        builder
            .build()
            .map_err(|e| SourceError::Fatal(format!("cannot build the starting position: {e}")))
    }

    async fn subscribe(&mut self) -> Result<(), Step> {
        let position = self.starting_position().map_err(Step::Stop)?;
        let counters = &self.metrics.fanout_resubscriptions;
        match self.resubscribe {
            None => {}
            Some(Resubscribe::Expired) => counters.expired.inc(),
            Some(Resubscribe::Connection) => counters.connection.inc(),
            Some(Resubscribe::InUse) => counters.in_use.inc(),
            Some(Resubscribe::Throttled) => counters.throttled.inc(),
            Some(Resubscribe::Error) => counters.error.inc(),
        }
        // Until this one fails too, the next is a renewal.
        self.resubscribe = Some(Resubscribe::Expired);
        let result = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.config.consumer_arn)
            .shard_id(&self.config.shard_id)
            .starting_position(position)
            .send()
            .await;
        match result {
            Ok(out) => {
                tracing::debug!(shard = %self.config.shard_id, after = ?self.continuation, "subscribed");
                self.subscription = Some(Subscription {
                    events: out.event_stream,
                    opened: Instant::now(),
                });
                Ok(())
            }
            Err(e) => {
                let text = describe(&e);
                Err(match e.as_service_error() {
                    Some(s) if s.is_resource_not_found_exception() => {
                        Step::Stop(SourceError::NotFound(text))
                    }
                    Some(s)
                        if s.is_access_denied_exception() || s.is_invalid_argument_exception() =>
                    {
                        Step::Stop(SourceError::Fatal(text))
                    }
                    Some(s) if s.is_resource_in_use_exception() => self.failed(
                        Resubscribe::InUse,
                        "the previous subscription is still open",
                        &text,
                    ),
                    Some(s) if s.is_limit_exceeded_exception() => {
                        self.failed(Resubscribe::Throttled, "SubscribeToShard throttled", &text)
                    }
                    _ => self.failed(Resubscribe::Error, "SubscribeToShard failed", &text),
                })
            }
        }
    }

    /// The next step: an event's page, or a recovery.
    async fn step(&mut self) -> Step {
        if self.ended {
            return Step::Stop(SourceError::Fatal(format!(
                "{} was read to its end",
                self.config.shard_id
            )));
        }
        let renew = self.config.resubscribe_after.min(SUBSCRIPTION_LIFETIME);
        if self
            .subscription
            .as_ref()
            .is_some_and(|s| s.opened.elapsed() >= renew)
        {
            // Renewed ahead of Kinesis's own end of the subscription.
            self.end_subscription(Resubscribe::Expired);
        }
        if self.subscription.is_none() {
            if let Err(step) = self.subscribe().await {
                return step;
            }
        }
        let Some(subscription) = self.subscription.as_mut() else {
            return Step::Retry;
        };
        let received = match subscription.events.recv().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                // Kinesis ended the subscription (after 5 minutes): renew it.
                self.end_subscription(Resubscribe::Expired);
                return Step::Retry;
            }
            Err(e) => {
                // The emulator sends a subscription's error as its first event.
                let text = describe(&e);
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception())
                {
                    return Step::Stop(SourceError::NotFound(text));
                }
                let why = match e.as_service_error() {
                    Some(s) if s.is_resource_in_use_exception() => Resubscribe::InUse,
                    Some(s) if s.is_kms_throttling_exception() => Resubscribe::Throttled,
                    Some(_) => Resubscribe::Error,
                    None => Resubscribe::Connection,
                };
                return self.failed(why, "the subscription failed", &text);
            }
        };
        let SubscribeToShardEventStream::SubscribeToShardEvent(event) = received else {
            return Step::Page(Page::default());
        };
        self.failures = 0;
        let issued_at = Utc::now() - chrono::Duration::from_std(EVENT_AGE).unwrap_or_default();
        let children: Vec<String> = event
            .child_shards()
            .iter()
            .map(|c| c.shard_id().to_string())
            .collect();
        let continuation = event.continuation_sequence_number().to_string();
        let millis_behind_latest = event.millis_behind_latest();
        let records = self.records(event.records);
        if let Some(seq) = SequenceNumber::parse(continuation) {
            self.continuation = Some(seq);
        } else if let Some(last) = records.last() {
            self.continuation = Some(last.sequence().clone());
        }
        let mut page = Page {
            records,
            millis_behind_latest: Some(millis_behind_latest),
            end: None,
            issued_at: Some(issued_at),
        };
        if !children.is_empty() {
            self.ended = true;
            self.subscription = None;
            page.end = Some(children);
        } else if page.records.is_empty() && millis_behind_latest == 0 {
            self.check_end(&mut page).await;
        }
        Step::Page(page)
    }

    /// Converts an event's records, skipping (with a log line) malformed ones.
    fn records(&self, raw: Vec<aws_sdk_kinesis::types::Record>) -> Vec<Record> {
        super::convert_records(raw, "SubscribeToShard")
    }

    /// On an idle subscription, at most every [`END_CHECK_INTERVAL`]: is the shard
    /// closed and read to its end? One GetRecords after the last continuation says:
    /// no next iterator means it is, and names the children. Its records, if any, go
    /// into `page`.
    async fn check_end(&mut self, page: &mut Page) {
        if self
            .end_checked
            .is_some_and(|at| at.elapsed() < END_CHECK_INTERVAL)
        {
            return;
        }
        self.end_checked = Some(Instant::now());
        if self.continuation.is_none()
            && !matches!(
                self.config.from,
                ReadFrom::AfterSequence(_) | ReadFrom::AtSequence(_)
            )
        {
            // Nothing read yet from a position in time: the subscription will tell.
            return;
        }
        let request = super::iterator_from(
            self.client
                .get_shard_iterator()
                .stream_arn(&self.config.stream_arn)
                .shard_id(&self.config.shard_id),
            self.continuation.as_ref(),
            &self.config.from,
        );
        let iterator = match request.send().await {
            Ok(out) => out.shard_iterator,
            Err(e) => {
                tracing::debug!(error = %describe(&e), "end-of-shard check: GetShardIterator failed");
                return;
            }
        };
        let Some(iterator) = iterator else {
            return;
        };
        let out = match self
            .client
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!(error = %describe(&e), "end-of-shard check: GetRecords failed");
                return;
            }
        };
        let end = out.next_shard_iterator.is_none();
        let children: Vec<String> = out
            .child_shards
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.shard_id)
            .collect();
        let records = self.records(out.records);
        if let Some(last) = records.last() {
            // Handed out here: the next subscription starts after them.
            self.continuation = Some(last.sequence().clone());
            self.subscription = None;
        }
        page.records.extend(records);
        if end {
            tracing::info!(shard = %self.config.shard_id, ?children, "the shard is closed and read to its end");
            self.ended = true;
            self.subscription = None;
            page.end = Some(children);
        }
    }
}

impl ShardSource for FanOutReader {
    fn wait_turn(&mut self) -> BoxFuture<'_, ()> {
        super::wait_until(self.retry_at.take())
    }

    fn read(&mut self) -> BoxFuture<'_, ReadOutcome> {
        async move {
            match self.step().await {
                Step::Page(page) => ReadOutcome::Page(page),
                Step::Retry => ReadOutcome::Retry,
                Step::Stop(e) => ReadOutcome::Stop(e),
            }
        }
        .boxed()
    }
}
