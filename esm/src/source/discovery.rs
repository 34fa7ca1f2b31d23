//! ListShards, every page of it, into a [`Lineage`].

use aws_sdk_kinesis::Client;

use super::kinesis::describe;
use super::SourceError;
use crate::core::lineage::{Lineage, ShardInfo};

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Retrying will not help (no such stream, access denied).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A passing failure (throttled, network); try again later.
    #[error("ListShards failed: {0}")]
    Transient(String),
}

/// Lists every shard of the stream.
pub async fn list_shards(client: &Client, stream_arn: &str) -> Result<Lineage, DiscoveryError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = match &next_token {
            // With a token, Kinesis wants no stream name or ARN.
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_arn(stream_arn),
        };
        let page = request.send().await.map_err(|e| {
            let text = describe(&e);
            match e.as_service_error() {
                Some(s) if s.is_resource_not_found_exception() => {
                    DiscoveryError::Source(SourceError::NotFound(text))
                }
                Some(s) if s.is_access_denied_exception() || s.is_invalid_argument_exception() => {
                    DiscoveryError::Source(SourceError::Fatal(text))
                }
                _ => DiscoveryError::Transient(text),
            }
        })?;
        for shard in page.shards() {
            let range = shard.hash_key_range();
            let hash = |v: Option<&str>| v.and_then(|s| s.parse::<u128>().ok());
            shards.push(ShardInfo {
                id: shard.shard_id().to_string(),
                parent: shard.parent_shard_id().map(str::to_string),
                adjacent_parent: shard.adjacent_parent_shard_id().map(str::to_string),
                hash_start: hash(range.map(|r| r.starting_hash_key())).unwrap_or(0),
                hash_end: hash(range.map(|r| r.ending_hash_key())).unwrap_or(u128::MAX),
                closed: shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some(),
            });
        }
        next_token = page.next_token().map(str::to_string);
        if next_token.is_none() {
            break;
        }
    }
    Ok(Lineage::new(shards))
}
