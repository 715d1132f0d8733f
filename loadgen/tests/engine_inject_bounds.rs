//! What one inject request may cost (issue 15, part 3): a templated 5 MB message
//! for 10,000 recipients (50 GB of messages) is refused with 413 before anything is
//! rendered, in well under a second and without the memory it would take; a
//! template of nested loops runs out of fuel and gets 400 within 2 s. A legitimate
//! personalised request under the bound is still delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{dns_for, engine_config, free_port};

/// This process's resident memory, whole MiB.
fn resident_mb() -> u64 {
    loadgen::probe::resident_mb(std::process::id()).unwrap() as u64
}

fn post(http: SocketAddr, body: &serde_json::Value) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, answer) = common::inject_json(http, body);
    (status, answer, started.elapsed())
}

#[test]
fn a_request_that_would_expand_or_loop_too_far_is_refused_before_it_costs_memory_or_time() {
    let port = free_port("127.0.0.64");
    let scenario = loadgen::scenario::Scenario::parse(
        &format!("[[provider]]\nname = \"p\"\ndomains = [\"p.test\"]\nmx = [{{ host = \"mx.p.test\", address = \"127.0.0.64\", port = {port} }}]\n"),
        "bounds.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "shards = 1", ""));

    // 1. 5 MB of templated content for 10,000 recipients: 413 before rendering.
    let big = format!("Subject: {{{{ name }}}}\r\n\r\n{}", format!("{}\r\n", "x".repeat(76)).repeat(5 << 20 >> 6));
    let recipients: Vec<_> = (0..10_000)
        .map(|i| serde_json::json!({"email": format!("u{i}@p.test"), "substitutions": {"name": i}}))
        .collect();
    let request = serde_json::json!({"envelope_sender": "b@sender.test", "content": big, "recipients": recipients});
    let before = resident_mb();
    let (status, body, took) = post(engine.http, &request);
    let grown = resident_mb().saturating_sub(before);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("http.expansion_max_bytes"), "{body}");
    assert!(took < Duration::from_secs(1), "413 took {took:?}");
    assert!(grown < 256, "resident memory grew {grown} MiB for a refused request");
    drop(request);

    // 2. Nested loops in a template: out of fuel, 400 within 2 s.
    let looping =
        "Subject: x\r\n\r\n{% for a in range(100000) %}{% for b in range(100000) %}.{% endfor %}{% endfor %}\r\n";
    let request = serde_json::json!({"envelope_sender": "b@sender.test", "content": looping,
        "recipients": [{"email": "l@p.test"}]});
    let (status, body, took) = post(engine.http, &request);
    assert!(took < Duration::from_secs(2), "the looping template took {took:?}");
    // One recipient, and its render failed: the whole request is a 400 naming fuel.
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("fuel"), "{body}");

    // 3. A legitimate personalised request under the bound is delivered.
    let recipients: Vec<_> = (0..50)
        .map(|i| serde_json::json!({"email": format!("ok{i}@p.test"), "substitutions": {"name": format!("n{i}")}}))
        .collect();
    let request = serde_json::json!({"envelope_sender": "b@sender.test",
        "content": format!("Subject: hello {{{{ name }}}}\r\n\r\n{}", format!("{}\r\n", "y".repeat(76)).repeat(1300)),
        "recipients": recipients});
    let (status, body, _) = post(engine.http, &request);
    assert_eq!(status, 200, "{body}");
    common::settle(&fleet, &engine, 50, 30);
    let records = common::log_records(dir.path());
    let failures: Vec<_> = records.iter().filter(|r| r["type"] != "Delivery" && r["type"] != "Reception").collect();
    assert_eq!(fleet.state().accepted.len(), 50, "{failures:?}");
    engine.shutdown();
}
