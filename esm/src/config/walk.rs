//! The TOML walker: typed reads from a [`toml::Table`] that record a
//! [`Problem`] instead of stopping at the first one.
//!
//! Every read returns `None` when the key is absent or its value is wrong (the
//! caller then falls back to the default), so one pass over the file finds
//! every mistake. Each problem is anchored to the TOML key it is about, and
//! [`Sink::into_sorted`] puts them in file order using the key positions from
//! [`Positions`] (`toml::Table` itself keeps keys sorted, not in file order).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::problems::{quote, Problem};

/// Separates the segments of an anchor (a TOML key path such as `mapping`,
/// `0`, `batch_size`); it cannot occur in a key a human typed.
const SEP: char = '\u{1f}';

/// The anchor of `key` inside the table anchored at `parent`.
pub(crate) fn child_anchor(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}{SEP}{key}")
    }
}

/// The display path of `key` inside the table displayed as `parent`.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Where each key (and array element) starts in the config text.
pub(crate) struct Positions {
    offsets: HashMap<String, usize>,
    end: usize,
}

impl Positions {
    /// Finds the position of every key in `text`; empty if `text` does not parse.
    pub(crate) fn of(text: &str) -> Self {
        let mut offsets = HashMap::new();
        if let Ok(doc) = DeTable::parse(text) {
            record_table(doc.get_ref(), "", &mut offsets);
        }
        Positions {
            offsets,
            end: text.len(),
        }
    }

    /// The offset of `anchor`, else of its nearest enclosing key that has
    /// one, else the end of the text.
    fn offset(&self, anchor: &str) -> usize {
        let mut anchor = anchor;
        loop {
            if let Some(&offset) = self.offsets.get(anchor) {
                return offset;
            }
            match anchor.rfind(SEP) {
                Some(i) => anchor = &anchor[..i],
                None => return self.end,
            }
        }
    }
}

fn record_table(table: &DeTable<'_>, anchor: &str, offsets: &mut HashMap<String, usize>) {
    for (key, value) in table.iter() {
        let anchor = child_anchor(anchor, key.get_ref());
        offsets.insert(anchor.clone(), key.span().start);
        record_value(value.get_ref(), &anchor, offsets);
    }
}

fn record_value(value: &DeValue<'_>, anchor: &str, offsets: &mut HashMap<String, usize>) {
    match value {
        DeValue::Table(table) => record_table(table, anchor, offsets),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let anchor = child_anchor(anchor, &i.to_string());
                offsets.insert(anchor.clone(), item.span().start);
                record_value(item.get_ref(), &anchor, offsets);
            }
        }
        _ => {}
    }
}

/// Collects problems, each anchored to the TOML key it is about.
#[derive(Default)]
pub(crate) struct Sink {
    found: Vec<(String, Problem)>,
}

impl Sink {
    /// Records a problem about the key at `anchor`, displayed at `path`.
    pub(crate) fn push(&mut self, anchor: &str, path: &str, message: impl Into<String>) {
        self.found
            .push((anchor.to_string(), Problem::new(path, message)));
    }

    /// The problems in file order; problems about the same place keep the
    /// order they were found in.
    pub(crate) fn into_sorted(self, positions: &Positions) -> Vec<Problem> {
        let mut found: Vec<(usize, Problem)> = self
            .found
            .into_iter()
            .map(|(anchor, problem)| (positions.offset(&anchor), problem))
            .collect();
        found.sort_by_key(|(offset, _)| *offset);
        found.into_iter().map(|(_, problem)| problem).collect()
    }
}

/// A table being read: its keys, where it is, and which keys it may have.
pub(crate) struct Reader<'a> {
    table: &'a Table,
    path: String,
    anchor: String,
    known: &'static [&'static str],
}

