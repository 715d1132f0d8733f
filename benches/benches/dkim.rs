//! DKIM signing's cost (issue 16), in one run on one machine:
//! 1. the signer pool's RSA-2048 and Ed25519 rates (`ringmail::dkim::pool`, one
//!    thread per core, 4 KiB messages, each entry's signature whole: body hash,
//!    header canonicalisation, the key operation), beside `openssl speed -multi
//!    <cores> rsa2048` on the same machine: the key operation alone, the physical
//!    limit;
//! 2. the relay (Postfix's `smtp-source` → `ringmail serve` → loadgen's sink, 4 KiB,
//!    20 sessions, fsync before 250, as in `benches/compare`) unsigned, signed with
//!    Ed25519 and signed with RSA-2048, one after the other in each round;
//! 3. an HTTP campaign: one raw body to 1,000 recipients a request (stored once,
//!    signed once), 200 requests from 4 clients, unsigned and RSA-signed, in
//!    recipients delivered a second.
//!
//! Ends with `BENCH dkim rsa2048_signs_s=.. openssl_rsa2048_signs_s=..
//! rsa_vs_openssl=.. ed25519_signs_s=.. e2e_unsigned_msgs_s=.. e2e_ed25519_msgs_s=..
//! ed25519_ratio=.. e2e_rsa_msgs_s=.. rsa_ratio=.. shared_body_rsa_ratio=..`
//! (relay ratios: each round's signed run over its unsigned run, averaged over the
//! rounds; rates: the best run). `BENCH_MESSAGES` (default 20,000) sets the relay's
//! messages a run, `BENCH_ROUNDS` (default 2) the rounds, `BENCH_CAMPAIGN_REQUESTS`
//! (default 200) the campaign's requests of 1,000 recipients, `BENCH_ENGINE_TOML`
//! configuration added to every relay engine's (e.g. `"[ingest]\nsigning_threads = 1"`).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{bench_line, EngineProcess};
use loadgen::scenario::Scenario;
use ringmail::dkim::pool::{SignerPool, Submitted};
use ringmail::dkim::Draft;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 20;
const CAMPAIGN_RECIPIENTS: usize = 1000;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A new private key (PEM) under `dir`, RSA-2048 or Ed25519.
fn key(dir: &Path, algorithm: &str) -> PathBuf {
    let pem = dir.join(format!("{algorithm}.pem"));
    let mut command = Command::new("openssl");
    command.arg("genpkey");
    match algorithm {
        "rsa" => command.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => command.args(["-algorithm", "ed25519"]),
    };
    let status = command.arg("-out").arg(&pem).stderr(Stdio::null()).status().expect("openssl");
    assert!(status.success());
    pem
}

fn dkim_entry(key: &Path, algorithm: &str) -> String {
    let name = if algorithm == "rsa" { "rsa-sha256" } else { "ed25519-sha256" };
    format!(
        "[[dkim]]\ndomain = \"sender.test\"\nselector = \"{algorithm}\"\nkey = \"{}\"\nalgorithm = \"{name}\"\n",
        key.display()
    )
}

/// A 4 KiB message from the signing domain.
fn message(serial: usize) -> Vec<u8> {
    let mut text = format!(
        "From: News <news@sender.test>\r\nTo: someone@d0.test\r\nSubject: issue {serial}\r\n\
         Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{serial}@sender.test>\r\n\r\n"
    );
    while text.len() < 4096 {
        text.push_str("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n");
    }
    text.into_bytes()
}

