//! Memory bounded by bytes, not only by recipients (issue 15, part 12): 200
//! personalised messages of 2 MB each (400 MB of bodies) queued while the sinks
//! stall. With `delivery.in_flight_bytes_max = 64 MiB` the engine claims bodies up
//! to that and no further: its resident memory stays within baseline + 64 MiB +
//! 256 MiB (RocksDB's write buffers and the rest), sampled from `/proc/<pid>/status`
//! all along. Before, it claimed all 200 (the recipient limit is 20,000) and held
//! 400 MB of bodies. The engine runs as a child process, killed by the test as soon
//! as it passes the bound, so a regression fails the test instead of the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_toml, free_port};

fn rss_mb(pid: u32) -> f64 {
    loadgen::probe::resident_mb(pid).unwrap_or(0.0)
}

fn metric(http: SocketAddr, name: &str) -> f64 {
    loadgen::probe::metric(http, name, "").unwrap_or(f64::NAN)
}

#[test]
fn bodies_held_for_delivery_stay_within_in_flight_bytes_max_while_the_sinks_stall() {
    let port = free_port("127.0.0.71");
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"stall\"\ndomains = [\"stall.test\"]\nconnections_per_ip_max = 500\n\
             latency_ms = {{ fixed = 60000 }}\nmx = [{{ host = \"mx.stall.test\", address = \"127.0.0.71\", port = {port} }}]\n"
        ),
        "stall.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let _fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    let text = engine_toml(
        dir.path(),
        dns.address,
        port,
        "connections_per_lane_max = 500\nin_flight_bytes_max = 67108864",
        "",
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{http}\"\nbody_max_bytes = 4194304"));
    std::fs::write(&config, text).unwrap();
    let mut engine = common::start_engine_process(&config, http);
    let pid = engine.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_mb(pid);
    let bound = baseline + 64.0 + 256.0;
    let mut peak = baseline;
    let mut check = |peak: &mut f64| {
        let rss = rss_mb(pid);
        *peak = peak.max(rss);
        if rss > bound {
            let _ = engine.0.kill();
            panic!("resident memory {rss:.0} MiB passed baseline {baseline:.0} + 64 + 256 MiB");
        }
    };
    for index in 0..200 {
        // Personalised: every body differs (2 MB of text with the index in it).
        let line = format!("message {index} says hello to its one recipient, at some length.\r\n");
        let content = format!("Subject: big {index}\r\n\r\n{}", line.repeat(2_000_000 / line.len()));
        let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": content,
            "recipients": [{ "email": format!("r{index}@stall.test") }] });
        let (status, answer) = common::inject_json(http, &body);
        assert_eq!(status, 200, "{answer}");
        check(&mut peak);
    }
    let settled = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settled {
        check(&mut peak);
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = metric(http, "ringmail_in_flight_bytes");
    let in_flight = metric(http, "ringmail_in_flight");
    eprintln!("baseline {baseline:.0} MiB, peak {peak:.0} MiB; {held} bytes of bodies held for {in_flight} recipients");
    assert!(held <= 64.0 * 1024.0 * 1024.0 + 2.1e6, "bodies held: {held}");
    assert!(in_flight > 0.0 && in_flight < 200.0, "claims stopped at the byte bound: {in_flight} recipients in flight");
    let _ = engine.0.kill();
}
