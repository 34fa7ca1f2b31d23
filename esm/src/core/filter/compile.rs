//! From a pattern's JSON to its compiled tree, with an error naming the offending
//! field's path and what is allowed there.

use serde_json::{Map, Value};

use super::matcher::{fold, AnythingBut, Cidr, Matcher, NumericRange, Wildcard};

/// How deep a pattern may nest (objects, `$or`s), so that compiling a
/// programmatically built value cannot exhaust the stack. `serde_json` stops parsing
/// at the same depth.
const MAX_DEPTH: usize = 128;

/// The operators a match list may hold, for error messages.
const OPERATORS: &str =
    "prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists, cidr";

/// A compiled pattern: the top level, whose keys are `data`, `partitionKey` and `$or`.
#[derive(Clone, Debug)]
pub(super) struct RootPattern {
    /// The `data` and `partitionKey` conditions, all of which must hold.
    pub fields: Vec<RootField>,
    /// Each `$or`: one of its branches must hold.
    pub ors: Vec<Vec<RootPattern>>,
}

impl RootPattern {
    /// Whether any branch looks at the record's data.
    pub(super) fn reads_data(&self) -> bool {
        self.fields.iter().any(|f| matches!(f, RootField::Data(_)))
            || self.ors.iter().flatten().any(RootPattern::reads_data)
    }
}

/// A top-level condition.
#[derive(Clone, Debug)]
pub(super) enum RootField {
    /// `"data": {…}`: the record's data, parsed as JSON.
    Data(ObjectPattern),
    /// `"partitionKey": […]`: the record's partition key (esm's extension).
    PartitionKey(LeafPattern),
}

/// An object of field patterns: every field must hold, and one branch of each `$or`.
#[derive(Clone, Debug)]
pub(super) struct ObjectPattern {
    /// The fields, by name.
    pub fields: Vec<(String, FieldPattern)>,
    /// Each `$or`: one of its branches must hold.
    pub ors: Vec<Vec<ObjectPattern>>,
    /// Whether some choice of branches holds on absent fields alone (every condition
    /// on the way is an `{"exists": false}`); when not, matching it against no value
    /// can be skipped.
    pub may_hold_absent: bool,
}

/// What one field must be.
#[derive(Clone, Debug)]
pub(super) enum FieldPattern {
    /// A match list: `"field": [ … ]`.
    Leaf(LeafPattern),
    /// A nested object of field patterns: `"field": { … }`.
    Object(ObjectPattern),
}

impl FieldPattern {
    fn may_hold_absent(&self) -> bool {
        match self {
            FieldPattern::Leaf(leaf) => leaf.absent_ok,
            FieldPattern::Object(object) => object.may_hold_absent,
        }
    }
}

/// A match list: the field holds if any of its values matches any matcher, or (with
/// `{"exists": false}`) if it has no value at all.
#[derive(Clone, Debug)]
pub(super) struct LeafPattern {
    /// The matchers, OR'd.
    pub matchers: Vec<Matcher>,
    /// The list holds `{"exists": false}`.
    pub absent_ok: bool,
}

/// A compile error before it is given its pattern's index.
#[derive(Debug)]
pub(super) struct Problem {
    /// Where: `data.order.type[0]`, or `(top level)`.
    pub path: String,
    /// What is wrong, and what is allowed.
    pub reason: String,
}

/// Compiles one pattern (already parsed as JSON).
pub(super) fn compile(pattern: &Value) -> Result<RootPattern, Problem> {
    let mut c = Compiler {
        path: String::new(),
        depth: 0,
    };
    match pattern {
        Value::Object(map) => c.root(map),
        other => Err(c.problem(format!(
            "a pattern is a JSON object such as {{\"data\": {{\"type\": [\"order\"]}}}}, not {}",
            kind(other)
        ))),
    }
}

/// The compiler's position in the pattern.
struct Compiler {
    /// The path so far, rendered: `data.order.type[0]`.
    path: String,
    depth: usize,
}

impl Compiler {
    fn problem(&self, reason: impl Into<String>) -> Problem {
        Problem {
            path: if self.path.is_empty() {
                "(top level)".to_string()
            } else {
                self.path.clone()
            },
            reason: reason.into(),
        }
    }

