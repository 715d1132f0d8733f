//! `loadgen run` end to end through a real Postfix as the MTA under test: Postfix
//! relays to the sink fleet (transport map), which tempfails and permfails a share
//! of recipients; the oracle finds nothing lost. And a sink that says 250 but
//! discards some messages (a test-only profile) is caught: lost > 0, exit status 1.
//!
//! Starting a private Postfix needs root, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use loadgen::postfix::{Postfix, PostfixConfig};
use loadgen::scenario::Scenario;

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// Two providers on their own sink addresses; `extra` is added to the first.
fn scenario_text(base: u8, extra: &str) -> String {
    let (a, b) = (format!("127.0.0.{base}"), format!("127.0.0.{}", base + 1));
    format!(
        r#"[[provider]]
name = "bigmail"
domains = ["big.test", "big2.test"]
mx = [{{ host = "mx.big.test", address = "{a}", port = {pa} }}]
connections_per_ip_max = 50
rcpt_tempfail_percent = 10.0
data_tempfail_percent = 5.0
rcpt_permfail_percent = 4.0
tempfail_reply = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered"
{extra}

[[provider]]
name = "tail"
domains = ["tail1.test", "tail2.test", "tail3.test"]
mx = [{{ host = "mx.tail.test", address = "{b}", port = {pb} }}]
starttls = true
"#,
        pa = free_port(&a),
        pb = free_port(&b),
    )
}

struct Run {
    code: Option<i32>,
    stdout: String,
    result: HashMap<String, f64>,
}

/// Starts Postfix for the scenario, then `loadgen run` through it.
/// `deadline`: seconds to wait for the sinks after injection (a run with losses waits
/// all of it: lost mail never arrives).
fn run_through_postfix(base: u8, extra: &str, deadline: &str, plot: Option<&std::path::Path>) -> Option<Run> {
    if !is_root() {
        eprintln!("SKIPPED: starting a private Postfix needs root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    let text = scenario_text(base, extra);
    std::fs::write(&path, &text).unwrap();
    let scenario = Scenario::parse(&text, "scenario.toml").unwrap();
    let listen: SocketAddr = format!("127.0.0.{}:0", base + 2).parse().unwrap();
    let config = PostfixConfig {
        listen,
        egress: format!("127.0.0.{}", base + 3).parse().unwrap(),
        sender_domain: "loadgen.test".into(),
        backoff: Duration::from_secs(1),
        extra_main_cf: String::new(),
    };
    let postfix = Postfix::start(&scenario, &config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command.args(["run", "--scenario", path.to_str().unwrap(), "--target", &postfix.address.to_string()]);
    command.args(["--messages", "300", "--recipients", "2", "--connections", "4", "--size", "3000"]);
    command.args(["--deadline-seconds", deadline, "--settle-seconds", "1", "--dns-listen", "none"]);
    if let Some(plot) = plot {
        command.args(["--plot", plot.to_str().unwrap()]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("RESULT "), "the last line is the RESULT line:\n{stdout}\n{}", postfix.log());
    let result = last
        .split_whitespace()
        .skip(1)
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.parse().unwrap()))
        .collect();
    Some(Run { code: output.status.code(), stdout, result })
}

#[test]
fn postfix_relays_everything_through_tempfails_and_permfails_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    // The deadline only bounds a failing run (a run ends when every recipient is
    // accounted for): under a loaded machine Postfix's retries of the sink's
    // tempfails once took longer than 120 s for one recipient.
    let Some(run) = run_through_postfix(60, "", "400", Some(&plot)) else { return };
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_eq!(r["injected"], 600.0, "Postfix accepted every recipient:\n{}", run.stdout);
    assert_eq!(r["lost"], 0.0, "{}", run.stdout);
    assert_eq!(r["duplicates"], 0.0, "{}", run.stdout);
    assert!(r["bounced"] > 0.0, "the sink's 5xx came back as bounces:\n{}", run.stdout);
    assert_eq!(r["delivered"] + r["bounced"], 600.0);
    assert!(r["p99_ms"] >= r["p50_ms"]);
    assert!(run.stdout.contains("RCPT tempfail"), "the summary table is printed");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("delivered to the sinks"), "the plot is written");
}

#[test]
fn a_sink_that_discards_after_250_is_reported_lost_and_the_run_fails() {
    let Some(run) = run_through_postfix(70, "discard_after_250_percent = 5.0", "20", None) else { return };
    let r = &run.result;
    assert_eq!(run.code, Some(1), "lost mail makes the run fail:\n{}", run.stdout);
    assert!(r["lost"] > 0.0, "{}", run.stdout);
    assert_eq!(r["delivered"] + r["bounced"] + r["lost"], r["injected"]);
    assert!(run.stdout.contains("lost: "), "lost recipients are named:\n{}", run.stdout);
}
