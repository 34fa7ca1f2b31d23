//! Several esm processes on one stream, sharing a DynamoDB lease table (moto): they
//! split the shards fairly, hand them over on shutdown, take a killed instance's
//! shards within two lease durations without losing a record, fence a paused
//! instance out, and read children only after their parents, whoever finished them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use esm_e2e::fleet::*;
use esm_e2e::observe::{add_server, metric, scrape};
use esm_e2e::*;

const MAPPING: &str = "fleet";
/// The lease duration the tests configure (short, with room for a loaded machine).
const LEASE: Duration = Duration::from_secs(4);

/// One instance: its directory, config, process and lease owner name.
struct Instance {
    dir: tempfile::TempDir,
    config: PathBuf,
    esm: Option<Esm>,
    name: String,
    /// Its log file (still there after the process is gone).
    log_path: PathBuf,
}

impl Instance {
    fn start(stream: &str, table: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = write_fleet_config(dir.path(), MAPPING, stream, table, LEASE.as_secs(), extra);
        Self::start_with(dir, config, env)
    }

    fn start_with(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut esm = Esm::start(dir.path(), &config, env);
        let name = instance_name(&mut esm);
        let log_path = esm.log.clone();
        Self {
            dir,
            config,
            esm: Some(esm),
            name,
            log_path,
        }
    }

    fn esm(&mut self) -> &mut Esm {
        self.esm.as_mut().expect("running")
    }

