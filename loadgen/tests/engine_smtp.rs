//! ringmail's SMTP listener with real clients: `swaks` from a relay network is
//! queued (250 only once synced) and delivered to loadgen's sink; `swaks` from an
//! address outside the relay networks gets `550 5.7.1` and nothing is queued;
//! Postfix's `smtp-source` with 20 sessions: every message stored and
//! delivered whole. With AUTH: STARTTLS + AUTH relays, submission ports need AUTH.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records, settle};

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
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "", &rest));

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
        .args(["-s", "20", "-m", "1000", "-l", "4096", "-d", "-f", "bulk@sender.test", "-t", "bulk@fast.test"])
        .arg(&listen)
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success());

    settle(&fleet, &engine, 1001, 30);
    engine.shutdown();
    let state = fleet.state();
    assert_eq!(state.accepted.len(), 1001, "the swaks message and smtp-source's 1000, each delivered once");
    let bulk: Vec<_> = state.accepted.iter().filter(|a| a.recipient == "bulk@fast.test").collect();
    assert!(bulk.iter().all(|a| a.body_bytes == bulk[0].body_bytes && a.body_bytes >= 4096), "bodies intact");
    assert!(state.accepted.iter().all(|a| a.recipient != "stranger@fast.test"));
    assert!(state.accepted.iter().all(|a| a.message_id.is_some()), "every message has a Message-ID");
    let records = log_records(dir.path());
    assert_eq!(records.iter().filter(|r| r["type"] == "Reception").count(), 1001);
    assert!(records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .all(|r| r["peer_address"].as_str().unwrap().starts_with("127.0.0.1:")));
}

/// Whether the server answered `code` in a swaks transcript (`<-` plain, `<~` in
/// TLS, then `*` when swaks did not expect it): not a bare substring, which a port
/// number such as 42355 contains.
fn replied(transcript: &str, code: &str) -> bool {
    transcript.lines().any(|line| {
        let reply = line.strip_prefix("<-").or_else(|| line.strip_prefix("<~"));
        reply.is_some_and(|reply| reply.trim_start_matches('*').trim_start().starts_with(code))
    })
}

#[test]
fn authenticated_users_relay_over_starttls_and_nowhere_else() {
    let port = free_port("127.0.0.92");
    let text = format!(
        "[[provider]]\nname = \"fast\"\ndomains = [\"fast.test\"]\nmx = [{{ host = \"mx.fast.test\", address = \"127.0.0.92\", port = {port} }}]\n"
    );
    let scenario = Scenario::parse(&text, "auth.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["mx.ringmail.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let hash = ringmail::ingest::smtp::hash_password("s3cret").unwrap();
    std::fs::write(dir.path().join("users"), format!("# name:argon2\nalice:{hash}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let listen_tls = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let submission = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!(
        "[smtp]\nlisten = [\"{listen}\"]\nlisten_tls = [\"{listen_tls}\"]\nlisten_submission = [\"{submission}\"]\nthreads = 2\nrelay_networks = [\"127.0.0.10/32\"]\nusers_file = \"{users}\"\ntls_certificate = \"{cert}\"\ntls_key = \"{key}\"\n",
        users = dir.path().join("users").display(),
        cert = dir.path().join("cert.pem").display(),
        key = dir.path().join("key.pem").display(),
    );
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "", &rest));
    let swaks_at = |server: &str, extra: &[&str], to: &str| {
        let output = Command::new("swaks")
            .args(["--server", server, "--from", "app@sender.test", "--to", to, "--helo", "client.test"])
            .args(extra)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string())
    };
    let swaks = |extra: &[&str], to: &str| swaks_at(&listen, extra, to);
    let auth = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"];
    let (ok, transcript) = swaks(&[&["--tls"][..], &auth[..]].concat(), "authenticated@fast.test");
    assert!(ok && replied(&transcript, "235") && transcript.contains("queued as"), "{transcript}");
    let wrong = ["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "guess"];
    let (ok, transcript) = swaks(&wrong, "wrong@fast.test");
    assert!(!ok && replied(&transcript, "535"), "{transcript}");
    let (ok, transcript) = swaks(&auth, "plaintext@fast.test");
    assert!(!ok && !replied(&transcript, "235"), "no AUTH without TLS: {transcript}");
    let (ok, transcript) = swaks(&["--tls"], "anonymous@fast.test");
    assert!(!ok && transcript.contains("550 5.7.1"), "no relay without AUTH: {transcript}");
    let (ok, transcript) =
        swaks_at(&listen_tls, &[&["--tls-on-connect"][..], &auth[..]].concat(), "implicit@fast.test");
    assert!(ok && transcript.contains("queued as"), "implicit TLS (port 465 style): {transcript}");
    let (ok, transcript) = swaks_at(&submission, &[&["--tls"][..], &auth[..]].concat(), "submitted@fast.test");
    assert!(ok && transcript.contains("queued as"), "submission with STARTTLS + AUTH: {transcript}");
    let relay_client = ["--tls", "--local-interface", "127.0.0.10"];
    let (ok, transcript) = swaks_at(&submission, &relay_client, "unauthenticated@fast.test");
    assert!(!ok && transcript.contains("530 5.7.0"), "submission needs AUTH, relay network or not: {transcript}");
    let (ok, transcript) = swaks_at(&listen, &["--local-interface", "127.0.0.10"], "relay-network@fast.test");
    assert!(ok && transcript.contains("queued as"), "a relay network's client on the relay port: {transcript}");

    let (_, metrics) = common::http_get(engine.http, "/metrics");
    let expiry: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ringmail_tls_certificate_expiry_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    // rcgen's default notAfter is 4096-01-01.
    assert_eq!(expiry, 67_090_118_400, "the listener certificate's expiry in /metrics");

    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.state().accepted.len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    engine.shutdown();
    let mut recipients: Vec<String> = fleet.state().accepted.iter().map(|a| a.recipient.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["authenticated@fast.test", "implicit@fast.test", "relay-network@fast.test", "submitted@fast.test"],
        "only authenticated messages were queued"
    );
}
