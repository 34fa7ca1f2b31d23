//! Event filtering: which records a mapping's function never sees.
//!
//! A mapping's `filter_criteria` is Lambda's `FilterCriteria`: up to five JSON filter
//! patterns, OR'd. A record is kept (batched and invoked) when any pattern matches it;
//! otherwise it is filtered out, counted, and checkpointed past (SPEC §3). Filtering
//! runs once per record before batching, so patterns are compiled once, here, and a
//! record costs at most one JSON parse of its data, shared by all patterns, which
//! builds only the fields some pattern looks at (`data.rs`); matching allocates
//! nothing.
//!
//! The rule syntax is EventBridge's event-pattern syntax, which Lambda uses for event
//! filtering. A pattern's top level names what it matches:
//!
//! - `"data": {…}`: the record's data parsed as JSON (Lambda filters Kinesis records
//!   on `data` only). Data that is not JSON matches no `data` condition, not even
//!   `{"exists": false}`: Lambda drops such records when a pattern has a `data` key.
//!   JSON that is not an object (`5`, `"text"`) has no fields, so only `exists: false`
//!   holds on it; a JSON array is matched through its objects, like any array;
//! - `"partitionKey": […]`: the record's partition key, a string (esm's extension);
//! - `"$or": [{…}, {…}]`: one of two or more top-level patterns.
//!
//! Below `data`, fields nest as objects, all of a pattern's fields must match (AND),
//! and each field ends in a match list, `"field": [ … ]`, which matches when the
//! field's value matches any entry:
//!
//! | entry | matches |
//! |---|---|
//! | `"text"`, `5`, `true`, `null` | that value; numbers compare as numbers (`5` matches `5.0`), never a string (`"5"` ≠ `5`) |
//! | `{"prefix": "us-"}`, `{"suffix": ".png"}` | strings starting / ending so; `{"prefix": {"equals-ignore-case": "us-"}}` ignores case (suffix likewise) |
//! | `{"equals-ignore-case": "alice"}` | the string in any case |
//! | `{"wildcard": "*/lib/*.jar"}` | `*` is any run of characters, `\*` a star; `**` is an error |
//! | `{"anything-but": …}` | any value (`null` and numbers included) except a string, a number, a list of either, or strings matching `{"prefix"}`, `{"suffix"}`, `{"equals-ignore-case"}` or `{"wildcard"}` (each a string or a list); never an absent field |
//! | `{"numeric": [">", 0, "<=", 5]}` | JSON numbers: one comparison (`=`, `<`, `<=`, `>`, `>=`) or a range, lower bound first |
//! | `{"exists": true}` / `{"exists": false}` | the field has / has no value |
//! | `{"cidr": "10.0.0.0/24"}` | strings that are IPv4 or IPv6 addresses in the block |
//!
//! `"$or": [{…}, {…}]` may stand at any object level. Where the data holds an array, a
//! field matches if any element does, and one nested pattern's fields must all match
//! within the same element (see `eval.rs`). `exists` is about leaf values, as in
//! EventBridge: a field holding an object, or an empty array, does not exist.
//!
//! Patterns are checked when the config is read; [`FilterError`] names the pattern's
//! index, the path of the offending field and what is allowed there. Lambda's limits
//! apply: at most [`MAX_PATTERNS`] patterns, each at most [`MAX_PATTERN_LEN`]
//! characters.

mod compile;
mod data;
mod eval;
mod matcher;
#[cfg(test)]
mod tests;

use serde_json::Value;

use compile::RootPattern;
use data::Schema;
use eval::RecordView;

/// The most patterns a mapping may have (Lambda's default quota).
pub const MAX_PATTERNS: usize = 5;

/// The longest pattern, in characters (the length constraint on Lambda's
/// `Filter.Pattern`).
pub const MAX_PATTERN_LEN: usize = 4096;

/// A mapping's compiled filter patterns (at most 5), OR'd.
#[derive(Clone, Debug, Default)]
pub struct FilterCriteria {
    patterns: Vec<Compiled>,
    /// Some pattern looks at the data, so it must be parsed.
    reads_data: bool,
    /// The data fields the patterns look at: all that parsing builds.
    schema: Schema,
}

#[derive(Clone, Debug)]
struct Compiled {
    root: RootPattern,
    reads_data: bool,
}

