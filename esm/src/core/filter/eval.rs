//! Matching a compiled pattern against one record.
//!
//! The data is walked only along the pattern's own paths. Arrays follow EventBridge's
//! rule: a field whose value is an array matches if any element matches, and the
//! fields of one nested pattern are never satisfied by different elements of the same
//! array (`{"a": {"x": [1], "y": [2]}}` does not match `{"a": [{"x": 1}, {"y": 2}]}`).
//!
//! Each sub-pattern reports two ways it can hold ([`Holds`]): *bound*, through at
//! least one value present in the data (which ties it to one array element), or
//! *absent*, through `{"exists": false}` conditions alone. An absent-only condition
//! ties itself to no element, so under an array it must hold for the array as a whole:
//! `{"a": {"x": [{"exists": false}]}}` does not match `{"a": [{"x": 1}, {}]}`, since an
//! `a.x` exists. Beside a bound condition it is checked in the bound element only.

use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::compile::{FieldPattern, LeafPattern, ObjectPattern, RootField, RootPattern};
use super::matcher::Leaf;

/// A record as the patterns see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordView<'v> {
    /// The partition key.
    pub partition_key: &'v str,
    /// The data parsed as JSON; `None` when it is not JSON (or was not read, for
    /// patterns that do not look at it).
    pub data: Option<&'v Value>,
}

/// Whether `pattern` matches `record`.
pub(super) fn matches(pattern: &RootPattern, record: &RecordView<'_>) -> bool {
    root(pattern, record).any()
}

/// How a (sub-)pattern holds, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holds {
    /// Through at least one value present in the data.
    bound: bool,
    /// Through `{"exists": false}` conditions alone.
    absent: bool,
}

impl Holds {
    const NONE: Holds = Holds {
        bound: false,
        absent: false,
    };

    fn any(self) -> bool {
        self.bound || self.absent
    }

    fn or(self, other: Holds) -> Holds {
        Holds {
            bound: self.bound || other.bound,
            absent: self.absent || other.absent,
        }
    }
}

/// The AND of a pattern's conditions: it holds bound when every condition holds and
/// one of them is bound, absent when every condition holds absent.
struct And {
    bound: bool,
    absent: bool,
}

impl And {
    fn new() -> Self {
        Self {
            bound: false,
            absent: true,
        }
    }

    /// Adds a condition; `false` when it does not hold (the AND cannot either).
    fn add(&mut self, h: Holds) -> bool {
        self.bound |= h.bound;
        self.absent &= h.absent;
        h.any()
    }

    fn result(self) -> Holds {
        Holds {
            bound: self.bound,
            absent: self.absent,
        }
    }
}

/// The top level: `partitionKey`, `data` and `$or`.
fn root(pattern: &RootPattern, record: &RecordView<'_>) -> Holds {
    let mut and = And::new();
    for field in &pattern.fields {
        let h = match field {
            RootField::PartitionKey(leaf) => Holds {
                bound: leaf
                    .matchers
                    .iter()
                    .any(|m| m.matches(Leaf::Str(record.partition_key))),
                absent: false,
            },
            // Data that is not JSON matches no `data` condition, not even `exists: false`.
            RootField::Data(object) => match record.data {
                Some(data) => nested(object, Some(data), true),
                None => Holds::NONE,
            },
        };
        if !and.add(h) {
            return Holds::NONE;
        }
    }
    for branches in &pattern.ors {
        let h = branches
            .iter()
            .fold(Holds::NONE, |h, branch| h.or(root(branch, record)));
        if !and.add(h) {
            return Holds::NONE;
        }
    }
    and.result()
}

