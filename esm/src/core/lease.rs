//! Who reads which shard when several esm instances share a mapping: shard leases.
//!
//! Each shard has one lease in the store: an owner (absent when free), a lease
//! counter that changes each time the lease changes hands, and a heartbeat its owner
//! bumps every renewal. The rules here are KCL's, decided by each instance on its
//! own, with no coordinator:
//!
//! - **Expiry by observation, not by clocks.** A lease is expired when this instance
//!   has seen its heartbeat unchanged for a whole lease duration, by its own clock.
//!   Clocks of different machines are never compared, so clock skew cannot expire a
//!   live lease. An instance that has just started has seen nothing unchanged for
//!   long, so it waits one lease duration before it takes a lease that is held.
//! - **A free lease is taken at once**: a released one (graceful shutdown), or a shard
//!   nobody has held yet.
//! - **Fair share**: the live instances are the owners of unexpired leases, plus this
//!   one. Each aims at `ceil(active shards / instances)` leases. Below it, an instance
//!   takes expired and free leases first, then steals from the most loaded instance,
//!   a few leases per round ([`LeaseRules::max_steal`]), until the fleet is balanced
//!   (every instance within one lease of every other).
//! - **Fencing** lives in the store: a take or steal is conditional on the lease
//!   being as this instance last saw it (owner and counter), and bumps the counter; a
//!   checkpoint write or renewal is conditional on owner and counter. A former owner,
//!   paused or partitioned, can then move no checkpoint after losing the lease.
//!
//! Only *active* shards count: readable (every parent finished) and not finished.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The timing and balancing parameters of leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRules {
    /// A lease whose heartbeat has not changed for this long is expired
    /// (`lease_duration_seconds`, KCL's `failoverTimeMillis`).
    pub duration: Duration,
    /// At most this many leases are stolen per round (`max_leases_to_steal`).
    pub max_steal: usize,
}

impl LeaseRules {
    /// KCL's defaults: a 10 s lease, one lease stolen at a time.
    pub const DEFAULT: LeaseRules = LeaseRules {
        duration: Duration::from_secs(10),
        max_steal: 1,
    };

    /// How often an owner renews its leases and looks at the table: a third of the
    /// lease duration (KCL renews every third of its failover time), so a lease
    /// survives two missed renewals.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// The longest a dead instance's shard waits for a new owner: the lease must
    /// stay unchanged for a whole duration after the observer last saw it change
    /// (which it sees at most one round late), and the observer acts at its next
    /// round.
    pub fn failover_bound(&self) -> Duration {
        self.duration + 2 * self.renew_every()
    }
}

impl Default for LeaseRules {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One lease as the store holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaseState {
    /// The instance holding it; `None`: free.
    pub owner: Option<String>,
    /// Changes each time the lease changes hands (taken, stolen).
    pub counter: u64,
    /// Bumped by each renewal: the sign of a live owner.
    pub heartbeat: u64,
}

/// What this instance has seen of each lease, and since when (its own clock).
#[derive(Debug, Default)]
pub struct LeaseWatch {
    seen: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    lease: LeaseState,
    since: Instant,
}

impl LeaseWatch {
    /// Records the leases read from the store at `now`. A lease that changed
    /// (owner, counter or heartbeat) starts a new period; shards no longer listed
    /// are forgotten.
    pub fn observe<'a>(
        &mut self,
        leases: impl IntoIterator<Item = (&'a str, &'a LeaseState)>,
        now: Instant,
    ) {
        let mut fresh = HashMap::with_capacity(self.seen.len());
        for (shard, lease) in leases {
            let since = match self.seen.remove(shard) {
                Some(seen) if seen.lease == *lease => seen.since,
                _ => now,
            };
            fresh.insert(
                shard.to_string(),
                Seen {
                    lease: lease.clone(),
                    since,
                },
            );
        }
        self.seen = fresh;
    }

    /// Whether `shard`'s lease may be taken without stealing: it is free, or its
    /// heartbeat has not changed for `duration`. A shard never observed is not.
    pub fn is_takeable(&self, shard: &str, now: Instant, duration: Duration) -> bool {
        self.seen.get(shard).is_some_and(|seen| {
            seen.lease.owner.is_none() || now.saturating_duration_since(seen.since) >= duration
        })
    }
}

/// How a lease is claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// The lease is free or expired.
    Take,
    /// The lease is held by a live instance with more than its share.
    Steal,
}

/// A lease this instance should try to claim. The store makes the claim
/// conditional on the lease still being `expected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The shard.
    pub shard: String,
    /// Take or steal.
    pub kind: ClaimKind,
    /// The lease as last seen.
    pub expected: LeaseState,
}

/// The leases `me` should claim this round, given the active shards' leases as
/// read from the store. `seed` varies which shards are chosen first, so that
/// instances starting together do not all reach for the same ones.
pub fn plan(
    me: &str,
    active: &BTreeMap<String, LeaseState>,
    watch: &LeaseWatch,
    now: Instant,
    rules: &LeaseRules,
    seed: u64,
) -> Vec<Claim> {
    let takeable = |shard: &str| watch.is_takeable(shard, now, rules.duration);
    // Leases per live owner (this instance included, even with none).
    let mut load: BTreeMap<&str, usize> = BTreeMap::from([(me, 0)]);
    for (shard, lease) in active {
        if let Some(owner) = lease.owner.as_deref() {
            if owner == me || !takeable(shard) {
                *load.entry(owner).or_default() += 1;
            }
        }
    }
    let mine = load[me];
    let target = active.len().div_ceil(load.len());
    let mut need = target.saturating_sub(mine);
    if need == 0 {
        return Vec::new();
    }

    let claim = |(shard, lease): (&String, &LeaseState), kind| Claim {
        shard: shard.clone(),
        kind,
        expected: lease.clone(),
    };
    // Free and expired leases first, free ones before expired ones.
    let mut free: Vec<_> = rotated(
        active
            .iter()
            .filter(|(shard, lease)| lease.owner.as_deref() != Some(me) && takeable(shard)),
        seed,
    );
    free.sort_by_key(|(_, lease)| lease.owner.is_some());
    let mut claims: Vec<Claim> = free
        .into_iter()
        .take(need)
        .map(|entry| claim(entry, ClaimKind::Take))
        .collect();
    need -= claims.len();
    if need == 0 {
        return claims;
    }

    // Then steal from the most loaded live instance, if it has more than its share
    // (or exactly its share while this one is two or more short).
    let Some((victim, victim_load)) = load
        .iter()
        .filter(|(owner, _)| **owner != me)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(owner, n)| (*owner, *n))
    else {
        return claims;
    };
    let steal = if victim_load > target {
        need.min(victim_load - target)
    } else if victim_load == target && mine + 1 < target {
        1
    } else {
        0
    }
    .min(rules.max_steal);
    claims.extend(
        rotated(
            active
                .iter()
                .filter(|(_, lease)| lease.owner.as_deref() == Some(victim)),
            seed,
        )
        .into_iter()
        .take(steal)
        .map(|entry| claim(entry, ClaimKind::Steal)),
    );
    claims
}

/// The items in order, starting at a `seed`-chosen one and wrapping around.
fn rotated<T>(items: impl Iterator<Item = T>, seed: u64) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    if !items.is_empty() {
        let start = (seed % items.len() as u64) as usize;
        items.rotate_left(start);
    }
    items
}

#[cfg(test)]
mod tests;