impl FilterCriteria {
    /// Compiles the patterns; the error names the pattern's index (0-based) and what is wrong.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<FilterCriteria, FilterError> {
        check_count(patterns.len())?;
        let mut compiled = Vec::with_capacity(patterns.len());
        for (index, text) in patterns.iter().enumerate() {
            let text = text.as_ref();
            check_len(index, text)?;
            let value: Value = serde_json::from_str(text).map_err(|e| FilterError::NotJson {
                index,
                reason: e.to_string(),
            })?;
            compiled.push(compile_one(index, &value)?);
        }
        Ok(Self::from_compiled(compiled))
    }

    /// Compiles already-parsed JSON patterns (the config reader holds `serde_json::Value`s).
    /// A pattern's length is measured on its compact JSON text.
    pub fn from_values(patterns: &[Value]) -> Result<FilterCriteria, FilterError> {
        check_count(patterns.len())?;
        let mut compiled = Vec::with_capacity(patterns.len());
        for (index, value) in patterns.iter().enumerate() {
            // Compiled first: compiling bounds the depth, which serializing does not.
            let one = compile_one(index, value)?;
            check_len(index, &value.to_string())?;
            compiled.push(one);
        }
        Ok(Self::from_compiled(compiled))
    }

    fn from_compiled(patterns: Vec<Compiled>) -> Self {
        let mut schema = Schema::default();
        for p in &patterns {
            schema.add_root(&p.root);
        }
        Self {
            reads_data: patterns.iter().any(|p| p.reads_data),
            patterns,
            schema,
        }
    }

    /// True when there are no patterns (everything is kept).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a record with this partition key and data is kept: no patterns, or any pattern matches.
    ///
    /// The data is parsed at most once, and only when a pattern that looks at it has
    /// to be tried; only the fields the patterns look at are built. Never panics,
    /// whatever the bytes.
    pub fn keeps(&self, partition_key: &str, data: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let unread = RecordView {
            partition_key,
            data: None,
        };
        if self
            .patterns
            .iter()
            .filter(|p| !p.reads_data)
            .any(|p| eval::matches(&p.root, &unread))
        {
            return true;
        }
        if !self.reads_data {
            return false;
        }
        let parsed = self.schema.parse(data);
        let record = RecordView {
            partition_key,
            data: parsed.as_ref(),
        };
        self.patterns
            .iter()
            .filter(|p| p.reads_data)
            .any(|p| eval::matches(&p.root, &record))
    }
}

fn check_count(count: usize) -> Result<(), FilterError> {
    if count > MAX_PATTERNS {
        return Err(FilterError::TooMany {
            count,
            max: MAX_PATTERNS,
        });
    }
    Ok(())
}

fn check_len(index: usize, text: &str) -> Result<(), FilterError> {
    let len = text.chars().count();
    if len > MAX_PATTERN_LEN {
        return Err(FilterError::TooLong {
            index,
            len,
            max: MAX_PATTERN_LEN,
        });
    }
    Ok(())
}

fn compile_one(index: usize, value: &Value) -> Result<Compiled, FilterError> {
    let root = compile::compile(value).map_err(|p| FilterError::Invalid {
        index,
        path: p.path,
        reason: p.reason,
    })?;
    Ok(Compiled {
        reads_data: root.reads_data(),
        root,
    })
}

/// Why a pattern is invalid, naming its index.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// More patterns than Lambda allows.
    #[error("{count} filter patterns; at most {max} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit, [`MAX_PATTERNS`].
        max: usize,
    },
    /// A pattern that is not JSON.
    #[error("pattern {index}: not valid JSON: {reason}")]
    NotJson {
        /// The pattern's index (0-based).
        index: usize,
        /// The parser's message.
        reason: String,
    },
    /// A pattern longer than Lambda allows.
    #[error("pattern {index}: {len} characters, above Lambda's limit of {max}")]
    TooLong {
        /// The pattern's index (0-based).
        index: usize,
        /// Its length in characters.
        len: usize,
        /// The limit, [`MAX_PATTERN_LEN`].
        max: usize,
    },
    /// A pattern that breaks the rule syntax.
    #[error("pattern {index}: at {path}: {reason}")]
    Invalid {
        /// The pattern's index (0-based).
        index: usize,
        /// The offending field's path, such as `data.order.type[0]`, or `(top level)`.
        path: String,
        /// What is wrong, and what is allowed.
        reason: String,
    },
}

impl FilterError {
    /// What is wrong, without the pattern's index (for a message that names the
    /// pattern another way, such as a config path `filter_criteria[2]`).
    pub fn detail(&self) -> String {
        match self {
            FilterError::TooMany { count, max } => {
                format!("{count} filter patterns; at most {max} are allowed")
            }
            FilterError::NotJson { reason, .. } => format!("not valid JSON: {reason}"),
            FilterError::TooLong { len, max, .. } => {
                format!("{len} characters, above Lambda's limit of {max}")
            }
            FilterError::Invalid { path, reason, .. } => format!("at {path}: {reason}"),
        }
    }

    /// The index of the offending pattern (none for too many patterns).
    pub fn index(&self) -> Option<usize> {
        match self {
            FilterError::TooMany { .. } => None,
            FilterError::NotJson { index, .. }
            | FilterError::TooLong { index, .. }
            | FilterError::Invalid { index, .. } => Some(*index),
        }
    }
}
