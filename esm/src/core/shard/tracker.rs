//! The checkpoint tracker: where a shard's checkpoint may be, across all its lanes.
//!
//! Records enter the tracker in shard order as they are read, each given an ordinal.
//! They leave it as they are *done*: handled by the function, delivered to the
//! on-failure destination, dropped by the failure rules (logged with their range),
//! or — once filtering lands — filtered out. Lanes finish records out of order, so the
//! checkpoint is the low-water mark: the highest position below which every record
//! is done. A record that is not done in some lane holds it back, however far the
//! other lanes got; that is what makes a restart re-read everything not yet done.
//!
//! Each record keeps a slot until the low-water mark passes it; a slot stores a
//! position only where the mark can stop (the last of a run of consecutive ordinals
//! finished together), so a lane finishing a whole batch costs one position, not one
//! per record.

use std::collections::VecDeque;

use serde::Serialize;

use crate::core::record::Position;

/// How a record came to be done (the tracker counts each kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The function handled it.
    Handled,
    /// It went to the on-failure destination.
    Delivered,
    /// It was given up with no destination: logged with its range and skipped.
    Dropped,
    /// It matched no filter pattern (the hook for event filtering).
    Filtered,
}

/// One record between being read and passing the low-water mark.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// Not done yet.
    Pending,
    /// Done; the mark never stops here (a later record was done with it).
    Done,
    /// Done, and the mark may stop here: this is the position it would take.
    DoneAt(Position),
}

/// Counts of records done, by how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SettledCounts {
    /// Handled by the function.
    pub handled: u64,
    /// Delivered to the on-failure destination.
    pub delivered: u64,
    /// Dropped without a destination.
    pub dropped: u64,
    /// Filtered out.
    pub filtered: u64,
    /// Marks for records unknown or already done, ignored (always 0 unless a caller
    /// has a bug: tests assert on it).
    pub ignored: u64,
}

/// The low-water mark of done records, across lanes.
#[derive(Clone, Debug)]
pub struct CheckpointTracker {
    /// Every record at or before this position is done.
    checkpoint: Option<Position>,
    /// Records not yet passed by the mark, in shard order, from ordinal `base`.
    slots: VecDeque<Slot>,
    base: u64,
    counts: SettledCounts,
}

impl CheckpointTracker {
    /// A tracker resuming from `checkpoint` (what the store had).
    pub fn new(checkpoint: Option<Position>) -> Self {
        Self {
            checkpoint,
            slots: VecDeque::new(),
            base: 0,
            counts: SettledCounts::default(),
        }
    }

