//! `loadgen run`: one whole load test. Starts the scenario's DNS and sink fleet,
//! injects into the MTA under test with a live progress display, waits until every
//! recipient the MTA accepted has reached a sink or been refused permanently by one
//! (or a deadline passes), then reports: a summary table, a plot, and the
//! `RESULT ...` line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::inject::{Injected, Plan, Progress};
use crate::oracle::Verdict;
use crate::scenario::Scenario;
use crate::sink::{Fleet, SinkCounts};

/// How to run one load test.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The MTA under test (loopback).
    pub target: SocketAddr,
    pub plan: Plan,
    /// How long to wait, after injection ends, for the sinks to see everything.
    pub deadline: Duration,
    /// After everything is accounted for, keep listening this long for duplicates.
    pub settle: Duration,
    /// Where the scenario's DNS listens; `None`: no DNS (e.g. the MTA routes by a
    /// transport map).
    pub dns: Option<SocketAddr>,
    /// Write the injected/delivered-per-second plot here (SVG).
    pub plot: Option<PathBuf>,
    /// Inject through ringmail's HTTP API instead of SMTP.
    pub http: bool,
}

/// What a run came to.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub verdict: Verdict,
    /// Recipients injected (offered to the MTA), accepted or not.
    pub offered: u64,
    /// Recipients the MTA refused at injection.
    pub refused: u64,
    pub elapsed: Duration,
    /// Recipients accounted for (delivered or bounced) per second of the run.
    pub rate: f64,
    /// Latency to the sink's acceptance, milliseconds: from the inject request (HTTP:
    /// the MTA's sync before its answer included) or from the MTA's answer (SMTP).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Latency samples: one per recipient that reached a sink.
    pub latency_samples: usize,
    pub sink: SinkCounts,
    /// Whether every accepted recipient was accounted for before the deadline.
    pub settled: bool,
}

impl RunResult {
    /// Lost or duplicated mail: the run failed.
    pub fn failed(&self) -> bool {
        self.verdict.lost > 0 || self.verdict.duplicates > 0
    }

    /// The machine-readable last line.
    pub fn result_line(&self) -> String {
        let v = &self.verdict;
        format!(
            "RESULT injected={} delivered={} bounced={} lost={} duplicates={} elapsed_s={:.1} rate_msg_s={:.0} p50_ms={:.0} p99_ms={:.0}",
            v.injected,
            v.delivered,
            v.bounced,
            v.lost,
            v.duplicates,
            self.elapsed.as_secs_f64(),
            self.rate,
            self.p50_ms,
            self.p99_ms
        )
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let v = &self.verdict;
        let s = &self.sink;
        let rows = [
            ("offered to the MTA", self.offered.to_string()),
            ("refused by the MTA", self.refused.to_string()),
            ("accepted by the MTA", v.injected.to_string()),
            ("delivered to a sink", v.delivered.to_string()),
            ("bounced (sink 5xx, or no route)", v.bounced.to_string()),
            ("LOST", v.lost.to_string()),
            ("duplicates", v.duplicates.to_string()),
            ("sink: RCPT tempfail / permfail", format!("{} / {}", s.rcpt_tempfail, s.rcpt_permfail)),
            ("sink: DATA tempfail / permfail", format!("{} / {}", s.data_tempfail, s.data_permfail)),
            ("sink: dropped mid-DATA", s.dropped_after_data.to_string()),
            ("sink: connections refused (limit)", s.refused_connections.to_string()),
            ("latency p50 / p99 (ms)", format!("{:.0} / {:.0}", self.p50_ms, self.p99_ms)),
            ("elapsed (s)", format!("{:.1}", self.elapsed.as_secs_f64())),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            out.push_str(&format!("  {name:<36} {value:>12}\n"));
        }
        for example in &v.lost_examples {
            out.push_str(&format!("  lost: {example}\n"));
        }
        out
    }
}

/// Runs the load test described by `scenario` and `config`.
pub fn run(scenario: &Scenario, config: &RunConfig) -> anyhow::Result<RunResult> {
    if !config.target.ip().is_loopback() {
        anyhow::bail!("{}: loadgen only injects into loopback addresses", config.target);
    }
    let _dns = match config.dns {
        Some(address) => {
            let zone = crate::dns::Zone::from_scenario(scenario).map_err(anyhow::Error::msg)?;
            let server = crate::dns::start(zone, address)?;
            eprintln!("loadgen run: DNS for the scenario on {}", server.address);
            Some(server)
        }
        None => None,
    };
    let fleet = crate::sink::start(scenario)?;
    run_against(scenario, config, &fleet, &|| String::new())
}

