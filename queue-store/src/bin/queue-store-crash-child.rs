//! Test helper for `tests/crash.rs`: opens a store and enqueues, claims (and receives
//! handed-over mail) and completes in a loop until killed, printing each acknowledged message as it goes:
//!
//! - `OPEN` once the store is open;
//! - `ACK <id> <crc32> <len> <recipients>` after an enqueue returned (after its sync);
//! - `TERM <id> <index>` before a terminal outcome for that recipient is submitted.
//!
//! Usage: `queue-store-crash-child <store-dir> <seed>`. Not an operator tool.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue_store::{Durability, NewMessage, NewRecipient, Outcome, StateChange, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PRODUCERS: u64 = 8;
const SHARDS: u16 = 2;

/// xorshift64*: enough randomness for a test driver, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // One write per line (lines are far below PIPE_BUF): a kill never splits one.
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn produce(store: &Store, mut rng: Rng) {
    loop {
        let len = 100 + rng.below(8000) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let recipients =
            (0..1 + rng.below(3)).map(|i| NewRecipient::new(format!("u{i}@d{}.test", rng.below(10)))).collect();
        let message = NewMessage { sender: "s@crash.test".into(), recipients, body, ..NewMessage::default() };
        let crc = crc32fast::hash(&message.body);
        let count = message.recipients.len();
        match store.enqueue(vec![message]) {
            Ok(ids) => say(format_args!("ACK {} {crc} {len} {count}", ids[0])),
            Err(error) if error.is_temporary() => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => panic!("enqueue failed: {error}"),
        }
    }
}

fn deliver(store: &Store, mut rng: Rng) {
    let handoff = match store.handoff() {
        Ok(handoff) => handoff,
        Err(error) => {
            eprintln!("queue-store-crash-child: opening the handoff: {error}");
            std::process::exit(1);
        }
    };
    loop {
        // Fresh mail comes both ways: handed over while there is credit (some turns
        // grant none), else through the due index.
        handoff.set_target(if rng.below(4) == 0 { 0 } else { 256 });
        let mut arrived = Vec::new();
        while let Some(arrival) = handoff.try_recv() {
            arrived.extend(arrival.recipients);
        }
        for shard in 0..=SHARDS {
            let claimed = match shard {
                SHARDS => std::mem::take(&mut arrived),
                _ => match store.claim(shard, now_ms(), 64) {
                    Ok(claimed) => claimed,
                    Err(_) => continue,
                },
            };
            let mut changes = Vec::new();
            for item in claimed {
                let outcome = match rng.below(10) {
                    0..=5 => Outcome::Delivered { response: "250 ok".into() },
                    6 | 7 => Outcome::Deferred { due_ms: now_ms() + rng.below(50), response: "451 later".into() },
                    8 => Outcome::Bounced { response: "550 no".into() },
                    _ => continue, // left in flight: recovery must make it due again
                };
                if !matches!(outcome, Outcome::Deferred { .. }) {
                    // Said before the change is submitted: its write may land before
                    // a kill that comes ahead of any later line.
                    say(format_args!("TERM {} {}", item.key.message, item.key.index));
                }
                changes.push(StateChange { key: item.key, outcome });
            }
            let _ = store.complete(changes);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next().and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!("usage: queue-store-crash-child <store-dir> <seed>");
        std::process::exit(2);
    };
    let mut config = StoreConfig::new(dir);
    config.shard_count = SHARDS;
    config.durability = Durability::Sync;
    let store = match Store::open(config) {
        Ok((store, _)) => Arc::new(store),
        Err(error) => {
            eprintln!("queue-store-crash-child: opening the store: {error}");
            std::process::exit(1);
        }
    };
    say(format_args!("OPEN"));
    for producer in 0..PRODUCERS {
        let store = Arc::clone(&store);
        let rng = Rng(seed.wrapping_mul(31).wrapping_add(producer) | 1);
        std::thread::spawn(move || produce(&store, rng));
    }
    deliver(&store, Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1));
}