impl<'a> Reader<'a> {
    /// A reader over `table`, displayed as `path` (empty for the root) and
    /// anchored at `anchor`, that accepts only the `known` keys.
    pub(crate) fn new(
        table: &'a Table,
        path: impl Into<String>,
        anchor: impl Into<String>,
        known: &'static [&'static str],
    ) -> Self {
        Reader {
            table,
            path: path.into(),
            anchor: anchor.into(),
            known,
        }
    }

    /// The display path of `key` in this table.
    pub(crate) fn path_of(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// The anchor of `key` in this table.
    pub(crate) fn anchor_of(&self, key: &str) -> String {
        child_anchor(&self.anchor, key)
    }

    /// Records a problem about `key`.
    pub(crate) fn problem(&self, sink: &mut Sink, key: &str, message: impl Into<String>) {
        sink.push(&self.anchor_of(key), &self.path_of(key), message);
    }

    /// Records a problem about this table as a whole.
    pub(crate) fn table_problem(&self, sink: &mut Sink, message: impl Into<String>) {
        sink.push(&self.anchor, &self.path, message);
    }

    /// Whether `key` is present.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value of `key`.
    pub(crate) fn value(&self, key: &str) -> Option<&'a Value> {
        debug_assert!(self.known.contains(&key), "{key} is not a known key");
        self.table.get(key)
    }

    /// Records `key: required` when `key` is absent; returns whether it is present.
    pub(crate) fn require(&self, sink: &mut Sink, key: &str) -> bool {
        let present = self.has(key);
        if !present {
            self.problem(sink, key, "required");
        }
        present
    }

    /// Records a wrong-type problem for `key`.
    pub(crate) fn wrong_type(&self, sink: &mut Sink, key: &str, expected: &str, found: &Value) {
        self.problem(
            sink,
            key,
            format!("expected {expected}, found {}", describe(found)),
        );
    }

    /// An integer.
    pub(crate) fn int(&self, sink: &mut Sink, key: &str) -> Option<i64> {
        match self.value(key)? {
            Value::Integer(i) => Some(*i),
            other => {
                self.wrong_type(sink, key, "an integer", other);
                None
            }
        }
    }

    /// An integer within `range`, as a `T` (one that holds all of `range`).
    pub(crate) fn int_in<T: TryFrom<i64>>(
        &self,
        sink: &mut Sink,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        let i = self.int(sink, key)?;
        if range.contains(&i) {
            T::try_from(i).ok()
        } else {
            self.problem(
                sink,
                key,
                format!("{i} is out of range {}..={}", range.start(), range.end()),
            );
            None
        }
    }

    /// Whole seconds within `range`.
    pub(crate) fn seconds_in(
        &self,
        sink: &mut Sink,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<Duration> {
        self.int_in(sink, key, range).map(Duration::from_secs)
    }

    /// An integer that is either -1 (`Some(None)`: no limit) or within
    /// `range`, as a `T` (one that holds all of `range`).
    pub(crate) fn int_or_unlimited<T: TryFrom<i64>>(
        &self,
        sink: &mut Sink,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<Option<T>> {
        let i = self.int(sink, key)?;
        if i == -1 {
            Some(None)
        } else if range.contains(&i) {
            Some(T::try_from(i).ok())
        } else {
            self.problem(
                sink,
                key,
                format!(
                    "{i} is out of range (-1 or {}..={})",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    /// Either -1 (`Some(None)`: no limit) or whole seconds within `range`.
    pub(crate) fn seconds_or_unlimited(
        &self,
        sink: &mut Sink,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<Option<Duration>> {
        let seconds = self.int_or_unlimited(sink, key, range)?;
        Some(seconds.map(Duration::from_secs))
    }

    /// A number (integer or float) above 0 and at most `max`.
    pub(crate) fn positive_number_up_to(
        &self,
        sink: &mut Sink,
        key: &str,
        max: f64,
    ) -> Option<f64> {
        let n = match self.value(key)? {
            Value::Float(f) => *f,
            Value::Integer(i) => *i as f64,
            other => {
                self.wrong_type(sink, key, "a number", other);
                return None;
            }
        };
        if n > 0.0 && n <= max {
            Some(n)
        } else {
            self.problem(
                sink,
                key,
                format!("{n} is out of range (above 0, at most {max})"),
            );
            None
        }
    }

    /// A boolean.
    pub(crate) fn bool(&self, sink: &mut Sink, key: &str) -> Option<bool> {
        match self.value(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.wrong_type(sink, key, "a boolean (true or false)", other);
                None
            }
        }
    }

    /// A string.
    pub(crate) fn string(&self, sink: &mut Sink, key: &str) -> Option<&'a str> {
        match self.value(key)? {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(sink, key, "a string", other);
                None
            }
        }
    }

    /// A non-empty string.
    pub(crate) fn non_empty_string(&self, sink: &mut Sink, key: &str) -> Option<&'a str> {
        let s = self.string(sink, key)?;
        if s.is_empty() {
            self.problem(sink, key, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A string that is one of `allowed`.
    pub(crate) fn one_of(
        &self,
        sink: &mut Sink,
        key: &str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.string(sink, key)?;
        match allowed.iter().find(|a| **a == s) {
            Some(a) => Some(a),
            None => {
                self.problem(sink, key, not_one_of(s, allowed));
                None
            }
        }
    }

    /// An array.
    pub(crate) fn array(&self, sink: &mut Sink, key: &str) -> Option<&'a [Value]> {
        match self.value(key)? {
            Value::Array(items) => Some(items),
            other => {
                self.wrong_type(sink, key, "an array", other);
                None
            }
        }
    }

    /// A sub-table, read with its own `known` keys.
    pub(crate) fn table(
        &self,
        sink: &mut Sink,
        key: &str,
        known: &'static [&'static str],
    ) -> Option<Reader<'a>> {
        match self.value(key)? {
            Value::Table(table) => Some(Reader::new(
                table,
                self.path_of(key),
                self.anchor_of(key),
                known,
            )),
            other => {
                self.wrong_type(sink, key, "a table", other);
                None
            }
        }
    }

    /// Records `unknown key` (with a suggestion when there is an obvious one)
    /// for every key of this table that is not known.
    pub(crate) fn check_unknown(&self, sink: &mut Sink) {
        for key in self.table.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let message = match suggest(key, self.known) {
                Some(known) => format!("unknown key (did you mean {known}?)"),
                None => "unknown key".to_string(),
            };
            self.problem(sink, key, message);
        }
    }
}

/// `"VALUE" is not one of A, B, C`.
pub(crate) fn not_one_of(value: &str, allowed: &[&str]) -> String {
    format!("{} is not one of {}", quote(value), allowed.join(", "))
}

/// A value's type and, when short, the value itself: `string "ten"`,
/// `integer 5`, `array ["a", "b"]`, `table`.
pub(crate) fn describe(value: &Value) -> String {
    const SHORT: usize = 40;
    match value {
        Value::String(s) => format!("string {}", quote(s)),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(_) => format!("float {value}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => {
            let shown = value.to_string();
            if shown.chars().count() <= SHORT {
                format!("array {shown}")
            } else {
                "array".to_string()
            }
        }
        Value::Table(_) => "table".to_string(),
    }
}

/// The known key `unknown` was most likely meant to be, if one stands out:
/// the single closest key within a few typos (ignoring case, `_` and `-`),
/// else the single key that contains it or that it contains.
pub(crate) fn suggest(unknown: &str, known: &[&'static str]) -> Option<&'static str> {
    let normalize = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = normalize(unknown);
    if wanted.is_empty() {
        return None;
    }
    let threshold = (wanted.len() / 4).clamp(1, 3);
    let mut best: Option<(usize, &'static str)> = None;
    let mut tied = false;
    for &candidate in known {
        let distance = edit_distance(&wanted, &normalize(candidate));
        if distance > threshold {
            continue;
        }
        match best {
            Some((d, _)) if d < distance => {}
            Some((d, _)) if d == distance => tied = true,
            _ => {
                best = Some((distance, candidate));
                tied = false;
            }
        }
    }
    if let Some((_, candidate)) = best {
        return (!tied).then_some(candidate);
    }
    if wanted.len() < 4 {
        return None;
    }
    let wanted: String = wanted.into_iter().collect();
    let mut containing = known.iter().filter(|candidate| {
        let candidate: String = normalize(candidate).into_iter().collect();
        candidate.contains(&wanted) || (candidate.len() >= 4 && wanted.contains(&candidate))
    });
    match (containing.next(), containing.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// The optimal string alignment distance: insertions, deletions,
/// substitutions and swaps of adjacent characters each cost one.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}
