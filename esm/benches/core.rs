//! In-process core overhead: records per second through the batcher and the event
//! encoder, through the whole shard state machine (lanes, failure rules, checkpoint
//! tracker; invocations and checkpoint writes answered at once), and through an
//! in-process no-op handler (handed its event built from the records, and, for
//! comparison, as JSON that it deserializes as a handler on Lambda does),
//! with no network; and through event filtering (`FilterCriteria::keeps`), which runs
//! once per record before batching; and through KPL de-aggregation
//! (`core::kpl::expand_into`: checksum, protobuf, one record per user record). Run
//! with `cargo bench -p esm --bench core`.
//!
//! Prints one line per scenario; figures go in the README.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use esm::core::batch::{BatchLimits, Batcher};
use esm::core::checkpoint::{ShardCheckpoint, StartAt};
use esm::core::event::{EventEncoder, EventSource};
use esm::core::failure::FailureRules;
use esm::core::filter::FilterCriteria;
use esm::core::kpl::{aggregate, expand_into, Expansion, UserRecord};
use esm::core::partition::LaneRouter;
use esm::core::record::{Position, Record, SequenceNumber};
use esm::core::shard::{Effect, Env, Input, Page, ShardMachine, ShardSettings};
use esm::invoke::{BatchEvent, Invocation, Invoker, Outcome, Payload, Registry};
use handler_sdk::events::KinesisEvent;
use handler_sdk::{service_fn, Error, LambdaEvent};

fn records(count: usize, size: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            position: Position::plain(
                SequenceNumber::parse(format!(
                    "4959033827149025660855969253836157109592157598{i:010}"
                ))
                .unwrap_or_else(|| unreachable!()),
            ),
            partition_key: format!("key-{}", i % 64),
            explicit_hash_key: None,
            data: Bytes::from(vec![b'x'; size]),
            approximate_arrival: Utc
                .timestamp_millis_opt(1_700_000_000_000 + i as i64)
                .single()
                .unwrap_or_default(),
        })
        .collect()
}

fn encoder() -> EventEncoder {
    EventEncoder::new(&EventSource {
        stream_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/bench".into(),
        region: "us-east-1".into(),
        invoke_identity_arn: "arn:aws:iam::000000000000:role/esm".into(),
        shard_id: "shardId-000000000000".into(),
    })
}

/// Batcher + encoder only: the work esm adds per record before the handler.
fn batch_and_encode(input: &[Record], batch_size: usize) -> (Duration, usize, usize) {
    let mut batcher = Batcher::new(BatchLimits::new(batch_size, Duration::ZERO), encoder());
    let mut buf = Vec::new();
    let (mut batches, mut bytes) = (0, 0);
    let now = Instant::now();
    let started = Instant::now();
    for (ordinal, r) in (0u64..).zip(input) {
        batcher.push(r.clone(), ordinal, now);
        if batcher.pending_len() >= batch_size {
            while let Some(batch) = batcher.next_batch(now, false) {
                batcher.encoder().encode(batch.records.iter(), &mut buf);
                bytes += buf.len();
                batches += 1;
                black_box(&buf);
            }
        }
    }
    while let Some(batch) = batcher.next_batch(now, true) {
        batcher.encoder().encode(batch.records.iter(), &mut buf);
        bytes += buf.len();
        batches += 1;
    }
    (started.elapsed(), batches, bytes)
}

/// The whole in-process path: batch, then invoke a no-op handler of `KinesisEvent`,
/// handed the event built from the records (`json` false) or the event's JSON, which
/// it deserializes as a handler on Lambda does (`json` true).
async fn through_handler(input: &[Record], batch_size: usize, json: bool) -> (Duration, usize) {
    async fn noop(event: LambdaEvent<KinesisEvent>) -> Result<usize, Error> {
        Ok(event.payload.records.len())
    }
    let invoker = Registry::new()
        .handler("noop", service_fn(noop))
        .invoker("noop")
        .unwrap_or_else(|| unreachable!());
    let mut batcher = Batcher::new(BatchLimits::new(batch_size, Duration::ZERO), encoder());
    let now = Instant::now();
    let started = Instant::now();
    let mut handled = 0;
    let mut feed = (0u64..).zip(input);
    loop {
        for (ordinal, r) in feed.by_ref().take(batch_size) {
            batcher.push(r.clone(), ordinal, now);
        }
        let Some(batch) = batcher.next_batch(now, true) else {
            break;
        };
        let event = BatchEvent::new(
            batcher.encoder().clone(),
            batch.records.clone(),
            0..batch.len(),
            None,
            Some(batch.event_len),
        );
        let payload = if json {
            Payload::Json(event.to_json())
        } else {
            Payload::Batch(event)
        };
        let outcome = invoker
            .invoke(Invocation {
                payload,
                request_id: "bench".into(),
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:noop".into(),
                timeout: Duration::from_secs(60),
                deadline: SystemTime::now() + Duration::from_secs(60),
            })
            .await;
        match outcome {
            Outcome::Returned { .. } => handled += batch.len(),
            other => panic!("no-op handler failed: {other:?}"),
        }
    }
    (started.elapsed(), handled)
}

