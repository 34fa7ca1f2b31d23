//! The fleet store: checkpoints and shard leases in one DynamoDB table, shared by
//! every esm instance that runs the same mappings.
//!
//! DynamoDB is what KCL and Redpanda Connect use for the same job. Its conditional
//! writes are the whole consensus: every write names the lease it expects, and a
//! write whose condition fails changes nothing ([`StoreError::LeaseLost`]). There is
//! no leader and no clock shared between instances.
//!
//! One item per (mapping, shard):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `mapping` | S, partition key | the mapping's name |
//! | `shard` | S, sort key | the shard id |
//! | `owner` | S, absent when free | the instance holding the lease |
//! | `lease_counter` | N | bumped each time the lease changes hands |
//! | `heartbeat` | N | bumped by each renewal |
//! | `renewed_at` | S | when the lease last changed or was renewed (RFC 3339, for people) |
//! | `start` | S | where reading starts with no checkpoint, e.g. `{"type":"TRIM_HORIZON"}` |
//! | `checkpoint` | S, absent when none | the last done record's sequence number |
//! | `checkpoint_sub_sequence` | N | its user record within a KPL aggregate |
//! | `finished` | BOOL | the shard is closed and done: its children may be read |
//! | `parents` | L of S | the shard's parents, for people reading the table |
//!
//! Every checkpoint write, renewal and release is conditional on `owner` and
//! `lease_counter`; a take is conditional on `owner`, `lease_counter` and
//! `heartbeat` being as the taker last read them. Reads are strongly consistent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::{
    CheckpointStore, Lease, LeaseState, ShardCheckpoint, StartAt, StoreError, StoredShard,
};
use crate::core::record::{Position, SequenceNumber};
use crate::source::kinesis::describe;

/// How long `open` waits for a table it created to become ACTIVE.
const CREATE_WAIT: Duration = Duration::from_secs(120);

/// Checkpoints and leases in a DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    /// Connects to `table` in `region` through the standard provider chain. A
    /// missing table is created (on-demand billing) when `create` is set, and is
    /// an error naming the setting otherwise.
    pub async fn open(table: &str, region: &str, create: bool) -> Result<Self, StoreError> {
        let base = crate::source::kinesis::sdk_config(region).await;
        let config = aws_sdk_dynamodb::config::Builder::from(&base)
            // A lease call is small and short: two quick attempts, well inside a
            // renewal period.
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(3))
                    .build(),
            )
            .build();
        let store = Self {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            table: table.to_string(),
        };
        store.ensure_table(create).await?;
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn ensure_table(&self, create: bool) -> Result<(), StoreError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot reach the lease table {}: {}",
                    self.table,
                    describe(&e)
                )))
            }
        }
        if !create {
            return Err(StoreError::Backend(format!(
                "the lease table {} does not exist: create it (README: \"Several instances on one stream\") or set create_table = true in [store]",
                self.table
            )));
        }
        tracing::info!(table = %self.table, "creating the lease table (on-demand billing)");
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("mapping", KeyType::Hash).map_err(backend)?)
            .key_schema(key("shard", KeyType::Range).map_err(backend)?)
            .attribute_definitions(attribute("mapping").map_err(backend)?)
            .attribute_definitions(attribute("shard").map_err(backend)?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another instance created it first.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot create the lease table {}: {}",
                    self.table,
                    describe(&e)
                )))
            }
        }
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            let status = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .ok()
                .and_then(|d| d.table)
                .and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Backend(format!(
                    "the lease table {} is not ACTIVE after {CREATE_WAIT:?}",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn key(&self, mapping: &str, shard: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("mapping".to_string(), s(mapping)),
            ("shard".to_string(), s(shard)),
        ])
    }

    /// A failed write: `LeaseLost` when its condition failed (naming the holder the
    /// item shows), else a backend error.
    fn failed<E, R>(
        &self,
        mapping: &str,
        shard: &str,
        what: &str,
        err: SdkError<E, R>,
        condition_failed: impl Fn(&E) -> Option<Option<&HashMap<String, AttributeValue>>>,
    ) -> StoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        if let Some(item) = err.as_service_error().and_then(&condition_failed) {
            let holder = item
                .and_then(|item| item.get("owner"))
                .and_then(|v| v.as_s().ok())
                .map_or("nobody", String::as_str);
            return StoreError::LeaseLost {
                mapping: mapping.to_string(),
                shard: shard.to_string(),
                holder: holder.to_string(),
            };
        }
        StoreError::Backend(format!(
            "{what} {mapping}/{shard} in table {}: {}",
            self.table,
            describe(&err)
        ))
    }

    /// An UpdateItem on one shard's item, conditional on `lease` being held.
    fn held_update(
        &self,
        mapping: &str,
        shard: &str,
        lease: &Lease,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(mapping, shard)))
            .condition_expression("#owner = :me AND #counter = :counter")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "lease_counter")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":counter", n(lease.counter))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }
}

