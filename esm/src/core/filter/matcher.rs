//! The leaf operators: does one value of the data match one entry of a match list?
//!
//! Everything here is compiled once (strings lower-cased, wildcards split, CIDR blocks
//! masked) so that matching a value allocates nothing.

use std::net::IpAddr;

use serde_json::Number;

/// One scalar value of the data (or the partition key), borrowed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Leaf<'v> {
    /// A JSON string.
    Str(&'v str),
    /// A JSON number.
    Num(&'v Number),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// One entry of a match list, other than `{"exists": false}` (which is about the
/// absence of values, so it is kept beside the list, not in it).
#[derive(Clone, Debug)]
pub(super) enum Matcher {
    /// `"text"`: the same string.
    Equals(String),
    /// `5`: a number equal to it (`5` matches `5.0`; never the string `"5"`).
    Number(Number),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// `{"prefix": "…"}`.
    Prefix(String),
    /// `{"prefix": {"equals-ignore-case": "…"}}` (held lower-cased).
    PrefixIgnoreCase(String),
    /// `{"suffix": "…"}`.
    Suffix(String),
    /// `{"suffix": {"equals-ignore-case": "…"}}` (held lower-cased).
    SuffixIgnoreCase(String),
    /// `{"equals-ignore-case": "…"}` (held lower-cased).
    EqualsIgnoreCase(String),
    /// `{"wildcard": "…"}`.
    Wildcard(Wildcard),
    /// `{"numeric": […]}`.
    Numeric(NumericRange),
    /// `{"cidr": "…"}`.
    Cidr(Cidr),
    /// `{"exists": true}`: any value at all (`null` included).
    Exists,
    /// `{"anything-but": …}`.
    AnythingBut(AnythingBut),
}

impl Matcher {
    /// Whether `leaf` matches.
    pub(super) fn matches(&self, leaf: Leaf<'_>) -> bool {
        match (self, leaf) {
            (Matcher::Exists, _) => true,
            (Matcher::AnythingBut(but), leaf) => !but.excludes(leaf),
            (Matcher::Number(n), Leaf::Num(v)) => same_number(n, v),
            (Matcher::Numeric(range), Leaf::Num(v)) => {
                v.as_f64().is_some_and(|v| range.contains(v))
            }
            (Matcher::Bool(b), Leaf::Bool(v)) => *b == v,
            (Matcher::Null, Leaf::Null) => true,
            (_, Leaf::Str(s)) => self.matches_str(s),
            _ => false,
        }
    }

    /// Whether the string `s` matches (the string operators).
    fn matches_str(&self, s: &str) -> bool {
        match self {
            Matcher::Equals(p) => s == p,
            Matcher::Prefix(p) => s.starts_with(p.as_str()),
            Matcher::Suffix(p) => s.ends_with(p.as_str()),
            Matcher::PrefixIgnoreCase(p) => starts_with_ignore_case(s, p),
            Matcher::SuffixIgnoreCase(p) => ends_with_ignore_case(s, p),
            Matcher::EqualsIgnoreCase(p) => equals_ignore_case(s, p),
            Matcher::Wildcard(w) => w.matches(s),
            Matcher::Cidr(c) => c.matches(s),
            _ => false,
        }
    }
}

/// `{"anything-but": …}`: matches every value (of any type) except those it names.
/// A string exclusion never excludes a number, and a numeric one never excludes a
/// string, as in EventBridge.
#[derive(Clone, Debug)]
pub(super) enum AnythingBut {
    /// `"a"` or `["a", "b"]`.
    Strings(Vec<String>),
    /// `5` or `[5, 6]`.
    Numbers(Vec<Number>),
    /// `{"prefix": "a"}` or `{"prefix": ["a", "b"]}`.
    Prefixes(Vec<String>),
    /// `{"suffix": …}`.
    Suffixes(Vec<String>),
    /// `{"equals-ignore-case": …}` (held lower-cased).
    IgnoreCase(Vec<String>),
    /// `{"wildcard": …}`.
    Wildcards(Vec<Wildcard>),
}

impl AnythingBut {
    /// Whether `leaf` is one of the values this excludes.
    fn excludes(&self, leaf: Leaf<'_>) -> bool {
        match (self, leaf) {
            (AnythingBut::Numbers(ns), Leaf::Num(v)) => ns.iter().any(|n| same_number(n, v)),
            (AnythingBut::Strings(ss), Leaf::Str(s)) => ss.iter().any(|p| p == s),
            (AnythingBut::Prefixes(ps), Leaf::Str(s)) => {
                ps.iter().any(|p| s.starts_with(p.as_str()))
            }
            (AnythingBut::Suffixes(ps), Leaf::Str(s)) => ps.iter().any(|p| s.ends_with(p.as_str())),
            (AnythingBut::IgnoreCase(ps), Leaf::Str(s)) => {
                ps.iter().any(|p| equals_ignore_case(s, p))
            }
            (AnythingBut::Wildcards(ws), Leaf::Str(s)) => ws.iter().any(|w| w.matches(s)),
            _ => false,
        }
    }
}

/// Whether two JSON numbers are equal as numbers: integers exactly, anything else as
/// `f64` (so `5`, `5.0` and `5e0` are equal).
pub(super) fn same_number(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Lower-cases a pattern string the way values are lower-cased while matching (one
/// `char` at a time, so that both sides fold alike).
pub(super) fn fold(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// `s` equals the folded string `folded`, ignoring case.
fn equals_ignore_case(s: &str, folded: &str) -> bool {
    s.chars().flat_map(char::to_lowercase).eq(folded.chars())
}

/// `s` starts with the folded string `folded`, ignoring case.
fn starts_with_ignore_case(s: &str, folded: &str) -> bool {
    let mut value = s.chars().flat_map(char::to_lowercase);
    folded.chars().all(|c| value.next() == Some(c))
}

/// `s` ends with the folded string `folded`, ignoring case.
fn ends_with_ignore_case(s: &str, folded: &str) -> bool {
    let mut value = s.chars().rev().flat_map(|c| c.to_lowercase().rev());
    folded.chars().rev().all(|c| value.next() == Some(c))
}

/// A compiled `{"wildcard": "…"}`: the literal pieces between the `*`s.
#[derive(Clone, Debug)]
pub(super) struct Wildcard {
    /// The literal text between stars; `pieces.len() - 1` stars in all. `"*a"` is
    /// `["", "a"]`, `"a*b*"` is `["a", "b", ""]`.
    pieces: Vec<String>,
}

impl Wildcard {
    /// Compiles `pattern`: `*` matches any run of characters (none included), `\*` is
    /// a literal star and `\\` a literal backslash. Like EventBridge, two stars in a
    /// row and a backslash before anything else are errors.
    pub(super) fn parse(pattern: &str) -> Result<Self, String> {
        let mut pieces = vec![String::new()];
        let mut chars = pattern.chars();
        let mut after_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' if after_star => {
                    return Err(format!(
                        "wildcard {pattern:?} has consecutive '*' characters, which EventBridge rejects"
                    ))
                }
                '*' => {
                    pieces.push(String::new());
                    after_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => push_char(&mut pieces, escaped),
                    _ => {
                        return Err(format!(
                            "wildcard {pattern:?}: a backslash may only escape '*' or '\\'"
                        ))
                    }
                },
                c => push_char(&mut pieces, c),
            }
            after_star = false;
        }
        Ok(Self { pieces })
    }

    /// Whether `s` matches.
    pub(super) fn matches(&self, s: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        if s.len() < last.len() || !s.ends_with(last.as_str()) {
            return false;
        }
        s = &s[..s.len() - last.len()];
        for piece in middle {
            match s.find(piece.as_str()) {
                Some(at) => s = &s[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

fn push_char(pieces: &mut [String], c: char) {
    if let Some(last) = pieces.last_mut() {
        last.push(c);
    }
}

/// A compiled `{"numeric": […]}`: one comparison, or a lower and an upper bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct NumericRange {
    /// The lower bound and whether it is included.
    pub lower: Option<(f64, bool)>,
    /// The upper bound and whether it is included.
    pub upper: Option<(f64, bool)>,
}

impl NumericRange {
    /// Whether `v` lies in the range.
    pub(super) fn contains(&self, v: f64) -> bool {
        let above = match self.lower {
            Some((lo, true)) => v >= lo,
            Some((lo, false)) => v > lo,
            None => true,
        };
        let below = match self.upper {
            Some((hi, true)) => v <= hi,
            Some((hi, false)) => v < hi,
            None => true,
        };
        above && below
    }
}

/// A compiled `{"cidr": "10.0.0.0/24"}` (IPv4 or IPv6): matches strings that are IP
/// addresses of the same family inside the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cidr {
    network: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    /// Compiles `"ADDRESS/BITS"`.
    pub(super) fn parse(block: &str) -> Result<Self, String> {
        let bad = || format!("cidr {block:?} is not an IPv4 or IPv6 block such as \"10.0.0.0/24\"");
        let (addr, bits) = block.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        let (value, width, v4) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32, true),
            IpAddr::V6(a) => (u128::from(a), 128, false),
        };
        if bits > width {
            return Err(format!(
                "cidr {block:?}: the prefix length is at most {width}"
            ));
        }
        // The top `bits` bits of a `width`-bit address.
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        let mask = if bits == 0 {
            0
        } else {
            all & !((1u128 << (width - bits)) - 1)
        };
        Ok(Self {
            network: value & mask,
            mask,
            v4,
        })
    }

    /// Whether `s` is an address inside the block.
    fn matches(&self, s: &str) -> bool {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if self.v4 => u128::from(u32::from(a)) & self.mask == self.network,
            Ok(IpAddr::V6(a)) if !self.v4 => u128::from(a) & self.mask == self.network,
            _ => false,
        }
    }
}
