//! queue-store benchmark: durable enqueue under group commit against the physical
//! limit of the design, and the claim + complete rate.
//!
//! For each producer count (1, 64, 256), in one run and one after the other:
//! - A: `producers` concurrent producers (async tasks on one runtime thread, as ingest
//!   connections are) each enqueue 4 KiB messages with 1 recipient, awaiting each
//!   acknowledgement (so each waits for a sync), for a fixed time;
//! - B: one thread writes raw RocksDB `WriteBatch`es with `sync=true`, each holding
//!   as many messages as the store's writer packed per sync in A (its mean group),
//!   with the same keys and value sizes the store writes per message.
//!
//! B is the most this design can do on this disk at that group size; ratio = A / B.
//! Then 100,000 queued recipients are claimed and completed as delivered.
//!
//! Ends with: `BENCH queue_store producers=256 enqueue_msgs_s=.. raw_msgs_s=..
//! ratio=.. claim_complete_s=..` (plus the 1- and 64-producer figures).

#![allow(clippy::expect_used)] // a benchmark aborts on a failed setup step, naming it

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{bench_line, per_second, scratch_dir};
use queue_store::{NewMessage, NewRecipient, Outcome, StateChange, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY_BYTES: usize = 4096;
const DOMAINS: u64 = 100;
const CLAIM_RECIPIENTS: u64 = 100_000;
/// The claim setup waits out this many "busy" answers at most before it gives up.
const SETUP_BUSY_ANSWERS_MAX: u64 = 1000;
/// RocksDB write stalls met in this run, over every store it opened (BENCH line).
static SETUP_STALLS: AtomicU64 = AtomicU64::new(0);

fn run_seconds() -> Duration {
    let seconds = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(seconds)
}

fn message(serial: u64) -> NewMessage {
    let mut body = format!("Message-ID: <{serial}@bench.test>\r\nSubject: bench\r\n\r\n").into_bytes();
    body.resize(BODY_BYTES, b'x');
    NewMessage {
        sender: "bounces@sender.test".into(),
        recipients: vec![NewRecipient::new(format!("user{serial}@d{}.test", serial % DOMAINS))],
        body,
        tenant: Some("bench".into()),
        campaign: Some("c1".into()),
        metadata: Vec::new(),
    }
}

struct EnqueueRun {
    messages: u64,
    elapsed: Duration,
    group_mean: f64,
}

fn durable_enqueue(producers: u64, duration: Duration) -> EnqueueRun {
    let dir = scratch_dir().expect("scratch dir");
    let mut config = StoreConfig::new(dir.path());
    config.shard_count = 2;
    let store = Arc::new(Store::open(config).expect("open store").0);
    let stop = Arc::new(AtomicBool::new(false));
    let serial = Arc::new(AtomicU64::new(0));
    // Producers are tasks on one runtime thread, as ingest connections will be (on
    // the shards): each awaits its acknowledgement without holding an OS thread, so
    // the run measures the store, not 256 threads switching on 2 cores.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let started = Instant::now();
    let messages = runtime.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let (store, stop, serial) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&serial));
                tokio::spawn(async move {
                    let mut acked = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let next = serial.fetch_add(1, Ordering::Relaxed);
                        let answer = match store.submit_enqueue(vec![message(next)]) {
                            Ok(pending) => pending.await,
                            Err(error) => Err(error),
                        };
                        match answer {
                            Ok(_) => acked += 1,
                            Err(error) if error.is_temporary() => tokio::task::yield_now().await,
                            Err(error) => panic!("enqueue: {error}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut messages = 0;
        for task in tasks {
            messages += task.await.expect("producer");
        }
        messages
    });
    let elapsed = started.elapsed();
    let metrics = store.metrics();
    SETUP_STALLS.fetch_add(metrics.write_stalls, Ordering::Relaxed);
    let group_mean = metrics.synced_messages as f64 / metrics.syncs.max(1) as f64;
    EnqueueRun { messages, elapsed, group_mean }
}

/// Raw RocksDB, one thread, `sync=true`, `group` messages per batch: the keys and
/// value sizes queue-store writes for a 1-recipient message (envelope, body,
/// recipient record, domain index, due index) plus the id high-water mark per batch.
fn raw_synced_writes(group: usize, duration: Duration) -> (u64, Duration) {
    let dir = scratch_dir().expect("scratch dir");
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families = ["envelopes", "bodies", "due", "domains", "meta"];
    let db = rocksdb::DB::open_cf(&options, dir.path(), families).expect("open raw db");
    let handle = |name: &str| db.cf_handle(name).expect("column family");
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let body = message(0).body;
    let envelope_value = vec![7u8; 80];
    let recipient_value = vec![9u8; 60];
    let mut serial: u64 = 0;
    let started = Instant::now();
    while started.elapsed() < duration {
        let mut batch = rocksdb::WriteBatch::default();
        for _ in 0..group {
            serial += 1;
            let id = serial.to_be_bytes();
            let mut recipient = id.to_vec();
            recipient.extend_from_slice(&0u32.to_be_bytes());
            let domain = format!("d{}.test\0", serial % DOMAINS);
            let mut domain_key = domain.into_bytes();
            domain_key.extend_from_slice(&recipient);
            let mut due = vec![0u8, 0];
            due.extend_from_slice(&serial.to_be_bytes());
            due.extend_from_slice(&recipient);
            batch.put_cf(handle("envelopes"), id, &envelope_value);
            batch.put_cf(handle("bodies"), id, &body);
            batch.put_cf(handle("envelopes"), &recipient, &recipient_value);
            batch.put_cf(handle("domains"), &domain_key, []);
            batch.put_cf(handle("due"), &due, []);
        }
        batch.put_cf(handle("meta"), b"next_id", serial.to_be_bytes());
        db.write_opt(batch, &sync).expect("raw write");
    }
    (serial, started.elapsed())
}

fn claim_complete() -> f64 {
    let dir = scratch_dir().expect("scratch dir");
    let mut config = StoreConfig::new(dir.path());
    config.durability = queue_store::Durability::Os; // setup speed; the timed part syncs nothing
    let store = Store::open(config).expect("open store").0;
    let mut serial = 0;
    let mut busy_answers = 0u64;
    while serial < CLAIM_RECIPIENTS {
        let batch: Vec<NewMessage> = (serial..serial + 1000).map(message).collect();
        // As a real producer does: a "busy" answer (a RocksDB write stall, a full
        // channel) is waited out and the batch sent again, bounded.
        let mut pause = Duration::from_millis(10);
        loop {
            match store.enqueue(batch.clone()) {
                Ok(_) => break,
                Err(error) if error.is_temporary() && busy_answers < SETUP_BUSY_ANSWERS_MAX => {
                    busy_answers += 1;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => panic!("setup enqueue: {error} (after {busy_answers} busy answers)"),
            }
        }
        serial += 1000;
    }
    SETUP_STALLS.fetch_add(store.metrics().write_stalls, Ordering::Relaxed);
    let now = u64::MAX / 2;
    let started = Instant::now();
    let mut done = 0;
    loop {
        let claimed = store.claim(0, now, 1000).expect("claim");
        if claimed.is_empty() {
            break;
        }
        let changes = claimed
            .iter()
            .map(|c| StateChange { key: c.key, outcome: Outcome::Delivered { response: "250 2.0.0 ok".into() } })
            .collect();
        done += store.complete(changes).expect("complete").len() as u64;
    }
    let elapsed = started.elapsed();
    assert_eq!(done, CLAIM_RECIPIENTS, "every queued recipient was claimed and completed");
    per_second(done, elapsed)
}

fn main() {
    let duration = run_seconds();
    let mut fields = Vec::new();
    let mut last = (0.0, 0.0, 0.0);
    println!("{:>9} {:>15} {:>12} {:>11} {:>7}", "producers", "enqueue_msgs_s", "raw_msgs_s", "group_mean", "ratio");
    // BENCH_PRODUCERS=256 runs one producer count alone (for profiling).
    let counts: Vec<u64> = match std::env::var("BENCH_PRODUCERS").ok().and_then(|s| s.parse().ok()) {
        Some(count) => vec![count],
        None => vec![1, 64, 256],
    };
    for producers in counts {
        let run = durable_enqueue(producers, duration);
        let enqueue_rate = per_second(run.messages, run.elapsed);
        let group = run.group_mean.round().max(1.0) as usize;
        let (raw_messages, raw_elapsed) = raw_synced_writes(group, duration);
        let raw_rate = per_second(raw_messages, raw_elapsed);
        let ratio = enqueue_rate / raw_rate;
        println!("{producers:>9} {enqueue_rate:>15.0} {raw_rate:>12.0} {:>11.1} {ratio:>7.2}", run.group_mean);
        if producers != 256 {
            fields.push((format!("ratio_{producers}"), format!("{ratio:.2}")));
            fields.push((format!("enqueue_msgs_s_{producers}"), format!("{enqueue_rate:.0}")));
        }
        last = (enqueue_rate, raw_rate, ratio);
    }
    let claim_rate = claim_complete();
    println!("claim + complete: {claim_rate:.0} recipients/s over {CLAIM_RECIPIENTS}");
    let mut line = vec![
        ("producers", "256".to_string()),
        ("enqueue_msgs_s", format!("{:.0}", last.0)),
        ("raw_msgs_s", format!("{:.0}", last.1)),
        ("ratio", format!("{:.2}", last.2)),
        ("claim_complete_s", format!("{claim_rate:.0}")),
        ("write_stalls", SETUP_STALLS.load(Ordering::Relaxed).to_string()),
    ];
    line.extend(fields.iter().map(|(k, v)| (k.as_str(), v.clone())));
    println!("{}", bench_line("queue_store", &line));
}