/// The lease table's region: `[store] region`, else the first mapping's stream's
/// (the table usually lives beside the streams).
pub fn table_region(config: &crate::config::Config, region: Option<&str>) -> String {
    region
        .map(str::to_string)
        .or_else(|| {
            config
                .mappings
                .first()
                .map(|m| m.event_source.region.clone())
        })
        .unwrap_or_else(|| "us-east-1".to_string())
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Reads one item into a row; `Err` names what is wrong with it.
fn row_of(item: &HashMap<String, AttributeValue>) -> Result<(String, StoredShard), String> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
    let number = |name: &str| -> Result<u64, String> {
        match item.get(name) {
            None => Ok(0),
            Some(v) => v
                .as_n()
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{name} is not a number")),
        }
    };
    let shard = text("shard").ok_or("no shard")?.clone();
    let start: StartAt = serde_json::from_str(text("start").ok_or("no start")?)
        .map_err(|e| format!("start: {e}"))?;
    let checkpoint = match text("checkpoint") {
        Some(sequence) => Some(Position {
            sequence: SequenceNumber::parse(sequence.clone())
                .ok_or_else(|| format!("checkpoint {sequence:?} is not a sequence number"))?,
            sub_sequence: match item.get("checkpoint_sub_sequence") {
                Some(_) => number("checkpoint_sub_sequence")?,
                None => Position::WHOLE_RECORD,
            },
        }),
        None => None,
    };
    let finished = item
        .get("finished")
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false);
    Ok((
        shard,
        StoredShard {
            checkpoint: ShardCheckpoint {
                start,
                checkpoint,
                finished,
            },
            lease: LeaseState {
                owner: text("owner").cloned(),
                counter: number("lease_counter")?,
                heartbeat: number("heartbeat")?,
            },
        },
    ))
}

fn start_text(start: &StartAt) -> Result<String, StoreError> {
    serde_json::to_string(start).map_err(backend)
}

impl CheckpointStore for DynamoStore {
    fn load(
        &self,
        mapping: &str,
    ) -> BoxFuture<'_, Result<BTreeMap<String, StoredShard>, StoreError>> {
        let mapping = mapping.to_string();
        async move {
            let mut rows = BTreeMap::new();
            let mut from: Option<HashMap<String, AttributeValue>> = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key_condition_expression("#mapping = :mapping")
                    .expression_attribute_names("#mapping", "mapping")
                    .expression_attribute_values(":mapping", s(&mapping))
                    .set_exclusive_start_key(from.take())
                    .send()
                    .await
                    .map_err(|e| {
                        StoreError::Backend(format!(
                            "cannot read mapping {mapping} from table {}: {}",
                            self.table,
                            describe(&e)
                        ))
                    })?;
                for item in page.items() {
                    let (shard, row) = row_of(item).map_err(|why| {
                        StoreError::Backend(format!(
                            "corrupt item in table {} for mapping {mapping}: {why}",
                            self.table
                        ))
                    })?;
                    rows.insert(shard, row);
                }
                match page.last_evaluated_key {
                    Some(key) if !key.is_empty() => from = Some(key),
                    _ => return Ok(rows),
                }
            }
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        parents: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut item = self.key(mapping, shard);
            item.insert("lease_counter".into(), n(0));
            item.insert("heartbeat".into(), n(0));
            item.insert("start".into(), s(&start_text(&state.start)?));
            item.insert("finished".into(), AttributeValue::Bool(state.finished));
            item.insert(
                "parents".into(),
                AttributeValue::L(parents.iter().map(|p| s(p)).collect()),
            );
            if let Some(position) = &state.checkpoint {
                item.insert("checkpoint".into(), s(position.sequence.as_str()));
                item.insert("checkpoint_sub_sequence".into(), n(position.sub_sequence));
            }
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#shard)")
                .expression_attribute_names("#shard", "shard")
                .send()
                .await;
            match put {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    Ok(())
                }
                Err(e) => Err(StoreError::Backend(format!(
                    "cannot record {mapping}/{shard} in table {}: {}",
                    self.table,
                    describe(&e)
                ))),
            }
        }
        .boxed()
    }

    fn take<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        owner: &'a str,
        expected: &'a LeaseState,
    ) -> BoxFuture<'a, Result<(Lease, StoredShard), StoreError>> {
        async move {
            let counter = expected.counter + 1;
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(self.key(mapping, shard)))
                .update_expression(
                    "SET #owner = :me, #counter = :next, #heartbeat = :beat, renewed_at = :now",
                )
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#counter", "lease_counter")
                .expression_attribute_names("#heartbeat", "heartbeat")
                .expression_attribute_values(":me", s(owner))
                .expression_attribute_values(":counter", n(expected.counter))
                .expression_attribute_values(":next", n(counter))
                .expression_attribute_values(":seen", n(expected.heartbeat))
                .expression_attribute_values(":beat", n(expected.heartbeat + 1))
                .expression_attribute_values(":now", s(&chrono::Utc::now().to_rfc3339()))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            update = match &expected.owner {
                None => update.condition_expression(
                    "attribute_exists(#counter) AND attribute_not_exists(#owner) AND #counter = :counter AND #heartbeat = :seen",
                ),
                Some(previous) => update
                    .condition_expression(
                        "#owner = :previous AND #counter = :counter AND #heartbeat = :seen",
                    )
                    .expression_attribute_values(":previous", s(previous)),
            };
            let out = update.send().await.map_err(|e| {
                self.failed(mapping, shard, "cannot take", e, |e| {
                    e.is_conditional_check_failed_exception().then(|| match e {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item(),
                        _ => None,
                    })
                })
            })?;
            let attributes = out.attributes.unwrap_or_default();
            let (_, row) = row_of(&attributes).map_err(|why| {
                StoreError::Backend(format!(
                    "corrupt item in table {} for {mapping}/{shard}: {why}",
                    self.table
                ))
            })?;
            Ok((
                Lease {
                    owner: owner.to_string(),
                    counter,
                },
                row,
            ))
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.held_update(mapping, shard, lease)
                .update_expression("SET #heartbeat = #heartbeat + :one, renewed_at = :now")
                .expression_attribute_names("#heartbeat", "heartbeat")
                .expression_attribute_values(":now", s(&chrono::Utc::now().to_rfc3339()))
                .expression_attribute_values(":one", n(1))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.failed(mapping, shard, "cannot renew", e, update_condition))
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.held_update(mapping, shard, lease)
                .update_expression("REMOVE #owner SET renewed_at = :now")
                .expression_attribute_values(":now", s(&chrono::Utc::now().to_rfc3339()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.failed(mapping, shard, "cannot release", e, update_condition))
        }
        .boxed()
    }

    fn save<'a>(
        &'a self,
        mapping: &'a str,
        shard: &'a str,
        state: &'a ShardCheckpoint,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let update = self
                .held_update(mapping, shard, lease)
                .expression_attribute_names("#start", "start")
                .expression_attribute_values(":start", s(&start_text(&state.start)?))
                .expression_attribute_values(":finished", AttributeValue::Bool(state.finished));
            let update = match &state.checkpoint {
                Some(position) => update
                    .update_expression(
                        "SET #start = :start, finished = :finished, checkpoint = :sequence, checkpoint_sub_sequence = :sub",
                    )
                    .expression_attribute_values(":sequence", s(position.sequence.as_str()))
                    .expression_attribute_values(":sub", n(position.sub_sequence)),
                None => update.update_expression(
                    "SET #start = :start, finished = :finished REMOVE checkpoint, checkpoint_sub_sequence",
                ),
            };
            update
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.failed(mapping, shard, "cannot save the checkpoint of", e, update_condition))
        }
        .boxed()
    }
}

