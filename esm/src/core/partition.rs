//! Parallelization: which lane of a shard a record goes to.
//!
//! With `parallelization_factor = N`, Lambda runs up to N batches of one shard at once
//! and keeps records of one partition key in order. It documents no more than that, so
//! esm states its rule: a shard's hash key range `[start, end]` is cut into N equal
//! sub-ranges, and a record goes to the lane whose sub-range holds its hash key `h`:
//!
//! ```text
//! lane = floor((h − start) × N / (end − start + 1))
//! ```
//!
//! `h` is the MD5 of the partition key read as a 128-bit big-endian integer (how
//! Kinesis itself maps keys to shards), or the explicit hash key when the producer
//! gave one. An explicit hash key may lie outside the shard's range (Kinesis routes by
//! it only at put time, and a reshard does not move records); its lane is then
//! `h mod N`. Either way a key always lands in the same lane, so its records stay in
//! order, and keys spread over the lanes as evenly as they spread over the shard.

use md5::{Digest as _, Md5};

use super::record::Record;

/// The most lanes a shard can have (Lambda's maximum parallelization factor).
pub const MAX_LANES: usize = 10;

/// Routes a shard's records to its lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneRouter {
    start: u128,
    end: u128,
    lanes: u8,
}

impl LaneRouter {
    /// A router for a shard covering hash keys `start..=end`, with `lanes` lanes
    /// (clamped to 1..=[`MAX_LANES`]).
    pub fn new(start: u128, end: u128, lanes: usize) -> Self {
        let (start, end) = if start <= end {
            (start, end)
        } else {
            (end, start)
        };
        Self {
            start,
            end,
            lanes: lanes.clamp(1, MAX_LANES) as u8,
        }
    }

    /// The number of lanes.
    pub fn lanes(&self) -> usize {
        usize::from(self.lanes)
    }

    /// The lane of `record`.
    pub fn lane_of(&self, record: &Record) -> usize {
        if self.lanes == 1 {
            return 0;
        }
        let h = record
            .explicit_hash_key
            .as_deref()
            .and_then(|k| k.parse::<u128>().ok())
            .unwrap_or_else(|| hash_key(&record.partition_key));
        self.lane_of_hash(h)
    }

    /// The lane of hash key `h`.
    pub fn lane_of_hash(&self, h: u128) -> usize {
        let n = u128::from(self.lanes);
        if h < self.start || h > self.end {
            return (h % n) as usize;
        }
        // floor((h − start) × n / width), width = end − start + 1 (up to 2^128), done
        // exactly: the largest k < n with k × width ≤ (h − start) × n.
        let offset_times_n = Wide::mul(h - self.start, self.lanes);
        let width = match (self.end - self.start).checked_add(1) {
            Some(w) => Wide::from(w),
            None => Wide { hi: 1, lo: 0 },
        };
        (1..self.lanes)
            .rev()
            .find(|&k| width.times(k) <= offset_times_n)
            .map_or(0, usize::from)
    }
}

/// The 128-bit hash key Kinesis derives from a partition key: its MD5, big-endian.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// A number below 2^136: enough for a 128-bit value times a small factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Wide {
    hi: u128,
    lo: u128,
}

impl From<u128> for Wide {
    fn from(lo: u128) -> Self {
        Self { hi: 0, lo }
    }
}

impl Wide {
    /// `a × k`.
    fn mul(a: u128, k: u8) -> Self {
        Wide::from(a).times(k)
    }

    /// `self × k` (the high part stays small: it is below 2^8 × (hi + 1)).
    fn times(self, k: u8) -> Self {
        let k = u128::from(k);
        let (lo_hi, lo_lo) = (self.lo >> 64, self.lo & u128::from(u64::MAX));
        let low = lo_lo * k;
        let high = lo_hi * k + (low >> 64);
        Self {
            hi: self.hi * k + (high >> 64),
            lo: (high << 64) | (low & u128::from(u64::MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn md5_of_the_key_as_kinesis_computes_it() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn the_full_range_is_cut_into_equal_parts() {
        let r = LaneRouter::new(0, u128::MAX, 4);
        assert_eq!(r.lane_of_hash(0), 0);
        assert_eq!(r.lane_of_hash((1 << 126) - 1), 0);
        assert_eq!(r.lane_of_hash(1 << 126), 1);
        assert_eq!(r.lane_of_hash(1 << 127), 2);
        assert_eq!(r.lane_of_hash(3 << 126), 3);
        assert_eq!(r.lane_of_hash(u128::MAX), 3);
    }

    #[test]
    fn a_sub_range_is_cut_from_its_start() {
        // A shard covering [100, 199] with 10 lanes: 10 keys each.
        let r = LaneRouter::new(100, 199, 10);
        assert_eq!(r.lane_of_hash(100), 0);
        assert_eq!(r.lane_of_hash(109), 0);
        assert_eq!(r.lane_of_hash(110), 1);
        assert_eq!(r.lane_of_hash(199), 9);
        // Outside the range (an explicit hash key): h mod N.
        assert_eq!(r.lane_of_hash(7), 7);
        assert_eq!(r.lane_of_hash(1_234), 4);
    }

    #[test]
    fn one_lane_takes_everything() {
        let r = LaneRouter::new(0, u128::MAX, 1);
        assert_eq!(r.lane_of_hash(u128::MAX), 0);
    }

    proptest! {
        /// The exact arithmetic agrees with the formula computed in wide integers
        /// where it fits, and lanes grow with the hash key.
        #[test]
        fn agrees_with_the_formula(start in 0u128..u128::MAX / 2, width in 1u128..(1u128 << 100), h in any::<u128>(), n in 1usize..=10) {
            let end = start + width - 1;
            let r = LaneRouter::new(start, end, n);
            let lane = r.lane_of_hash(h);
            prop_assert!(lane < n);
            if (start..=end).contains(&h) {
                // width < 2^100, so (h − start) × n fits in a u128 here.
                prop_assert_eq!(lane as u128, (h - start) * n as u128 / width);
                if h < end {
                    prop_assert!(r.lane_of_hash(h + 1) >= lane);
                }
            } else {
                prop_assert_eq!(lane as u128, h % n as u128);
            }
        }

        #[test]
        fn the_full_range_agrees_with_a_shift(h in any::<u128>(), n in 1usize..=10) {
            // floor(h × n / 2^128), computed as the top bits of a 136-bit product.
            let r = LaneRouter::new(0, u128::MAX, n);
            let want = Wide::mul(h, n as u8).hi as usize;
            prop_assert_eq!(r.lane_of_hash(h), want);
        }
    }
}
