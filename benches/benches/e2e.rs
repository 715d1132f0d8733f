//! End to end: loadgen injects over HTTP into ringmail's engine (in this process),
//! which delivers to loadgen's sink fleet: 4 KiB messages, 100 domains (Zipf), every
//! batch synced before it is acknowledged, no failures injected. Measured from the
//! first injected batch to the last delivery.
//!
//! Ends with: `BENCH e2e_http msgs_s=.. lost=.. p99_ms=.. rss_mb_max=..`
//! (`rss_mb_max`: the peak resident memory of this process, which also holds the
//! sinks and the injector).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::time::Duration;

use benches::bench_line;
use loadgen::inject::Plan;
use loadgen::run::RunConfig;
use ringmail::daemon::Engine;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn messages() -> usize {
    std::env::var("BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(50_000)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.71:0").unwrap().local_addr().unwrap().port();
    let scenario = benches::providers_scenario(4, 25, 71, port).unwrap();
    let sinks = benches::on_sinks(&scenario, port).unwrap();
    let fleet = &sinks.fleet;
    let engine = Engine::start(sinks.config.clone()).unwrap();
    let domains = scenario.providers.iter().flat_map(|p| p.domains.iter().cloned()).collect();
    let run = RunConfig {
        target: engine.http,
        plan: Plan {
            messages: messages(),
            recipients_per_message: 1,
            domains,
            zipf_exponent: 1.0,
            message_bytes: 4096,
            message_bytes_max: 0,
            connections: 8,
            sender: "bench@sender.test".into(),
            seed: 1,
            rate: None,
            starttls: false,
            auth: None,
        },
        deadline: Duration::from_secs(600),
        settle: Duration::ZERO,
        dns: None,
        plot: None,
        http: true,
    };
    let result = loadgen::run::run_against(&scenario, &run, fleet, &|| String::new()).unwrap();
    engine.shutdown();
    print!("{}", result.table());
    let line = bench_line(
        "e2e_http",
        &[
            ("msgs_s", format!("{:.0}", result.rate)),
            ("lost", result.verdict.lost.to_string()),
            ("duplicates", result.verdict.duplicates.to_string()),
            ("p99_ms", format!("{:.0}", result.p99_ms)),
            ("rss_mb_max", format!("{:.0}", peak_rss_mb())),
            ("messages", messages().to_string()),
        ],
    );
    println!("{line}");
}
