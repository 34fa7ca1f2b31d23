//! The lease rules under simulated time: a fleet of instances reading one table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn owned(owner: Option<&str>) -> LeaseState {
    LeaseState {
        owner: owner.map(str::to_string),
        counter: u64::from(owner.is_some()),
        heartbeat: 0,
    }
}

fn shards(n: usize, owner: Option<&str>) -> BTreeMap<String, LeaseState> {
    (0..n)
        .map(|i| (format!("shardId-{i:012}"), owned(owner)))
        .collect()
}

#[test]
fn a_lone_instance_takes_every_free_lease_at_once() {
    let now = crate::sim_clock::origin();
    let table = shards(8, None);
    let mut watch = LeaseWatch::default();
    watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), now);
    let claims = plan("a", &table, &watch, now, &LeaseRules::DEFAULT, 0);
    assert_eq!(claims.len(), 8);
    assert!(claims.iter().all(|c| c.kind == ClaimKind::Take));
}

#[test]
fn a_held_lease_expires_only_after_a_whole_duration_without_a_heartbeat() {
    let rules = LeaseRules::DEFAULT;
    let start = crate::sim_clock::origin();
    let mut table = shards(1, Some("dead"));
    let mut watch = LeaseWatch::default();
    let observe = |watch: &mut LeaseWatch, table: &BTreeMap<String, LeaseState>, at| {
        watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), at)
    };
    observe(&mut watch, &table, start);
    // "dead" is the only other owner and holds the only shard: "a" would steal it
    // only if it were over its share (1 of 1 for 2 instances is not).
    let just_before = start + rules.duration - Duration::from_millis(1);
    observe(&mut watch, &table, just_before);
    assert!(plan("a", &table, &watch, just_before, &rules, 0).is_empty());

    // A heartbeat starts the period again.
    table.values_mut().for_each(|l| l.heartbeat += 1);
    let beat = start + rules.duration;
    observe(&mut watch, &table, beat);
    assert!(plan("a", &table, &watch, beat, &rules, 0).is_empty());

    let expired = beat + rules.duration;
    observe(&mut watch, &table, expired);
    let claims = plan("a", &table, &watch, expired, &rules, 0);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Take);
    assert_eq!(claims[0].expected, table.values().next().unwrap().clone());
}

#[test]
fn an_instance_that_just_started_does_not_take_a_held_lease() {
    let now = crate::sim_clock::origin();
    let table = shards(2, Some("b"));
    let mut watch = LeaseWatch::default();
    watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), now);
    // b holds 2 of 2 with a fair share of 1 each: one lease is stolen, not taken.
    let claims = plan("a", &table, &watch, now, &LeaseRules::DEFAULT, 0);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Steal);
}

#[test]
fn steals_at_most_max_steal_per_round() {
    let now = crate::sim_clock::origin();
    let table = shards(9, Some("b"));
    let mut watch = LeaseWatch::default();
    watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), now);
    for max_steal in [1, 2, 10] {
        let rules = LeaseRules {
            max_steal,
            ..LeaseRules::DEFAULT
        };
        let claims = plan("a", &table, &watch, now, &rules, 3);
        // Share: ceil(9 / 2) = 5; b is 4 over and a 5 short.
        assert_eq!(claims.len(), max_steal.min(4), "max_steal {max_steal}");
    }
}

#[test]
fn a_split_of_3_3_2_is_stable() {
    let now = crate::sim_clock::origin();
    let mut table = shards(8, None);
    for (i, lease) in table.values_mut().enumerate() {
        *lease = owned(Some(["a", "b", "c"][i % 3]));
    }
    let mut watch = LeaseWatch::default();
    watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), now);
    for me in ["a", "b", "c"] {
        assert_eq!(
            plan(me, &table, &watch, now, &LeaseRules::DEFAULT, 7),
            vec![],
            "{me}"
        );
    }
}

#[test]
fn one_short_of_an_exact_share_steals_one_only_when_two_short() {
    let now = crate::sim_clock::origin();
    // 9 shards, 4 instances: share 3. 3/3/3/0 must move, or d would hold nothing.
    let mut table = shards(9, None);
    for (i, lease) in table.values_mut().enumerate() {
        *lease = owned(Some(["a", "b", "c"][i % 3]));
    }
    table.insert("shardId-x".into(), owned(Some("d")));
    table.remove("shardId-000000000000");
    // Now a 2, b 3, c 3, d 1: d is two short of 3 and steals one from b or c.
    let mut watch = LeaseWatch::default();
    watch.observe(table.iter().map(|(s, l)| (s.as_str(), l)), now);
    let claims = plan("d", &table, &watch, now, &LeaseRules::DEFAULT, 0);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].kind, ClaimKind::Steal);
    // a is one short of 3 with b and c at exactly 3: a stays.
    assert_eq!(
        plan("a", &table, &watch, now, &LeaseRules::DEFAULT, 0),
        vec![]
    );
}

/// A fleet sharing one table, stepped round by round under simulated time.
struct Fleet {
    rules: LeaseRules,
    now: Instant,
    table: BTreeMap<String, LeaseState>,
    instances: BTreeMap<String, LeaseWatch>,
    dead: BTreeSet<String>,
}

