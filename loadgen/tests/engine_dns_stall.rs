//! A stalled DNS authority must not stall delivery (issue 15, part 10): with
//! `dns.in_flight_max = 4`, four domains whose 20 MX hosts' address queries are
//! never answered, then one normal domain: the normal domain is delivered within
//! 5 s. Before, each stalled route held one of the 4 lookup slots
//! while it asked for every host in turn (20 hosts × the resolver's timeout), so the
//! normal domain waited for all of them. The stalled domains end as transient DNS
//! failures at their route deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

#[test]
fn domains_whose_mx_hosts_never_answer_do_not_hold_up_a_normal_domain() {
    let port = free_port("127.0.0.65");
    let ok = format!(
        "[[provider]]\nname = \"ok\"\ndomains = [\"ok.test\"]\nmx = [{{ host = \"mx.ok.test\", address = \"127.0.0.65\", port = {port} }}]\n"
    );
    let mut stalled = String::new();
    for domain in 0..4 {
        let hosts: Vec<String> = (0..20)
            .map(|host| {
                format!(
                    "{{ host = \"mx{host}.stall{domain}.test\", address = \"127.0.{}.{}\", port = {port} }}",
                    10 + domain,
                    host + 1
                )
            })
            .collect();
        stalled.push_str(&format!(
            "[[provider]]\nname = \"stall{domain}\"\ndomains = [\"stall{domain}.test\"]\nmx = [{}]\ndns = \"drop_hosts\"\n",
            hosts.join(", ")
        ));
    }
    let dns = dns_for(&Scenario::parse(&format!("{ok}{stalled}"), "stall.toml").unwrap());
    let fleet = loadgen::sink::start(&Scenario::parse(&ok, "ok.toml").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), dns.address, port, "shards = 1", "");
    config.dns.in_flight_max = 4;
    config.dns.timeout_ms = 500;
    config.dns.route_timeout_ms = 3000;
    let engine = common::start_engine(config);

    let inject = |emails: &[&str]| {
        let recipients: Vec<_> = emails.iter().map(|email| serde_json::json!({ "email": email })).collect();
        let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: x\r\n\r\nx\r\n",
            "recipients": recipients });
        let (status, answer) = common::inject_json(engine.http, &body);
        assert_eq!(status, 200, "{answer}");
    };
    // The stalled domains first, so that their lookups hold every slot; then the
    // normal one.
    inject(&["a@stall0.test", "b@stall1.test", "c@stall2.test", "d@stall3.test"]);
    std::thread::sleep(Duration::from_millis(300));
    let injected = Instant::now();
    inject(&["e@ok.test"]);
    let deadline = injected + Duration::from_secs(30);
    while fleet.state().accepted.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = injected.elapsed();
    assert_eq!(fleet.state().accepted.len(), 1, "the normal domain was never delivered");
    assert!(took < Duration::from_secs(5), "the normal domain waited {took:?} behind stalled lookups");
    // The stalled ones end their route at the deadline, deferred as DNS failures.
    while log_records(dir.path()).iter().filter(|r| r["type"] == "TransientFailure").count() < 4
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let failures: Vec<_> = log_records(dir.path()).into_iter().filter(|r| r["type"] == "TransientFailure").collect();
    assert!(failures.len() >= 4, "{failures:?}");
    for failure in &failures {
        assert_eq!(failure["bounce_classification"], "Dns", "{failure}");
    }
    engine.shutdown();
}
