//! Helpers for the tests that run ringmail's engine against loadgen's DNS and sinks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use loadgen::scenario::Scenario;
use ringmail::config::Config;

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

/// The scenario's zone, served on a free loopback port.
pub fn dns_for(scenario: &Scenario) -> loadgen::dns::DnsServer {
    let zone = loadgen::dns::Zone::from_scenario(scenario).unwrap();
    loadgen::dns::start(zone, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// An engine configuration for tests: queue and delivery log in `dir`, the control
/// plane on a free loopback port, `dns` as the only nameserver, MX hosts on `port`,
/// a loopback allowlist; `delivery` adds keys to `[delivery]`, `rest` adds sections.
pub fn engine_toml(dir: &Path, dns: SocketAddr, port: u16, delivery: &str, rest: &str) -> String {
    format!(
        "[store]\npath = \"{store}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 1000\n\
         [delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\", \"::1/128\"]\n{delivery}\n\
         [log]\npath = \"{log}\"\n{rest}\n",
        store = dir.join("queue").display(),
        log = dir.join("delivery.jsonl").display(),
    )
}

pub fn engine_config(dir: &Path, dns: SocketAddr, port: u16, delivery: &str, rest: &str) -> Config {
    Config::parse(&engine_toml(dir, dns, port, delivery, rest), "test config").unwrap()
}

/// The delivery log in `dir`, one JSON value per record.
pub fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Waits (up to `seconds`) until the sinks have `count` acceptances and the engine's
/// queue is empty; the caller asserts what it expects after.
pub fn settle(fleet: &loadgen::sink::Fleet, engine: &ringmail::daemon::Engine, count: usize, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while fleet.state().accepted.len() < count && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    while engine.store.counts().total() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
