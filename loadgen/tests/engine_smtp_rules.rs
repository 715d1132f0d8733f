//! Two smaller ingest and delivery rules (issue 15, part 9), with real peers:
//!
//! - port 465 is submission (RFC 8314 §3.3): a client from a relay network must
//!   AUTH before MAIL there, as on 587 (before, it could send without AUTH);
//! - 8-bit content goes only to a server that offers 8BITMIME (RFC 6152): to one
//!   without it the recipient bounces with 5.6.3, the sink sees no MAIL for it, and
//!   a 7-bit message to the same server is delivered (before, the 8-bit message was
//!   sent anyway). ringmail never converts at delivery: that would break a DKIM
//!   signature made at ingest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

#[test]
fn port_465_wants_auth_before_mail_even_from_a_relay_network() {
    let dir = tempfile::tempdir().unwrap();
    let listen_tls = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!(
        "[smtp]\nlisten_tls = [\"{listen_tls}\"]\nrelay_networks = [\"127.0.0.0/8\"]\n{secrets}",
        secrets = common::tls_and_users(dir.path()),
    );
    let engine =
        common::start_engine(engine_config(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", &rest));
    let swaks = |extra: &[&str]| {
        let output = Command::new("swaks")
            .args(["--server", &listen_tls, "--tls-on-connect", "--from", "app@sender.test", "--to", "x@far.test"])
            .args(["--helo", "client.test"])
            .args(extra)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string())
    };
    let (ok, transcript) = swaks(&[]);
    assert!(!ok && transcript.contains("530 5.7.0"), "a relay network without AUTH on 465: {transcript}");
    let (ok, transcript) = swaks(&["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"]);
    assert!(ok && transcript.contains("queued as"), "with AUTH: {transcript}");
    engine.shutdown();
}

#[test]
fn eight_bit_content_bounces_for_a_server_without_8bitmime_and_is_never_sent() {
    let port = free_port("127.0.0.69");
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"old\"\ndomains = [\"old.test\"]\neightbitmime = false\n\
             mx = [{{ host = \"mx.old.test\", address = \"127.0.0.69\", port = {port} }}]\n"
        ),
        "old.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "", ""));
    for (who, content) in
        [("eight", "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n"), ("seven", "Subject: plain\r\n\r\nplain\r\n")]
    {
        let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": content,
            "recipients": [{ "email": format!("{who}@old.test") }] });
        let (status, answer) = common::inject_json(engine.http, &body);
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_records(dir.path()).iter().filter(|r| r["type"] != "Reception").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = log_records(dir.path());
    let of = |who: &str| {
        records.iter().find(|r| r["type"] != "Reception" && r["recipient"] == format!("{who}@old.test")).cloned()
    };
    let eight = of("eight").expect("an outcome for the 8-bit message");
    assert_eq!(eight["type"], "Bounce", "{eight}");
    assert!(
        eight["response"]["content"].as_str().unwrap_or_default().contains("8BITMIME")
            || eight.to_string().contains("5.6.3"),
        "{eight}"
    );
    assert_eq!(of("seven").expect("an outcome for the 7-bit message")["type"], "Delivery");
    let state = fleet.state();
    assert_eq!(state.counts.mail_commands, 1, "the 8-bit message never reached MAIL FROM");
    assert_eq!(state.accepted.len(), 1);
    engine.shutdown();
}
