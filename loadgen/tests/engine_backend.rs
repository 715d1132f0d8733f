//! The daemon where io_uring is forbidden, as in a container whose seccomp profile
//! blocks `io_uring_setup`: it starts, says "epoll" in `/healthz` and `/metrics`,
//! ingests over SMTP (loadgen's injector, then swaks) and HTTP, and delivers every
//! recipient to loadgen's sinks; the oracle finds nothing lost or duplicated.
//! And a shard that dies mid-run (the test-only fault hook) is reported down while
//! its recipients go back to the queue and the other shard delivers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use loadgen::inject::{Plan, Progress};
use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, http_get};

fn scenario(address: &str, port: u16) -> Scenario {
    let text = format!(
        "[[provider]]\nname = \"fast\"\ndomains = [\"a.test\", \"b.test\", \"c.test\", \"d.test\"]\n\
         mx = [{{ host = \"mx.fast.test\", address = \"{address}\", port = {port} }}]\nconnections_per_ip_max = 64\nstarttls = true\n"
    );
    Scenario::parse(&text, "backend.toml").unwrap()
}

/// Each injection its own domains: loadgen names recipients by serial number, and two
/// plans on one domain would name the same recipients.
fn plan(messages: usize, seed: u64, domains: [&str; 2]) -> Plan {
    Plan {
        messages,
        recipients_per_message: 1,
        domains: domains.map(String::from).to_vec(),
        zipf_exponent: 0.0,
        message_bytes: 1500,
        message_bytes_max: 0,
        connections: 4,
        sender: "campaign@sender.test".into(),
        seed,
        rate: None,
        starttls: false,
        auth: None,
    }
}

/// Waits (bounded) until the oracle has seen every injected recipient at a sink.
fn wait_delivered(fleet: &loadgen::sink::Fleet, injected: &[loadgen::inject::Injected], seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let verdict = loadgen::oracle::check(injected, &fleet.state());
        if verdict.lost == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_io_uring_forbidden_the_daemon_runs_on_epoll_and_loses_nothing() {
    let port = free_port("127.0.0.95");
    let scenario = scenario("127.0.0.95", port);
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!("[smtp]\nlisten = [\"{listen}\"]\nthreads = 2\nrelay_networks = [\"127.0.0.1/32\"]\n");
    let config = engine_config(dir.path(), dns.address, port, "shards = 2", &rest);
    let engine = std::thread::spawn(move || {
        ringmail::io::uring::forbid_on_this_thread().unwrap();
        ringmail::daemon::Engine::start(config).unwrap()
    })
    .join()
    .unwrap();

    let (status, health) = http_get(engine.http, "/healthz");
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["backend"], "epoll", "{health}");
    let (_, metrics) = http_get(engine.http, "/metrics");
    assert!(metrics.contains("ringmail_io_backend{backend=\"epoll\"} 1"), "{metrics}");
    for part in ["shard\",index=\"0", "shard\",index=\"1", "smtp\",index=\"0", "smtp\",index=\"1", "scheduler"] {
        assert!(metrics.contains(&format!("ringmail_part_up{{part=\"{part}\"")), "{part} listed: {metrics}");
    }
    assert!(
        !metrics.contains("ringmail_part_up{")
            || !metrics.lines().any(|l| l.starts_with("ringmail_part_up{") && l.ends_with(" 0"))
    );

    let listen_address = listen.parse().unwrap();
    let mut injected = loadgen::inject::smtp(listen_address, &plan(600, 1, ["a.test", "b.test"]));
    let over_http = plan(600, 2, ["c.test", "d.test"]);
    injected.extend(loadgen::inject_http::http(engine.http, &over_http, &Progress::default()));
    assert_eq!(injected.len(), 1200);
    assert!(injected.iter().all(|i| i.accepted), "{:?}", injected.iter().find(|i| !i.accepted));
    let swaks = std::process::Command::new("swaks")
        .args(["--server", &listen, "--from", "app@sender.test", "--to", "swaks@a.test", "--helo", "client.test"])
        .output()
        .expect("swaks (installed by make test)");
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success() && transcript.contains("250 2.0.0 Ok: queued as"), "{transcript}");

    wait_delivered(&fleet, &injected, 60);
    let verdict = loadgen::oracle::check(&injected, &fleet.state());
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.store.counts().total() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = engine.store.counts();
    engine.shutdown();
    assert_eq!((verdict.lost, verdict.duplicates), (0, 0), "{verdict:?}");
    assert_eq!(verdict.delivered, 1200, "{verdict:?}");
    assert_eq!(counts.total(), 0, "every recipient ended: {counts:?}");
    let state = fleet.state();
    assert!(state.accepted.iter().any(|a| a.recipient == "swaks@a.test"), "the swaks message delivered");
    assert!(state.accepted.iter().any(|a| a.tls), "STARTTLS on the epoll loop too");
}