/// The signer pool's rate with one `[[dkim]]` entry: `count` messages, as many in
/// its queue at once as it takes.
fn pool_rate(entry: &str, count: usize) -> f64 {
    let text = format!("[dns]\nnameservers = [\"127.0.0.1:53\"]\n{entry}");
    let config = ringmail::config::Config::parse(&text, "bench.toml").unwrap();
    let metrics = Arc::new(ringmail::metrics::Metrics::default());
    let live = Arc::new(ringmail::live::Live::new(Arc::new(config), None));
    let pool = SignerPool::start(cores(), 4096, live, metrics).unwrap();
    let messages: Vec<Vec<u8>> = (0..count).map(message).collect();
    let started = Instant::now();
    let mut waiting = std::collections::VecDeque::new();
    for message in messages {
        let mut draft = Draft::whole(message);
        loop {
            match pool.submit(draft, None).unwrap() {
                Submitted::Queued(answer) => {
                    waiting.push_back(answer);
                    break;
                }
                Submitted::Busy(back) => {
                    draft = back;
                    let answer: tokio::sync::oneshot::Receiver<_> = waiting.pop_front().expect("a queue of one");
                    answer.blocking_recv().unwrap().unwrap();
                }
                Submitted::Unsigned(_) => panic!("the entry applies to sender.test"),
            }
        }
    }
    for answer in waiting {
        answer.blocking_recv().unwrap().unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `openssl speed`'s RSA-2048 signatures a second on `cores` processes.
fn openssl_rsa2048() -> f64 {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "5", "-multi", &cores().to_string(), "rsa2048"])
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&output.stdout);
    // `rsa 2048 bits 0.000325s 0.000010s   3077.0 105263.2` (sign/s is the first rate).
    text.lines()
        .rev()
        .filter(|line| line.trim_start().starts_with("rsa") && line.contains("2048 bits"))
        .filter_map(|line| {
            let after = line.split("bits").nth(1)?;
            after.split_whitespace().filter(|t| !t.ends_with('s')).find_map(|t| t.parse::<f64>().ok())
        })
        .next()
        .unwrap_or_else(|| panic!("no rsa2048 sign/s in openssl speed's output: {text}"))
}

/// `ringmail serve` (the compare-engine binary) on a fresh queue under `dir` with
/// `extra` configuration; its SMTP and HTTP addresses.
fn start_ringmail(dir: &Path, port: u16, dns: SocketAddr, extra: &str) -> (EngineProcess, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let smtp: SocketAddr = std::net::TcpListener::bind("127.0.0.72:0").unwrap().local_addr().unwrap();
    let http: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.join("ringmail.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"{http}\"\n\
             [smtp]\nlisten = [\"{smtp}\"]\nrelay_networks = [\"127.0.0.0/8\"]\nconnections_per_ip_max = 200\n\
             [dns]\nnameservers = [\"{dns}\"]\n[delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\"]\n\
             connections_per_lane_max = 32\nrecipients_per_transaction_max = 100\n\
             [retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\n{}\n{extra}",
            dir.join("queue").display(),
            std::env::var("BENCH_ENGINE_TOML").unwrap_or_default(),
        ),
    )
    .unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_compare-engine"));
    let engine = EngineProcess::start(exe, &config, &[], &[smtp, http]).unwrap();
    (engine, smtp, http)
}

/// Waits until the sink has `count` more arrivals than `before`; the rate since `started`.
fn until_delivered(fleet: &loadgen::sink::Fleet, before: usize, count: usize, started: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(900);
    while fleet.state().accepted.len() < before + count {
        assert!(Instant::now() < deadline, "not everything arrived at the sink");
        std::thread::sleep(Duration::from_millis(5));
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `smtp-source` through ringmail into the sink: the end-to-end rate.
fn relay(smtp: SocketAddr, fleet: &loadgen::sink::Fleet, count: usize) -> f64 {
    let before = fleet.state().accepted.len();
    let started = Instant::now();
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", &SESSIONS.to_string(), "-m", &count.to_string(), "-l", "4096", "-d"])
        .args(["-f", "bulk@sender.test", "-t", "rcpt@d0.test", "-M", "source.test"])
        .arg(smtp.to_string())
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success(), "smtp-source failed");
    until_delivered(fleet, before, count, started)
}

/// `requests` inject requests, each one raw body to `CAMPAIGN_RECIPIENTS`
/// recipients, from 4 clients: recipients delivered a second.
fn campaign(http: SocketAddr, fleet: &loadgen::sink::Fleet, requests: usize) -> f64 {
    let before = fleet.state().accepted.len();
    let body = String::from_utf8(message(0)).unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let body = &body;
            scope.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(120)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                for request in (client..requests).step_by(4) {
                    let recipients: Vec<serde_json::Value> = (0..CAMPAIGN_RECIPIENTS)
                        .map(|i| serde_json::json!({ "email": format!("c{request}.{i}@d0.test") }))
                        .collect();
                    let json = serde_json::json!({
                        "envelope_sender": "bulk@sender.test",
                        "content": body,
                        "recipients": recipients,
                    });
                    let mut response = agent.post(&format!("http://{http}/api/inject/v1")).send_json(json).unwrap();
                    let text = response.body_mut().read_to_string().unwrap();
                    assert_eq!(response.status().as_u16(), 200, "{text}");
                }
            });
        }
    });
    until_delivered(fleet, before, requests * CAMPAIGN_RECIPIENTS, started)
}

