//! Where `esm replay` takes on-failure records from: an SQS queue, a JSON-lines
//! file, or the objects of an S3 destination.
//!
//! Records are taken one at a time, and a source is read only as far as replay has
//! got, so a long replay holds no more than a page in memory and a queue's
//! messages never wait, received but untouched, for their turn:
//!
//! - **Queue**: ReceiveMessage asks for at most 10 messages (SQS's page) when the
//!   previous page is done. Every message received stays hidden from other readers
//!   until replay ends: a heartbeat extends the visibility of the messages it holds
//!   (ChangeMessageVisibilityBatch) every [`EXTEND_EVERY`], however long a batch
//!   takes. A message is deleted (`--delete`) once its batch succeeded; the ones
//!   kept are made visible again at the end. A message received twice is replayed
//!   once.
//! - **File**: one on-failure record (or SNS envelope) per line, blank lines skipped.
//! - **S3**: ListObjectsV2 under the prefix, one page (up to 1,000 keys) at a time;
//!   each object is read (GetObject) when its turn comes. The objects carry their
//!   records in `payload`, so those batches are replayed without the stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use serde_json::Value;

use super::ReplaySource;
use crate::core::on_failure::SavedPayload;
use crate::destination::{s3_client, sqs_client};

/// How long a received message stays hidden from other readers of the queue.
const VISIBILITY_SECONDS: i32 = 120;
/// How often the heartbeat extends the visibility of the messages replay holds.
const EXTEND_EVERY: Duration = Duration::from_secs(40);
/// Attempts per SQS or S3 call (replay is interactive: a passing failure is retried
/// by the SDK rather than failing the run).
const MAX_ATTEMPTS: u32 = 3;

/// One on-failure record to replay.
pub(super) struct Item {
    /// Where it came from (`message ID`, `FILE:LINE`, `s3://BUCKET/KEY`).
    pub label: String,
    /// The on-failure record, or why it could not be read.
    pub record: Result<Value, String>,
    /// The records themselves, when the source kept them (an S3 object's `payload`).
    pub payload: Option<SavedPayload>,
    /// The SQS message ID, for a queue message.
    message_id: Option<String>,
}

/// Why a source could not be opened or read further.
#[derive(Debug, thiserror::Error)]
pub(super) enum InboxError {
    /// The arguments name no readable source (exit 2).
    #[error("{0}")]
    BadArgument(String),
    /// The source failed while reading (exit 1).
    #[error("{0}")]
    Read(String),
}

/// An open source of on-failure records.
pub(super) enum Inbox {
    /// An SQS queue.
    Queue(Queue),
    /// A JSON-lines file, read whole (it is local, and says how many lines it has).
    File(VecDeque<Item>),
    /// The objects under an S3 prefix.
    S3(Bucket),
}

impl Inbox {
    /// Opens `source`; `region` is the stream's (for a bucket, and a queue URL that
    /// names none).
    pub(super) async fn open(source: &ReplaySource, region: &str) -> Result<Inbox, InboxError> {
        match source {
            ReplaySource::Queue(url) => {
                let client = sqs_client(queue_region(url).unwrap_or(region), MAX_ATTEMPTS).await;
                Ok(Inbox::Queue(Queue::new(client, url.clone())))
            }
            ReplaySource::File(path) => read_file(path).map(Inbox::File).map_err(|e| {
                InboxError::BadArgument(format!("cannot read {}: {e}", path.display()))
            }),
            ReplaySource::S3(uri) => {
                let (bucket, prefix) = parse_s3_uri(uri).map_err(InboxError::BadArgument)?;
                Ok(Inbox::S3(Bucket {
                    client: s3_client(region, MAX_ATTEMPTS).await,
                    bucket,
                    prefix,
                    token: None,
                    listed_all: false,
                    keys: VecDeque::new(),
                }))
            }
        }
    }

    /// How many records there are, when known up front (a file).
    pub(super) fn len(&self) -> Option<usize> {
        match self {
            Inbox::File(items) => Some(items.len()),
            Inbox::Queue(_) | Inbox::S3(_) => None,
        }
    }

    /// The next record; `want` (at least 1) bounds how many a queue page asks for.
    pub(super) async fn next(&mut self, want: usize) -> Result<Option<Item>, InboxError> {
        match self {
            Inbox::Queue(queue) => queue.next(want).await,
            Inbox::File(items) => Ok(items.pop_front()),
            Inbox::S3(bucket) => bucket.next().await,
        }
    }

    /// Settles `item` once replayed: a queue message is deleted when `delete` and its
    /// batch succeeded (`ok`), else kept for the end.
    pub(super) async fn settle(
        &mut self,
        item: &Item,
        ok: bool,
        delete: bool,
    ) -> Result<(), InboxError> {
        match (self, &item.message_id) {
            (Inbox::Queue(queue), Some(id)) if ok && delete => queue.delete(id).await,
            _ => Ok(()),
        }
    }