impl Fleet {
    fn new(table: BTreeMap<String, LeaseState>, instances: usize, rules: LeaseRules) -> Self {
        Self {
            rules,
            now: crate::sim_clock::origin(),
            table,
            instances: (0..instances)
                .map(|i| (format!("i{i}"), LeaseWatch::default()))
                .collect(),
            dead: BTreeSet::new(),
        }
    }

    /// One renewal period: each live instance, in the order given, renews what it
    /// holds, reads the table and claims what its plan says (each claim applied
    /// only if the lease is still as expected, as the store's condition does).
    fn round(&mut self, order: &[usize], seed: u64) -> usize {
        self.now += self.rules.renew_every();
        let names: Vec<String> = self.instances.keys().cloned().collect();
        let mut claimed = 0;
        for &i in order {
            let me = &names[i % names.len()];
            if self.dead.contains(me) {
                continue;
            }
            for lease in self.table.values_mut() {
                if lease.owner.as_deref() == Some(me.as_str()) {
                    lease.heartbeat += 1;
                }
            }
            let watch = self.instances.get_mut(me).unwrap();
            watch.observe(self.table.iter().map(|(s, l)| (s.as_str(), l)), self.now);
            for claim in plan(me, &self.table, watch, self.now, &self.rules, seed) {
                let lease = self.table.get_mut(&claim.shard).unwrap();
                if *lease == claim.expected {
                    lease.owner = Some(me.clone());
                    lease.counter += 1;
                    claimed += 1;
                }
            }
        }
        claimed
    }

    fn loads(&self) -> BTreeMap<String, usize> {
        let mut loads: BTreeMap<String, usize> = self
            .instances
            .keys()
            .filter(|i| !self.dead.contains(*i))
            .map(|i| (i.clone(), 0))
            .collect();
        for lease in self.table.values() {
            if let Some(owner) = &lease.owner {
                *loads.entry(owner.clone()).or_default() += 1;
            }
        }
        loads
    }

    fn balanced(&self) -> bool {
        let loads = self.loads();
        let (min, max) = (loads.values().min(), loads.values().max());
        self.table.values().all(|l| {
            l.owner
                .as_ref()
                .is_some_and(|o| !self.dead.contains(o.as_str()))
        }) && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
    }
}

#[test]
fn three_instances_on_eight_shards_converge_to_3_3_2() {
    let mut fleet = Fleet::new(shards(8, None), 3, LeaseRules::DEFAULT);
    for round in 0..20 {
        fleet.round(&[0, 1, 2], round);
    }
    let mut loads: Vec<usize> = fleet.loads().into_values().collect();
    loads.sort_unstable();
    assert_eq!(loads, [2, 3, 3]);
}

#[test]
fn a_dead_instances_leases_are_taken_within_the_failover_bound() {
    let rules = LeaseRules::DEFAULT;
    let mut fleet = Fleet::new(shards(8, None), 3, rules);
    for round in 0..20 {
        fleet.round(&[0, 1, 2], round);
    }
    assert!(fleet.balanced());
    fleet.dead.insert("i1".into());
    let killed_at = fleet.now;
    let mut rounds = 0;
    while !fleet.balanced() {
        fleet.round(&[0, 1, 2], rounds);
        rounds += 1;
        assert!(rounds < 100, "never converged: {:?}", fleet.loads());
    }
    let took = fleet.now - killed_at;
    assert!(
        took <= rules.failover_bound(),
        "took {took:?}, bound {:?}",
        rules.failover_bound()
    );
    assert!(took >= rules.duration, "took {took:?}: expired too early");
    let mut loads: Vec<usize> = fleet.loads().into_values().collect();
    loads.sort_unstable();
    assert_eq!(loads, [4, 4]);
}

proptest! {
    /// Any fleet, starting from any assignment, balances within a bounded number of
    /// rounds and then stays put: nobody claims anything once balanced.
    #[test]
    fn any_fleet_balances_and_then_stays_put(
        instances in 1usize..=6,
        owners in proptest::collection::vec(proptest::option::of(0usize..6), 0..=24),
        orders in proptest::collection::vec(Just((0..6).collect::<Vec<usize>>()).prop_shuffle(), 64),
        max_steal in 1usize..=3,
    ) {
        let table: BTreeMap<String, LeaseState> = owners
            .iter()
            .enumerate()
            .map(|(i, owner)| {
                let owner = owner.map(|o| format!("i{}", o % instances));
                (format!("shardId-{i:012}"), owned(owner.as_deref()))
            })
            .collect();
        let rules = LeaseRules { max_steal, ..LeaseRules::DEFAULT };
        let mut fleet = Fleet::new(table, instances, rules);
        let mut rounds = 0;
        while !fleet.balanced() {
            prop_assert!(rounds < orders.len(), "not balanced after {rounds} rounds: {:?}", fleet.loads());
            fleet.round(&orders[rounds], rounds as u64);
            rounds += 1;
        }
        for (seed, order) in orders.iter().enumerate().take(5) {
            prop_assert_eq!(fleet.round(order, seed as u64), 0, "a balanced fleet moved: {:?}", fleet.loads());
        }
    }
}