/// The shard state machine with `lanes` lanes: pages of 10,000 records in, every
/// invocation and checkpoint write answered at once (no handler).
fn through_machine(input: &[Record], batch_size: usize, lanes: usize) -> (Duration, usize) {
    let settings = ShardSettings {
        shard_id: "shardId-000000000000".into(),
        limits: BatchLimits::new(batch_size, Duration::ZERO),
        rules: FailureRules::default(),
        router: LaneRouter::new(0, u128::MAX, lanes),
        tumbling: None,
        filter: Default::default(),
        encoder: encoder(),
        has_destination: false,
        deaggregate: true,
        destination_backoff: ShardSettings::DESTINATION_BACKOFF,
        store_backoff: ShardSettings::STORE_BACKOFF,
    };
    let mut machine = ShardMachine::new(settings, ShardCheckpoint::new(StartAt::TrimHorizon));
    let (now, wall) = (Instant::now(), Utc::now());
    let started = Instant::now();
    let mut invoked = 0;
    let mut answers = Vec::new();
    let mut pages = input.chunks(10_000);
    let mut seed = 1u64;
    loop {
        let input = match answers.pop() {
            Some(answer) => answer,
            None if machine.wants_read() => match pages.next() {
                Some(chunk) => Input::Page(Page {
                    records: chunk.to_vec(),
                    millis_behind_latest: Some(0),
                    end: None,
                    issued_at: None,
                }),
                None => break,
            },
            None => break,
        };
        seed += 1;
        for effect in machine.on(input, &mut Env::new(now, wall, seed)) {
            match effect {
                Effect::Invoke(request) => {
                    invoked += request.records;
                    black_box(&request.event);
                    answers.push(Input::Invoked {
                        lane: request.lane,
                        outcome: Outcome::Returned {
                            response: Bytes::new().into(),
                        },
                    });
                }
                Effect::Save(_) => answers.push(Input::Saved(Ok(()))),
                Effect::Deliver(_) | Effect::Note(_) => {}
            }
        }
    }
    (started.elapsed(), invoked)
}

/// `count` records of 100-byte JSON data, with fields that vary independently.
fn json_records(count: usize) -> Vec<Record> {
    const TYPES: [&str; 3] = ["order", "quote", "refund"];
    const REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "ap-south-1", "us-west-2"];
    const STATUSES: [&str; 4] = ["new", "paid", "shipped", "cancelled"];
    let mut records = records(count, 0);
    for (i, r) in records.iter_mut().enumerate() {
        // A multiplicative hash, so that the fields do not move in step.
        let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let pick = |shift: u32, n: usize| ((h >> shift) % n as u64) as usize;
        let mut json = format!(
            r#"{{"type":"{}","region":"{}","amount":{},"status":"{}","id":{i},"note":""#,
            TYPES[pick(8, 3)],
            REGIONS[pick(16, 4)],
            (h >> 24) % 1000,
            STATUSES[pick(40, 4)],
        );
        while json.len() < 98 {
            json.push('x');
        }
        json.push_str("\"}");
        assert_eq!(json.len(), 100, "{json}");
        r.data = Bytes::from(json);
    }
    records
}

/// `FilterCriteria::keeps` over every record: the time, and how many were kept.
fn filter(criteria: &FilterCriteria, input: &[Record]) -> (Duration, usize) {
    let started = Instant::now();
    let kept = input
        .iter()
        .filter(|r| criteria.keeps(black_box(&r.partition_key), black_box(&r.data)))
        .count();
    (started.elapsed(), kept)
}