    /// Ends the reading: a queue's kept messages are made visible again at once,
    /// rather than after their visibility timeout.
    pub(super) async fn close(self) {
        if let Inbox::Queue(queue) = self {
            queue.close().await;
        }
    }
}

/// An SQS queue being replayed.
pub(super) struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// The page being replayed.
    page: VecDeque<Item>,
    /// Every message received and not deleted, by ID: the heartbeat keeps them hidden.
    held: Arc<Mutex<HashMap<String, String>>>,
    /// The message IDs received so far.
    seen: HashSet<String>,
    /// The queue answered empty.
    drained: bool,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Queue {
    fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        let held = Arc::new(Mutex::new(HashMap::new()));
        let heartbeat = tokio::spawn(heartbeat(client.clone(), url.clone(), held.clone()));
        Queue {
            client,
            url,
            page: VecDeque::new(),
            held,
            seen: HashSet::new(),
            drained: false,
            heartbeat,
        }
    }

    async fn next(&mut self, want: usize) -> Result<Option<Item>, InboxError> {
        while self.page.is_empty() && !self.drained {
            self.receive(want).await?;
        }
        Ok(self.page.pop_front())
    }

    /// One ReceiveMessage: up to `want` (at most 10) messages, kept hidden.
    async fn receive(&mut self, want: usize) -> Result<(), InboxError> {
        let want = i32::try_from(want.clamp(1, 10)).unwrap_or(10);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(want)
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY_SECONDS)
            .send()
            .await
            .map_err(|e| {
                InboxError::Read(format!(
                    "cannot read the queue {}: {}",
                    self.url,
                    crate::source::kinesis::describe(&e)
                ))
            })?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            self.drained = true;
        }
        for m in messages {
            let id = m.message_id.unwrap_or_default();
            if let Some(receipt) = m.receipt_handle {
                lock(&self.held).insert(id.clone(), receipt);
            }
            if !self.seen.insert(id.clone()) {
                continue;
            }
            self.page.push_back(Item {
                label: format!("message {id}"),
                record: unwrap_body(m.body.as_deref().unwrap_or_default()),
                payload: None,
                message_id: Some(id),
            });
        }
        Ok(())
    }

    async fn delete(&mut self, id: &str) -> Result<(), InboxError> {
        let Some(receipt) = lock(&self.held).get(id).cloned() else {
            return Ok(());
        };
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| {
                InboxError::Read(format!(
                    "message {id}: cannot delete the message: {}",
                    crate::source::kinesis::describe(&e)
                ))
            })?;
        lock(&self.held).remove(id);
        Ok(())
    }

    async fn close(self) {
        self.heartbeat.abort();
        let kept: Vec<(String, String)> = lock(&self.held).drain().collect();
        change_visibility(&self.client, &self.url, &kept, 0).await;
    }
}

/// Extends the visibility of the messages in `held` every [`EXTEND_EVERY`], until
/// aborted.
async fn heartbeat(
    client: aws_sdk_sqs::Client,
    url: String,
    held: Arc<Mutex<HashMap<String, String>>>,
) {
    loop {
        tokio::time::sleep(EXTEND_EVERY).await;
        let now: Vec<(String, String)> = lock(&held)
            .iter()
            .map(|(id, receipt)| (id.clone(), receipt.clone()))
            .collect();
        change_visibility(&client, &url, &now, VISIBILITY_SECONDS).await;
    }
}

/// Sets the visibility timeout of `messages` (ID, receipt handle), 10 per call;
/// failures are logged (a message that shows again is replayed at most once).
async fn change_visibility(
    client: &aws_sdk_sqs::Client,
    url: &str,
    messages: &[(String, String)],
    seconds: i32,
) {
    for chunk in messages.chunks(10) {
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, (_, receipt))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(seconds)
                    .build()
                    .ok()
            })
            .collect();
        let result = client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) if out.failed().is_empty() => {}
            Ok(out) => tracing::warn!(
                failed = out.failed().len(),
                seconds,
                "could not change the visibility of some messages"
            ),
            Err(e) => tracing::warn!(
                error = %crate::source::kinesis::describe(&e),
                seconds,
                "could not change the visibility of messages"
            ),
        }
    }
}

/// Locks `held`, even if a panic poisoned it (the map stays consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The objects under an S3 prefix being replayed.
pub(super) struct Bucket {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// The continuation token of the next ListObjectsV2 page.
    token: Option<String>,
    listed_all: bool,
    /// The listed keys not replayed yet.
    keys: VecDeque<String>,
}

