//! Parsing a record's data once for all patterns, keeping only what they look at.
//!
//! Building a whole `serde_json::Value` allocates every key and string of the record;
//! most of them no pattern reads. The patterns' field paths are merged into one
//! [`Schema`] when they are compiled, and the data is parsed against it: fields off
//! the schema are checked for syntax and skipped without being built. The result is
//! an ordinary `Value` holding only the schema's fields (arrays kept, and objects where
//! only leaf values count left empty), on which matching gives the same answers as on
//! the whole document. The whole document is still validated: data that is not JSON
//! is not JSON however little of it the patterns read.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::compile::{FieldPattern, ObjectPattern, RootField, RootPattern};

/// The field paths below `data` that some pattern looks at.
#[derive(Clone, Debug, Default)]
pub(super) struct Schema {
    fields: BTreeMap<String, Schema>,
}

impl Schema {
    /// Adds the `data` paths of `pattern`.
    pub(super) fn add_root(&mut self, pattern: &RootPattern) {
        for field in &pattern.fields {
            if let RootField::Data(object) = field {
                self.add_object(object);
            }
        }
        for branch in pattern.ors.iter().flatten() {
            self.add_root(branch);
        }
    }

    fn add_object(&mut self, pattern: &ObjectPattern) {
        for (key, field) in &pattern.fields {
            let child = self.fields.entry(key.clone()).or_default();
            if let FieldPattern::Object(sub) = field {
                child.add_object(sub);
            }
        }
        for branch in pattern.ors.iter().flatten() {
            self.add_object(branch);
        }
    }

    /// Parses `data` as JSON, keeping the schema's fields; `None` when it is not JSON.
    pub(super) fn parse(&self, data: &[u8]) -> Option<Value> {
        // Skipped strings are not checked for UTF-8 by the parser, so check it all first.
        let text = std::str::from_utf8(data).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Prune(self).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(value)
    }
}

/// Deserializes a value, keeping the fields of its schema.
struct Prune<'s>(&'s Schema);

impl<'de> DeserializeSeed<'de> for Prune<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Prune<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(Prune(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key_seed(Field(self.0))? {
            match key {
                Some((name, schema)) => {
                    let value = map.next_value_seed(Prune(schema))?;
                    fields.insert(name.to_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(fields))
    }
}

/// Deserializes an object's key into its schema entry (`None`: off the schema), without
/// building the key.
struct Field<'s>(&'s Schema);

impl<'de, 's> DeserializeSeed<'de> for Field<'s> {
    type Value = Option<(&'s str, &'s Schema)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 's> Visitor<'de> for Field<'s> {
    type Value = Option<(&'s str, &'s Schema)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.fields.get_key_value(v).map(|(k, s)| (k.as_str(), s)))
    }
}