    fn batches(&self) -> Vec<BatchLine> {
        read_batches(&self.dir.path().join("out.jsonl"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its log lines about leases changing hands, and its runners starting and
    /// stopping (what explains a record delivered twice).
    fn lease_story(&self) -> String {
        self.log()
            .lines()
            .filter(|l| {
                [
                    "took a lease",
                    "stole a lease",
                    "lost the lease",
                    "released the lease",
                    "reading shard",
                    "runner ended",
                    "refused",
                ]
                .iter()
                .any(|needle| l.contains(needle))
            })
            .map(|l| format!("{}: {l}\n", self.name))
            .collect()
    }
}

/// How many times each record was delivered, over every instance.
fn deliveries(instances: &[&Instance]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for i in instances {
        for b in i.batches() {
            for r in &b.records {
                *count.entry(r.seq.clone()).or_default() += 1;
            }
        }
    }
    count
}

/// Waits until every record in `put` was delivered by some instance.
async fn wait_all_seen(instances: &mut [&mut Instance], put: &[PutRecord], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = deliveries(&instances.iter().map(|i| &**i).collect::<Vec<_>>());
        let mut missing: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for p in put.iter().filter(|p| !seen.contains_key(&p.seq)) {
            missing
                .entry(p.shard.as_str())
                .or_insert((0, p.seq.as_str()))
                .0 += 1;
        }
        if missing.is_empty() {
            return;
        }
        for i in instances.iter_mut() {
            if let Some(esm) = i.esm.as_mut() {
                esm.assert_running();
            }
        }
        assert!(
            Instant::now() < deadline,
            "records never delivered (per shard: how many, the first): {missing:?} of {}; logs:\n{}",
            put.len(),
            instances.iter().map(|i| i.log()).collect::<Vec<_>>().join("\n-----\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn owned_by<'a>(rows: &'a BTreeMap<String, LeaseRow>, name: &str) -> BTreeSet<&'a str> {
    rows.iter()
        .filter(|(_, r)| r.owner.as_deref() == Some(name))
        .map(|(s, _)| s.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_split_eight_shards_3_3_2_and_hand_over_on_shutdown() {
    let client = kinesis().await;
    let ddb = dynamodb().await;
    let stream = TestStream::create(&client, "fleet-split", 8).await;
    let table = unique_name("esm-fleet-split");
    let put = put_records(&client, &stream, 0, 800, 100, 64).await;

    // The first instance serves /metrics on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_fleet_config(dir.path(), MAPPING, &stream, &table, LEASE.as_secs(), "");
    add_server(&config, &format!("127.0.0.1:{port}"));
    let mut a = Instance::start_with(dir, config, &[]);
    let mut b = Instance::start(&stream, &table, "", &[]);
    let mut c = Instance::start(&stream, &table, "", &[]);
    let names = [a.name.clone(), b.name.clone(), c.name.clone()];

    let started = Instant::now();
    let converged = |rows: &BTreeMap<String, LeaseRow>| {
        rows.len() == 8
            && split(rows) == [2, 3, 3]
            && rows
                .values()
                .all(|r| r.owner.as_ref().is_some_and(|o| names.contains(o)))
    };
    let (rows, _) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(60),
        "a 3/3/2 split",
        converged,
    )
    .await;
    eprintln!("converged to 3/3/2 in {:?}", started.elapsed());
    // And it stays put: two more lease durations, nobody moves.
    tokio::time::sleep(2 * LEASE).await;
    let later = lease_rows(&ddb, &table, MAPPING).await;
    let owners = |rows: &BTreeMap<String, LeaseRow>| -> Vec<Option<String>> {
        rows.values().map(|r| r.owner.clone()).collect()
    };
    assert_eq!(
        owners(&later),
        owners(&rows),
        "a balanced fleet moved leases"
    );

    wait_all_seen(&mut [&mut a, &mut b, &mut c], &put, Duration::from_secs(60)).await;

    // Metrics: the leases a holds, and how it got them.
    let samples = scrape(format!("127.0.0.1:{port}").parse().unwrap());
    let held = owned_by(&later, &a.name).len();
    assert_eq!(
        metric(&samples, "esm_leases_held", &[("mapping", MAPPING)]),
        held as f64
    );
    let got = metric(&samples, "esm_lease_events_total", &[("event", "taken")])
        + metric(&samples, "esm_lease_events_total", &[("event", "stolen")]);
    assert!(got >= held as f64, "taken + stolen = {got}, held {held}");

    // `esm status` reads the table (b has no server): every shard with its owner.
    let status = esm_status(&b.config);
    assert!(status.status.success(), "esm status: {status:?}");
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.starts_with("from the lease table"), "{text}");
    for (shard, row) in &later {
        let owner = row.owner.as_deref().unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains(shard.as_str()) && l.contains(owner)),
            "no row for {shard} held by {owner} in:\n{text}"
        );
    }

    // `esm checkpoint set` through the lease, while the fleet runs: one shard goes
    // back to the trim horizon and its records are delivered again.
    let (rewound, _) = later.iter().next().unwrap();
    let before = deliveries(&[&a, &b, &c]);
    let out = esm_checkpoint(
        MAPPING,
        &["set", "--shard", rewound, "--trim-horizon"],
        &a.config,
    );
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "esm checkpoint set: {out:?}");
    assert!(
        shown
            .lines()
            .any(|l| l.contains(rewound.as_str()) && l.contains("TRIM_HORIZON")),
        "{shown}"
    );
    let of_rewound: Vec<&PutRecord> = put.iter().filter(|p| &p.shard == rewound).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = deliveries(&[&a, &b, &c]);
        if of_rewound.iter().all(|p| now[&p.seq] > before[&p.seq]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewound shard {rewound} was not read again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A graceful stop releases c's leases: a and b take them at once, long before
    // they would expire.
    let before = lease_rows(&ddb, &table, MAPPING).await;
    let stopped_at = Instant::now();
    c.esm.take().unwrap().stop(Duration::from_secs(30));
    let two = [a.name.clone(), b.name.clone()];
    let (after, at) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(30),
        "a 4/4 split after c stopped",
        |rows| {
            split(rows) == [4, 4]
                && rows
                    .values()
                    .all(|r| r.owner.as_ref().is_some_and(|o| two.contains(o)))
        },
    )
    .await;
    let handover = at - stopped_at;
    eprintln!("handover after a graceful stop: {handover:?} (lease duration {LEASE:?})");
    assert!(
        handover < LEASE,
        "released leases waited {handover:?}: as if expired"
    );
    // The shards c held changed hands through a release, not a steal from a or b.
    for shard in owned_by(&before, &c.name) {
        assert!(after[shard].counter > before[shard].counter);
    }
    a.esm.take().unwrap().stop(Duration::from_secs(30));
    b.esm.take().unwrap().stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instances_shards_move_within_two_lease_durations_losing_nothing() {
    let client = kinesis().await;
    let ddb = dynamodb().await;
    let stream = TestStream::create(&client, "fleet-kill", 8).await;
    let table = unique_name("esm-fleet-kill");
    // Slow: 10 records per invocation, 100 ms each, half of it after the handler
    // recorded them, so the kill lands mid-stream, often between "handled" and
    // "checkpointed".
    let extra = "batch_size = 10\n";
    let env = [
        ("RECORDER_DELAY_MS", "50"),
        ("RECORDER_DELAY_AFTER_MS", "50"),
    ];
    let mut a = Instance::start(&stream, &table, extra, &env);
    let mut b = Instance::start(&stream, &table, extra, &env);
    let mut c = Instance::start(&stream, &table, extra, &env);
    let names = [a.name.clone(), b.name.clone(), c.name.clone()];
    // Balanced before any record exists: no lease moves with records in flight
    // except at the kill. (A stolen lease's former owner learns of it at its next
    // renewal, and reads on until then: wait for that too.)
    let (balanced, _) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(60),
        "a 3/3/2 split",
        |rows| {
            rows.len() == 8
                && split(rows) == [2, 3, 3]
                && rows
                    .values()
                    .all(|r| r.owner.as_ref().is_some_and(|o| names.contains(o)))
        },
    )
    .await;

    tokio::time::sleep(LEASE).await;
    let settled = lease_rows(&ddb, &table, MAPPING).await;
    assert_eq!(settled, balanced, "the balanced fleet moved leases");
    let put = put_records(&client, &stream, 0, 6_000, 100, 64).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while deliveries(&[&a, &b, &c]).len() < 1_500 {
        assert!(Instant::now() < deadline, "no progress: {}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.esm.take().unwrap().kill();
    let killed_at = Instant::now();
    // Nothing can move the victim's checkpoints until its leases are taken: these
    // are the last durable checkpoints at the kill.
    let at_kill = lease_rows(&ddb, &table, MAPPING).await;
    let victims: BTreeSet<String> = owned_by(&at_kill, &c.name)
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(!victims.is_empty());
    let survivors = [a.name.clone(), b.name.clone()];
    let (_, taken_at) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        3 * LEASE,
        "the killed instance's shards taken",
        |rows| {
            victims.iter().all(|s| {
                rows[s]
                    .owner
                    .as_ref()
                    .is_some_and(|o| survivors.contains(o))
            })
        },
    )
    .await;
    let failover = taken_at - killed_at;
    eprintln!(
        "failover of {} shards: {failover:?} (lease duration {LEASE:?}, bound 2x = {:?})",
        victims.len(),
        2 * LEASE
    );
    assert!(failover <= 2 * LEASE, "failover took {failover:?}");

    wait_all_seen(
        &mut [&mut a, &mut b, &mut c],
        &put,
        Duration::from_secs(120),
    )
    .await;
    let count = deliveries(&[&a, &b, &c]);
    let by_seq: HashMap<&str, &PutRecord> = put.iter().map(|p| (p.seq.as_str(), p)).collect();
    let mut duplicates = 0;
    for (seq, n) in &count {
        if *n == 1 {
            continue;
        }
        duplicates += n - 1;
        let record = by_seq[seq.as_str()];
        assert!(
            victims.contains(&record.shard),
            "{seq} of {} (not the killed instance's) was delivered {n} times; leases:\n{}{}{}",
            record.shard,
            a.lease_story(),
            b.lease_story(),
            c.lease_story()
        );
        let checkpoint = at_kill[&record.shard].checkpoint.as_deref();
        assert!(
            checkpoint.is_none_or(|c| seq_cmp(seq, c) == std::cmp::Ordering::Greater),
            "{seq} of {} was delivered again though the checkpoint at the kill ({checkpoint:?}) covered it; killed {}; leases:\n{}{}{}",
            record.shard,
            c.name,
            a.lease_story(),
            b.lease_story(),
            c.lease_story()
        );
    }
    eprintln!("{duplicates} records delivered twice, all after the killed instance's last durable checkpoints");
    // At most two batches on each of its shards (one lane, batches of 10): the one
    // whose checkpoint was being written at the kill and the one started meanwhile.
    assert!(
        duplicates <= victims.len() * 2 * 10,
        "{duplicates} duplicates: more than the two batches per shard not yet durable at the kill"
    );
    a.esm.take().unwrap().stop(Duration::from_secs(30));
    b.esm.take().unwrap().stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_instance_moves_no_checkpoint_after_its_leases_are_taken() {
    let client = kinesis().await;
    let ddb = dynamodb().await;
    let stream = TestStream::create(&client, "fleet-pause", 4).await;
    let table = unique_name("esm-fleet-pause");
    let extra = "batch_size = 10\n";
    let env = [("RECORDER_DELAY_MS", "300")];
    let mut a = Instance::start(&stream, &table, extra, &env);
    let mut b = Instance::start(&stream, &table, extra, &env);
    let both = [a.name.clone(), b.name.clone()];
    wait_rows(
        &ddb,
        &table,
        MAPPING,
        Duration::from_secs(60),
        "a 2/2 split",
        |rows| {
            rows.len() == 4
                && split(rows) == [2, 2]
                && rows
                    .values()
                    .all(|r| r.owner.as_ref().is_some_and(|o| both.contains(o)))
        },
    )
    .await;
    let put = put_records(&client, &stream, 0, 2_000, 100, 64).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.batches().len() < 4 {
        assert!(Instant::now() < deadline, "a made no progress: {}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pause a mid-invocation; b takes its leases once they expire.
    let pid = a.esm().pid().to_string();
    let before = lease_rows(&ddb, &table, MAPPING).await;
    let a_leases: BTreeMap<String, u64> = before
        .iter()
        .filter(|(_, r)| r.owner.as_deref() == Some(a.name.as_str()))
        .map(|(s, r)| (s.clone(), r.counter))
        .collect();
    let log_at_pause = a.log().len();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let b_name = b.name.clone();
    let (taken, _) = wait_rows(
        &ddb,
        &table,
        MAPPING,
        3 * LEASE,
        "b holding every shard",
        |rows| {
            rows.values()
                .all(|r| r.owner.as_deref() == Some(b_name.as_str()))
        },
    )
    .await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    // While a wakes up, no checkpoint moves backwards (a stale write would).
    let mut last = taken;
    let watch_until = Instant::now() + 2 * LEASE;
    while Instant::now() < watch_until {
        let rows = lease_rows(&ddb, &table, MAPPING).await;
        for (shard, row) in &rows {
            if let (Some(new), Some(old)) = (&row.checkpoint, &last[shard].checkpoint) {
                assert_ne!(
                    seq_cmp(new, old),
                    std::cmp::Ordering::Less,
                    "the checkpoint of {shard} went back from {old} to {new}"
                );
            }
        }
        last = rows;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a was told: each lost lease is logged, its runners stopped, and every
    // checkpoint write it tried under an old lease was refused.
    let lost: BTreeSet<String> = a.log()[log_at_pause..]
        .lines()
        .filter(|l| l.contains("lost the lease"))
        .filter_map(shard_in_line)
        .collect();
    // Every lease the table gave a at the pause; a may also learn only now of one
    // b stole just before it (the table moved, a's keeper had not looked yet).
    assert!(
        a_leases.keys().all(|shard| lost.contains(shard)),
        "lost leases {lost:?}, held at the pause {a_leases:?}:\n{}",
        a.log()
    );
    let after_resume = a.log()[log_at_pause..].to_string();
    let refused = after_resume
        .lines()
        .filter(|l| l.contains("checkpoint write refused"))
        .count();
    let stale_saves: Vec<&str> = after_resume
        .lines()
        .filter(|l| l.contains("checkpoint saved"))
        .filter(|l| {
            shard_in_line(l).is_some_and(|s| {
                a_leases
                    .get(&s)
                    .is_some_and(|c| l.contains(&format!("lease_counter={c}")))
            })
        })
        .collect();
    assert!(
        stale_saves.is_empty(),
        "saved under a lost lease: {stale_saves:#?}"
    );
    let stopped: BTreeSet<String> = after_resume
        .lines()
        .filter(|l| l.contains("no longer holds its lease"))
        .filter_map(shard_in_line)
        .collect();
    // Each lost lease stopped its runner (a runner may also stop now for a lease a
    // lost, and logged, just before the pause).
    assert!(
        lost.is_subset(&stopped),
        "runners stopped {stopped:?}, leases lost {lost:?}:\n{after_resume}"
    );
    eprintln!("the paused instance tried {refused} checkpoint writes after resuming; all refused");
    assert!(
        refused >= 1,
        "a had an invocation in flight: its checkpoint write must have been tried:\n{after_resume}"
    );

    wait_all_seen(&mut [&mut a, &mut b], &put, Duration::from_secs(120)).await;
    a.esm.take().unwrap().stop(Duration::from_secs(30));
    b.esm.take().unwrap().stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn children_are_read_after_their_parents_whoever_finished_them() {
    let client = kinesis().await;
    let ddb = dynamodb().await;
    let stream = TestStream::create(&client, "fleet-reshard", 2).await;
    let table = unique_name("esm-fleet-reshard");
    let mut a = Instance::start(&stream, &table, "", &[]);
    let mut b = Instance::start(&stream, &table, "", &[]);
    let mut c = Instance::start(&stream, &table, "", &[]);
    let mut put = put_records(&client, &stream, 0, 300, 100, 64).await;
    wait_all_seen(&mut [&mut a, &mut b, &mut c], &put, Duration::from_secs(60)).await;

    let parents: Vec<String> = list_shards(&client, &stream)
        .await
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect();
    update_shard_count(&client, &stream, 4).await;
    let children: Vec<String> = wait_for_shards(&client, &stream, "the children", |shards| {
        let open: Vec<String> = shards
            .iter()
            .filter(|s| s.parent_shard_id().is_some())
            .map(|s| s.shard_id().to_string())
            .collect();
        (open.len() >= 4).then_some(open)
    })
    .await;
    let more = put_records(&client, &stream, 300, 300, 100, 64).await;
    put.extend(more);
    wait_all_seen(&mut [&mut a, &mut b, &mut c], &put, Duration::from_secs(90)).await;

    // Across every instance: each child's first invocation started after every
    // invocation of its parent ended.
    let all: Vec<BatchLine> = [&a, &b, &c].iter().flat_map(|i| i.batches()).collect();
    let shards = list_shards(&client, &stream).await;
    let parent_of: HashMap<String, Vec<String>> = shards
        .iter()
        .map(|s| {
            let named = s
                .parent_shard_id()
                .into_iter()
                .chain(s.adjacent_parent_shard_id())
                .map(str::to_string)
                .collect();
            (s.shard_id().to_string(), named)
        })
        .collect();
    let who = |shard: &str| -> BTreeSet<String> {
        [&a, &b, &c]
            .iter()
            .filter(|i| i.batches().iter().any(|b| b.shard == shard))
            .map(|i| i.name.clone())
            .collect()
    };
    for child in &children {
        let first = all
            .iter()
            .filter(|b| &b.shard == child)
            .map(|b| b.started_ms)
            .min()
            .expect("the child was read");
        for parent in &parent_of[child] {
            let last = all
                .iter()
                .filter(|b| &b.shard == parent)
                .map(|b| b.ended_ms)
                .max()
                .expect("the parent was read");
            assert!(
                last <= first,
                "{child} (read by {:?}) started at {first} before {parent} (read by {:?}) ended at {last}",
                who(child),
                who(parent)
            );
        }
    }
    let rows = lease_rows(&ddb, &table, MAPPING).await;
    for parent in &parents {
        assert!(rows[parent].finished, "{parent} is not finished: {rows:#?}");
    }
    for i in [&mut a, &mut b, &mut c] {
        i.esm.take().unwrap().stop(Duration::from_secs(30));
    }
}