fn filtering() {
    let count = 1_000_000;
    let input = json_records(count);
    let one = [r#"{"data": {"type": ["order"]}}"#];
    let five = [
        r#"{"data": {"type": ["order"], "region": [{"prefix": "us-"}], "amount": [{"numeric": [">=", 500]}]}}"#,
        r#"{"data": {"type": ["refund"], "status": [{"anything-but": ["cancelled", "new"]}]}}"#,
        r#"{"data": {"region": [{"prefix": "eu-"}], "amount": [{"numeric": [">", 0, "<=", 100]}]}}"#,
        r#"{"data": {"type": ["quote"], "status": ["paid"], "region": [{"anything-but": {"prefix": "ap-"}}]}}"#,
        r#"{"data": {"status": ["cancelled"], "amount": [{"numeric": [">=", 950]}]}}"#,
    ];
    let cases: [(&str, &[&str]); 3] = [("none", &[]), ("1", &one), ("5", &five)];
    for (name, patterns) in cases {
        let criteria = FilterCriteria::parse(patterns).unwrap_or_else(|e| panic!("{e}"));
        let (elapsed, kept) = (0..3)
            .map(|_| filter(&criteria, &input))
            .min_by_key(|r| r.0)
            .unwrap_or_else(|| unreachable!());
        println!(
            "filter           records={count:>7} size=   100B patterns={name:>4}: {:>10.0} records/s ({:.0}% kept)",
            count as f64 / elapsed.as_secs_f64(),
            kept as f64 * 100.0 / count as f64,
        );
    }
}

/// Expands every aggregate: the time, and how many user records came out.
fn deaggregate(input: &[Record]) -> (Duration, usize) {
    let mut out = Vec::with_capacity(input.len() * 100);
    let started = Instant::now();
    for record in input {
        let how = expand_into(black_box(record.clone()), &mut out);
        debug_assert!(matches!(how, Expansion::Aggregated { .. }));
    }
    let elapsed = started.elapsed();
    (elapsed, black_box(out).len())
}

fn deaggregation() {
    let (kinesis_records, per, size) = (10_000usize, 100usize, 100usize);
    let mut input = records(kinesis_records, 0);
    for (i, record) in input.iter_mut().enumerate() {
        let users: Vec<UserRecord> = (0..per)
            .map(|j| UserRecord {
                partition_key: format!("key-{}", (i * per + j) % 64),
                explicit_hash_key: None,
                data: Bytes::from(vec![b'x'; size]),
            })
            .collect();
        record.data = aggregate(&users);
    }
    let (elapsed, users) = (0..3)
        .map(|_| deaggregate(&input))
        .min_by_key(|r| r.0)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(users, kinesis_records * per);
    println!(
        "de-aggregate     aggregates={kinesis_records} x {per} user records of {size}B: {:>10.0} user records/s",
        users as f64 / elapsed.as_secs_f64(),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("esm core benchmark (in-process, no network); best of 3 runs each");
    filtering();
    deaggregation();
    for (count, size) in [(200_000usize, 100usize), (20_000, 10_000)] {
        let input = records(count, size);
        for batch_size in [100usize, 1_000, 10_000] {
            let best = (0..3)
                .map(|_| batch_and_encode(&input, batch_size))
                .min_by_key(|r| r.0)
                .unwrap_or_else(|| unreachable!());
            let (elapsed, batches, bytes) = best;
            println!(
                "batch+encode     records={count:>7} size={size:>6}B batch_size={batch_size:>5}: {:>10.0} records/s, {:>7.1} MB/s of event JSON ({batches} batches)",
                count as f64 / elapsed.as_secs_f64(),
                bytes as f64 / elapsed.as_secs_f64() / 1e6,
            );
            for lanes in [1usize, 4] {
                let (elapsed, invoked) = (0..3)
                    .map(|_| through_machine(&input, batch_size, lanes))
                    .min_by_key(|r| r.0)
                    .unwrap_or_else(|| unreachable!());
                assert_eq!(invoked, count);
                println!(
                    "shard machine    records={count:>7} size={size:>6}B batch_size={batch_size:>5} lanes={lanes}: {:>10.0} records/s",
                    count as f64 / elapsed.as_secs_f64(),
                );
            }
            for (json, path) in [(false, "typed"), (true, "JSON ")] {
                let (elapsed, handled) = (0..3)
                    .map(|_| runtime.block_on(through_handler(&input, batch_size, json)))
                    .min_by_key(|r| r.0)
                    .unwrap_or_else(|| unreachable!());
                assert_eq!(handled, count);
                println!(
                    "through handler  records={count:>7} size={size:>6}B batch_size={batch_size:>5} {path}: {:>10.0} records/s ({:.1} µs per invocation)",
                    count as f64 / elapsed.as_secs_f64(),
                    elapsed.as_secs_f64() * 1e6 / count.div_ceil(batch_size) as f64,
                );
            }
        }
    }
}