fn main() {
    let count = env_number("BENCH_MESSAGES", 20_000);
    let rounds = env_number("BENCH_ROUNDS", 2).max(1);
    let requests = env_number("BENCH_CAMPAIGN_REQUESTS", 200).max(1);
    let dir = benches::scratch_dir().unwrap();
    let (rsa, ed) = (key(dir.path(), "rsa"), key(dir.path(), "ed25519"));
    let (rsa_entry, ed_entry) = (dkim_entry(&rsa, "rsa"), dkim_entry(&ed, "ed25519"));

    // 1. The signer pool against openssl on the same cores.
    let rsa_signs = pool_rate(&rsa_entry, 6_000);
    let openssl = openssl_rsa2048();
    let ed_signs = pool_rate(&ed_entry, 60_000);
    println!(
        "signer pool on {} threads: RSA-2048 {rsa_signs:.0}/s (openssl speed: {openssl:.0}/s), Ed25519 {ed_signs:.0}/s",
        cores()
    );

    // 2 and 3. The relay and the campaign, unsigned and signed, side by side.
    let port = std::net::TcpListener::bind("127.0.0.71:0").unwrap().local_addr().unwrap().port();
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"relay\"\ndomains = [\"d0.test\"]\nmx = [{{ host = \"mx.d0.test\", address = \"127.0.0.71\", port = {port} }}]\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n"
        ),
        "dkim scenario",
    )
    .unwrap();
    let zone = loadgen::dns::Zone::from_scenario(&scenario).unwrap();
    let dns = loadgen::dns::start(zone, "127.0.0.1:0".parse().unwrap()).unwrap();
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let setups = [("unsigned", String::new()), ("ed25519", ed_entry.clone()), ("rsa", rsa_entry.clone())];
    let mut best = [0f64; 3];
    let mut ratios = [0f64; 2];
    let (mut campaign_best, mut campaign_ratio) = ([0f64; 2], 0f64);
    for round in 0..rounds {
        let mut rates = [0f64; 3];
        let mut campaigns = [0f64; 2];
        for (index, (name, extra)) in setups.iter().enumerate() {
            let run_dir = dir.path().join(format!("{name}-{round}"));
            let (engine, smtp, http) = start_ringmail(&run_dir, port, dns.address, extra);
            rates[index] = relay(smtp, &fleet, count);
            println!("round {round}: relay {name}: {:.0} msg/s", rates[index]);
            if *name != "ed25519" {
                let slot = usize::from(*name == "rsa");
                campaigns[slot] = campaign(http, &fleet, requests);
                println!("round {round}: campaign {name}: {:.0} recipients/s", campaigns[slot]);
            }
            drop(engine);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        for index in 0..3 {
            best[index] = best[index].max(rates[index]);
        }
        ratios[0] += rates[1] / rates[0] / rounds as f64;
        ratios[1] += rates[2] / rates[0] / rounds as f64;
        campaign_best[0] = campaign_best[0].max(campaigns[0]);
        campaign_best[1] = campaign_best[1].max(campaigns[1]);
        campaign_ratio += campaigns[1] / campaigns[0] / rounds as f64;
    }
    println!(
        "campaign (1 body x {CAMPAIGN_RECIPIENTS} recipients x {requests}): unsigned {:.0}/s, RSA {:.0}/s",
        campaign_best[0], campaign_best[1]
    );
    let line = bench_line(
        "dkim",
        &[
            ("rsa2048_signs_s", format!("{rsa_signs:.0}")),
            ("openssl_rsa2048_signs_s", format!("{openssl:.0}")),
            ("rsa_vs_openssl", format!("{:.2}", rsa_signs / openssl)),
            ("ed25519_signs_s", format!("{ed_signs:.0}")),
            ("e2e_unsigned_msgs_s", format!("{:.0}", best[0])),
            ("e2e_ed25519_msgs_s", format!("{:.0}", best[1])),
            ("ed25519_ratio", format!("{:.2}", ratios[0])),
            ("e2e_rsa_msgs_s", format!("{:.0}", best[2])),
            ("rsa_ratio", format!("{:.2}", ratios[1])),
            ("shared_body_rsa_ratio", format!("{campaign_ratio:.2}")),
            ("campaign_unsigned_rcpts_s", format!("{:.0}", campaign_best[0])),
            ("campaign_rsa_rcpts_s", format!("{:.0}", campaign_best[1])),
            ("threads", cores().to_string()),
            ("messages", count.to_string()),
            ("rounds", rounds.to_string()),
        ],
    );
    println!("{line}");
}
