//! A delivery shard whose loop dies mid-run (the test-only fault hook
//! `RINGMAIL_FAULT_SHARD_FAIL`, read at start: this file holds one test, so the
//! variable reaches no other engine): `/healthz` answers 503 naming the shard,
//! `/metrics` shows `ringmail_part_up{part="shard",index="0"} 0`, and every recipient
//! still arrives: what the dead shard held goes back to the queue and the scheduler
//! gives its lanes to the live shard. On either backend (`RINGMAIL_TEST_BLOCK_IO_URING`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use loadgen::inject::{Plan, Progress};
use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, http_get};

#[test]
fn a_dead_shard_is_reported_and_its_recipients_are_delivered_by_the_other() {
    let port = free_port("127.0.0.100");
    // Eight providers, each its own MX host: eight sites, eight lanes hashed over the
    // two shards.
    let mut text = String::new();
    let mut domains = Vec::new();
    for provider in 0..8 {
        let domain = format!("d{provider}.test");
        text.push_str(&format!(
            "[[provider]]\nname = \"p{provider}\"\ndomains = [\"{domain}\"]\nconnections_per_ip_max = 64\n\
             latency_ms = {{ fixed = 5, jitter = 5 }}\n\
             mx = [{{ host = \"mx.{domain}\", address = \"127.0.0.{address}\", port = {port} }}]\n",
            address = 100 + provider,
        ));
        domains.push(domain);
    }
    let scenario = Scenario::parse(&text, "shard-down.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Each domain is its own site and lane: lanes hash over both shards.
    let rest = "[retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\n";
    let config = engine_config(dir.path(), dns.address, port, "shards = 2", rest);
    std::env::set_var(ringmail::shard::FAULT_VARIABLE, "0:20");
    let engine = common::start_engine(config);

    let plan = Plan {
        messages: 800,
        recipients_per_message: 1,
        domains,
        zipf_exponent: 0.0,
        message_bytes: 1000,
        message_bytes_max: 0,
        connections: 4,
        sender: "campaign@sender.test".into(),
        seed: 5,
        rate: None,
        starttls: false,
        auth: None,
    };
    let injected = loadgen::inject_http::http(engine.http, &plan, &Progress::default());
    assert!(injected.iter().all(|i| i.accepted));

    let get = |path: &str| http_get(engine.http, path);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, health) = loop {
        let (status, health) = get("/healthz");
        if status != 200 || Instant::now() > deadline {
            break (status, health);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["down"][0].as_str().unwrap().starts_with("shard-0: the delivery loop failed"), "{health}");
    let (_, metrics) = get("/metrics");
    assert!(metrics.contains("ringmail_part_up{part=\"shard\",index=\"0\"} 0"), "{metrics}");
    assert!(metrics.contains("ringmail_part_up{part=\"shard\",index=\"1\"} 1"), "{metrics}");

    let deadline = Instant::now() + Duration::from_secs(90);
    let verdict = loop {
        let verdict = loadgen::oracle::check(&injected, &fleet.state());
        if verdict.lost == 0 || Instant::now() > deadline {
            break verdict;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wait = Instant::now() + Duration::from_secs(20);
    while engine.store.counts().total() > 0 && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = engine.store.counts();
    engine.shutdown();
    assert_eq!(verdict.lost, 0, "the dead shard's recipients were delivered by the other: {verdict:?}");
    assert_eq!(counts.total(), 0, "every recipient ended: {counts:?}");
}
