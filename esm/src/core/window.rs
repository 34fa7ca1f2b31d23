//! Tumbling windows: which window a record falls in, when a window has ended, and
//! what a windowed invocation's response means.
//!
//! With `tumbling_window_in_seconds` set, a shard's records are grouped into windows
//! of that length, aligned to the Unix epoch, by each record's
//! `approximateArrivalTimestamp`. Every invocation of a window carries the `state` the
//! previous one returned (`{}` at the window's start); the window's last invocation
//! has `isFinalInvokeForWindow: true`. The shard machine (`shard/lane.rs`) drives the
//! invocations; the rules it asks about live here:
//!
//! - [`Tumbling::window_of`]: a record's window. Windows never go back: a record
//!   stamped earlier than one already read (arrival stamps are approximate) joins the
//!   later window instead of reopening a closed one.
//! - [`WindowClock`]: whether a window has ended. It has once a record of a later
//!   window was read, or once a read *issued* at or after the window's end found the
//!   shard caught up (`MillisBehindLatest` 0). Never by the wall clock alone: a
//!   reader that lags has not read the window's last records yet.
//! - [`read_state`]: a windowed response must hold a `state` object (Lambda's rule: a
//!   response without `state` is a failed invocation).
//! - [`MAX_STATE_BYTES`]: a state above 1 MB ends the window early.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

use super::response::kind;

/// Lambda's limit on a window's state: above it the window ends early
/// (`isWindowTerminatedEarly`) and the next invocation continues it with fresh state.
pub const MAX_STATE_BYTES: usize = 1024 * 1024;

/// The state every window starts with.
pub const EMPTY_STATE: &[u8] = b"{}";

/// One window: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WindowBounds {
    /// The first instant in the window.
    pub start: DateTime<Utc>,
    /// The first instant after it.
    pub end: DateTime<Utc>,
}

impl WindowBounds {
    /// The window's key: its start in epoch milliseconds (what batches are cut by).
    pub fn key(&self) -> i64 {
        self.start.timestamp_millis()
    }
}

/// `tumbling_window_in_seconds`: windows of a fixed length, aligned to the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tumbling {
    length_ms: i64,
}

impl Tumbling {
    /// Windows of `length`; `None` for zero (no tumbling window).
    pub fn new(length: Duration) -> Option<Self> {
        let length_ms = i64::try_from(length.as_millis()).ok()?;
        (length_ms > 0).then_some(Self { length_ms })
    }

    /// The window a record that arrived at `arrival` belongs to.
    pub fn window_of(&self, arrival: DateTime<Utc>) -> WindowBounds {
        self.window_at(arrival.timestamp_millis().div_euclid(self.length_ms) * self.length_ms)
    }

    /// The window starting at `key` (epoch milliseconds).
    pub fn window_at(&self, key: i64) -> WindowBounds {
        let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        WindowBounds {
            start: at(key),
            end: at(key.saturating_add(self.length_ms)),
        }
    }
}

/// What a shard has seen that tells whether a window has ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WindowClock {
    /// The latest window any record read so far falls in (its key).
    latest_key: Option<i64>,
    /// The latest time a read was issued that found the shard caught up.
    caught_up_at: Option<DateTime<Utc>>,
}

impl WindowClock {
    /// Takes the window of a record just read; returns the window it joins (never one
    /// before a window already seen).
    pub fn admit(&mut self, tumbling: &Tumbling, arrival: DateTime<Utc>) -> WindowBounds {
        let key = tumbling.window_of(arrival).key();
        let key = self.latest_key.map_or(key, |latest| latest.max(key));
        self.latest_key = Some(key);
        tumbling.window_at(key)
    }

    /// A read issued at `issued_at` returned `millis_behind_latest`: with 0 the shard
    /// held nothing older than `issued_at` that was not read.
    pub fn read(&mut self, issued_at: DateTime<Utc>, millis_behind_latest: Option<i64>) {
        if millis_behind_latest == Some(0) {
            self.caught_up_at = Some(self.caught_up_at.map_or(issued_at, |t| t.max(issued_at)));
        }
    }

