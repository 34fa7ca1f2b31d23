//! Every operator against data, the documented examples of Lambda's filtering page and
//! EventBridge's event-pattern pages, invalid patterns, and properties: no input makes
//! compiling or matching panic.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

/// The partition key of the table cases, unless a case says otherwise.
const KEY: &str = "pk-1";

fn criteria(patterns: &[&str]) -> FilterCriteria {
    FilterCriteria::parse(patterns).unwrap_or_else(|e| panic!("{patterns:?}: {e}"))
}

/// `(name, pattern, data, kept)`: one pattern against one record's data.
type Case = (&'static str, &'static str, &'static str, bool);

fn check(cases: &[Case]) {
    let mut wrong = Vec::new();
    for &(name, pattern, data, kept) in cases {
        if criteria(&[pattern]).keeps(KEY, data.as_bytes()) != kept {
            wrong.push(format!(
                "{name}: {pattern} on {data}: expected {}",
                if kept { "kept" } else { "filtered out" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
#[rustfmt::skip]
fn exact_values() {
    check(&[
        ("string", r#"{"data": {"a": ["x"]}}"#, r#"{"a": "x"}"#, true),
        ("other string", r#"{"data": {"a": ["x"]}}"#, r#"{"a": "y"}"#, false),
        ("case matters", r#"{"data": {"a": ["x"]}}"#, r#"{"a": "X"}"#, false),
        ("missing", r#"{"data": {"a": ["x"]}}"#, r#"{"b": "x"}"#, false),
        ("any of the list", r#"{"data": {"a": ["x", "y"]}}"#, r#"{"a": "y"}"#, true),
        ("number", r#"{"data": {"a": [5]}}"#, r#"{"a": 5}"#, true),
        ("number as float", r#"{"data": {"a": [5]}}"#, r#"{"a": 5.0}"#, true),
        ("number with exponent", r#"{"data": {"a": [500]}}"#, r#"{"a": 5e2}"#, true),
        ("float pattern", r#"{"data": {"a": [5.0]}}"#, r#"{"a": 5}"#, true),
        ("other number", r#"{"data": {"a": [5]}}"#, r#"{"a": 6}"#, false),
        ("negative", r#"{"data": {"a": [-1.5]}}"#, r#"{"a": -1.5}"#, true),
        ("large integer", r#"{"data": {"a": [123456789012]}}"#, r#"{"a": 123456789012}"#, true),
        ("large integer, off by one", r#"{"data": {"a": [123456789012]}}"#, r#"{"a": 123456789013}"#, false),
        ("u64", r#"{"data": {"a": [18446744073709551615]}}"#, r#"{"a": 18446744073709551615}"#, true),
        ("number pattern, string value", r#"{"data": {"a": [5]}}"#, r#"{"a": "5"}"#, false),
        ("string pattern, number value", r#"{"data": {"a": ["5"]}}"#, r#"{"a": 5}"#, false),
        ("true", r#"{"data": {"a": [true]}}"#, r#"{"a": true}"#, true),
        ("true, not the string", r#"{"data": {"a": [true]}}"#, r#"{"a": "true"}"#, false),
        ("false", r#"{"data": {"a": [false]}}"#, r#"{"a": true}"#, false),
        ("null", r#"{"data": {"a": [null]}}"#, r#"{"a": null}"#, true),
        ("null is not empty", r#"{"data": {"a": [null]}}"#, r#"{"a": ""}"#, false),
        ("null is not missing", r#"{"data": {"a": [null]}}"#, r#"{"b": 1}"#, false),
        ("empty string", r#"{"data": {"a": [""]}}"#, r#"{"a": ""}"#, true),
        ("empty is not null", r#"{"data": {"a": [""]}}"#, r#"{"a": null}"#, false),
        ("object value is no leaf", r#"{"data": {"a": ["x"]}}"#, r#"{"a": {"b": "x"}}"#, false),
        ("mixed list", r#"{"data": {"a": ["x", 1, null, {"prefix": "p"}]}}"#, r#"{"a": "pq"}"#, true),
    ]);
}

#[test]
#[rustfmt::skip]
fn nested_fields() {
    check(&[
        ("two levels", r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"a": {"b": "x"}}"#, true),
        ("three levels", r#"{"data": {"a": {"b": {"c": [1]}}}}"#, r#"{"a": {"b": {"c": 1, "d": 2}}}"#, true),
        ("wrong leaf", r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"a": {"b": "y"}}"#, false),
        ("parent missing", r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"b": "x"}"#, false),
        ("parent is a scalar", r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"a": "x"}"#, false),
        ("a dotted key is not a path", r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"a.b": "x"}"#, false),
    ]);
}

#[test]
#[rustfmt::skip]
fn arrays_match_if_any_element_does() {
    check(&[
        ("element", r#"{"data": {"a": ["b"]}}"#, r#"{"a": ["a", "b"]}"#, true),
        ("no element", r#"{"data": {"a": ["c"]}}"#, r#"{"a": ["a", "b"]}"#, false),
        ("empty array", r#"{"data": {"a": ["c"]}}"#, r#"{"a": []}"#, false),
        ("nested arrays", r#"{"data": {"a": [3]}}"#, r#"{"a": [[1, 2], [3]]}"#, true),
        ("numeric over elements", r#"{"data": {"a": [{"numeric": [">", 10]}]}}"#, r#"{"a": [1, 50]}"#, true),
        ("prefix over elements", r#"{"data": {"a": [{"prefix": "x"}]}}"#, r#"{"a": ["ya", "xb"]}"#, true),
        ("objects in the array", r#"{"data": {"a": {"b": [1]}}}"#, r#"{"a": [{"b": 2}, {"b": 1}]}"#, true),
        ("objects in the array, none", r#"{"data": {"a": {"b": [1]}}}"#, r#"{"a": [{"b": 2}, {"c": 1}]}"#, false),
        ("scalars beside objects", r#"{"data": {"a": [5]}}"#, r#"{"a": [{"b": 5}, 5]}"#, true),
        ("objects are no leaves", r#"{"data": {"a": [5]}}"#, r#"{"a": [{"b": 5}]}"#, false),
        ("one element must match all fields", r#"{"data": {"a": {"x": [1], "y": [2]}}}"#, r#"{"a": [{"x": 1}, {"y": 2}]}"#, false),
        ("one element matches all fields", r#"{"data": {"a": {"x": [1], "y": [2]}}}"#, r#"{"a": [{"x": 1}, {"x": 1, "y": 2}]}"#, true),
        ("consistency two arrays deep", r#"{"data": {"a": {"b": {"c": [1], "d": [2]}}}}"#, r#"{"a": [{"b": [{"c": 1}, {"d": 2}]}]}"#, false),
        (
            "different arrays may bind different elements",
            r#"{"data": {"a": {"x": [1]}, "b": {"y": [2]}}}"#,
            r#"{"a": [{"x": 0}, {"x": 1}], "b": [{"y": 2}, {"y": 0}]}"#,
            true,
        ),
        ("array of arrays of objects", r#"{"data": {"a": {"b": [1]}}}"#, r#"{"a": [[{"b": 1}]]}"#, true),
    ]);
}

#[test]
#[rustfmt::skip]
fn prefix_and_suffix() {
    check(&[
        ("prefix", r#"{"data": {"r": [{"prefix": "us-"}]}}"#, r#"{"r": "us-east-1"}"#, true),
        ("not the prefix", r#"{"data": {"r": [{"prefix": "us-"}]}}"#, r#"{"r": "eu-west-1"}"#, false),
        ("prefix is case-sensitive", r#"{"data": {"r": [{"prefix": "us-"}]}}"#, r#"{"r": "US-east-1"}"#, false),
        ("prefix on a number", r#"{"data": {"r": [{"prefix": "1"}]}}"#, r#"{"r": 12}"#, false),
        ("empty prefix, any string", r#"{"data": {"r": [{"prefix": ""}]}}"#, r#"{"r": "x"}"#, true),
        ("empty prefix, not null", r#"{"data": {"r": [{"prefix": ""}]}}"#, r#"{"r": null}"#, false),
        ("prefix ignoring case", r#"{"data": {"s": [{"prefix": {"equals-ignore-case": "EventB"}}]}}"#, r#"{"s": "eventbridge"}"#, true),
        ("prefix ignoring case, upper", r#"{"data": {"s": [{"prefix": {"equals-ignore-case": "eventb"}}]}}"#, r#"{"s": "EVENTBRIDGE"}"#, true),
        ("prefix ignoring case, other", r#"{"data": {"s": [{"prefix": {"equals-ignore-case": "eventb"}}]}}"#, r#"{"s": "bridge"}"#, false),
        ("prefix ignoring case, too short", r#"{"data": {"s": [{"prefix": {"equals-ignore-case": "eventb"}}]}}"#, r#"{"s": "Event"}"#, false),
        ("suffix", r#"{"data": {"f": [{"suffix": ".png"}]}}"#, r#"{"f": "a.png"}"#, true),
        ("suffix is case-sensitive", r#"{"data": {"f": [{"suffix": ".png"}]}}"#, r#"{"f": "a.PNG"}"#, false),
        ("not the suffix", r#"{"data": {"f": [{"suffix": ".png"}]}}"#, r#"{"f": "a.jpg"}"#, false),
        ("suffix ignoring case", r#"{"data": {"f": [{"suffix": {"equals-ignore-case": ".PNG"}}]}}"#, r#"{"f": "a.png"}"#, true),
        ("suffix ignoring case, other", r#"{"data": {"f": [{"suffix": {"equals-ignore-case": ".png"}}]}}"#, r#"{"f": "a.pn"}"#, false),
        ("suffix, non-ASCII", r#"{"data": {"f": [{"suffix": {"equals-ignore-case": "ÉTÉ"}}]}}"#, r#"{"f": "un été"}"#, true),
    ]);
}

#[test]
#[rustfmt::skip]
fn equals_ignore_case() {
    check(&[
        ("upper", r#"{"data": {"n": [{"equals-ignore-case": "alice"}]}}"#, r#"{"n": "ALICE"}"#, true),
        ("mixed", r#"{"data": {"n": [{"equals-ignore-case": "aLiCe"}]}}"#, r#"{"n": "Alice"}"#, true),
        ("longer", r#"{"data": {"n": [{"equals-ignore-case": "alice"}]}}"#, r#"{"n": "Alicia"}"#, false),
        ("non-ASCII", r#"{"data": {"n": [{"equals-ignore-case": "ÉCOLE"}]}}"#, r#"{"n": "école"}"#, true),
        ("not a number", r#"{"data": {"n": [{"equals-ignore-case": "5"}]}}"#, r#"{"n": 5}"#, false),
    ]);
}

#[test]
#[rustfmt::skip]
fn wildcard() {
    check(&[
        ("middle", r#"{"data": {"s": [{"wildcard": "Simple*Service"}]}}"#, r#"{"s": "SimpleQueueService"}"#, true),
        ("empty run", r#"{"data": {"s": [{"wildcard": "Simple*Service"}]}}"#, r#"{"s": "SimpleService"}"#, true),
        ("must end so", r#"{"data": {"s": [{"wildcard": "Simple*Service"}]}}"#, r#"{"s": "SimpleServiceX"}"#, false),
        ("both ends", r#"{"data": {"p": [{"wildcard": "*/lib/*"}]}}"#, r#"{"p": "/usr/lib/x.jar"}"#, true),
        ("both ends, missing", r#"{"data": {"p": [{"wildcard": "*/lib/*"}]}}"#, r#"{"p": "/usr/bin/x"}"#, false),
        ("several stars", r#"{"data": {"p": [{"wildcard": "a*b*c"}]}}"#, r#"{"p": "a-c-b-c"}"#, true),
        ("several stars, wrong order", r#"{"data": {"p": [{"wildcard": "a*b*c"}]}}"#, r#"{"p": "a-c-b"}"#, false),
        ("no overlap of ends", r#"{"data": {"p": [{"wildcard": "a*a"}]}}"#, r#"{"p": "a"}"#, false),
        ("ends", r#"{"data": {"p": [{"wildcard": "a*a"}]}}"#, r#"{"p": "aa"}"#, true),
        ("lone star", r#"{"data": {"p": [{"wildcard": "*"}]}}"#, r#"{"p": ""}"#, true),
        ("lone star, not a number", r#"{"data": {"p": [{"wildcard": "*"}]}}"#, r#"{"p": 5}"#, false),
        ("no star is equality", r#"{"data": {"p": [{"wildcard": "abc"}]}}"#, r#"{"p": "abcd"}"#, false),
        ("escaped star", r#"{"data": {"p": [{"wildcard": "a\\*b"}]}}"#, r#"{"p": "a*b"}"#, true),
        ("escaped star is literal", r#"{"data": {"p": [{"wildcard": "a\\*b"}]}}"#, r#"{"p": "axb"}"#, false),
        ("escaped backslash", r#"{"data": {"p": [{"wildcard": "a\\\\*"}]}}"#, r#"{"p": "a\\b"}"#, true),
        ("escaped star then star", r#"{"data": {"p": [{"wildcard": "\\**"}]}}"#, r#"{"p": "*x"}"#, true),
    ]);
}

#[test]
#[rustfmt::skip]
fn anything_but() {
    check(&[
        ("string", r#"{"data": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": "running"}"#, true),
        ("the string", r#"{"data": {"s": [{"anything-but": "init"}]}}"#, r#"{"s": "init"}"#, false),
        ("missing is not anything", r#"{"data": {"s": [{"anything-but": "init"}]}}"#, r#"{"t": "x"}"#, false),
        ("a number is not the string", r#"{"data": {"s": [{"anything-but": "5"}]}}"#, r#"{"s": 5}"#, true),
        ("null is not the string", r#"{"data": {"s": [{"anything-but": "x"}]}}"#, r#"{"s": null}"#, true),
        ("string list", r#"{"data": {"s": [{"anything-but": ["stopped", "overloaded"]}]}}"#, r#"{"s": "overloaded"}"#, false),
        ("string list, other", r#"{"data": {"s": [{"anything-but": ["stopped", "overloaded"]}]}}"#, r#"{"s": "running"}"#, true),
        ("number", r#"{"data": {"x": [{"anything-but": 123}]}}"#, r#"{"x": 123.0}"#, false),
        ("other number", r#"{"data": {"x": [{"anything-but": 123}]}}"#, r#"{"x": 124}"#, true),
        ("a string is not the number", r#"{"data": {"x": [{"anything-but": 123}]}}"#, r#"{"x": "123"}"#, true),
        ("number list", r#"{"data": {"x": [{"anything-but": [100, 200, 300]}]}}"#, r#"{"x": 200}"#, false),
        ("prefix", r#"{"data": {"s": [{"anything-but": {"prefix": "init"}}]}}"#, r#"{"s": "initializing"}"#, false),
        ("prefix, other", r#"{"data": {"s": [{"anything-but": {"prefix": "init"}}]}}"#, r#"{"s": "running"}"#, true),
        ("prefix list", r#"{"data": {"s": [{"anything-but": {"prefix": ["init", "err"]}}]}}"#, r#"{"s": "error"}"#, false),
        ("suffix", r#"{"data": {"f": [{"anything-but": {"suffix": ".png"}}]}}"#, r#"{"f": "a.png"}"#, false),
        ("suffix, other", r#"{"data": {"f": [{"anything-but": {"suffix": ".png"}}]}}"#, r#"{"f": "a.jpg"}"#, true),
        ("ignoring case", r#"{"data": {"s": [{"anything-but": {"equals-ignore-case": "initializing"}}]}}"#, r#"{"s": "INITIALIZING"}"#, false),
        ("ignoring case, other", r#"{"data": {"s": [{"anything-but": {"equals-ignore-case": "initializing"}}]}}"#, r#"{"s": "running"}"#, true),
        (
            "ignoring case, list",
            r#"{"data": {"s": [{"anything-but": {"equals-ignore-case": ["Stopped", "OverLoaded"]}}]}}"#,
            r#"{"s": "overloaded"}"#,
            false,
        ),
        ("wildcard", r#"{"data": {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}}"#, r#"{"p": "/usr/lib/a"}"#, false),
        ("wildcard, other", r#"{"data": {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}}"#, r#"{"p": "/usr/bin/a"}"#, true),
        ("array: some element is not it", r#"{"data": {"s": [{"anything-but": "a"}]}}"#, r#"{"s": ["a", "b"]}"#, true),
        ("array: every element is it", r#"{"data": {"s": [{"anything-but": "a"}]}}"#, r#"{"s": ["a", "a"]}"#, false),
        ("an object is no value", r#"{"data": {"s": [{"anything-but": "a"}]}}"#, r#"{"s": {"b": 1}}"#, false),
    ]);
}

#[test]
#[rustfmt::skip]
fn numeric() {
    check(&[
        ("=", r#"{"data": {"p": [{"numeric": ["=", 100]}]}}"#, r#"{"p": 100}"#, true),
        ("= float", r#"{"data": {"p": [{"numeric": ["=", 100]}]}}"#, r#"{"p": 100.0}"#, true),
        ("= other", r#"{"data": {"p": [{"numeric": ["=", 100]}]}}"#, r#"{"p": 101}"#, false),
        ("= a string", r#"{"data": {"p": [{"numeric": ["=", 100]}]}}"#, r#"{"p": "100"}"#, false),
        ("<", r#"{"data": {"p": [{"numeric": ["<", 10]}]}}"#, r#"{"p": 9.99}"#, true),
        ("< bound", r#"{"data": {"p": [{"numeric": ["<", 10]}]}}"#, r#"{"p": 10}"#, false),
        ("<=", r#"{"data": {"p": [{"numeric": ["<=", 10]}]}}"#, r#"{"p": 10}"#, true),
        ("<= above", r#"{"data": {"p": [{"numeric": ["<=", 10]}]}}"#, r#"{"p": 10.5}"#, false),
        (">", r#"{"data": {"p": [{"numeric": [">", 0]}]}}"#, r#"{"p": 0.1}"#, true),
        ("> bound", r#"{"data": {"p": [{"numeric": [">", 0]}]}}"#, r#"{"p": 0}"#, false),
        (">=", r#"{"data": {"p": [{"numeric": [">=", 0]}]}}"#, r#"{"p": 0}"#, true),
        (">= below", r#"{"data": {"p": [{"numeric": [">=", 0]}]}}"#, r#"{"p": -1}"#, false),
        ("range inside", r#"{"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#, r#"{"c": 5}"#, true),
        ("range low bound", r#"{"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#, r#"{"c": 0}"#, false),
        ("range above", r#"{"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#, r#"{"c": 5.5}"#, false),
        ("range closed low", r#"{"data": {"c": [{"numeric": [">=", 10, "<", 20]}]}}"#, r#"{"c": 10}"#, true),
        ("range open high", r#"{"data": {"c": [{"numeric": [">=", 10, "<", 20]}]}}"#, r#"{"c": 20}"#, false),
        ("range, a string", r#"{"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#, r#"{"c": "3"}"#, false),
        ("range, null", r#"{"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}}"#, r#"{"c": null}"#, false),
        ("negative range", r#"{"data": {"c": [{"numeric": [">=", -5e9, "<", -1]}]}}"#, r#"{"c": -2}"#, true),
        ("large", r#"{"data": {"c": [{"numeric": [">", 1e15]}]}}"#, r#"{"c": 1e16}"#, true),
        ("exponent", r#"{"data": {"c": [{"numeric": ["=", 3.018e2]}]}}"#, r#"{"c": 301.8}"#, true),
    ]);
}

#[test]
#[rustfmt::skip]
fn exists() {
    check(&[
        ("true, present", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"a": "x"}"#, true),
        ("true, null is present", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"a": null}"#, true),
        ("true, missing", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"b": "x"}"#, false),
        ("true, an object is no leaf", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"a": {"b": 1}}"#, false),
        ("true, empty array", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"a": []}"#, false),
        ("true, array", r#"{"data": {"a": [{"exists": true}]}}"#, r#"{"a": [1]}"#, true),
        ("false, missing", r#"{"data": {"a": [{"exists": false}]}}"#, r#"{"b": 1}"#, true),
        ("false, present", r#"{"data": {"a": [{"exists": false}]}}"#, r#"{"a": 1}"#, false),
        ("false, null is present", r#"{"data": {"a": [{"exists": false}]}}"#, r#"{"a": null}"#, false),
        ("false, an object is no leaf", r#"{"data": {"a": [{"exists": false}]}}"#, r#"{"a": {"b": 1}}"#, true),
        ("false, empty array", r#"{"data": {"a": [{"exists": false}]}}"#, r#"{"a": []}"#, true),
        ("false, under a missing parent", r#"{"data": {"a": {"b": [{"exists": false}]}}}"#, r#"{}"#, true),
        ("false, under a scalar", r#"{"data": {"a": {"b": [{"exists": false}]}}}"#, r#"{"a": 5}"#, true),
        ("false or a value", r#"{"data": {"a": [{"exists": false}, "x"]}}"#, r#"{"a": "x"}"#, true),
        ("false or a value, other", r#"{"data": {"a": [{"exists": false}, "x"]}}"#, r#"{"a": "y"}"#, false),
        ("true beside a value", r#"{"data": {"a": ["y", {"exists": true}]}}"#, r#"{"a": "x"}"#, true),
        // Under an array, an absence binds no element: it holds only if no element has the field.
        ("false, some element has it", r#"{"data": {"a": {"x": [{"exists": false}]}}}"#, r#"{"a": [{"x": 1}, {}]}"#, false),
        ("false, no element has it", r#"{"data": {"a": {"x": [{"exists": false}]}}}"#, r#"{"a": [{}, {"y": 1}]}"#, true),
        ("false, empty array of objects", r#"{"data": {"a": {"x": [{"exists": false}]}}}"#, r#"{"a": []}"#, true),
        // Beside a value that binds an element, it is checked in that element.
        ("false beside a bound field", r#"{"data": {"a": {"x": [{"exists": false}], "y": [1]}}}"#, r#"{"a": [{"x": 1, "y": 2}, {"y": 1}]}"#, true),
        (
            "false beside a bound field, same element has it",
            r#"{"data": {"a": {"x": [{"exists": false}], "y": [1]}}}"#,
            r#"{"a": [{"x": 1, "y": 1}, {"y": 2}]}"#,
            false,
        ),
        (
            "false, two arrays deep",
            r#"{"data": {"a": {"b": {"c": [{"exists": false}]}}}}"#,
            r#"{"a": [{"b": [{}]}, {"b": [{"d": 1}, {"c": 1}]}]}"#,
            false,
        ),
    ]);
}

#[test]
#[rustfmt::skip]
fn cidr() {
    check(&[
        ("inside", r#"{"data": {"ip": [{"cidr": "10.0.0.0/24"}]}}"#, r#"{"ip": "10.0.0.33"}"#, true),
        ("outside", r#"{"data": {"ip": [{"cidr": "10.0.0.0/24"}]}}"#, r#"{"ip": "10.0.1.1"}"#, false),
        ("not an address", r#"{"data": {"ip": [{"cidr": "10.0.0.0/24"}]}}"#, r#"{"ip": "host"}"#, false),
        ("host bits ignored", r#"{"data": {"ip": [{"cidr": "10.0.0.7/8"}]}}"#, r#"{"ip": "10.200.0.1"}"#, true),
        ("everything", r#"{"data": {"ip": [{"cidr": "0.0.0.0/0"}]}}"#, r#"{"ip": "192.168.1.1"}"#, true),
        ("one address", r#"{"data": {"ip": [{"cidr": "192.168.1.1/32"}]}}"#, r#"{"ip": "192.168.1.2"}"#, false),
        ("IPv6", r#"{"data": {"ip": [{"cidr": "2001:db8::/32"}]}}"#, r#"{"ip": "2001:db8::1"}"#, true),
        ("IPv6 outside", r#"{"data": {"ip": [{"cidr": "2001:db8::/32"}]}}"#, r#"{"ip": "2001:db9::1"}"#, false),
        ("IPv4 block, IPv6 address", r#"{"data": {"ip": [{"cidr": "0.0.0.0/0"}]}}"#, r#"{"ip": "::1"}"#, false),
    ]);
}

#[test]
#[rustfmt::skip]
fn or_at_any_level() {
    check(&[
        ("first branch", r#"{"data": {"$or": [{"l": ["NY"]}, {"d": ["Mon"]}]}}"#, r#"{"l": "NY", "d": "Tue"}"#, true),
        ("second branch", r#"{"data": {"$or": [{"l": ["NY"]}, {"d": ["Mon"]}]}}"#, r#"{"l": "LA", "d": "Mon"}"#, true),
        ("no branch", r#"{"data": {"$or": [{"l": ["NY"]}, {"d": ["Mon"]}]}}"#, r#"{"l": "LA", "d": "Tue"}"#, false),
        ("beside a field", r#"{"data": {"s": ["x"], "$or": [{"a": [1]}, {"b": [1]}]}}"#, r#"{"s": "x", "b": 1}"#, true),
        ("beside a failing field", r#"{"data": {"s": ["x"], "$or": [{"a": [1]}, {"b": [1]}]}}"#, r#"{"s": "y", "b": 1}"#, false),
        ("nested level", r#"{"data": {"o": {"$or": [{"a": [1]}, {"b": [1]}]}}}"#, r#"{"o": {"b": 1}}"#, true),
        ("or inside or", r#"{"data": {"$or": [{"a": [1]}, {"b": [2], "$or": [{"c": [3]}, {"d": [4]}]}]}}"#, r#"{"b": 2, "d": 4}"#, true),
        (
            "or inside or, inner fails",
            r#"{"data": {"$or": [{"a": [1]}, {"b": [2], "$or": [{"c": [3]}, {"d": [4]}]}]}}"#,
            r#"{"b": 2, "d": 5}"#,
            false,
        ),
        (
            "two ors, both needed",
            r#"{"data": {"$or": [{"a": [1]}, {"b": [1]}], "x": {"$or": [{"c": [1]}, {"d": [1]}]}}}"#,
            r#"{"a": 1, "x": {"e": 1}}"#,
            false,
        ),
        ("branch with exists false", r#"{"data": {"$or": [{"a": [{"exists": false}]}, {"b": [1]}]}}"#, r#"{"c": 1}"#, true),
        (
            "absent branches under an array",
            r#"{"data": {"a": {"$or": [{"b": [{"exists": false}]}, {"c": [{"exists": false}]}]}}}"#,
            r#"{"a": [{"b": 1}, {"c": 1}]}"#,
            false,
        ),
        (
            "bound branch under an array",
            r#"{"data": {"a": {"$or": [{"b": [1]}, {"c": [{"exists": false}]}]}}}"#,
            r#"{"a": [{"b": 2, "c": 1}, {"b": 1, "c": 1}]}"#,
            true,
        ),
        ("top level", r#"{"$or": [{"partitionKey": ["other"]}, {"data": {"a": [1]}}]}"#, r#"{"a": 1}"#, true),
        ("top level, neither", r#"{"$or": [{"partitionKey": ["other"]}, {"data": {"a": [1]}}]}"#, r#"{"a": 2}"#, false),
        ("top level, key branch with non-JSON data", r#"{"$or": [{"partitionKey": ["pk-1"]}, {"data": {"a": [1]}}]}"#, "not json", true),
    ]);
}

#[test]
#[rustfmt::skip]
fn and_within_a_pattern() {
    check(&[
        (
            "all fields",
            r#"{"data": {"a": ["x"], "b": [{"numeric": [">", 1]}], "c": {"d": [null]}}}"#,
            r#"{"a": "x", "b": 2, "c": {"d": null}}"#,
            true,
        ),
        (
            "one field fails",
            r#"{"data": {"a": ["x"], "b": [{"numeric": [">", 1]}], "c": {"d": [null]}}}"#,
            r#"{"a": "x", "b": 1, "c": {"d": null}}"#,
            false,
        ),
        ("one field missing", r#"{"data": {"a": ["x"], "b": [{"numeric": [">", 1]}], "c": {"d": [null]}}}"#, r#"{"a": "x", "b": 2}"#, false),
        ("key and data", r#"{"partitionKey": ["pk-1"], "data": {"a": [1]}}"#, r#"{"a": 1}"#, true),
        ("key fails", r#"{"partitionKey": ["pk-2"], "data": {"a": [1]}}"#, r#"{"a": 1}"#, false),
        ("data fails", r#"{"partitionKey": ["pk-1"], "data": {"a": [1]}}"#, r#"{"a": 2}"#, false),
    ]);
}

#[test]
#[rustfmt::skip]
fn data_that_is_not_a_json_object() {
    check(&[
        ("not JSON", r#"{"data": {"a": ["x"]}}"#, "hello", false),
        ("not JSON, exists false", r#"{"data": {"a": [{"exists": false}]}}"#, "hello", false),
        ("empty data", r#"{"data": {"a": [{"exists": false}]}}"#, "", false),
        ("truncated JSON", r#"{"data": {"a": ["x"]}}"#, r#"{"a": "x""#, false),
        ("trailing garbage", r#"{"data": {"a": ["x"]}}"#, r#"{"a": "x"} x"#, false),
        ("not JSON, with a key condition", r#"{"partitionKey": ["pk-1"], "data": {"a": [{"exists": false}]}}"#, "hello", false),
        // JSON that is not an object has no fields: only `exists: false` holds.
        ("a number", r#"{"data": {"a": [{"exists": false}]}}"#, "5", true),
        ("a number, a value", r#"{"data": {"a": [5]}}"#, "5", false),
        ("a string", r#"{"data": {"a": [{"exists": true}]}}"#, r#""a""#, false),
        ("null", r#"{"data": {"a": [{"exists": false}]}}"#, "null", true),
        // An array at the top: its objects are matched, as arrays are anywhere else.
        ("an array of objects", r#"{"data": {"type": ["order"]}}"#, r#"[{"type": "quote"}, {"type": "order"}]"#, true),
        ("an array of scalars", r#"{"data": {"type": ["order"]}}"#, r#"["order"]"#, false),
        ("whitespace around", r#"{"data": {"a": ["x"]}}"#, " \n{\"a\": \"x\"}\t", true),
    ]);
}

#[test]
#[rustfmt::skip]
fn partition_key() {
    let cases: &[(&str, &str, &str, bool)] = &[
        (r#"{"partitionKey": ["order-1"]}"#, "order-1", "exact", true),
        (r#"{"partitionKey": ["order-1"]}"#, "order-2", "other", false),
        (r#"{"partitionKey": [{"prefix": "order-"}]}"#, "order-9", "prefix", true),
        (r#"{"partitionKey": [{"suffix": "-eu"}]}"#, "k-us", "suffix", false),
        (r#"{"partitionKey": [{"anything-but": ["a", "b"]}]}"#, "c", "anything-but", true),
        (r#"{"partitionKey": [{"anything-but": ["a", "b"]}]}"#, "a", "anything-but, excluded", false),
        (r#"{"partitionKey": [{"equals-ignore-case": "KEY"}]}"#, "key", "ignoring case", true),
        (r#"{"partitionKey": [{"wildcard": "tenant-*-eu"}]}"#, "tenant-42-eu", "wildcard", true),
        (r#"{"partitionKey": [{"numeric": [">", 0]}]}"#, "5", "a key is a string, never a number", false),
        (r#"{"partitionKey": [5]}"#, "5", "number pattern", false),
        (r#"{"partitionKey": [{"exists": true}]}"#, "", "a key always exists", true),
        (r#"{"partitionKey": [{"exists": false}]}"#, "x", "a key always exists, so never absent", false),
        (r#"{"partitionKey": [{"cidr": "10.0.0.0/8"}]}"#, "10.1.2.3", "cidr", true),
    ];
    for &(pattern, key, name, kept) in cases {
        let c = criteria(&[pattern]);
        assert_eq!(
            c.keeps(key, b"not json"),
            kept,
            "{name}: {pattern} with key {key:?}"
        );
        assert_eq!(
            c.keeps(key, br#"{"a": 1}"#),
            kept,
            "{name}: {pattern} with key {key:?}"
        );
    }
}

#[test]
fn patterns_are_ored() {
    let c = criteria(&[
        r#"{"data": {"a": [1]}}"#,
        r#"{"data": {"b": [{"prefix": "x"}]}}"#,
        r#"{"partitionKey": ["vip"]}"#,
    ]);
    assert!(c.keeps(KEY, br#"{"a": 1}"#));
    assert!(c.keeps(KEY, br#"{"b": "xy"}"#));
    assert!(c.keeps(KEY, br#"{"a": 2, "b": "xy"}"#));
    assert!(!c.keeps(KEY, br#"{"a": 2, "b": "y"}"#));
    assert!(!c.keeps(KEY, b"not json"));
    assert!(c.keeps("vip", b"not json"));
    assert!(c.keeps("vip", br#"{"a": 2}"#));
}

#[test]
fn no_patterns_keep_everything() {
    for c in [
        FilterCriteria::default(),
        FilterCriteria::parse::<&str>(&[]).unwrap(),
        FilterCriteria::from_values(&[]).unwrap(),
    ] {
        assert!(c.is_empty());
        assert!(c.keeps(KEY, b"not json"));
        assert!(c.keeps("", b""));
        assert!(c.keeps(KEY, br#"{"a": 1}"#));
    }
    assert!(!criteria(&[r#"{"data": {"a": [1]}}"#]).is_empty());
}

#[test]
fn from_values_compiles_like_parse() {
    let value = json!({"data": {"a": [{"numeric": [">", 1]}]}, "partitionKey": [{"prefix": "p"}]});
    let c = FilterCriteria::from_values(&[value]).unwrap();
    assert!(c.keeps("pk", br#"{"a": 2}"#));
    assert!(!c.keeps("pk", br#"{"a": 1}"#));
    assert!(!c.keeps("k", br#"{"a": 2}"#));
}

/// The examples on Lambda's "Control which events Lambda sends to your function" page
/// and its Kinesis filtering page, with the comparison-operator table.
#[test]
#[rustfmt::skip]
fn lambda_documented_examples() {
    // Documented example (Kinesis filtering page): only orders whose type is "buy".
    let kinesis_record =
        r#"{"record": 12345, "order": {"type": "buy", "stock": "ANYCO", "quantity": 1000}}"#;
    let sell = r#"{"record": 12346, "order": {"type": "sell", "stock": "ANYCO", "quantity": 10}}"#;
    let weather = r#"{"City": "Seattle", "State": "WA", "Temperature": "46", "Month": "December"}"#;
    check(&[
        ("Kinesis: order type buy", r#"{"data": {"order": {"type": ["buy"]}}}"#, kinesis_record, true),
        ("Kinesis: order type buy, a sale", r#"{"data": {"order": {"type": ["buy"]}}}"#, sell, false),
        // Documented example: the event with City/State/Temperature/Month as data.
        ("data property", r#"{"data": {"City": ["Seattle"]}}"#, weather, true),
        // Documented example: Temperature is a string there, so numeric never matches it.
        ("numeric on a string", r#"{"data": {"Temperature": [{"numeric": [">", 40]}]}}"#, weather, false),
        // Documented example: Temperature greater than 50 and at most 60.
        ("Temperature range", r#"{"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}}"#, r#"{"Temperature": 60}"#, true),
        ("Temperature range, at 50", r#"{"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}}"#, r#"{"Temperature": 50}"#, false),
        // The comparison-operator table, one row each.
        ("Null", r#"{"data": {"UserID": [null]}}"#, r#"{"UserID": null}"#, true),
        ("Empty", r#"{"data": {"LastName": [""]}}"#, r#"{"LastName": ""}"#, true),
        ("Equals", r#"{"data": {"Name": ["Alice"]}}"#, r#"{"Name": "Alice"}"#, true),
        ("Equals (ignore case)", r#"{"data": {"Name": [{"equals-ignore-case": "alice"}]}}"#, r#"{"Name": "Alice"}"#, true),
        ("And", r#"{"data": {"Location": ["New York"], "Day": ["Monday"]}}"#, r#"{"Location": "New York", "Day": "Monday"}"#, true),
        ("And, one", r#"{"data": {"Location": ["New York"], "Day": ["Monday"]}}"#, r#"{"Location": "New York", "Day": "Sunday"}"#, false),
        ("Or", r#"{"data": {"PaymentType": ["Credit", "Debit"]}}"#, r#"{"PaymentType": "Debit"}"#, true),
        (
            "Or (multiple fields)",
            r#"{"data": {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}}"#,
            r#"{"Location": "Boston", "Day": "Monday"}"#,
            true,
        ),
        ("Not", r#"{"data": {"Weather": [{"anything-but": ["Raining"]}]}}"#, r#"{"Weather": "Sunny"}"#, true),
        ("Not, raining", r#"{"data": {"Weather": [{"anything-but": ["Raining"]}]}}"#, r#"{"Weather": "Raining"}"#, false),
        ("Numeric (equals)", r#"{"data": {"Price": [{"numeric": ["=", 100]}]}}"#, r#"{"Price": 100}"#, true),
        ("Numeric (range)", r#"{"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}"#, r#"{"Price": 20}"#, true),
        ("Exists", r#"{"data": {"ProductName": [{"exists": true}]}}"#, r#"{"ProductName": "x"}"#, true),
        ("Does not exist", r#"{"data": {"ProductName": [{"exists": false}]}}"#, r#"{"Price": 1}"#, true),
        ("Begins with", r#"{"data": {"Region": [{"prefix": "us-"}]}}"#, r#"{"Region": "us-west-2"}"#, true),
        ("Ends with", r#"{"data": {"FileName": [{"suffix": ".png"}]}}"#, r#"{"FileName": "cat.png"}"#, true),
    ]);
    // Documented example: a partitionKey (metadata) and a Location (data), with Equals.
    let c = criteria(&[r#"{"partitionKey": ["1"], "data": {"Location": ["Los Angeles"]}}"#]);
    assert!(c.keeps("1", br#"{"Location": "Los Angeles"}"#));
    assert!(!c.keeps("2", br#"{"Location": "Los Angeles"}"#));
    assert!(!c.keeps("1", br#"{"Location": "Seattle"}"#));
}

/// The examples on EventBridge's event-pattern pages (event patterns, content
/// filtering, arrays, null values) and in the README of event-ruler, the engine behind
/// them, with their events moved under `data`.
#[test]
#[rustfmt::skip]
fn eventbridge_documented_examples() {
    let ec2 = r#"{"version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "111122223333", "time": "2017-12-22T18:43:48Z", "region": "us-west-1",
        "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}}"#;
    let ruler = r#"{"version": "0", "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "012345679012", "time": "2017-10-02T16:24:49Z", "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
        "detail": {"c-count": 5, "d-count": 3, "x-limit": 301.8, "source-ip": "10.0.0.33",
                   "instance-id": "i-000000aaaaaa00000", "state": "running"}}"#;
    let autoscaling = r#"{"version": "0", "detail-type": "EC2 Instance Launch Successful",
        "source": "aws.autoscaling", "resources": [],
        "detail": {"eventVersion": "", "responseElements": null}}"#;
    let macie = r#"{"source": "aws.macie", "detail-type": "Macie Alert",
        "detail": {"notification-type": "ALERT_CREATED", "tags": ["Custom_Alert", "Insider"],
                   "risk-score": 80, "trigger": {"alert-type": "basic", "risk": 8}}}"#;
    let employees = r#"{"employees": [{"firstName": "John", "lastName": "Doe"},
        {"firstName": "Anna", "lastName": "Smith"}, {"firstName": "Peter", "lastName": "Jones"}]}"#;
    let resources = r#"{"resources": [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-b893-d5978ed4a025:autoScalingGroupName/ASGTerminate",
        "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]}"#;
    check(&[
        // Documented example (event patterns): EC2 instance-termination events.
        (
            "EC2 termination",
            r#"{"data": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"], "detail": {"state": ["terminated"]}}}"#,
            ec2,
            true,
        ),
        ("EC2 termination, running", r#"{"data": {"source": ["aws.ec2"], "detail": {"state": ["terminated"]}}}"#, ruler, false),
        // Documented example: "source" is aws.ec2 or aws.fargate.
        ("either source", r#"{"data": {"source": ["aws.ec2", "aws.fargate"]}}"#, ec2, true),
        // Documented example (field matching): responseElements is null.
        ("null field", r#"{"data": {"source": ["aws.autoscaling"], "detail": {"responseElements": [null]}}}"#, autoscaling, true),
        // Documented example (null values): eventVersion is an empty string, which is not null.
        ("empty string", r#"{"data": {"detail": {"eventVersion": [""]}}}"#, autoscaling, true),
        ("null is not empty", r#"{"data": {"detail": {"eventVersion": [null]}}}"#, autoscaling, false),
        // Documented example (value matching): a risk score of 80 and a trigger risk of 8.
        ("nested numbers", r#"{"data": {"source": ["aws.macie"], "detail": {"risk-score": [80], "trigger": {"risk": [8]}}}}"#, macie, true),
        ("array field", r#"{"data": {"detail": {"tags": ["Insider"]}}}"#, macie, true),
        // Documented example (arrays): the intersection of the pattern's and the event's arrays.
        (
            "array intersection",
            r#"{"data": {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f", "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f"]}}"#,
            resources,
            true,
        ),
        // Documented example (content filtering): prefix on "time".
        ("time prefix", r#"{"data": {"time": [{"prefix": "2017-10-02"}]}}"#, ruler, true),
        ("time prefix, other day", r#"{"data": {"time": [{"prefix": "2017-10-02"}]}}"#, ec2, false),
        // Documented examples: anything-but with a string, a number, lists, a prefix.
        ("anything-but initializing", r#"{"data": {"detail": {"state": [{"anything-but": "initializing"}]}}}"#, ruler, true),
        ("anything-but 123", r#"{"data": {"detail": {"x-limit": [{"anything-but": 123}]}}}"#, ruler, true),
        ("anything-but list", r#"{"data": {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}}"#, ruler, true),
        ("anything-but numbers", r#"{"data": {"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}}}"#, ruler, true),
        ("anything-but prefix", r#"{"data": {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}}"#, ruler, true),
        // Documented example (numeric matching): all three must hold.
        (
            "numeric",
            r#"{"data": {"detail": {"c-count": [{"numeric": [">", 0, "<=", 5]}], "d-count": [{"numeric": ["<", 10]}], "x-limit": [{"numeric": ["=", 3.018e2]}]}}}"#,
            ruler,
            true,
        ),
        // Documented example (IP address matching).
        ("cidr", r#"{"data": {"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}}"#, ruler, true),
        // Documented example (exists matching): c-count does not exist...
        (
            "exists false",
            r#"{"data": {"detail": {"c-count": [{"exists": false}]}}}"#,
            r#"{"detail-type": ["EC2 Instance State-change Notification"], "detail": {"state": ["initializing", "running"]}}"#,
            true,
        ),
        // ...which also holds when c-count is an object, because it is not a leaf.
        (
            "exists false, not a leaf",
            r#"{"data": {"detail": {"c-count": [{"exists": false}]}}}"#,
            r#"{"detail": {"state": ["initializing", "running"], "c-count": {"c1": 100}}}"#,
            true,
        ),
        ("exists true", r#"{"data": {"detail": {"c-count": [{"exists": true}]}}}"#, ruler, true),
        // Documented example (complex): prefix, anything-but and numeric together.
        (
            "complex",
            r#"{"data": {"time": [{"prefix": "2017-10-02"}], "detail": {"state": [{"anything-but": "initializing"}], "c-count": [{"numeric": [">", 0, "<=", 5]}], "d-count": [{"numeric": ["<", 10]}], "x-limit": [{"anything-but": [100, 200, 300]}], "source-ip": [{"cidr": "10.0.0.0/8"}]}}}"#,
            ruler,
            true,
        ),
        // Documented examples (event-ruler README): suffix, equals-ignore-case, wildcard.
        ("suffix ec2", r#"{"data": {"source": [{"suffix": "ec2"}]}}"#, ruler, true),
        ("equals-ignore-case EC2", r#"{"data": {"source": [{"equals-ignore-case": "AWS.EC2"}]}}"#, ruler, true),
        ("prefix ignoring case", r#"{"data": {"source": [{"prefix": {"equals-ignore-case": "AWS."}}]}}"#, ruler, true),
        ("suffix ignoring case", r#"{"data": {"source": [{"suffix": {"equals-ignore-case": "EC2"}}]}}"#, ruler, true),
        ("wildcard", r#"{"data": {"detail-type": [{"wildcard": "EC2*Notification"}]}}"#, ruler, true),
        ("anything-but suffix", r#"{"data": {"detail": {"instance-id": [{"anything-but": {"suffix": "1234"}}]}}}"#, ruler, true),
        ("anything-but ignoring case", r#"{"data": {"detail": {"state": [{"anything-but": {"equals-ignore-case": "RUNNING"}}]}}}"#, ruler, false),
        ("anything-but wildcard", r#"{"data": {"detail": {"state": [{"anything-but": {"wildcard": "run*"}}]}}}"#, ruler, false),
        // Documented examples (event-ruler README, arrays): objects in an array.
        ("array of objects", r#"{"data": {"employees": {"firstName": ["Anna"]}}}"#, employees, true),
        ("array consistency", r#"{"data": {"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}}"#, employees, false),
        ("array consistency, same element", r#"{"data": {"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}}"#, employees, true),
        (
            "multi-level arrays",
            r#"{"data": {"employees": {"firstName": ["Peter"]}}}"#,
            r#"{"employees": [[{"firstName": "John"}, {"firstName": "Anna"}], [{"firstName": "Peter"}]]}"#,
            true,
        ),
    ]);
    // Documented examples (event-ruler README, "$or").
    let cloudwatch = |metric: &str, namespace: &str| {
        format!(
            r#"{{"source": "aws.cloudwatch", "metricName": "{metric}", "namespace": "{namespace}", "metricType": "MetricType", "scope": "Other"}}"#
        )
    };
    let or_cases: &[(&str, String, bool)] = &[
        (
            r#"{"data": {"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]}, {"namespace": ["AWS/EC2", "AWS/ES"]}]}}"#,
            cloudwatch("ReadLatency", "AWS/S3"),
            true,
        ),
        (
            r#"{"data": {"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]}, {"namespace": ["AWS/EC2", "AWS/ES"]}]}}"#,
            cloudwatch("WriteLatency", "AWS/S3"),
            false,
        ),
        (
            r#"{"data": {"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization"]}, {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"]}, {"scope": ["Service"]}]}}"#,
            cloudwatch("WriteLatency", "AWS/ES"),
            true,
        ),
        (
            r#"{"data": {"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization"]}, {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"]}, {"scope": ["Service"]}]}}"#,
            cloudwatch("WriteLatency", "AWS/S3"),
            false,
        ),
    ];
    for (pattern, data, kept) in or_cases {
        assert_eq!(
            criteria(&[pattern]).keeps(KEY, data.as_bytes()),
            *kept,
            "{pattern} on {data}"
        );
    }
}

/// Compiles `[valid, bad]` and returns the error's message, which must name index 1.
fn invalid(bad: &str) -> String {
    let err = match FilterCriteria::parse(&[r#"{"data": {"a": ["ok"]}}"#, bad]) {
        Ok(_) => panic!("{bad} was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.index(), Some(1), "{bad}: {err}");
    let message = err.to_string();
    assert!(message.starts_with("pattern 1: "), "{bad}: {message}");
    message
}

#[test]
#[rustfmt::skip]
fn invalid_patterns_name_index_path_and_problem() {
    // (pattern, the path in the message, a phrase of the reason)
    let cases: &[(&str, &str, &str)] = &[
        ("{}", "(top level)", "the pattern is empty"),
        ("[]", "(top level)", "a pattern is a JSON object"),
        (r#""data""#, "(top level)", "a pattern is a JSON object"),
        (r#"{"body": {"a": ["x"]}}"#, "body", "unknown top-level key"),
        (r#"{"data": {"a": ["x"]}, "kinesis": {"a": ["x"]}}"#, "kinesis", "only \"data\", \"partitionKey\" and \"$or\""),
        (r#"{"data": ["x"]}"#, "data", "\"data\" must be an object"),
        (r#"{"data": "x"}"#, "data", "\"data\" must be an object"),
        (r#"{"data": null}"#, "data", "\"data\" must be an object"),
        (r#"{"data": {}}"#, "data", "empty object"),
        (r#"{"data": {"a": {}}}"#, "data.a", "empty object"),
        (r#"{"partitionKey": {"a": ["x"]}}"#, "partitionKey", "must be a match list"),
        (r#"{"partitionKey": "x"}"#, "partitionKey", "must be a match list"),
        (r#"{"data": {"a": "x"}}"#, "data.a", "must be a match list such as [\"x\"]"),
        (r#"{"data": {"a": 5}}"#, "data.a", "must be a match list"),
        (r#"{"data": {"a": {"b": null}}}"#, "data.a.b", "must be a match list"),
        (r#"{"data": {"a": []}}"#, "data.a", "empty match list"),
        (r#"{"data": {"a": [["x"]]}}"#, "data.a[0]", "not nested arrays"),
        (r#"{"data": {"a": ["x", {"bogus": 1}]}}"#, "data.a[1].bogus", "unknown operator \"bogus\""),
        (r#"{"data": {"a": [{"Prefix": "x"}]}}"#, "data.a[0].Prefix", "unknown operator"),
        (r#"{"data": {"a": [{}]}}"#, "data.a[0]", "exactly one key"),
        (r#"{"data": {"a": [{"prefix": "x", "suffix": "y"}]}}"#, "data.a[0]", "exactly one key"),
        (r#"{"data": {"a": [{"prefix": 5}]}}"#, "data.a[0].prefix", "takes a string"),
        (r#"{"data": {"a": [{"prefix": {"bogus": "x"}}]}}"#, "data.a[0].prefix", "equals-ignore-case"),
        (r#"{"data": {"a": [{"suffix": {"equals-ignore-case": 5}}]}}"#, "data.a[0].suffix.equals-ignore-case", "takes a string"),
        (r#"{"data": {"a": [{"equals-ignore-case": ["x"]}]}}"#, "data.a[0].equals-ignore-case", "takes a string"),
        (r#"{"data": {"a": [{"exists": "yes"}]}}"#, "data.a[0].exists", "true or false"),
        (r#"{"data": {"a": [{"exists": 1}]}}"#, "data.a[0].exists", "true or false"),
        (r#"{"data": {"a": [{"wildcard": "a**b"}]}}"#, "data.a[0].wildcard", "consecutive"),
        (r#"{"data": {"a": [{"wildcard": "a\\b"}]}}"#, "data.a[0].wildcard", "backslash"),
        (r#"{"data": {"a": [{"wildcard": "a\\"}]}}"#, "data.a[0].wildcard", "backslash"),
        (r#"{"data": {"a": [{"cidr": "10.0.0.0"}]}}"#, "data.a[0].cidr", "not an IPv4 or IPv6 block"),
        (r#"{"data": {"a": [{"cidr": "10.0.0.0/33"}]}}"#, "data.a[0].cidr", "at most 32"),
        (r#"{"data": {"a": [{"cidr": "::/129"}]}}"#, "data.a[0].cidr", "at most 128"),
        (r#"{"data": {"a": [{"cidr": "host/8"}]}}"#, "data.a[0].cidr", "not an IPv4 or IPv6 block"),
        (r#"{"data": {"a": [{"numeric": 5}]}}"#, "data.a[0].numeric", "one comparison"),
        (r#"{"data": {"a": [{"numeric": []}]}}"#, "data.a[0].numeric", "has 0 elements"),
        (r#"{"data": {"a": [{"numeric": [">"]}]}}"#, "data.a[0].numeric", "has 1 elements"),
        (r#"{"data": {"a": [{"numeric": [">", 0, "<"]}]}}"#, "data.a[0].numeric", "has 3 elements"),
        (r#"{"data": {"a": [{"numeric": [">", 0, "<", 5, "<", 6]}]}}"#, "data.a[0].numeric", "has 6 elements"),
        (r#"{"data": {"a": [{"numeric": [">", "5"]}]}}"#, "data.a[0].numeric", "must be a number"),
        (r#"{"data": {"a": [{"numeric": [">", null]}]}}"#, "data.a[0].numeric", "must be a number"),
        (r#"{"data": {"a": [{"numeric": ["!=", 5]}]}}"#, "data.a[0].numeric", "unknown numeric operator \"!=\""),
        (r#"{"data": {"a": [{"numeric": [5, ">"]}]}}"#, "data.a[0].numeric", "where an operator belongs"),
        (r#"{"data": {"a": [{"numeric": ["<", 5, ">", 0]}]}}"#, "data.a[0].numeric", "> or >= first"),
        (r#"{"data": {"a": [{"numeric": ["=", 5, "<", 6]}]}}"#, "data.a[0].numeric", "> or >= first"),
        (r#"{"data": {"a": [{"numeric": [">", 0, ">", 5]}]}}"#, "data.a[0].numeric", "> or >= first"),
        (r#"{"data": {"a": [{"numeric": [">", 5, "<", 5]}]}}"#, "data.a[0].numeric", "below its upper bound"),
        (r#"{"data": {"a": [{"numeric": [">=", 6, "<=", 5]}]}}"#, "data.a[0].numeric", "below its upper bound"),
        (r#"{"data": {"a": [{"anything-but": []}]}}"#, "data.a[0].anything-but", "this list is empty"),
        (r#"{"data": {"a": [{"anything-but": ["a", 1]}]}}"#, "data.a[0].anything-but", "only strings or only numbers"),
        (r#"{"data": {"a": [{"anything-but": [true]}]}}"#, "data.a[0].anything-but", "only strings or only numbers"),
        (r#"{"data": {"a": [{"anything-but": null}]}}"#, "data.a[0].anything-but", "not null"),
        (r#"{"data": {"a": [{"anything-but": {"prefix": ""}}]}}"#, "data.a[0].anything-but.prefix", "must not be empty"),
        (r#"{"data": {"a": [{"anything-but": {"prefix": 5}}]}}"#, "data.a[0].anything-but.prefix", "a string or a non-empty list"),
        (r#"{"data": {"a": [{"anything-but": {"suffix": []}}]}}"#, "data.a[0].anything-but.suffix", "a string or a non-empty list"),
        (r#"{"data": {"a": [{"anything-but": {"numeric": [">", 1]}}]}}"#, "data.a[0].anything-but.numeric", "a string or a non-empty list"),
        (r#"{"data": {"a": [{"anything-but": {"exists": "x"}}]}}"#, "data.a[0].anything-but.exists", "unknown anything-but operator"),
        (r#"{"data": {"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}}"#, "data.a[0].anything-but", "\"anything-but\" takes"),
        (r#"{"data": {"a": [{"anything-but": {"wildcard": "a**"}}]}}"#, "data.a[0].anything-but.wildcard", "consecutive"),
        (r#"{"data": {"$or": [{"a": [1]}]}}"#, "data.$or", "two or more objects; this one has 1"),
        (r#"{"data": {"$or": []}}"#, "data.$or", "two or more objects"),
        (r#"{"data": {"$or": {"a": [1]}}}"#, "data.$or", "two or more objects, not an object"),
        (r#"{"data": {"$or": [{"a": [1]}, 5]}}"#, "data.$or[1]", "each branch of \"$or\" must be an object"),
        (r#"{"data": {"$or": [{"a": [1]}, {}]}}"#, "data.$or[1]", "empty object"),
        (r#"{"data": {"$or": [{"a": [1]}, {"b": "x"}]}}"#, "data.$or[1].b", "must be a match list"),
        (r#"{"data": {"x": {"$or": [{"a": [1]}, {"b": [{"nope": 1}]}]}}}"#, "data.x.$or[1].b[0].nope", "unknown operator"),
        (r#"{"$or": [{"data": {"a": [1]}}, {"body": {"a": [1]}}]}"#, "$or[1].body", "unknown top-level key"),
        (r#"{"$or": [{"data": {"a": [1]}}]}"#, "$or", "two or more objects"),
    ];
    for &(pattern, path, phrase) in cases {
        let message = invalid(pattern);
        assert!(
            message.contains(&format!(": at {path}: ")),
            "{pattern}: path {path:?} not in: {message}"
        );
        assert!(
            message.contains(phrase),
            "{pattern}: {phrase:?} not in: {message}"
        );
    }
}

#[test]
fn error_messages_read_well() {
    assert_eq!(
        invalid(r#"{"data": {"order": {"type": "buy"}}}"#),
        "pattern 1: at data.order.type: a field's value must be a match list such as [\"buy\"] or \
         a nested object, not a string (\"buy\")"
    );
    assert_eq!(
        invalid(r#"{"body": {"a": ["x"]}}"#),
        "pattern 1: at body: unknown top-level key; only \"data\", \"partitionKey\" and \"$or\" are \
         allowed (Lambda filters Kinesis records on \"data\"; \"partitionKey\" is esm's extension)"
    );
    assert_eq!(
        invalid(r#"{"data": {"price": [{"greater": 5}]}}"#),
        "pattern 1: at data.price[0].greater: unknown operator \"greater\"; the operators are \
         prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists, cidr"
    );
}

#[test]
fn limits() {
    // Not JSON.
    let e = FilterCriteria::parse(&[r#"{"data": {"a": [1]}}"#, r#"{"data": "#]).unwrap_err();
    assert!(matches!(e, FilterError::NotJson { index: 1, .. }), "{e}");
    assert!(
        e.to_string().starts_with("pattern 1: not valid JSON: "),
        "{e}"
    );
    // At most five patterns.
    let six = vec![r#"{"data": {"a": [1]}}"#; 6];
    let e = FilterCriteria::parse(&six).unwrap_err();
    assert_eq!(e.to_string(), "6 filter patterns; at most 5 are allowed");
    assert_eq!(e.index(), None);
    assert!(FilterCriteria::parse(&six[..5]).is_ok());
    let values = vec![json!({"data": {"a": [1]}}); 6];
    assert!(matches!(
        FilterCriteria::from_values(&values),
        Err(FilterError::TooMany { count: 6, max: 5 })
    ));
    // At most 4096 characters.
    let fits = format!(r#"{{"data": {{"a": ["{}"]}}}}"#, "x".repeat(4096 - 21));
    assert_eq!(fits.chars().count(), 4096);
    assert!(FilterCriteria::parse(&[&fits]).is_ok());
    let long = format!(r#"{{"data": {{"a": ["{}"]}}}}"#, "é".repeat(4097 - 21));
    let e = FilterCriteria::parse(&[r#"{"data": {"a": [1]}}"#, &long]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pattern 1: 4097 characters, above Lambda's limit of 4096"
    );
    // A value's length is its compact text's: `{"data":{"a":["…"]}}`.
    let value = json!({"data": {"a": ["é".repeat(4097 - 19)]}});
    assert_eq!(value.to_string().chars().count(), 4097);
    assert!(matches!(
        FilterCriteria::from_values(&[value]),
        Err(FilterError::TooLong {
            index: 0,
            len: 4097,
            ..
        })
    ));
    // from_values reports like parse.
    let e =
        FilterCriteria::from_values(&[json!({"data": {"a": [1]}}), json!({"data": {"a": "x"}})])
            .unwrap_err();
    assert!(e.to_string().starts_with("pattern 1: at data.a: "), "{e}");
    // A pattern nested deeper than serde_json parses can only come from a value.
    let mut deep = json!({"a": [1]});
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let e = FilterCriteria::from_values(&[json!({ "data": deep })]).unwrap_err();
    assert!(
        e.to_string().contains("nests deeper than 128 levels"),
        "{e}"
    );
}

#[test]
fn criteria_are_shareable() {
    fn assert_traits<T: std::fmt::Debug + Clone + Send + Sync + 'static>() {}
    assert_traits::<FilterCriteria>();
    let c = criteria(&[r#"{"data": {"a": [1]}}"#]);
    let copy = c.clone();
    let handle = std::thread::spawn(move || copy.keeps(KEY, br#"{"a": 1}"#));
    assert!(handle.join().unwrap());
    assert!(format!("{c:?}").contains("FilterCriteria"));
}

/// A pattern of every operator, for the properties below.
fn every_operator() -> FilterCriteria {
    criteria(&[
        r#"{"data": {"a": ["x", 5, null, true, {"prefix": "p"}, {"suffix": {"equals-ignore-case": "S"}}], "b": {"c": [{"exists": false}]}}}"#,
        r#"{"data": {"$or": [{"a": [{"numeric": [">", 0, "<=", 5]}]}, {"b": {"c": [{"anything-but": {"wildcard": "*x*"}}]}}]}}"#,
        r#"{"data": {"a": [{"wildcard": "*a*b*"}, {"cidr": "10.0.0.0/8"}, {"equals-ignore-case": "É"}], "b": [{"exists": true}]}}"#,
        r#"{"partitionKey": [{"anything-but": {"prefix": ["a", "b"]}}], "data": {"a": {"b": [{"anything-but": [1, 2]}]}}}"#,
        r#"{"$or": [{"partitionKey": [{"wildcard": "k*"}]}, {"data": {"a": [{"exists": false}], "b": {"$or": [{"c": [1]}, {"d": [{"exists": false}]}]}}}]}"#,
    ])
}

/// Small JSON values whose keys are field names the patterns use and operator names.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z0-9*\\\\./:-]{0,8}".prop_map(Value::from),
        prop::sample::select(keys).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(keys), inner), 0..4).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    })
}

const DATA_KEYS: &[&str] = &["a", "b", "c", "d", "x"];

const PATTERN_KEYS: &[&str] = &[
    "data",
    "partitionKey",
    "$or",
    "a",
    "b",
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
    "exists",
    "cidr",
    ">",
    "<=",
    "=",
];

/// `keeps` with the whole data parsed, not only the fields the patterns look at.
fn keeps_unpruned(c: &FilterCriteria, key: &str, data: &[u8]) -> bool {
    let parsed = serde_json::from_slice::<Value>(data).ok();
    let record = eval::RecordView {
        partition_key: key,
        data: parsed.as_ref(),
    };
    c.is_empty() || c.patterns.iter().any(|p| eval::matches(&p.root, &record))
}

#[test]
fn pruned_parse_keeps_only_the_schema() {
    let c = criteria(&[
        r#"{"data": {"a": {"b": [1]}, "c": [{"exists": true}]}}"#,
        r#"{"data": {"$or": [{"d": [1]}, {"a": {"e": [2]}}]}}"#,
    ]);
    let pruned = c.schema.parse(
        br#"{"a": [{"b": 1, "x": 2, "e": {"deep": 1}}, 5], "c": {"y": [1, 2]}, "d": 1, "z": "skipped"}"#,
    );
    assert_eq!(
        pruned,
        Some(json!({"a": [{"b": 1, "e": {}}, 5], "c": {}, "d": 1}))
    );
    // Still all validated: bad syntax or UTF-8 in a skipped field is not JSON.
    assert_eq!(c.schema.parse(br#"{"z": [1, }"#), None);
    assert_eq!(c.schema.parse(b"{\"z\": \"\xff\"}"), None);
    assert_eq!(c.schema.parse(br#"{"a": 1} {"a": 2}"#), None);
    assert_eq!(c.schema.parse(br#"[1, 2]"#), Some(json!([1, 2])));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Untrusted bytes and keys never make matching panic.
    #[test]
    fn any_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256), key in ".{0,16}") {
        let c = every_operator();
        prop_assert_eq!(c.keeps(&key, &data), keeps_unpruned(&c, &key, &data));
    }

    /// Nor does any JSON data, shaped like the patterns' fields; and parsing only the
    /// fields the patterns look at changes no answer.
    #[test]
    fn any_json_data_never_panics(data in json_value(DATA_KEYS), key in "[a-z]{0,4}") {
        let c = every_operator();
        let bytes = data.to_string();
        prop_assert_eq!(c.keeps(&key, bytes.as_bytes()), keeps_unpruned(&c, &key, bytes.as_bytes()));
    }

    /// Any small JSON pattern either compiles or is an error naming its index; the two
    /// entry points agree, and a compiled pattern matches any data without panicking.
    #[test]
    fn any_pattern_compiles_or_errs(
        pattern in json_value(PATTERN_KEYS),
        data in json_value(DATA_KEYS),
    ) {
        let from_value = FilterCriteria::from_values(std::slice::from_ref(&pattern));
        let from_text = FilterCriteria::parse(&[pattern.to_string()]);
        prop_assert_eq!(from_value.is_ok(), from_text.is_ok());
        match from_text {
            Ok(c) => {
                let bytes = data.to_string();
                prop_assert_eq!(c.keeps("k", bytes.as_bytes()), keeps_unpruned(&c, "k", bytes.as_bytes()));
                prop_assert_eq!(c.keeps("k", b"not json"), keeps_unpruned(&c, "k", b"not json"));
            }
            Err(e) => prop_assert_eq!(e.index(), Some(0)),
        }
    }

    /// Any text at all as a pattern: compiled or an error, never a panic.
    #[test]
    fn any_text_compiles_or_errs(text in ".{0,64}") {
        if let Err(e) = FilterCriteria::parse(&[text]) {
            prop_assert_eq!(e.index(), Some(0));
        }
    }

    /// The string operators agree with their plain definitions.
    #[test]
    fn string_operators_agree_with_their_definitions(value in "[abAB*]{0,6}", operand in "[abAB]{0,3}") {
        let keeps = |op: Value| {
            FilterCriteria::from_values(&[json!({"data": {"f": [op]}})])
                .map(|c| c.keeps(KEY, json!({"f": value}).to_string().as_bytes()))
        };
        prop_assert_eq!(keeps(json!(operand)).ok(), Some(value == operand));
        prop_assert_eq!(keeps(json!({"anything-but": operand})).ok(), Some(value != operand));
        prop_assert_eq!(keeps(json!({"prefix": operand})).ok(), Some(value.starts_with(&operand)));
        prop_assert_eq!(keeps(json!({"suffix": operand})).ok(), Some(value.ends_with(&operand)));
        prop_assert_eq!(
            keeps(json!({"equals-ignore-case": operand})).ok(),
            Some(value.to_lowercase() == operand.to_lowercase())
        );
        prop_assert_eq!(
            keeps(json!({"prefix": {"equals-ignore-case": operand}})).ok(),
            Some(value.to_lowercase().starts_with(&operand.to_lowercase()))
        );
        // A wildcard without stars is equality; "*operand*" is containment.
        prop_assert_eq!(keeps(json!({"wildcard": operand})).ok(), Some(value == operand));
        if !operand.is_empty() {
            prop_assert_eq!(
                keeps(json!({"wildcard": format!("*{operand}*")})).ok(),
                Some(value.contains(&operand))
            );
        }
    }

    /// Numeric ranges agree with plain comparisons.
    #[test]
    fn numeric_agrees_with_comparisons(v in -1e6f64..1e6, lo in -1e6f64..1e6, width in 0.001f64..1e6) {
        let hi = lo + width;
        let c = FilterCriteria::from_values(&[json!({"data": {"n": [{"numeric": [">", lo, "<=", hi]}]}})]).unwrap();
        prop_assert_eq!(c.keeps(KEY, json!({"n": v}).to_string().as_bytes()), v > lo && v <= hi);
        let c = FilterCriteria::from_values(&[json!({"data": {"n": [{"numeric": [">=", lo]}]}})]).unwrap();
        prop_assert_eq!(c.keeps(KEY, json!({"n": v}).to_string().as_bytes()), v >= lo);
    }
}
