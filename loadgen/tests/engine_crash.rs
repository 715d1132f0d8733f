//! kill -9 of ringmail's engine in the middle of a 50,000-message run, a restart on
//! the same queue, and loadgen's oracle: every recipient the engine acknowledged is
//! delivered (lost = 0); duplicates (deliveries repeated after the crash) are allowed
//! by the at-least-once contract, and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::inject::{Plan, Progress};
use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_toml, free_port, start_engine_process as start_engine};

#[test]
fn kill_9_mid_run_then_restart_loses_nothing() {
    let port = free_port("127.0.0.61");
    let scenario = Scenario::parse(
        &format!(
            r#"
[[provider]]
name = "big"
domains = ["big.test", "big2.test"]
mx = [{{ host = "mx.big.test", address = "127.0.0.61", port = {port} }}]
connections_per_ip_max = 64
rcpt_tempfail_percent = 3.0
rcpt_permfail_percent = 1.0

[[provider]]
name = "tail"
domains = ["t1.test", "t2.test", "t3.test", "t4.test"]
mx = [{{ host = "mx.tail.test", address = "127.0.0.62", port = {port} }}]
"#
        ),
        "crash.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    // The control plane on a port known ahead: the test restarts the engine on it.
    let text = engine_toml(
        dir.path(),
        dns.address,
        port,
        "connections_per_lane_max = 1\nhandoff = true",
        "[retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2",
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{http}\""));
    std::fs::write(&config, text).unwrap();

    let mut engine = start_engine(&config, http);
    let plan = Plan {
        messages: 50_000,
        recipients_per_message: 1,
        domains: ["big.test", "big2.test", "t1.test", "t2.test", "t3.test", "t4.test"].map(String::from).to_vec(),
        zipf_exponent: 1.0,
        message_bytes: 1024,
        message_bytes_max: 0,
        connections: 4,
        sender: "crash@sender.test".into(),
        seed: 9,
        rate: None,
        starttls: false,
        auth: None,
    };
    // Few connections per lane: delivery lags injection, so a queue builds up.
    let injected = loadgen::inject_http::http(http, &plan, &Progress::default());
    let acknowledged = injected.iter().filter(|i| i.accepted).count();
    assert_eq!(acknowledged, 50_000, "every batch acknowledged (stored and synced)");
    engine.0.kill().unwrap(); // SIGKILL, in the middle of delivering
    engine.0.wait().unwrap();
    let delivered_at_kill = fleet.state().counts.accepted;
    eprintln!("killed after {delivered_at_kill} of 50000 deliveries");
    assert!(delivered_at_kill > 0 && delivered_at_kill < 45_000, "killed mid-run: {delivered_at_kill} delivered");

    let _engine = start_engine(&config, http);
    let deadline = Instant::now() + Duration::from_secs(240);
    let verdict = loop {
        let verdict = loadgen::oracle::check(&injected, &fleet.state());
        if verdict.lost == 0 || Instant::now() > deadline {
            break verdict;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("after the restart: {verdict:?}");
    assert_eq!(verdict.lost, 0, "nothing acknowledged is lost across kill -9: {verdict:?}");
    assert_eq!(verdict.injected as usize, acknowledged);
}