impl Bucket {
    async fn next(&mut self) -> Result<Option<Item>, InboxError> {
        while self.keys.is_empty() && !self.listed_all {
            self.list().await?;
        }
        let Some(key) = self.keys.pop_front() else {
            return Ok(None);
        };
        let label = format!("s3://{}/{key}", self.bucket);
        let body = match self.get(&key).await {
            Ok(body) => body,
            Err(why) => {
                return Ok(Some(Item {
                    label,
                    record: Err(why),
                    payload: None,
                    message_id: None,
                }))
            }
        };
        let record = serde_json::from_slice::<Value>(&body).map_err(|e| format!("not JSON: {e}"));
        let (record, payload) = match SavedPayload::parse(&body) {
            Ok(payload) => (record, payload),
            Err(e) => (Err(e.to_string()), None),
        };
        Ok(Some(Item {
            label,
            record,
            payload,
            message_id: None,
        }))
    }

    /// One ListObjectsV2 page.
    async fn list(&mut self) -> Result<(), InboxError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_continuation_token(self.token.take())
            .send()
            .await
            .map_err(|e| {
                InboxError::Read(format!(
                    "cannot list s3://{}/{}: {}",
                    self.bucket,
                    self.prefix,
                    crate::source::kinesis::describe(&e)
                ))
            })?;
        self.keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|key| !key.ends_with('/'))
                .map(str::to_string),
        );
        self.token = out.next_continuation_token().map(str::to_string);
        self.listed_all = !out.is_truncated().unwrap_or(false) || self.token.is_none();
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot read the object: {}",
                    crate::source::kinesis::describe(&e)
                )
            })?;
        out.body
            .collect()
            .await
            .map(|data| data.to_vec())
            .map_err(|e| format!("cannot read the object: {e}"))
    }
}

/// The bucket and the key prefix of `s3://BUCKET/PREFIX` (the prefix may be empty).
fn parse_s3_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("--s3-uri {uri:?} does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("--s3-uri {uri:?} names no bucket"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The region in an AWS queue URL (`https://sqs.REGION.amazonaws.com/…`).
fn queue_region(url: &str) -> Option<&str> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("sqs"), Some(region), Some("amazonaws")) => Some(region),
        _ => None,
    }
}

/// The on-failure record inside a message body: the body itself, or the `Message`
/// of an SNS `Notification` envelope.
fn unwrap_body(body: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        if let Some(message) = value.get("Message").and_then(Value::as_str) {
            return serde_json::from_str(message)
                .map_err(|e| format!("the SNS Message is not JSON: {e}"));
        }
    }
    Ok(value)
}

/// The on-failure records of a JSON-lines file (blank lines skipped).
fn read_file(path: &Path) -> std::io::Result<VecDeque<Item>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Item {
            label: format!("{}:{}", path.display(), i + 1),
            record: unwrap_body(line),
            payload: None,
            message_id: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const RECORD: &str = r#"{"requestContext":{"condition":"RetryAttemptsExhausted"},"KinesisBatchInfo":{"shardId":"shardId-000000000000","startSequenceNumber":"100","endSequenceNumber":"109","batchSize":10,"streamArn":"arn:aws:kinesis:us-east-1:000000000000:stream/s"}}"#;

    #[test]
    fn unwraps_an_sns_envelope() {
        let envelope = serde_json::json!({"Type": "Notification", "Message": RECORD}).to_string();
        assert_eq!(
            unwrap_body(&envelope).unwrap(),
            unwrap_body(RECORD).unwrap()
        );
        assert!(unwrap_body("not json").is_err());
    }

    #[test]
    fn finds_the_region_of_a_queue_url() {
        assert_eq!(
            queue_region("https://sqs.eu-west-1.amazonaws.com/1/q"),
            Some("eu-west-1")
        );
        assert_eq!(queue_region("http://127.0.0.1:5000/1/q"), None);
    }

    #[test]
    fn reads_an_s3_uri() {
        assert_eq!(
            parse_s3_uri("s3://bucket/aws/lambda/"),
            Ok(("bucket".to_string(), "aws/lambda/".to_string()))
        );
        assert_eq!(
            parse_s3_uri("s3://bucket"),
            Ok(("bucket".to_string(), String::new()))
        );
        assert!(parse_s3_uri("bucket/prefix").is_err());
        assert!(parse_s3_uri("s3:///prefix").is_err());
    }

    #[test]
    fn a_file_skips_blank_lines_and_labels_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failures.jsonl");
        std::fs::write(&path, format!("{RECORD}\n\n{{bad\n")).unwrap();
        let items: Vec<Item> = read_file(&path).unwrap().into();
        assert_eq!(items.len(), 2);
        assert!(items[0].label.ends_with(":1") && items[0].record.is_ok());
        assert!(items[1].label.ends_with(":3") && items[1].record.is_err());
    }
}