/// The injection, the wait and the verdict, against a fleet already running.
/// `status` adds to the progress line (e.g. the MTA's own counts).
pub fn run_against(
    scenario: &Scenario,
    config: &RunConfig,
    fleet: &Fleet,
    status: &dyn Fn() -> String,
) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let progress = Arc::new(Progress::default());
    let injection = {
        let (target, plan, progress, http) = (config.target, config.plan.clone(), Arc::clone(&progress), config.http);
        std::thread::Builder::new().name("loadgen-inject".into()).spawn(move || match http {
            true => crate::inject_http::http(target, &plan, &progress),
            false => crate::inject::smtp_with_progress(target, &plan, &progress),
        })?
    };
    let total = (config.plan.messages * config.plan.recipients_per_message.max(1)) as u64;
    let bar = progress_bar(total);
    while !injection.is_finished() {
        show(&bar, &progress, fleet, started, status);
        std::thread::sleep(Duration::from_millis(200));
    }
    let injected = injection.join().map_err(|_| anyhow::anyhow!("the injection thread panicked"))?;
    let deadline = Instant::now() + config.deadline;
    let mut settled = false;
    while Instant::now() < deadline {
        show(&bar, &progress, fleet, started, status);
        if crate::oracle::check_scenario(&injected, &fleet.state(), scenario).lost == 0 {
            settled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = started.elapsed();
    if settled {
        std::thread::sleep(config.settle); // late duplicates would show up here
    }
    bar.finish_and_clear();
    let state = fleet.state();
    let verdict = crate::oracle::check_scenario(&injected, &state, scenario);
    let accepted_at: HashMap<&str, SystemTime> =
        injected.iter().map(|i| (i.recipient.as_str(), i.offered_at.unwrap_or(i.at))).collect();
    let mut latencies: Vec<f64> = state
        .accepted
        .iter()
        .filter_map(|a| accepted_at.get(a.recipient.as_str()).and_then(|at| a.at.duration_since(*at).ok()))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    if let Some(path) = &config.plot {
        let delivered: Vec<SystemTime> = state.accepted.iter().map(|a| a.at).collect();
        crate::plot::write(path, started_wall, &injected, &delivered)?;
    }
    let accounted = verdict.delivered + verdict.bounced;
    Ok(RunResult {
        offered: injected.len() as u64,
        refused: injected.iter().filter(|i| !i.accepted).count() as u64,
        rate: per_second(accounted, elapsed),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        latency_samples: latencies.len(),
        sink: state.counts.clone(),
        elapsed,
        settled,
        verdict,
    })
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The value below which `share` of the sorted `values` fall (0 when empty).
fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * share).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The live display: on stderr, only when it is a terminal.
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    // Drawn on stderr, only when it is a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} injected  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar
}

/// Injection counts alone (`loadgen inject`: no sinks to watch).
pub fn show_injection(bar: &indicatif::ProgressBar, progress: &Progress, started: Instant) {
    let injected = progress.injected.load(Ordering::Relaxed);
    bar.set_position(injected);
    bar.set_message(format!(
        "accepted {}  rejected {}  {:.0} msg/s",
        progress.accepted.load(Ordering::Relaxed),
        progress.rejected.load(Ordering::Relaxed),
        injected as f64 / started.elapsed().as_secs_f64().max(0.001)
    ));
}

fn show(
    bar: &indicatif::ProgressBar,
    progress: &Progress,
    fleet: &Fleet,
    started: Instant,
    status: &dyn Fn() -> String,
) {
    let injected = progress.injected.load(Ordering::Relaxed);
    let delivered = fleet.state().counts.accepted;
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    bar.set_position(injected);
    bar.set_message(format!(
        "accepted {}  rejected {}  delivered {}  {:.0} msg/s in, {:.0} msg/s out{}",
        progress.accepted.load(Ordering::Relaxed),
        progress.rejected.load(Ordering::Relaxed),
        delivered,
        injected as f64 / seconds,
        delivered as f64 / seconds,
        status()
    ));
}

/// For [`crate::plot`]: the injected recipients the MTA accepted, by time.
pub(crate) fn accepted_times(injected: &[Injected]) -> Vec<SystemTime> {
    injected.iter().filter(|i| i.accepted).map(|i| i.at).collect()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_of_a_sorted_series() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
