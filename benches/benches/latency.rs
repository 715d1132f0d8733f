//! Latency at a steady rate: loadgen injects over HTTP at `BENCH_RATE` messages a
//! second (default 1,000; a request every 10 ms) into ringmail's engine (in this
//! process), which delivers to loadgen's sinks, answering at once. One sample per
//! message: from the inject request being sent (the engine's fsync before its 200
//! included) to the sink's acceptance. The engine runs on io_uring with the handoff
//! off (`delivery.handoff = false`: every message claimed back from the due index,
//! the path before the fast path) and on, interleaved for `BENCH_ROUNDS` rounds
//! (default 2), then once on epoll (`RINGMAIL_IO_BACKEND`), each on a fresh queue.
//!
//! Ends with: `BENCH latency rate_msg_s=.. p50_ms=.. p99_ms=.. max_ms=..
//! due_index_p50_ms=.. due_index_p99_ms=.. due_index_max_ms=.. epoll_p50_ms=..
//! epoll_p99_ms=.. epoll_max_ms=.. samples=.. lost=..` (io_uring figures: the mean
//! of the rounds).
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

fn run_once(backend: &str, handoff: bool, rate: f64, seconds: f64) -> RunResult {
    // Read once by the engine at start (`Backend::detect`).
    std::env::set_var(ringmail::io::BACKEND_VARIABLE, backend);
    let port = std::net::TcpListener::bind("127.0.0.81:0").unwrap().local_addr().unwrap().port();
    let scenario = benches::providers_scenario(2, 10, 81, port).unwrap();
    let sinks = benches::on_sinks(&scenario, port).unwrap();
    let fleet = &sinks.fleet;
    let mut config = sinks.config.clone();
    config.delivery.handoff = handoff;
    let engine = Engine::start(config).unwrap();
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
        "{backend}, {}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, lost {}",
        if handoff { "handoff" } else { "due index" },
        result.latency_samples,
        result.p50_ms,
        result.p99_ms,
        result.max_ms,
        result.verdict.lost
    );
    result
}

/// The mean of a figure over runs.
fn mean(runs: &[RunResult], figure: fn(&RunResult) -> f64) -> f64 {
    runs.iter().map(figure).sum::<f64>() / runs.len().max(1) as f64
}

fn main() {
    let rate = setting("BENCH_RATE", 1000.0);
    let seconds = setting("BENCH_SECONDS", 20.0);
    let rounds = setting("BENCH_ROUNDS", 2.0).max(1.0) as usize;
    // Interleaved (A B A B): a warm-up or a noisy moment falls on both paths alike.
    let mut handoff = Vec::new();
    let mut due_index = Vec::new();
    for _ in 0..rounds {
        due_index.push(run_once("io_uring", false, rate, seconds));
        handoff.push(run_once("io_uring", true, rate, seconds));
    }
    let epoll = [run_once("epoll", true, rate, seconds)];
    let all = || handoff.iter().chain(&due_index).chain(&epoll);
    let line = bench_line(
        "latency",
        &[
            ("rate_msg_s", format!("{rate:.0}")),
            ("p50_ms", format!("{:.1}", mean(&handoff, |r| r.p50_ms))),
            ("p99_ms", format!("{:.1}", mean(&handoff, |r| r.p99_ms))),
            ("max_ms", format!("{:.1}", mean(&handoff, |r| r.max_ms))),
            ("due_index_p50_ms", format!("{:.1}", mean(&due_index, |r| r.p50_ms))),
            ("due_index_p99_ms", format!("{:.1}", mean(&due_index, |r| r.p99_ms))),
            ("due_index_max_ms", format!("{:.1}", mean(&due_index, |r| r.max_ms))),
            ("epoll_p50_ms", format!("{:.1}", epoll[0].p50_ms)),
            ("epoll_p99_ms", format!("{:.1}", epoll[0].p99_ms)),
            ("epoll_max_ms", format!("{:.1}", epoll[0].max_ms)),
            ("samples", all().map(|r| r.latency_samples).sum::<usize>().to_string()),
            ("lost", all().map(|r| r.verdict.lost).sum::<u64>().to_string()),
        ],
    );
    println!("{line}");
}
