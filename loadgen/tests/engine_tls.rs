//! Verified TLS where a site requires it (issue 15, part 1): `tls = "required"`
//! delivers only over a certificate chain the engine trusts (WebPKI roots plus
//! `delivery.tls_extra_roots`) that names the MX host; an untrusted chain or a
//! certificate for another name fails the attempt (TransientFailure, category Tls)
//! before MAIL FROM. `required_insecure` encrypts whatever the certificate;
//! opportunistic delivers and records whether the chain verified.
//!
//! Four sink fleets, each with its own test CA: A and D are trusted (their CAs in
//! `tls_extra_roots`), B and C are not. `w.test`'s MX host `mx.w.test` is fleet D,
//! whose certificate names another host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

fn provider(name: &str, domain: &str, host: &str, address: &str, port: u16) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\ndomains = [\"{domain}\"]\n\
         mx = [{{ host = \"{host}\", address = \"{address}\", port = {port} }}]\nstarttls = true\n"
    )
}

fn inject(http: SocketAddr, recipients: &[&str]) {
    let recipients: Vec<_> = recipients.iter().map(|e| serde_json::json!({ "email": e })).collect();
    let body = serde_json::json!({
        "envelope_sender": "tls@sender.test", "content": "Subject: tls\r\n\r\nx\r\n", "recipients": recipients,
    });
    let (status, answer) = common::inject_json(http, &body);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn required_tls_verifies_the_chain_and_the_mx_name_and_never_sends_mail_otherwise() {
    let port = free_port("127.0.0.51");
    let trusted = provider("trusted", "v.test", "mx.v.test", "127.0.0.51", port);
    let untrusted = provider("untrusted", "o.test", "mx.o.test", "127.0.0.52", port)
        + &provider("insecure", "i.test", "mx.i.test", "127.0.0.53", port);
    let refused = provider("refused", "u.test", "mx.u.test", "127.0.0.54", port);
    // DNS names w.test's MX host mx.w.test; the fleet there (trusted CA) holds a
    // certificate for mx.other.test.
    let renamed = provider("renamed", "w.test", "mx.w.test", "127.0.0.55", port);
    let other_name = provider("renamed", "w.test", "mx.other.test", "127.0.0.55", port);
    let parse = |text: &str| Scenario::parse(text, "tls.toml").unwrap();
    let dns = dns_for(&parse(&format!("{trusted}{untrusted}{refused}{renamed}")));
    let fleet_a = loadgen::sink::start(&parse(&trusted)).unwrap();
    let fleet_b = loadgen::sink::start(&parse(&untrusted)).unwrap();
    let fleet_c = loadgen::sink::start(&parse(&refused)).unwrap();
    let fleet_d = loadgen::sink::start(&parse(&other_name)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("extra-roots.pem");
    std::fs::write(&roots, format!("{}{}", fleet_a.ca_pem, fleet_d.ca_pem)).unwrap();
    let delivery = format!("shards = 1\ntls_extra_roots = [\"{}\"]", roots.display());
    let sites = "[retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\n\
                 [[site]]\nmatch = \"mx.v.test\"\ntls = \"required\"\n\
                 [[site]]\nmatch = \"mx.u.test\"\ntls = \"required\"\n\
                 [[site]]\nmatch = \"mx.w.test\"\ntls = \"required\"\n\
                 [[site]]\nmatch = \"mx.i.test\"\ntls = \"required_insecure\"\n";
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, &delivery, sites));
    inject(engine.http, &["a@v.test", "b@o.test", "c@i.test", "d@u.test", "e@w.test"]);

    // Three deliveries, and at least one failed attempt for each refused site.
    let failed = |records: &[serde_json::Value], domain: &str| {
        records.iter().any(|r| r["type"] == "TransientFailure" && r["recipient"].as_str().unwrap().ends_with(domain))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = log_records(dir.path());
        let delivered = records.iter().filter(|r| r["type"] == "Delivery").count();
        if (delivered >= 3 && failed(&records, "@u.test") && failed(&records, "@w.test")) || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    engine.shutdown();
    let of = |recipient: &'static str| records.iter().filter(move |r| r["recipient"] == recipient);
    let delivery = |recipient: &'static str| of(recipient).find(|r| r["type"] == "Delivery").cloned();

    // A trusted chain naming the host: delivered, verified.
    let verified = delivery("a@v.test").expect("required TLS with a trusted chain delivers");
    assert_eq!(verified["tls_peer_verified"], true, "{verified}");
    // Opportunistic and required_insecure deliver over an untrusted chain, and say so.
    for recipient in ["b@o.test", "c@i.test"] {
        let record = delivery(recipient).unwrap_or_else(|| panic!("{recipient} was not delivered: {records:?}"));
        assert_eq!(record["tls_peer_verified"], false, "{record}");
        assert!(record["tls_cipher"].is_string(), "encrypted: {record}");
    }
    // Required over an untrusted chain, or over a trusted chain for another name:
    // never delivered, each attempt a transient Tls failure.
    for recipient in ["d@u.test", "e@w.test"] {
        assert!(delivery(recipient).is_none(), "{recipient} delivered without a verified certificate");
        let failures: Vec<_> = of(recipient).filter(|r| r["type"] == "TransientFailure").collect();
        assert!(!failures.is_empty(), "{recipient}: {records:?}");
        for failure in failures {
            assert_eq!(failure["bounce_classification"], "Tls", "{failure}");
        }
    }
    // The refusing fleets never got as far as MAIL FROM.
    for fleet in [&fleet_c, &fleet_d] {
        assert_eq!(fleet.state().counts.mail_commands, 0, "a MAIL FROM reached a host whose certificate failed");
    }
    let accepted_a: Vec<String> = fleet_a.state().accepted.iter().map(|a| a.recipient.clone()).collect();
    assert_eq!(accepted_a, ["a@v.test"]);
    assert_eq!(fleet_b.state().accepted.len(), 2);
}
