//! Injection straight into the sink fleet, checked by the oracle: nothing lost when
//! the sink keeps everything, and losses found when a (test-only) sink profile says
//! 250 and discards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use loadgen::inject::{smtp, Plan};
use loadgen::scenario::Scenario;

fn fleet(extra: &str) -> (loadgen::sink::Fleet, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.23:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[[provider]]\nname = \"p\"\ndomains = [\"a.test\", \"b.test\", \"c.test\"]\nmx = [{{ host = \"mx.p.test\", address = \"127.0.0.23\", port = {port} }}]\nconnections_per_ip_max = 64\n{extra}\n"
    );
    let scenario = Scenario::parse(&text, "oracle.toml").unwrap();
    (loadgen::sink::start(&scenario).unwrap(), format!("127.0.0.23:{port}").parse().unwrap())
}

fn plan() -> Plan {
    Plan {
        messages: 300,
        recipients_per_message: 2,
        domains: vec!["a.test".into(), "b.test".into(), "c.test".into()],
        zipf_exponent: 1.0,
        message_bytes: 2048,
        message_bytes_max: 0,
        connections: 4,
        sender: "loadgen@loadgen.test".into(),
        seed: 7,
        rate: None,
        starttls: false,
        auth: None,
    }
}

#[test]
fn a_sink_that_keeps_everything_loses_nothing() {
    let (fleet, address) = fleet("");
    let injected = smtp(address, &plan());
    assert_eq!(injected.len(), 600);
    let verdict = loadgen::oracle::check(&injected, &fleet.state());
    assert_eq!((verdict.injected, verdict.delivered, verdict.lost, verdict.duplicates), (600, 600, 0, 0));
    let state = fleet.state();
    assert!(state.accepted.iter().all(|a| a.message_id.as_deref().is_some_and(|id| id.starts_with("<loadgen-7-"))));
}

#[test]
fn a_sink_that_discards_after_250_is_caught_losing() {
    let (fleet, address) = fleet("discard_after_250_percent = 10.0");
    let injected = smtp(address, &plan());
    let verdict = loadgen::oracle::check(&injected, &fleet.state());
    assert_eq!(verdict.injected, 600, "the sink said 250 to every message");
    assert!(verdict.lost > 0, "{verdict:?}");
    assert_eq!(verdict.lost + verdict.delivered, 600);
    assert_eq!(fleet.state().counts.discarded_after_250 * 2, verdict.lost);
}