    /// Takes in the next record read (in shard order); returns its ordinal.
    pub fn admit(&mut self) -> u64 {
        let ordinal = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot::Pending);
        ordinal
    }

    /// Marks records done, `how`: `ordinals[i]` is the ordinal of `positions(i)`, in
    /// increasing order. Unknown or already-done ordinals are ignored (and reported
    /// as `false`), so a caller bug can never move the mark past a pending record.
    pub fn done<'a>(
        &mut self,
        ordinals: &[u64],
        position: impl Fn(usize) -> &'a Position,
        how: Settled,
    ) -> bool {
        let mut all_known = true;
        for (i, &ordinal) in ordinals.iter().enumerate() {
            let Some(slot) = ordinal
                .checked_sub(self.base)
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| self.slots.get_mut(k))
            else {
                all_known = false;
                self.counts.ignored += 1;
                continue;
            };
            if *slot != Slot::Pending {
                all_known = false;
                self.counts.ignored += 1;
                continue;
            }
            let run_continues = ordinals.get(i + 1) == Some(&(ordinal + 1));
            *slot = if run_continues {
                Slot::Done
            } else {
                Slot::DoneAt(position(i).clone())
            };
            let counter = match how {
                Settled::Handled => &mut self.counts.handled,
                Settled::Delivered => &mut self.counts.delivered,
                Settled::Dropped => &mut self.counts.dropped,
                Settled::Filtered => &mut self.counts.filtered,
            };
            *counter += 1;
        }
        self.advance();
        all_known
    }

    /// Moves the mark past the done prefix.
    fn advance(&mut self) {
        while self
            .slots
            .front()
            .is_some_and(|slot| *slot != Slot::Pending)
        {
            if let Some(Slot::DoneAt(position)) = self.slots.pop_front() {
                self.checkpoint = Some(position);
            }
            self.base += 1;
        }
    }

    /// The highest position at or below which every record is done.
    pub fn checkpoint(&self) -> Option<&Position> {
        self.checkpoint.as_ref()
    }

    /// The ordinal of the first record the mark has not passed: the oldest record
    /// not yet done.
    pub fn first_outstanding(&self) -> u64 {
        self.base
    }

    /// Records read and not yet passed by the mark (pending or done out of order).
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// How many records were done, by how.
    pub fn counts(&self) -> SettledCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::SequenceNumber;
    use proptest::prelude::*;

    fn pos(n: u64) -> Position {
        Position::plain(SequenceNumber::parse((1000 + n).to_string()).unwrap())
    }

    fn done(t: &mut CheckpointTracker, ordinals: &[u64]) -> bool {
        let positions: Vec<Position> = ordinals.iter().map(|&o| pos(o)).collect();
        t.done(ordinals, |i| &positions[i], Settled::Handled)
    }

    #[test]
    fn the_mark_waits_for_the_slowest_lane() {
        let mut t = CheckpointTracker::new(None);
        for _ in 0..6 {
            t.admit();
        }
        // Lane B (ordinals 1, 3, 5) finishes first: nothing below 0 is done.
        assert!(done(&mut t, &[1, 3, 5]));
        assert_eq!(t.checkpoint(), None);
        // Lane A finishes 0 and 2: the mark reaches 3, stops before 4.
        assert!(done(&mut t, &[0, 2]));
        assert_eq!(t.checkpoint(), Some(&pos(3)));
        assert!(done(&mut t, &[4]));
        assert_eq!(t.checkpoint(), Some(&pos(5)));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_resumed_tracker_starts_from_the_stored_checkpoint() {
        let t = CheckpointTracker::new(Some(pos(9)));
        assert_eq!(t.checkpoint(), Some(&pos(9)));
    }

    #[test]
    fn unknown_and_repeated_ordinals_never_move_the_mark() {
        let mut t = CheckpointTracker::new(None);
        t.admit();
        t.admit();
        assert!(!done(&mut t, &[7]));
        assert_eq!(t.checkpoint(), None);
        assert!(done(&mut t, &[0]));
        assert!(!done(&mut t, &[0]));
        assert_eq!(t.checkpoint(), Some(&pos(0)));
        assert_eq!(t.outstanding(), 1);
    }

    proptest! {
        /// Records admitted in order, done in any grouping and order: the mark is
        /// always the last record of the longest done prefix, never beyond a record
        /// that is not done.
        #[test]
        fn the_mark_is_the_done_prefix(n in 1usize..60, groups in proptest::collection::vec(proptest::collection::vec(0usize..60, 0..8), 0..30)) {
            let mut t = CheckpointTracker::new(None);
            for _ in 0..n { t.admit(); }
            let mut is_done = vec![false; n];
            for group in groups {
                let mut ordinals: Vec<u64> = group.into_iter().filter(|&o| o < n && !is_done[o]).map(|o| o as u64).collect();
                ordinals.sort_unstable();
                ordinals.dedup();
                for &o in &ordinals { is_done[o as usize] = true; }
                done(&mut t, &ordinals);
                let prefix = is_done.iter().take_while(|d| **d).count();
                let want = prefix.checked_sub(1).map(|last| pos(last as u64));
                prop_assert_eq!(t.checkpoint().cloned(), want);
                prop_assert_eq!(t.outstanding(), n - prefix);
            }
        }
    }
}
