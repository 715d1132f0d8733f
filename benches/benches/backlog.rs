//! A large backlog (issue 8): 1,000,000 recipients deferred in the queue (10,000
//! messages × 100 recipients over 1,000 domains, 4 KiB bodies), plus one recipient
//! due now. Then `ringmail serve` starts on that queue in its own process
//! (`compare-engine`): how long until the due recipient reaches the sink (recovery
//! of the whole queue included), and the daemon's resident memory with the backlog
//! loaded.
//!
//! Ends with `BENCH backlog recipients=.. rss_mb=.. restart_s=.. open_s=..`
//! (`open_s`: the queue-store open and recovery alone, in this process, before).
//! Goals: rss_mb ≤ 1024, restart_s ≤ 15. `BENCH_RECIPIENTS` scales it (multiples
//! of 100).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::bench_line;
use loadgen::scenario::Scenario;
use queue_store::{NewMessage, NewRecipient, Outcome, StateChange, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let recipients: usize = std::env::var("BENCH_RECIPIENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let messages = recipients / 100;
    let port = std::net::TcpListener::bind("127.0.0.74:0").unwrap().local_addr().unwrap().port();
    let domains: Vec<String> = (0..1000).map(|d| format!("\"b{d}.backlog.test\"")).collect();
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"due\"\ndomains = [\"due.test\"]\nmx = [{{ host = \"mx.due.test\", address = \"127.0.0.74\", port = {port} }}]\n\n\
             [[provider]]\nname = \"backlog\"\ndomains = [{}]\nmx = [{{ host = \"mx.backlog.test\", address = \"127.0.0.75\", port = {port} }}]\n",
            domains.join(", ")
        ),
        "backlog scenario",
    )
    .unwrap();
    let zone = loadgen::dns::Zone::from_scenario(&scenario).unwrap();
    let dns = loadgen::dns::start(zone, "127.0.0.1:0".parse().unwrap()).unwrap();
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = benches::scratch_dir().unwrap();
    let queue = dir.path().join("queue");

    // The backlog: enqueued, claimed, deferred an hour.
    let started = Instant::now();
    {
        let (store, _) = Store::open(StoreConfig::new(&queue)).unwrap();
        let body = {
            let mut body = b"Subject: backlog\r\n\r\n".to_vec();
            while body.len() < 4096 {
                body.extend_from_slice(b"The quick brown fox jumps over the lazy dog. 0123456789\r\n");
            }
            body
        };
        for batch in 0..messages.div_ceil(100) {
            let batch: Vec<NewMessage> = (batch * 100..((batch + 1) * 100).min(messages))
                .map(|m| NewMessage {
                    sender: "bulk@sender.test".into(),
                    recipients: (0..100)
                        .map(|r| NewRecipient::new(format!("u{m}-{r}@b{}.backlog.test", (m * 100 + r) % 1000)))
                        .collect(),
                    body: body.clone(),
                    tenant: Some("backlog".into()),
                    campaign: None,
                    metadata: Vec::new(),
                })
                .collect();
            store.enqueue(batch).unwrap();
        }
        let later = now_ms() + 3_600_000;
        loop {
            let claimed = store.claim(0, now_ms() + 1000, 10_000).unwrap();
            if claimed.is_empty() {
                break;
            }
            let changes = claimed
                .into_iter()
                .map(|c| StateChange {
                    key: c.key,
                    outcome: Outcome::Deferred { due_ms: later, response: "451 later".into() },
                })
                .collect();
            store.complete(changes).unwrap();
        }
        let due = NewMessage {
            sender: "bulk@sender.test".into(),
            recipients: vec![NewRecipient::new("first@due.test")],
            body: b"Subject: first\r\n\r\nfirst\r\n".to_vec(),
            tenant: None,
            campaign: None,
            metadata: Vec::new(),
        };
        store.enqueue(vec![due]).unwrap();
        assert_eq!(store.counts().deferred as usize, recipients);
    }
    println!("backlog of {recipients} deferred recipients written in {:.1} s", started.elapsed().as_secs_f64());
    let opened = Instant::now();
    let (store, report) = Store::open(StoreConfig::new(&queue)).unwrap();
    let open_s = opened.elapsed().as_secs_f64();
    println!(
        "queue-store open and recovery: {open_s:.2} s ({} recipients, {} messages)",
        report.recipients, report.messages
    );
    drop(store);

    let config = dir.path().join("ringmail.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"{}\"]\n\
             [delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\"]\n",
            queue.display(),
            dns.address
        ),
    )
    .unwrap();
    let spawned = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_compare-engine"))
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.state().accepted.is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered after a restart");
        std::thread::sleep(Duration::from_millis(5));
    }
    let restart_s = spawned.elapsed().as_secs_f64();
    let mut rss = rss_mb(child.id());
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        rss = rss.max(rss_mb(child.id()));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    println!("restart to first delivery: {restart_s:.2} s; resident memory with the backlog: {rss:.0} MiB");
    let line = bench_line(
        "backlog",
        &[
            ("recipients", recipients.to_string()),
            ("rss_mb", format!("{rss:.0}")),
            ("restart_s", format!("{restart_s:.2}")),
            ("open_s", format!("{open_s:.2}")),
        ],
    );
    println!("{line}");
}
