//! ringmail's SMTP listener with real clients: `swaks` from a relay network is
//! queued (250 only once synced) and delivered to loadgen's sink; `swaks` from an
//! address outside the relay networks gets `550 5.7.1` and nothing is queued;
//! Postfix's `smtp-source` with several sessions: every message stored and delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;
use ringmail::daemon::Engine;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

#[test]
fn swaks_and_smtp_source_through_the_smtp_listener_and_no_open_relay() {
    let port = free_port("127.0.0.91");
    let text = format!(
        "[[provider]]\nname = \"fast\"\ndomains = [\"fast.test\"]\nmx = [{{ host = \"mx.fast.test\", address = \"127.0.0.91\", port = {port} }}]\nconnections_per_ip_max = 64\n"
    );
    let scenario = Scenario::parse(&text, "smtp.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!(
        "[smtp]\nlisten = [\"{listen}\"]\nhostname = \"mx.ringmail.test\"\nrelay_networks = [\"127.0.0.1/32\"]\n"
    );
    let engine = Engine::start(engine_config(dir.path(), dns.address, port, "", &rest)).unwrap();

    let swaks = |extra: &[&str], to: &str| {
        let output = Command::new("swaks")
            .args(["--server", &listen, "--from", "app@sender.test", "--to", to, "--helo", "client.test"])
            .args(["--header", "Subject: through ringmail"])
            .args(extra)
            .output()
            .expect("swaks (installed by make test)");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string())
    };
    let (ok, transcript) = swaks(&[], "relayed@fast.test");
    assert!(ok && transcript.contains("250 2.0.0 Ok: queued as"), "{transcript}");
    let (ok, transcript) = swaks(&["--local-interface", "127.0.0.9"], "stranger@fast.test");
    assert!(!ok && transcript.contains("550 5.7.1 Relaying denied"), "not an open relay: {transcript}");

    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", "5", "-m", "200", "-l", "4096", "-d", "-f", "bulk@sender.test", "-t", "bulk@fast.test"])
        .arg(&listen)
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success());

    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.state().accepted.len() < 201 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    while engine.store.counts().total() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.shutdown();
    let state = fleet.state();
    assert_eq!(state.accepted.len(), 201, "the swaks message and smtp-source's 200, each delivered once");
    assert!(state.accepted.iter().all(|a| a.recipient != "stranger@fast.test"));
    assert!(state.accepted.iter().all(|a| a.message_id.is_some()), "every message has a Message-ID");
    let records = log_records(dir.path());
    assert_eq!(records.iter().filter(|r| r["type"] == "Reception").count(), 201);
    assert!(records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .all(|r| r["peer_address"].as_str().unwrap().starts_with("127.0.0.1:")));
}
