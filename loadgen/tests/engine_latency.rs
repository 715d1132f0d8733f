//! A latency run (`loadgen run` with a rate): a steady 1,000 messages a second over
//! ringmail's HTTP inject API (a request every 10 ms) into sinks that answer at once,
//! one latency sample per message. Asserts that nothing is lost and that every
//! recipient gave its sample; the figures are printed, not asserted (the benchmark
//! `benches/latency` reports them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loadgen::inject::Plan;
use loadgen::run::RunConfig;
use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port};

#[test]
fn a_steady_http_stream_gives_one_latency_sample_per_recipient_and_loses_nothing() {
    let port = free_port("127.0.0.98");
    let text = format!(
        "[[provider]]\nname = \"steady\"\ndomains = [\"s1.test\", \"s2.test\", \"s3.test\"]\n\
         mx = [{{ host = \"mx.steady.test\", address = \"127.0.0.98\", port = {port} }}]\nconnections_per_ip_max = 64\n"
    );
    let scenario = Scenario::parse(&text, "latency.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "", ""));
    let run = RunConfig {
        target: engine.http,
        plan: Plan {
            messages: 2000,
            recipients_per_message: 1,
            domains: ["s1.test", "s2.test", "s3.test"].map(String::from).to_vec(),
            zipf_exponent: 0.0,
            message_bytes: 2000,
            message_bytes_max: 0,
            connections: 4,
            sender: "steady@sender.test".into(),
            seed: 9,
            rate: Some(1000.0),
            starttls: false,
            auth: None,
        },
        deadline: Duration::from_secs(60),
        settle: Duration::ZERO,
        dns: None,
        plot: None,
        http: true,
    };
    let result = loadgen::run::run_against(&scenario, &run, &fleet, &|| String::new()).unwrap();
    engine.shutdown();
    eprintln!("{}", result.result_line());
    eprintln!("max_ms={:.1} samples={}", result.max_ms, result.latency_samples);
    assert_eq!(result.refused, 0, "{}", result.table());
    assert_eq!((result.verdict.lost, result.verdict.duplicates), (0, 0), "{}", result.table());
    assert_eq!(result.latency_samples, 2000, "one sample per recipient");
}
