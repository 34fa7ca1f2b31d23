//! The shard graph of a stream: which shards exist, which came from which, and which
//! may be read now.
//!
//! Resharding closes shards and opens children that cover their hash ranges (a split
//! has one parent, a merge has two: `ParentShardId` and `AdjacentParentShardId`).
//! Lambda reads a child only after every parent is finished, so records with one key
//! stay in order across the reshard; esm does the same. A parent that is no longer
//! listed (its records aged out of the stream) counts as finished.

use std::collections::BTreeMap;

/// What ListShards says about one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-…`.
    pub id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<String>,
    /// The lowest hash key it covers.
    pub hash_start: u128,
    /// The highest hash key it covers.
    pub hash_end: u128,
    /// Whether the shard is closed (has an ending sequence number): it will end.
    pub closed: bool,
}

impl ShardInfo {
    /// The shard's parents that exist in `lineage`.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent
            .iter()
            .chain(&self.adjacent_parent)
            .map(String::as_str)
    }
}

/// Every shard of a stream that ListShards returned, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    shards: BTreeMap<String, ShardInfo>,
}

impl Lineage {
    /// Builds the graph from a ListShards result.
    pub fn new(shards: impl IntoIterator<Item = ShardInfo>) -> Self {
        Self {
            shards: shards.into_iter().map(|s| (s.id.clone(), s)).collect(),
        }
    }

    /// All shards, ordered by id.
    pub fn shards(&self) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values()
    }

    /// One shard.
    pub fn get(&self, id: &str) -> Option<&ShardInfo> {
        self.shards.get(id)
    }

    /// The number of shards listed.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether no shard is listed.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The children of `id`: the shards that name it as a parent.
    pub fn children<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a ShardInfo> + 'a {
        self.shards
            .values()
            .filter(move |s| s.parents().any(|p| p == id))
    }

    /// Whether `shard` may be read: every parent is finished or no longer listed.
    pub fn parents_finished(&self, shard: &ShardInfo, finished: impl Fn(&str) -> bool) -> bool {
        shard
            .parents()
            .all(|p| finished(p) || !self.shards.contains_key(p))
    }

    /// The shards to read now: not finished themselves, parents finished.
    pub fn readable<'a>(
        &'a self,
        finished: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a ShardInfo> + 'a {
        self.shards
            .values()
            .filter(move |s| !finished(&s.id) && self.parents_finished(s, &finished))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>, closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parent: parent.map(Into::into),
            adjacent_parent: adjacent.map(Into::into),
            hash_start: 0,
            hash_end: u128::MAX,
            closed,
        }
    }

    fn readable(l: &Lineage, done: &[&str]) -> Vec<String> {
        let done: HashSet<String> = done.iter().map(|s| s.to_string()).collect();
        l.readable(move |id| done.contains(id))
            .map(|s| s.id.clone())
            .collect()
    }

    #[test]
    fn children_wait_for_every_parent() {
        // 0 split into 1 and 2; 1 and 2 merged into 3.
        let l = Lineage::new([
            shard("s0", None, None, true),
            shard("s1", Some("s0"), None, true),
            shard("s2", Some("s0"), None, true),
            shard("s3", Some("s1"), Some("s2"), false),
        ]);
        assert_eq!(readable(&l, &[]), ["s0"]);
        assert_eq!(readable(&l, &["s0"]), ["s1", "s2"]);
        assert_eq!(readable(&l, &["s0", "s1"]), ["s2"]);
        assert_eq!(readable(&l, &["s0", "s1", "s2"]), ["s3"]);
        assert_eq!(
            l.children("s1").map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["s3"]
        );
    }

    #[test]
    fn a_parent_gone_from_the_stream_counts_as_finished() {
        let l = Lineage::new([shard("s5", Some("s4"), None, false)]);
        assert_eq!(readable(&l, &[]), ["s5"]);
    }
}