    /// Runs `f` one step further down the pattern, at `.key`.
    fn at_key<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Self) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(key);
        let out = self.deeper(f);
        self.path.truncate(len);
        out
    }

    /// Runs `f` one step further down the pattern, at `[index]`.
    fn at_index<T>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Self) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let len = self.path.len();
        self.path.push_str(&format!("[{index}]"));
        let out = self.deeper(f);
        self.path.truncate(len);
        out
    }

    fn deeper<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Problem>) -> Result<T, Problem> {
        if self.depth >= MAX_DEPTH {
            return Err(self.problem(format!("the pattern nests deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// The top level: `data`, `partitionKey` and `$or` only.
    fn root(&mut self, map: &Map<String, Value>) -> Result<RootPattern, Problem> {
        if map.is_empty() {
            return Err(self.problem(
                "the pattern is empty; give a \"data\" (or \"partitionKey\") key to match on",
            ));
        }
        let mut root = RootPattern {
            fields: Vec::new(),
            ors: Vec::new(),
        };
        for (key, value) in map {
            match key.as_str() {
                "$or" => {
                    let branches = self.at_key(key, |c| c.or(value, |c, m| c.root(m)))?;
                    root.ors.push(branches);
                }
                "data" => {
                    let data = self.at_key(key, |c| match value {
                        Value::Object(m) => c.object(m),
                        other => Err(c.problem(format!(
                            "\"data\" must be an object of field patterns such as {{\"type\": [\"order\"]}}, \
                             not {}: Lambda matches a Kinesis record's data as JSON",
                            kind(other)
                        ))),
                    })?;
                    root.fields.push(RootField::Data(data));
                }
                "partitionKey" => {
                    let leaf = self.at_key(key, |c| match value {
                        Value::Array(list) => c.leaf(list),
                        other => Err(c.problem(format!(
                            "\"partitionKey\" is a string, so its value must be a match list such as \
                             [\"order-1\"] or [{{\"prefix\": \"order-\"}}], not {}",
                            kind(other)
                        ))),
                    })?;
                    root.fields.push(RootField::PartitionKey(leaf));
                }
                _ => {
                    return self.at_key(key, |c| {
                        Err(c.problem(
                            "unknown top-level key; only \"data\", \"partitionKey\" and \"$or\" are \
                             allowed (Lambda filters Kinesis records on \"data\"; \"partitionKey\" is \
                             esm's extension)",
                        ))
                    })
                }
            }
        }
        Ok(root)
    }

    /// An object of field patterns below `data`.
    fn object(&mut self, map: &Map<String, Value>) -> Result<ObjectPattern, Problem> {
        if map.is_empty() {
            return Err(self.problem("empty object; give at least one field to match on"));
        }
        let mut object = ObjectPattern {
            fields: Vec::new(),
            ors: Vec::new(),
            may_hold_absent: true,
        };
        for (key, value) in map {
            if key == "$or" {
                let branches = self.at_key(key, |c| c.or(value, |c, m| c.object(m)))?;
                object.may_hold_absent &= branches.iter().any(|b| b.may_hold_absent);
                object.ors.push(branches);
                continue;
            }
            let field = self.at_key(key, |c| match value {
                Value::Object(m) => c.object(m).map(FieldPattern::Object),
                Value::Array(list) => c.leaf(list).map(FieldPattern::Leaf),
                other => Err(c.problem(format!(
                    "a field's value must be a match list such as [{other}] or a nested object, \
                     not {}",
                    kind(other)
                ))),
            })?;
            object.may_hold_absent &= field.may_hold_absent();
            object.fields.push((key.clone(), field));
        }
        Ok(object)
    }

    /// `"$or": [ {…}, {…}, … ]`.
    fn or<T>(
        &mut self,
        value: &Value,
        mut branch: impl FnMut(&mut Self, &Map<String, Value>) -> Result<T, Problem>,
    ) -> Result<Vec<T>, Problem> {
        let list = match value {
            Value::Array(list) if list.len() >= 2 => list,
            Value::Array(list) => {
                return Err(self.problem(format!(
                    "\"$or\" must be an array of two or more objects; this one has {}",
                    list.len()
                )))
            }
            other => {
                return Err(self.problem(format!(
                    "\"$or\" must be an array of two or more objects, not {}",
                    kind(other)
                )))
            }
        };
        let mut branches = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let compiled = self.at_index(i, |c| match item {
                Value::Object(m) => branch(c, m),
                other => Err(c.problem(format!(
                    "each branch of \"$or\" must be an object of field patterns, not {}",
                    kind(other)
                ))),
            })?;
            branches.push(compiled);
        }
        Ok(branches)
    }

    /// A match list: `[ "a", 5, null, {"prefix": "b"}, … ]`.
    fn leaf(&mut self, list: &[Value]) -> Result<LeafPattern, Problem> {
        if list.is_empty() {
            return Err(self.problem(
                "empty match list; give at least one value or operator such as [\"a\"] or \
                 [{\"exists\": true}]",
            ));
        }
        let mut leaf = LeafPattern {
            matchers: Vec::with_capacity(list.len()),
            absent_ok: false,
        };
        for (i, item) in list.iter().enumerate() {
            let matcher = self.at_index(i, |c| match item {
                Value::String(s) => Ok(Some(Matcher::Equals(s.clone()))),
                Value::Number(n) => Ok(Some(Matcher::Number(n.clone()))),
                Value::Bool(b) => Ok(Some(Matcher::Bool(*b))),
                Value::Null => Ok(Some(Matcher::Null)),
                Value::Array(_) => Err(
                    c.problem("a match list holds values and operator objects, not nested arrays")
                ),
                Value::Object(op) => c.operator(op),
            })?;
            match matcher {
                Some(m) => leaf.matchers.push(m),
                None => leaf.absent_ok = true,
            }
        }
        Ok(leaf)
    }

    /// An operator object in a match list; `None` for `{"exists": false}`.
    fn operator(&mut self, op: &Map<String, Value>) -> Result<Option<Matcher>, Problem> {
        let mut entries = op.iter();
        let (name, value) = match (entries.next(), entries.next()) {
            (Some(entry), None) => entry,
            _ => {
                return Err(self.problem(format!(
                    "an operator object has exactly one key, such as {{\"prefix\": \"us-\"}}; \
                     this one has {}",
                    op.len()
                )))
            }
        };
        self.at_key(name, |c| {
            let matcher = match name.as_str() {
                "prefix" => {
                    c.prefix_or_suffix(value, Matcher::Prefix, Matcher::PrefixIgnoreCase)?
                }
                "suffix" => {
                    c.prefix_or_suffix(value, Matcher::Suffix, Matcher::SuffixIgnoreCase)?
                }
                "equals-ignore-case" => Matcher::EqualsIgnoreCase(fold(c.string(value)?)),
                "wildcard" => {
                    Matcher::Wildcard(Wildcard::parse(c.string(value)?).map_err(|e| c.problem(e))?)
                }
                "cidr" => Matcher::Cidr(Cidr::parse(c.string(value)?).map_err(|e| c.problem(e))?),
                "numeric" => Matcher::Numeric(c.numeric(value)?),
                "anything-but" => Matcher::AnythingBut(c.anything_but(value)?),
                "exists" => match value {
                    Value::Bool(true) => Matcher::Exists,
                    Value::Bool(false) => return Ok(None),
                    other => {
                        return Err(c.problem(format!(
                            "\"exists\" must be true or false, not {}",
                            kind(other)
                        )))
                    }
                },
                _ => {
                    return Err(c.problem(format!(
                        "unknown operator {name:?}; the operators are {OPERATORS}"
                    )))
                }
            };
            Ok(Some(matcher))
        })
    }

    /// The string an operator takes.
    fn string<'v>(&self, value: &'v Value) -> Result<&'v str, Problem> {
        match value {
            Value::String(s) => Ok(s),
            other => {
                Err(self.problem(format!("this operator takes a string, not {}", kind(other))))
            }
        }
    }

    /// `"prefix": "…"` or `"prefix": {"equals-ignore-case": "…"}` (likewise suffix).
    fn prefix_or_suffix(
        &mut self,
        value: &Value,
        exact: fn(String) -> Matcher,
        ignore_case: fn(String) -> Matcher,
    ) -> Result<Matcher, Problem> {
        match value {
            Value::String(s) => Ok(exact(s.clone())),
            Value::Object(m) if m.len() == 1 && m.contains_key("equals-ignore-case") => self
                .at_key("equals-ignore-case", |c| {
                    let s = m
                        .get("equals-ignore-case")
                        .map_or(Ok(""), |v| c.string(v))?;
                    Ok(ignore_case(fold(s)))
                }),
            other => Err(self.problem(format!(
                "this operator takes a string or {{\"equals-ignore-case\": \"…\"}}, not {}",
                kind(other)
            ))),
        }
    }

    /// `"numeric": ["=", 5]`, `[">", 0]`, `[">", 0, "<=", 5]`, …
    fn numeric(&mut self, value: &Value) -> Result<NumericRange, Problem> {
        const SHAPE: &str = "\"numeric\" takes one comparison such as [\">\", 0] (operators =, <, <=, \
                             >, >=) or a range such as [\">\", 0, \"<=\", 5] (> or >= first, then < or <=)";
        let list = match value {
            Value::Array(list) if list.len() == 2 || list.len() == 4 => list,
            Value::Array(list) => {
                return Err(self.problem(format!("{SHAPE}; this one has {} elements", list.len())))
            }
            other => return Err(self.problem(format!("{SHAPE}, not {}", kind(other)))),
        };
        let mut terms = Vec::with_capacity(2);
        for pair in list.chunks(2) {
            let (op, operand) = match pair {
                [Value::String(op), operand] => (op.as_str(), operand),
                [other, _] => {
                    return Err(
                        self.problem(format!("{SHAPE}; found {other} where an operator belongs"))
                    )
                }
                _ => return Err(self.problem(SHAPE)),
            };
            let number = match operand {
                Value::Number(n) => n
                    .as_f64()
                    .ok_or_else(|| self.problem(format!("{n} cannot be compared as a number")))?,
                other => {
                    return Err(self.problem(format!(
                        "the value after {op:?} must be a number, not {}",
                        kind(other)
                    )))
                }
            };
            if !matches!(op, "=" | "<" | "<=" | ">" | ">=") {
                return Err(self.problem(format!(
                    "unknown numeric operator {op:?}; the operators are =, <, <=, >, >="
                )));
            }
            terms.push((op, number));
        }
        match terms.as_slice() {
            [("=", n)] => Ok(NumericRange {
                lower: Some((*n, true)),
                upper: Some((*n, true)),
            }),
            [(op @ ("<" | "<="), n)] => Ok(NumericRange {
                lower: None,
                upper: Some((*n, *op == "<=")),
            }),
            [(op @ (">" | ">="), n)] => Ok(NumericRange {
                lower: Some((*n, *op == ">=")),
                upper: None,
            }),
            [(lo_op @ (">" | ">="), lo), (hi_op @ ("<" | "<="), hi)] => {
                if lo >= hi {
                    return Err(self.problem(format!(
                        "the range's lower bound {lo} must be below its upper bound {hi}"
                    )));
                }
                Ok(NumericRange {
                    lower: Some((*lo, *lo_op == ">=")),
                    upper: Some((*hi, *hi_op == "<=")),
                })
            }
            _ => Err(self.problem(SHAPE)),
        }
    }

    /// `"anything-but": …`.
    fn anything_but(&mut self, value: &Value) -> Result<AnythingBut, Problem> {
        const SHAPE: &str = "\"anything-but\" takes a string, a number, a list of strings or of \
                             numbers, or one of {\"prefix\": …}, {\"suffix\": …}, \
                             {\"equals-ignore-case\": …}, {\"wildcard\": …}";
        match value {
            Value::String(s) => Ok(AnythingBut::Strings(vec![s.clone()])),
            Value::Number(n) => Ok(AnythingBut::Numbers(vec![n.clone()])),
            Value::Array(list) if list.iter().all(Value::is_string) && !list.is_empty() => {
                Ok(AnythingBut::Strings(
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                ))
            }
            Value::Array(list) if list.iter().all(Value::is_number) && !list.is_empty() => Ok(
                AnythingBut::Numbers(list.iter().filter_map(|v| v.as_number().cloned()).collect()),
            ),
            Value::Array(list) if list.is_empty() => {
                Err(self.problem(format!("{SHAPE}; this list is empty")))
            }
            Value::Array(_) => Err(self.problem(format!(
                "{SHAPE}; a list must hold only strings or only numbers"
            ))),
            Value::Object(m) if m.len() == 1 => {
                let Some((name, inner)) = m.iter().next() else {
                    return Err(self.problem(SHAPE));
                };
                self.at_key(name, |c| {
                    let strings = c.strings(inner)?;
                    match name.as_str() {
                        "prefix" | "suffix" => {
                            if strings.iter().any(String::is_empty) {
                                return Err(
                                    c.problem(format!("an anything-but {name} must not be empty"))
                                );
                            }
                            Ok(if name == "prefix" {
                                AnythingBut::Prefixes(strings)
                            } else {
                                AnythingBut::Suffixes(strings)
                            })
                        }
                        "equals-ignore-case" => Ok(AnythingBut::IgnoreCase(
                            strings.iter().map(|s| fold(s)).collect(),
                        )),
                        "wildcard" => strings
                            .iter()
                            .map(|s| Wildcard::parse(s))
                            .collect::<Result<_, _>>()
                            .map(AnythingBut::Wildcards)
                            .map_err(|e| c.problem(e)),
                        _ => Err(
                            c.problem(format!("unknown anything-but operator {name:?}; {SHAPE}"))
                        ),
                    }
                })
            }
            other => Err(self.problem(format!("{SHAPE}, not {}", kind(other)))),
        }
    }

    /// A string or a non-empty list of strings.
    fn strings(&self, value: &Value) -> Result<Vec<String>, Problem> {
        match value {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(list) if !list.is_empty() && list.iter().all(Value::is_string) => Ok(list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()),
            other => Err(self.problem(format!(
                "this takes a string or a non-empty list of strings, not {}",
                kind(other)
            ))),
        }
    }
}

/// How a JSON value is described in an error.
fn kind(value: &Value) -> String {
    let shown = value.to_string();
    let shown = if shown.chars().count() > 40 {
        let cut: String = shown.chars().take(37).collect();
        format!("{cut}...")
    } else {
        shown
    };
    format!("{} ({shown})", crate::core::response::kind(value))
}