/// For an UpdateItem error: `Some(item as it was)` when the condition failed.
fn update_condition(
    e: &aws_sdk_dynamodb::operation::update_item::UpdateItemError,
) -> Option<Option<&HashMap<String, AttributeValue>>> {
    match e {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
            Some(c.item())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_item_back() {
        let mut item = HashMap::from([
            ("mapping".to_string(), s("orders")),
            ("shard".to_string(), s("shardId-000000000001")),
            ("owner".to_string(), s("host-1")),
            ("lease_counter".to_string(), n(4)),
            ("heartbeat".to_string(), n(17)),
            ("start".to_string(), s(r#"{"type":"TRIM_HORIZON"}"#)),
            (
                "checkpoint".to_string(),
                s("49590338271490256608559692538361571095921575989136588898"),
            ),
            ("checkpoint_sub_sequence".to_string(), n(3)),
            ("finished".to_string(), AttributeValue::Bool(false)),
        ]);
        let (shard, row) = row_of(&item).unwrap();
        assert_eq!(shard, "shardId-000000000001");
        assert_eq!(row.lease.owner.as_deref(), Some("host-1"));
        assert_eq!((row.lease.counter, row.lease.heartbeat), (4, 17));
        assert_eq!(row.checkpoint.checkpoint.as_ref().unwrap().sub_sequence, 3);
        assert_eq!(row.checkpoint.start, StartAt::TrimHorizon);

        item.insert("lease_counter".into(), s("four"));
        assert_eq!(row_of(&item).unwrap_err(), "lease_counter is not a number");
        item.remove("start");
        assert_eq!(row_of(&item).unwrap_err(), "no start");
    }

    #[tokio::test]
    async fn keeps_the_lease_rules_against_the_emulator() {
        if std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but AWS_ENDPOINT_URL_DYNAMODB is not: run the tests with scripts/test, which starts moto"
            );
            eprintln!("skipping: AWS_ENDPOINT_URL_DYNAMODB is not set (scripts/test starts moto)");
            return;
        }
        let table = format!("esm-conformance-{}", uuid::Uuid::new_v4().simple());
        match DynamoStore::open(&table, "us-east-1", false).await {
            Err(StoreError::Backend(message)) => assert!(
                message.contains("does not exist") && message.contains("create_table = true"),
                "{message}"
            ),
            other => panic!("a missing table must be an error naming create_table, got {other:?}"),
        }
        let store = DynamoStore::open(&table, "us-east-1", true).await.unwrap();
        // Opening again finds the table.
        DynamoStore::open(&table, "us-east-1", false).await.unwrap();
        crate::store::conformance::check(&store).await;
    }
}
