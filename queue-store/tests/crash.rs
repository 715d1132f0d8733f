//! Crash test: a child process enqueues (and delivers) in a loop and prints every
//! acknowledged id and every recipient it ends; it is killed with SIGKILL at random moments, 24 times, on the
//! same store. After each kill the store is reopened and must hold every
//! acknowledged message (body intact) unless the child ended all its recipients, with nothing
//! left in flight and every recipient claimable again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use queue_store::{MessageId, Store, StoreConfig};

const ROUNDS: u64 = 24;
const SHARDS: u16 = 2;

#[derive(Default)]
struct Seen {
    /// Acknowledged messages: body checksum, length, recipient count.
    acked: HashMap<MessageId, (u32, usize, u32)>,
    /// Recipients a terminal outcome was submitted for.
    ended: HashSet<(MessageId, u32)>,
}

fn run_child(dir: &std::path::Path, seed: u64, seen: &mut Seen) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-store-crash-child"))
        .arg(dir)
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let opened = lines_rx.recv_timeout(Duration::from_secs(60)).expect("child did not open the store");
    assert_eq!(opened, "OPEN");
    // Kill somewhere between a few syncs in and a busy half second.
    std::thread::sleep(Duration::from_millis(20 + fastrand::u64(0..400)));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child only ends by being killed");
    reader.join().unwrap();
    let mut acks = 0;
    for line in lines_rx.try_iter() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["ACK", id, crc, len, count] => {
                let id: MessageId = id.parse().unwrap();
                let fields = (crc.parse().unwrap(), len.parse().unwrap(), count.parse().unwrap());
                let previous = seen.acked.insert(id, fields);
                assert!(previous.is_none(), "id {id} acknowledged twice");
                acks += 1;
            }
            ["TERM", id, index] => {
                seen.ended.insert((id.parse().unwrap(), index.parse().unwrap()));
            }
            // The last line may be cut by the kill only if it was never complete.
            _ => panic!("unexpected line from the child: {line:?}"),
        }
    }
    acks
}

fn verify(dir: &std::path::Path, seen: &Seen) {
    let mut config = StoreConfig::new(dir);
    config.shard_count = SHARDS;
    let (store, report) = Store::open(config).unwrap();
    assert!(report.quarantined.is_empty(), "a crash must not corrupt records: {:?}", report.quarantined);
    for (id, (crc, len, count)) in &seen.acked {
        let Some(body) = store.body(*id).unwrap() else {
            // Gone is right only when every recipient was ended by the child.
            let unended: Vec<u32> = (0..*count).filter(|i| !seen.ended.contains(&(*id, *i))).collect();
            assert!(unended.is_empty(), "acknowledged message {id} was lost (recipients {unended:?} never ended)");
            continue;
        };
        assert_eq!((crc32fast::hash(&body), body.len()), (*crc, *len), "body of {id} changed");
        assert!(store.message(*id).unwrap().is_some_and(|m| !m.recipients.is_empty()));
    }
    let counts = store.counts();
    assert_eq!(counts.in_flight, 0, "nothing is in flight after a restart");
    assert_eq!(counts.suspended, 0);
    assert_eq!(report.recipients, counts.total());
    assert_eq!(report.recipients_due, counts.total(), "every waiting recipient is due again");
    // Every recipient can be claimed: nothing is stuck without a due entry.
    let far = common_now_ms() + 30 * 24 * 3_600_000;
    let mut claimed = 0;
    for shard in 0..SHARDS {
        loop {
            let batch = store.claim(shard, far, 5_000).unwrap();
            if batch.is_empty() {
                break;
            }
            claimed += batch.len() as u64;
        }
    }
    assert_eq!(claimed, counts.total(), "claimable recipients");
    // Dropped with everything claimed: the next open must make all of it due again.
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn acknowledged_mail_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("crash test seed {seed} (set CRASH_SEED to replay)");
    fastrand::seed(seed);
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        total_acks += run_child(dir.path(), seed.wrapping_add(round), &mut seen);
        verify(dir.path(), &seen);
    }
    println!(
        "{ROUNDS} kills, {total_acks} acknowledged messages, {} recipients ended, in {:.1}s",
        seen.ended.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(total_acks >= ROUNDS as usize, "the child must acknowledge mail between kills");
}
