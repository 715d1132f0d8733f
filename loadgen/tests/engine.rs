//! ringmail's engine end to end, on loopback: HTTP inject → queue (RocksDB on disk)
//! → scheduler (MX from loadgen's DNS) → io_uring shards → loadgen's sink fleet, with
//! tempfails, permfails, an implicit-MX domain, a null-MX and an NXDOMAIN domain, two
//! egress sources; loadgen's oracle checks that nothing was lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use loadgen::inject::{Plan, Progress};
use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

/// Every MX host listens on `port` (the engine reaches MX hosts on one port).
fn scenario(port: u16) -> Scenario {
    let text = format!(
        r#"
[[provider]]
name = "bigmail"
domains = ["big.test", "big-alias.test"]
mx = [{{ host = "mx1.big.test", address = "127.0.0.41", port = {port}, preference = 10 }},
      {{ host = "mx2.big.test", address = "127.0.0.42", port = {port}, preference = 20 }}]
rcpt_tempfail_percent = 15.0
rcpt_permfail_percent = 5.0
starttls = true
connections_per_ip_max = 64

[[provider]]
name = "small"
domains = ["small.test"]
mx = [{{ host = "small.test", address = "127.0.0.43", port = {port} }}]
dns = "implicit_mx"

[[provider]]
name = "nomail"
domains = ["nomail.test"]
mx = [{{ host = "mx.nomail.test", address = "127.0.0.44", port = {port} }}]
dns = "null_mx"

[[provider]]
name = "gone"
domains = ["gone.test"]
mx = [{{ host = "mx.gone.test", address = "127.0.0.45", port = {port} }}]
dns = "nxdomain"
"#
    );
    Scenario::parse(&text, "engine.toml").unwrap()
}

#[test]
fn http_inject_to_the_sink_fleet_through_the_engine_loses_nothing() {
    let port = free_port("127.0.0.41");
    let scenario = scenario(port);
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let delivery = "shards = 2\nconnections_per_lane_max = 8\nidle_timeout_ms = 500\nhandoff = true";
    let rest = "[retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\n\
                [[egress]]\naddress = \"127.0.0.2\"\nehlo_name = \"out1.ringmail.test\"\n\
                [[egress]]\naddress = \"127.0.0.3\"\nehlo_name = \"out2.ringmail.test\"";
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, delivery, rest));

    let plan = Plan {
        messages: 400,
        recipients_per_message: 2,
        domains: ["big.test", "big-alias.test", "small.test", "nomail.test", "gone.test"].map(String::from).to_vec(),
        zipf_exponent: 0.5,
        message_bytes: 2000,
        message_bytes_max: 0,
        connections: 4,
        sender: "campaign@sender.test".into(),
        seed: 3,
        rate: None,
        starttls: false,
        auth: None,
    };
    let injected = loadgen::inject_http::http(engine.http, &plan, &Progress::default());
    assert_eq!(injected.len(), 800);
    assert!(injected.iter().all(|i| i.accepted), "{:?}", injected.iter().find(|i| !i.accepted));

    // Deliverable recipients reach a sink (retries included); the others bounce.
    let undeliverable = |r: &str| r.ends_with("@nomail.test") || r.ends_with("@gone.test");
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let verdict = loadgen::oracle::check(&injected, &fleet.state());
        let delivered_or_sink_bounced = verdict.delivered + verdict.bounced;
        let expected = injected.iter().filter(|i| !undeliverable(&i.recipient)).count() as u64;
        if delivered_or_sink_bounced >= expected || Instant::now() > deadline {
            break verdict;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let dns_bounces = injected.iter().filter(|i| undeliverable(&i.recipient)).count() as u64;
    eprintln!("queue now: {:?}; metrics:\n{}", engine.store.counts(), engine.metrics.render(&engine.store));
    if let Some(example) = verdict.lost_examples.iter().find(|r| !undeliverable(r)) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("log of {example}: {:?}", log.lines().filter(|l| l.contains(example.as_str())).collect::<Vec<_>>());
    }
    assert_eq!(verdict.duplicates, 0, "{verdict:?}");
    assert_eq!(verdict.lost, dns_bounces, "only the null-MX and NXDOMAIN recipients never reach a sink: {verdict:?}");
    assert!(verdict.bounced > 0, "the sink's 5xx bounced: {verdict:?}");
    // Fresh mail took the fast path (handed over as synced); retries came back
    // through the due index.
    let store_metrics = engine.store.metrics();
    assert!(store_metrics.handed_over > 0, "{store_metrics:?}");
    assert!(store_metrics.claimed > store_metrics.handed_over, "{store_metrics:?}");
    let state = fleet.state();
    assert!(state.counts.rcpt_tempfail > 0, "tempfails happened and were retried");
    let sources: std::collections::BTreeSet<String> = state.accepted.iter().map(|a| a.client.to_string()).collect();
    assert_eq!(sources, ["127.0.0.2", "127.0.0.3"].map(String::from).into(), "both egress sources used");
    assert!(state.accepted.iter().any(|a| a.tls), "STARTTLS used where offered");
    assert!(state.peak_connections.values().all(|&peak| peak <= 8 * 2), "{:?}", state.peak_connections);
    drop(state);

    // The store agrees: nothing left but what is still being retried (nothing).
    let wait = Instant::now() + Duration::from_secs(20);
    while engine.store.counts().total() > 0 && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(engine.store.counts().total(), 0, "every recipient ended: {:?}", engine.store.counts());
    engine.shutdown();

    let records = log_records(dir.path());
    let count = |kind: &str| records.iter().filter(|r| r["type"] == kind).count() as u64;
    assert_eq!(count("Reception"), 800, "one Reception record per recipient acknowledged");
    assert_eq!(count("Delivery"), verdict.delivered);
    assert_eq!(count("Bounce"), verdict.bounced + dns_bounces);
    assert!(count("TransientFailure") > 0);
    let null_mx = records
        .iter()
        .find(|r| r["type"] == "Bounce" && r["recipient"].as_str().unwrap().ends_with("@nomail.test"))
        .unwrap();
    assert_eq!(null_mx["bounce_classification"], "Dns", "{null_mx}");
    let unknown = records.iter().find(|r| r["type"] == "Bounce" && r["response"]["code"] == 550).unwrap();
    assert_eq!(unknown["bounce_classification"], "InvalidRecipient", "{unknown}");
}