    /// Whether `window` has ended: a record of a later window was read, or a read
    /// issued at or after its end found the shard caught up.
    pub fn has_ended(&self, window: &WindowBounds) -> bool {
        self.latest_key.is_some_and(|key| key > window.key())
            || self.caught_up_at.is_some_and(|t| t >= window.end)
    }
}

/// Why a windowed response without a `state` fails its invocation.
pub const NO_STATE: &str = "the response has no state (a tumbling window needs one)";

/// The `state` of a windowed invocation's response, as compact JSON bytes; `Err` with
/// what is wrong when the response has no `state` object (a failed invocation).
pub fn read_state(body: &[u8]) -> Result<Bytes, String> {
    let value: Value = serde_json::from_slice(body.trim_ascii())
        .map_err(|e| format!("the response is not JSON ({e}), so it has no state"))?;
    match value.get("state") {
        Some(state @ Value::Object(_)) => serde_json::to_vec(state)
            .map(Bytes::from)
            .map_err(|e| format!("the state cannot be written back ({e})")),
        Some(other) => Err(format!(
            "the response's state is {}, not a JSON object",
            kind(other)
        )),
        None => Err(NO_STATE.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let t = Tumbling::new(Duration::from_secs(5)).unwrap();
        let w = t.window_of(at(1_700_000_003_999));
        assert_eq!(w.start, at(1_700_000_000_000));
        assert_eq!(w.end, at(1_700_000_005_000));
        // The end belongs to the next window.
        assert_eq!(t.window_of(at(1_700_000_005_000)).start, w.end);
        assert_eq!(t.window_of(at(1_700_000_004_999)), w);
        assert!(Tumbling::new(Duration::ZERO).is_none());
    }

    #[test]
    fn windows_never_go_back() {
        let t = Tumbling::new(Duration::from_secs(5)).unwrap();
        let mut clock = WindowClock::default();
        let late = clock.admit(&t, at(12_000));
        assert_eq!(late.start, at(10_000));
        // A record stamped a little earlier joins the later window.
        assert_eq!(clock.admit(&t, at(9_999)), late);
    }

    #[test]
    fn a_window_ends_by_a_later_record_or_a_caught_up_read_after_its_end() {
        let t = Tumbling::new(Duration::from_secs(5)).unwrap();
        let mut clock = WindowClock::default();
        let w = clock.admit(&t, at(1_000));
        assert!(!clock.has_ended(&w));
        // Caught up, but the read was issued before the end: not ended.
        clock.read(at(4_999), Some(0));
        assert!(!clock.has_ended(&w));
        // Issued after the end, but behind: not ended (records may be unread).
        clock.read(at(6_000), Some(1_500));
        assert!(!clock.has_ended(&w));
        clock.read(at(5_000), Some(0));
        assert!(clock.has_ended(&w));

        let mut clock = WindowClock::default();
        let w = clock.admit(&t, at(1_000));
        clock.admit(&t, at(5_000));
        assert!(clock.has_ended(&w));
    }

    #[test]
    fn a_response_needs_a_state_object() {
        assert_eq!(
            read_state(br#"{"state": {"a": 1}, "batchItemFailures": []}"#).unwrap(),
            Bytes::from_static(br#"{"a":1}"#)
        );
        assert_eq!(read_state(br#" {"state":{}} "#).unwrap(), EMPTY_STATE);
        for (body, why) in [
            (&b""[..], "not JSON"),
            (b"{}", "no state"),
            (br#"{"batchItemFailures": []}"#, "no state"),
            (br#"{"state": null}"#, "null"),
            (br#"{"state": [1]}"#, "an array"),
            (br#"{"state": "x"}"#, "a string"),
            (b"null", "no state"),
        ] {
            let err = read_state(body).unwrap_err();
            assert!(err.contains(why), "{body:?}: {err}");
        }
    }
}
