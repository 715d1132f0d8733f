//! Latency at a steady rate: loadgen injects over HTTP at `BENCH_RATE` messages a
//! second (default 1,000; a request every 10 ms) into ringmail's engine (in this
//! process), which delivers to loadgen's sinks, answering at once. One sample per
//! message: from the inject request being sent (the engine's fsync before its 200
//! included) to the sink's acceptance. The engine runs once on io_uring and once on
//! epoll (`RINGMAIL_IO_BACKEND`), each on a fresh queue.
//!
//! Ends with: `BENCH latency rate_msg_s=.. p50_ms=.. p99_ms=.. max_ms=.. epoll_p50_ms=..
//! epoll_p99_ms=.. epoll_max_ms=.. samples=.. lost=..`
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::time::Duration;

use benches::bench_line;
use loadgen::inject::Plan;
use loadgen::run::{RunConfig, RunResult};
use ringmail::daemon::Engine;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn setting(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn run_once(backend: &str, rate: f64, seconds: f64) -> RunResult {
    // Read once by the engine at start (`Backend::detect`).
    std::env::set_var(ringmail::io::BACKEND_VARIABLE, backend);
    let port = std::net::TcpListener::bind("127.0.0.81:0").unwrap().local_addr().unwrap().port();
    let scenario = benches::providers_scenario(2, 10, 81, port).unwrap();
    let sinks = benches::on_sinks(&scenario, port).unwrap();
    let fleet = &sinks.fleet;
    let engine = Engine::start(sinks.config.clone()).unwrap();
    assert_eq!(engine.metrics.parts.backend(), backend, "the engine runs on the backend asked for");
    let domains = scenario.providers.iter().flat_map(|p| p.domains.iter().cloned()).collect();
    let run = RunConfig {
        target: engine.http,
        plan: Plan {
            messages: (rate * seconds) as usize,
            recipients_per_message: 1,
            domains,
            zipf_exponent: 0.0,
            message_bytes: 4096,
            message_bytes_max: 0,
            connections: 4,
            sender: "bench@sender.test".into(),
            seed: 1,
            rate: Some(rate),
            starttls: false,
            auth: None,
        },
        deadline: Duration::from_secs(120),
        settle: Duration::ZERO,
        dns: None,
        plot: None,
        http: true,
    };
    let result = loadgen::run::run_against(&scenario, &run, fleet, &|| String::new()).unwrap();
    engine.shutdown();
    println!(
        "{backend}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, lost {}",
        result.latency_samples, result.p50_ms, result.p99_ms, result.max_ms, result.verdict.lost
    );
    result
}

fn main() {
    let rate = setting("BENCH_RATE", 1000.0);
    let seconds = setting("BENCH_SECONDS", 20.0);
    let uring = run_once("io_uring", rate, seconds);
    let epoll = run_once("epoll", rate, seconds);
    let line = bench_line(
        "latency",
        &[
            ("rate_msg_s", format!("{rate:.0}")),
            ("p50_ms", format!("{:.1}", uring.p50_ms)),
            ("p99_ms", format!("{:.1}", uring.p99_ms)),
            ("max_ms", format!("{:.1}", uring.max_ms)),
            ("epoll_p50_ms", format!("{:.1}", epoll.p50_ms)),
            ("epoll_p99_ms", format!("{:.1}", epoll.p99_ms)),
            ("epoll_max_ms", format!("{:.1}", epoll.max_ms)),
            ("samples", (uring.latency_samples + epoll.latency_samples).to_string()),
            ("lost", (uring.verdict.lost + epoll.verdict.lost).to_string()),
        ],
    );
    println!("{line}");
}