/// Where a pattern's field names are looked up.
#[derive(Clone, Copy, Debug)]
enum Ctx<'c, 'v> {
    /// One object.
    One(&'v Map<String, Value>),
    /// All the objects of an array (nested arrays flattened), taken together.
    All(&'v [Value]),
    /// All the objects found at `key` in the parent's objects, taken together.
    Below(&'c Ctx<'c, 'v>, &'c str),
}

/// An object pattern against the value found at its field (`None`: no such field).
fn nested(pattern: &ObjectPattern, value: Option<&Value>, want_bound: bool) -> Holds {
    match value {
        Some(Value::Object(map)) => object(pattern, &Ctx::One(map), want_bound),
        Some(Value::Array(items)) => {
            let bound = want_bound
                && each_object(items, &mut |map| {
                    if object(pattern, &Ctx::One(map), true).bound {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .is_break();
            let absent = pattern.may_hold_absent && object(pattern, &Ctx::All(items), false).absent;
            Holds { bound, absent }
        }
        // Absent, or a scalar (which has no fields): only `exists: false` can hold.
        _ => Holds {
            bound: false,
            absent: pattern.may_hold_absent,
        },
    }
}

/// An object pattern in `ctx`. With `want_bound` false only the absent way is
/// worked out (the caller has no use for the other).
fn object(pattern: &ObjectPattern, ctx: &Ctx<'_, '_>, want_bound: bool) -> Holds {
    let mut and = And::new();
    for (key, field) in &pattern.fields {
        let h = match field {
            FieldPattern::Leaf(l) => leaf(l, ctx, key, want_bound),
            FieldPattern::Object(sub) => match ctx {
                Ctx::One(map) => nested(sub, map.get(key), want_bound),
                Ctx::All(_) | Ctx::Below(..) => Holds {
                    bound: false,
                    absent: sub.may_hold_absent && object(sub, &Ctx::Below(ctx, key), false).absent,
                },
            },
        };
        if !and.add(h) {
            return Holds::NONE;
        }
    }
    for branches in &pattern.ors {
        let mut h = Holds::NONE;
        for branch in branches {
            h = h.or(object(branch, ctx, want_bound));
            if h.bound && h.absent {
                break;
            }
        }
        if !and.add(h) {
            return Holds::NONE;
        }
    }
    and.result()
}

/// A match list against the values at `key` in `ctx`.
fn leaf(pattern: &LeafPattern, ctx: &Ctx<'_, '_>, key: &str, want_bound: bool) -> Holds {
    if !want_bound && !pattern.absent_ok {
        return Holds::NONE;
    }
    let mut present = false;
    let mut bound = false;
    let _ = leaves_at(ctx, key, &mut |value| {
        present = true;
        if want_bound && pattern.matchers.iter().any(|m| m.matches(value)) {
            bound = true;
            ControlFlow::Break(())
        } else if want_bound {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    Holds {
        bound,
        absent: pattern.absent_ok && !present,
    }
}

type Visit<'f, T> = &'f mut dyn FnMut(T) -> ControlFlow<()>;

/// Visits the scalar values at `key` in `ctx` (arrays flattened, objects skipped).
fn leaves_at<'v>(ctx: &Ctx<'_, 'v>, key: &str, f: Visit<'_, Leaf<'v>>) -> ControlFlow<()> {
    match ctx {
        Ctx::One(map) => map
            .get(key)
            .map_or(ControlFlow::Continue(()), |v| each_leaf(v, f)),
        _ => objects_in(ctx, &mut |map| {
            map.get(key)
                .map_or(ControlFlow::Continue(()), |v| each_leaf(v, &mut *f))
        }),
    }
}

/// Visits the objects `ctx` stands for.
fn objects_in<'v>(ctx: &Ctx<'_, 'v>, f: Visit<'_, &'v Map<String, Value>>) -> ControlFlow<()> {
    match *ctx {
        Ctx::One(map) => f(map),
        Ctx::All(items) => each_object(items, f),
        Ctx::Below(parent, key) => objects_in(parent, &mut |map| {
            map.get(key)
                .map_or(ControlFlow::Continue(()), |v| each_object_of(v, &mut *f))
        }),
    }
}

/// Visits the objects among `items` (nested arrays flattened).
fn each_object<'v>(items: &'v [Value], f: Visit<'_, &'v Map<String, Value>>) -> ControlFlow<()> {
    for item in items {
        each_object_of(item, f)?;
    }
    ControlFlow::Continue(())
}

/// Visits `value` if it is an object, or the objects in it if it is an array.
fn each_object_of<'v>(value: &'v Value, f: Visit<'_, &'v Map<String, Value>>) -> ControlFlow<()> {
    match value {
        Value::Object(map) => f(map),
        Value::Array(items) => each_object(items, f),
        _ => ControlFlow::Continue(()),
    }
}

/// Visits `value` if it is a scalar, or the scalars in it if it is an array.
fn each_leaf<'v>(value: &'v Value, f: Visit<'_, Leaf<'v>>) -> ControlFlow<()> {
    match value {
        Value::String(s) => f(Leaf::Str(s)),
        Value::Number(n) => f(Leaf::Num(n)),
        Value::Bool(b) => f(Leaf::Bool(*b)),
        Value::Null => f(Leaf::Null),
        Value::Array(items) => {
            for item in items {
                each_leaf(item, f)?;
            }
            ControlFlow::Continue(())
        }
        Value::Object(_) => ControlFlow::Continue(()),
    }
}
